"""Per-client limits at a compute party: each client identity's message rate, what it may
have waiting, and a fair order between identities.

A client identity is the subject of its certificate (`certs.identity_from_peercert`): one per
`mpcc cluster add-client NAME`, and one, "client", for everyone holding the cluster's shared
client certificate. Its links share one `Identity`, so opening more links buys no more: the
connections themselves are counted by the listener (`client_connections`), the requests and
bytes waiting by the party (`client_queue`, `client_queue_mb`), and its messages are paced by
a token bucket (`client_rate`, `client_burst`): a link whose identity is over its rate is
simply not read until a token is due, so TCP pushes back on the client and nothing queues.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up. `reserve()` takes one now and says
    how long to wait until it was due (the bucket may go into debt: callers that wait
    their turn each, in order)."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self._clock = float(rate), float(burst), clock
        self._tokens = float(burst)
        self._at = clock()
        self._lock = threading.Lock()

    def reserve(self, n: float = 1.0) -> float:
        """Take `n` tokens; seconds until they are due (0.0 if they were there)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            self._tokens -= n
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class Identity:
    """One client identity at a party: its rate bucket and the bytes of answers waiting in
    its links' outboxes (its waiting requests are counted in the party's queues)."""

    def __init__(self, name: str, rate: float, burst: float, max_bytes: int) -> None:
        self.name = name
        self.bucket = TokenBucket(rate, burst)
        self.max_bytes = max_bytes  # waiting requests and unsent answers together
        self._lock = threading.Lock()
        self.answer_bytes = 0

    def hold_answer(self, n: int) -> bool:
        """Count `n` bytes of an answer waiting to be sent; False (nothing counted) if that
        would take the identity over its bytes."""
        with self._lock:
            if self.answer_bytes + n > self.max_bytes:
                return False
            self.answer_bytes += n
            return True

    def release_answer(self, n: int) -> None:
        with self._lock:
            self.answer_bytes -= n


def fair_order(
    items: Sequence[T], key: Callable[[T], Hashable], last_served: dict[Hashable, int]
) -> list[T]:
    """`items` interleaved round-robin between their keys (identities), each key's own in
    their order; the key served longest ago (`last_served`: key -> a counter, absent:
    never) goes first, ties by first appearance. So when P0 fills a batch, one client's
    many queued requests cannot keep another's single one waiting."""
    groups: dict[Hashable, list[T]] = {}
    for it in items:
        groups.setdefault(key(it), []).append(it)
    if len(groups) <= 1:
        return list(items)
    order = sorted(groups, key=lambda k: last_served.get(k, -1))  # stable: ties keep order
    out: list[T] = []
    queues = [groups[k] for k in order]
    depth = 0
    while len(out) < len(items):
        out += [q[depth] for q in queues if depth < len(q)]
        depth += 1
    return out


def mark_served(keys: Iterable[Hashable], last_served: dict[Hashable, int]) -> None:
    """Record that a batch served these keys (after every key served before)."""
    now = max(last_served.values(), default=0) + 1
    for k in keys:
        last_served[k] = now
