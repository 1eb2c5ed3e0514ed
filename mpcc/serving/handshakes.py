"""Admission of new connections to their TLS handshake: bounded slots, reserved slots for the
parties' own addresses, and a limit per source address.

A connection is accepted at once and waits for a handshake slot; it holds the slot from then
until it has said hello (or failed), within `handshake_timeout_s`. There are two pools of
`max_handshakes` slots each:

- one for connections from the hosts the cluster configuration names for P0, P1 and the
  dealer: the links the parties need come from there, so no one elsewhere can take their
  slots or queue ahead of them;
- one for everyone else (clients, the owner, anyone who can open a TCP connection), where
  each source address may hold at most `max_handshakes_per_source` connections, slots and
  waiting together; more from it are closed at once, so one host cannot fill the pool.

When a pool is full its next connection waits, and the connection that has held a slot
longest is dropped once it has had `evict_after` s (a real handshake takes milliseconds), so
slow or silent sockets delay a link by about that much, not more. At most `WAITING_MAX`
connections wait per pool; beyond that the one that waited longest is closed.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

WAITING_MAX = 64  # accepted connections waiting for a slot, per pool (a listen backlog's worth)
WARN_EVERY_S = 5.0  # at most one warning this often about a source over its limit


@dataclass(eq=False)
class Pending:
    """A connection waiting for, or in, its handshake and hello (not yet authenticated)."""

    sock: socket.socket
    where: str  # address, for the log
    host: str  # source address
    party_host: bool  # from an address of P0, P1 or the dealer
    since: float = 0.0  # when it got its slot (its handshake deadline runs from here)
    evicted: bool = False


@dataclass
class _Pool:
    size: int
    active: set[Pending] = field(default_factory=set)
    waiting: deque[Pending] = field(default_factory=deque)


def party_hosts(addresses: dict[str, tuple[str, int]]) -> frozenset[str]:
    """The IP addresses of the hosts named for the parties (names resolved once, now)."""
    hosts: set[str] = set()
    for host, _ in addresses.values():
        try:
            hosts.update(str(info[4][0]) for info in socket.getaddrinfo(host, None))
        except OSError:
            hosts.add(host)
    return frozenset(hosts)


class HandshakeSlots:
    """The two pools of handshake slots (see the module docstring). `start(p)` runs a
    connection's handshake once it has a slot (in a thread of its own); it must call
    `done(p)` when the handshake and hello are over, however they ended."""

    def __init__(
        self,
        size: int,
        per_source: int,
        evict_after: float,
        parties: frozenset[str],
        start: Callable[[Pending], None],
        log: logging.Logger,
    ) -> None:
        self.per_source, self.evict_after, self.parties = per_source, evict_after, parties
        self._start, self.log = start, log
        self._pools = {True: _Pool(max(1, size)), False: _Pool(max(1, size))}
        self._sources: Counter[str] = Counter()  # held or waiting, per non-party source
        self._lock = threading.Lock()
        self._warned = 0.0
        self.refused_by_source = 0  # connections closed at once: their source was over

    def admit(self, sock: socket.socket, where: str, host: str) -> None:
        """A connection just accepted: give it a slot, queue it, or close it at once."""
        p = Pending(sock, where, host, host in self.parties)
        with self._lock:
            if not p.party_host and self._sources[host] >= self.per_source:
                self.refused_by_source += 1
                now = time.monotonic()
                warn = now - self._warned >= WARN_EVERY_S
                if warn:
                    self._warned = now
                over = True
            else:
                over = False
                if not p.party_host:
                    self._sources[host] += 1
                pool = self._pools[p.party_host]
                if len(pool.waiting) >= WAITING_MAX:
                    self._drop(pool.waiting.popleft(), "waited longest for a handshake slot")
                pool.waiting.append(p)
        if over:
            if warn:
                self.log.warning(
                    "closing new connections from %s: it has %d in their handshake already "
                    "(max_handshakes_per_source)",
                    host,
                    self.per_source,
                )
            _close(sock)
            return
        self.tick()

    def tick(self) -> float:
        """Hand free slots to waiting connections, dropping a pool's oldest connection to
        make room once it has had `evict_after`; returns seconds until that is due next."""
        started, dropped, wait = [], [], 0.5
        now = time.monotonic()
        with self._lock:
            for pool in self._pools.values():
                while pool.waiting:
                    if len(pool.active) < pool.size:
                        p = pool.waiting.popleft()
                        p.since = now
                        pool.active.add(p)
                        started.append(p)
                        continue
                    oldest = min(pool.active, key=lambda a: a.since)
                    due = oldest.since + self.evict_after - now
                    if due > 0:
                        wait = min(wait, due)
                        break
                    pool.active.discard(oldest)
                    oldest.evicted = True
                    self._forget(oldest)
                    dropped.append(oldest)
        for p in dropped:
            self.log.warning(
                "dropped the connection from %s: every handshake slot was taken and it had "
                "held one longest (%.1f s)",
                p.where,
                now - p.since,
            )
            try:
                p.sock.shutdown(socket.SHUT_RDWR)  # wakes its thread, which closes it
            except OSError:
                pass
        for p in started:
            self._start(p)
        return max(0.01, wait)

    def done(self, p: Pending) -> bool:
        """A connection leaves its slot (authenticated, or failed); False if it had been
        dropped from it meanwhile."""
        with self._lock:
            if p.evicted:
                return False
            self._pools[p.party_host].active.discard(p)
            self._forget(p)
        self.tick()
        return True

    def close(self) -> None:
        """Close every connection still waiting for a slot."""
        with self._lock:
            waiting = [p for pool in self._pools.values() for p in pool.waiting]
            for pool in self._pools.values():
                pool.waiting.clear()
        for p in waiting:
            _close(p.sock)

    def held(self, host: str) -> int:
        """Connections from a (non-party) source in their handshake or waiting for it."""
        with self._lock:
            return self._sources[host]

    def _forget(self, p: Pending) -> None:
        if not p.party_host:
            self._sources[p.host] -= 1
            if self._sources[p.host] <= 0:
                del self._sources[p.host]

    def _drop(self, p: Pending, why: str) -> None:
        """Close a waiting connection (with the lock held)."""
        self._forget(p)
        self.log.warning("dropped the connection from %s: it %s", p.where, why)
        _close(p.sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
