"""The TLS listener of a party: accepts connections on the party's address, runs each TLS
handshake and hello in its own thread (bounded in time and number; see `Listener` for the
connection pools), and hands a greeted link to the handler for its kind. A bad peer -- no
or wrong certificate, wrong role, oversized or malformed frame, too slow a handshake -- is
logged and dropped; the party keeps serving.

A handler is either a function, which runs in the handshake's thread and keeps the
`TlsChannel` (the parties' own links: the hot path), or a coroutine function, whose link is
moved to the party's control loop (`controllink.ControlLink`) and served there as a task:
client and deploy links cost no thread while they are open.
"""

from __future__ import annotations

import inspect
import logging
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from mpcc.errors import MpccError, PartyError
from mpcc.serving.certs import Revocations
from mpcc.serving.config import ClusterConfig, format_address
from mpcc.serving.controllink import ControlLink
from mpcc.serving.controlloop import ControlLoop
from mpcc.serving.handshakes import HandshakeSlots, Pending, party_hosts
from mpcc.serving.links import greet
from mpcc.serving.messages import Hello, Refused
from mpcc.serving.tls import TlsChannel
from mpcc.serving.tlscontext import server_context
from mpcc.serving.tlsstream import HandshakeEOF, HandshakeTimeout, LinkRefused
from mpcc.serving.wire import CLIENT_HEADER_MAX, PARTY_HEADER_MAX

Handler = (
    Callable[[TlsChannel, Hello], None]  # runs in the handshake's thread
    | Callable[[ControlLink, Hello], Coroutine[Any, Any, None]]  # a task of the control loop
)
HELLO_MAX_FRAME = 1 << 16  # before a peer has said what its link is for
PARTY_ROLES = frozenset({"p0", "p1", "dealer", "owner"})
# links from the other parties and the owner held at once (their own pool), and two for each
# of a session's lanes (P1's links to P0: a new session's, while the old one's close)
PARTY_LINKS = 16
EVICT_AFTER_MAX_S = 1.0  # a full handshake pool drops its oldest connection after this


class Listener:
    """Accepts TLS links on one address and dispatches them by link kind.

    Connections are counted in three pools, so that neither clients nor anyone who can open
    a TCP connection can lock the parties out of their own links:

    - **Unauthenticated** (`max_handshakes`; see `handshakes`): a connection holds one of
      these slots from the start of its TLS handshake to its hello, which must both be done
      within `handshake_timeout_s` -- one wall-clock deadline, not a per-read timeout, so a
      peer that sends nothing, or a byte now and then, is dropped all the same. Connections
      from the parties' own hosts have a pool of their own; from anywhere else, one source
      address holds at most `max_handshakes_per_source`. When a pool is full, new
      connections wait, and once its oldest slot has been held for `evict_after` (half the
      deadline, at most a second, while a real handshake takes milliseconds) that
      connection is dropped to make room. Idle or slow sockets can thus delay a party's or
      client's connection by about a second, not hold the slots.
    - **Clients** (`max_connections`): a greeted client link takes one of these, and one of
      its identity's `client_connections` (the certificate's subject: see `admission`), or
      is refused. A certificate on the revocation list (`certs.Revocations`, re-read when
      its file changes) is refused whatever its role.
    - **Parties** (`PARTY_LINKS`, and two per lane): links from P0, P1, the dealer and the
      owner, greeted with a certificate of their role, have slots of their own that clients
      never take.

    A client or party slot is released when its link closes: a handler may keep its link
    after it returns (P0 keeps P1's link for the session).
    """

    def __init__(
        self,
        cfg: ClusterConfig,
        role: str,
        handlers: dict[str, tuple[set[str], Handler]],
        log: logging.Logger,
        control: ControlLoop | None = None,
    ) -> None:
        """`control`: the loop that serves the links of coroutine handlers (needed if any)."""
        self.cfg, self.role, self.log = cfg, role, log
        self._handlers = handlers
        self.control = control
        if control is None and any(inspect.iscoroutinefunction(h) for _, h in handlers.values()):
            raise ValueError("coroutine handlers need a control loop")
        self._ctx = server_context(cfg, role)
        s = cfg.serving
        self.evict_after = min(EVICT_AFTER_MAX_S, s.handshake_timeout_s / 2)
        self.slots = HandshakeSlots(
            s.max_handshakes,
            s.max_handshakes_per_source,
            self.evict_after,
            party_hosts(cfg.addresses),
            self._start_handshake,
            log,
        )
        self._clients = threading.BoundedSemaphore(max(1, s.max_connections))
        self._parties = threading.BoundedSemaphore(PARTY_LINKS + 2 * s.lanes)
        self._per_identity: dict[str, int] = {}  # client links open, by certificate subject
        self._ident_lock = threading.Lock()
        self.revocations = Revocations(cfg, log)
        host, port = cfg.address(role)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError as e:
            self._sock.close()
            raise MpccError(
                f"{role} cannot listen on {format_address((host, port))}: {e}"
            ) from None
        self._sock.listen(64)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="mpcc-accept", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        self._sock.close()
        if self._thread.ident is not None:
            self._thread.join(timeout=2)
        self.slots.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                self._sock.settimeout(self.slots.tick())  # hands out slots as they free up
                sock, addr = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._closed.is_set():
                    return
                time.sleep(0.1)
                continue
            self.slots.admit(sock, format_address(addr[:2]), str(addr[0]))

    def _start_handshake(self, p: Pending) -> None:
        threading.Thread(target=self._serve, args=(p,), name="mpcc-conn", daemon=True).start()

    def _admit(self, ch: TlsChannel, party: bool) -> str | None:
        """Take a slot for a greeted link (released when it closes), or say why not: a
        revoked certificate, a full pool, or a client identity at its connection limit."""
        if self.revocations.revoked(ch.peer_serial):
            return f"the certificate of {ch.peer_identity or ch.peer_role} was revoked"
        if party:
            if not self._parties.acquire(blocking=False):
                return f"{self.role} has too many party links; try again later"
            ch.on_close(lambda _why: self._parties.release())
            return None
        who = ch.peer_identity or "?"
        with self._ident_lock:
            if self._per_identity.get(who, 0) >= self.cfg.serving.client_connections:
                return (
                    f"client {who} has {self.cfg.serving.client_connections} connections "
                    "(its limit, client_connections); close one or try again later"
                )
            if not self._clients.acquire(blocking=False):
                return f"{self.role} has too many client connections; try again later"
            self._per_identity[who] = self._per_identity.get(who, 0) + 1

        def release(_why: str) -> None:
            with self._ident_lock:
                self._per_identity[who] -= 1
                if not self._per_identity[who]:
                    del self._per_identity[who]
            self._clients.release()

        ch.on_close(release)
        return None

    def connections_of(self, identity: str) -> int:
        """Client links of one identity open now."""
        with self._ident_lock:
            return self._per_identity.get(identity, 0)

    def _serve(self, p: Pending) -> None:
        """Handshake, hello, then the link's handler, which owns the channel from then on."""
        s = self.cfg.serving
        where, deadline = p.where, p.since + s.handshake_timeout_s
        ch = None
        greeted = handed = False  # a valid hello came; the link's handler owns the link
        try:
            try:
                ch = TlsChannel(
                    p.sock,
                    self._ctx,
                    server=True,
                    name=self.role,
                    timeout=s.timeout_s,
                    max_frame_bytes=HELLO_MAX_FRAME,  # raised once the link is known
                    send_frame_bytes=s.max_frame_bytes,
                    deadline=deadline,
                    reader=False,  # see `_serve`'s end: the link may move to the loop
                )
                allowed = {k: roles for k, (roles, _) in self._handlers.items()}
                hello = greet(ch, allowed, max(0.0, deadline - time.monotonic()))
                greeted = True
            except PartyError as e:
                if p.evicted:
                    raise HandshakeEOF("dropped from the handshake pool") from None
                if isinstance(e, LinkRefused | HandshakeEOF | HandshakeTimeout):
                    raise
                if time.monotonic() >= deadline:
                    raise HandshakeTimeout(
                        f"no hello within {s.handshake_timeout_s:g} s of connecting"
                    ) from None
                raise
            finally:
                admitted = self.slots.done(p)
            if not admitted:
                raise HandshakeEOF("dropped from the handshake pool")
            party = ch.peer_role in PARTY_ROLES
            why = self._admit(ch, party)
            if why is not None:
                self.log.warning("refused %s: %s", ch.peer, why)
                try:
                    Refused(f"{self.role}: {why}").send(ch)
                except PartyError:
                    pass
                ch.close(why)
                return
            ch.limit_frames(
                s.max_frame_bytes,
                s.max_message_bytes if party else None,
                PARTY_HEADER_MAX if party else CLIENT_HEADER_MAX,
            )
            if self._closed.is_set():
                Refused(f"{self.role} is shutting down").send(ch)
                ch.close("shutting down")
                return
            handler = self._handlers[hello.link][1]
            if inspect.iscoroutinefunction(handler):
                assert self.control is not None
                link = ControlLink.adopt(ch, self.control)  # ch is done with
                handed = True
                self.control.spawn(
                    handler(link, hello),
                    name=f"{hello.link} {link.peer}",
                    on_drop=lambda: link.close(f"{self.role} is shutting down"),
                )
                return
            handed = True
            ch.start_reader()  # a background reader from here: the link stays a TlsChannel
            handler(ch, hello)
        except HandshakeEOF:
            self.log.debug("connection from %s closed before TLS started", where)
            if ch is not None:
                ch.close("dropped")
        except HandshakeTimeout as e:
            self.log.warning("dropped the connection from %s: %s", where, e)
            if ch is not None:  # TLS is up: the peer is told why
                ch.abort(f"{self.role}: {e}")
                ch.close(str(e))
        except LinkRefused as e:
            self.log.warning("refused connection from %s: %s", where, e)
        except PartyError as e:
            self.log.warning("connection from %s ended: %s", where, e)
            if ch is not None:
                if greeted and not handed:  # failed here, not the peer: it is told why
                    ch.abort(f"{self.role} could not take the link: {e}")
                ch.close(str(e))
        except Exception as e:  # noqa: BLE001 - one bad connection must not take the party down
            self.log.exception("connection from %s failed", where)
            if ch is not None:
                if not handed:
                    ch.abort(f"{self.role}: internal error ({type(e).__name__})")
                ch.close(f"internal error: {type(e).__name__}")
        finally:
            if ch is None:  # the handshake failed: TlsChannel closed the socket, or never ran
                try:
                    p.sock.close()
                except OSError:
                    pass
