"""What every party process shares: the TLS listener, deployments from the owner, shutdown.

The listener accepts connections on the party's address, runs each TLS handshake and hello
in its own thread (bounded in time and number; see `Listener` for the connection pools), and
hands a greeted link to the handler for its kind. A bad peer -- no or wrong certificate,
wrong role, oversized or malformed frame, too slow a handshake -- is logged and dropped; the
party keeps serving.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mpcc.errors import MpccError, PartyError
from mpcc.runtime.warmup import warm_up
from mpcc.serving import state
from mpcc.serving.certs import Revocations
from mpcc.serving.config import ClusterConfig, format_address
from mpcc.serving.handshakes import HandshakeSlots, Pending, party_hosts
from mpcc.serving.state import Deployment
from mpcc.serving.tls import (
    HandshakeEOF,
    HandshakeTimeout,
    LinkRefused,
    TlsChannel,
    client_context,
    greet,
    server_context,
)
from mpcc.serving.wire import CLIENT_HEADER_MAX, PARTY_HEADER_MAX, Message

Handler = Callable[[TlsChannel, Message], None]
HELLO_MAX_FRAME = 1 << 16  # before a peer has said what its link is for
PARTY_ROLES = frozenset({"p0", "p1", "dealer", "owner"})
PARTY_LINKS = 16  # links from the other parties and the owner held at once (their own pool)
EVICT_AFTER_MAX_S = 1.0  # a full handshake pool drops its oldest connection after this
ERROR_LINGER_S = 5.0  # a refused deploy keeps reading until the owner has its error


def _drain_until_closed(ch: TlsChannel, within_s: float) -> None:
    """Read and drop what the peer still sends until it closes the link (or `within_s`).

    Closing a socket with unread data resets the connection, and the reset can destroy the
    error message sent just before it: the owner, still sending shares, would report a
    broken pipe instead of the reason. Reading on until the owner has read the error and
    hung up closes the link cleanly."""
    end = time.monotonic() + within_s
    while (left := end - time.monotonic()) > 0:
        ch.poll(left)  # raises PartyError once the peer has closed


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
    - **Parties** (`PARTY_LINKS`): links from P0, P1, the dealer and the owner, greeted with
      a certificate of their role, have slots of their own that clients never take.

    A client or party slot is released when its link closes: a handler may keep its link
    after it returns (P0 keeps P1's link for the session).
    """

    def __init__(
        self,
        cfg: ClusterConfig,
        role: str,
        handlers: dict[str, tuple[set[str], Handler]],
        log: logging.Logger,
    ) -> None:
        self.cfg, self.role, self.log = cfg, role, log
        self._handlers = handlers
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
        self._parties = threading.BoundedSemaphore(PARTY_LINKS)
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
                )
                allowed = {k: roles for k, (roles, _) in self._handlers.items()}
                hello = greet(ch, allowed, max(0.0, deadline - time.monotonic()))
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
                    ch.send_msg("refused", {"msg": f"{self.role}: {why}"})
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
                ch.send_msg("refused", {"msg": f"{self.role} is shutting down"})
                ch.close("shutting down")
                return
            self._handlers[hello.meta["link"]][1](ch, hello)
        except HandshakeEOF:
            self.log.debug("connection from %s closed before TLS started", where)
            if ch is not None:
                ch.close("dropped")
        except HandshakeTimeout as e:
            self.log.warning("dropped the connection from %s: %s", where, e)
            if ch is not None:
                ch.close(str(e))
        except LinkRefused as e:
            self.log.warning("refused connection from %s: %s", where, e)
        except PartyError as e:
            self.log.warning("connection from %s ended: %s", where, e)
            if ch is not None:
                ch.close(str(e))
        except Exception as e:  # noqa: BLE001 - one bad connection must not take the party down
            self.log.exception("connection from %s failed", where)
            if ch is not None:
                ch.close(f"internal error: {type(e).__name__}")
        finally:
            if ch is None:  # the handshake failed: TlsChannel closed the socket, or never ran
                try:
                    p.sock.close()
                except OSError:
                    pass


class PartyServer:
    """Base of the dealer and compute party processes: state, deploys, listener, stopping.

    At start the party loads (or, with an empty numba cache, compiles) its kernels in the
    background while the listener already answers; it joins no session before they are
    ready (`kernels_ready`), so no query of a session waits for a kernel to compile."""

    role: str

    def __init__(
        self,
        cfg: ClusterConfig,
        role: str,
        state_dir: Path | None = None,
        num_requests: int | None = None,
    ) -> None:
        self.cfg, self.role = cfg, role
        self.log = logging.getLogger(f"mpcc.serving.{role}")
        self.state_dir = state_dir or cfg.role_state_dir(role)
        self.num_requests = num_requests
        self.client_ctx = client_context(cfg, role)
        self.stop_event = threading.Event()
        self.deployed = threading.Condition()
        self.deploy_generation = 0
        self.last_error: str | None = None
        self.deployment: Deployment | None = None
        self.load_error: str | None = None  # why the stored deployment was rejected
        self.kernels_ready = threading.Event()
        left = state.clean(self.state_dir)  # what a crash mid-write or mid-deploy left
        if left:
            self.log.info("removed files an interrupted deploy left: %s", ", ".join(left))
        try:
            stored = state.load(self.state_dir)  # shares checked against the commitment
            self.deployment = stored.public_part() if stored is not None else None
        except MpccError as e:
            self.load_error = str(e)
            self.log.error("ignoring the stored deployment: %s", e)
        if self.deployment:
            self.log.info(
                "loaded deployment of plan %s (%s) from %s",
                self.deployment.plan_hash[:12],
                self.deployment.prog.name,
                self.state_dir,
            )
        self.listener: Listener | None = None

    # -- to be filled by subclasses -------------------------------------------------------
    def handlers(self) -> dict[str, tuple[set[str], Handler]]:
        return {"deploy": ({"owner"}, self.on_deploy)}

    def on_new_deployment(self) -> None:
        """Called after a deployment was stored (end the current session)."""

    def shutdown(self) -> None:
        """Release the subclass's resources at stop."""

    # -- running --------------------------------------------------------------------------
    def start(self) -> None:
        """Listen and start background work (returns at once)."""
        self.listener = Listener(self.cfg, self.role, self.handlers(), self.log)
        self.listener.start()
        host, port = self.cfg.address(self.role)
        self.log.info("%s listening on %s (TLS 1.3, mutual auth)", self.role, f"{host}:{port}")
        threading.Thread(target=self._warm_up, name="mpcc-warmup", daemon=True).start()

    def _warm_up(self) -> None:
        """Load or compile the numba kernels, then set `kernels_ready` (also if it failed:
        the kernels then compile on first use, which is slow but correct)."""
        try:
            self.log.info("kernels ready in %s", warm_up())
        except Exception:  # noqa: BLE001 - the party still works without the warm-up
            self.log.exception("kernel warm-up failed: kernels will compile on first use")
        finally:
            self.kernels_ready.set()

    def await_kernels(self, timeout: float) -> None:
        """Block until the kernels are ready; PartyError after `timeout` s or on stop."""
        deadline = time.monotonic() + timeout
        while not self.kernels_ready.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
            if self.stop_event.is_set():
                raise PartyError("stopping")
            if time.monotonic() >= deadline:
                raise PartyError(f"{self.role}'s kernels are not ready after {timeout:g} s")

    def stop(self, reason: str = "stop requested") -> None:
        if not self.stop_event.is_set():
            self.log.info("stopping: %s", reason)
            self.stop_event.set()
            with self.deployed:
                self.deployed.notify_all()

    def run(self, install_signals: bool = True) -> int:
        """Serve until SIGINT/SIGTERM or the request limit; returns the exit status."""
        got: list[str] = []

        def on_signal(sig: int, _frame: object) -> None:
            got.append(signal.Signals(sig).name)  # only flag it: the loop below logs and stops
            self.stop_event.set()

        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, on_signal)
        self.start()
        try:
            while not self.stop_event.wait(0.5):
                pass
        finally:
            self.close(f"signal {got[0]}" if got else "stop requested")
        return 0

    def close(self, reason: str = "stop requested") -> None:
        if not self.stop_event.is_set() or reason != "stop requested":
            self.log.info("stopping: %s", reason)
        self.stop_event.set()
        with self.deployed:
            self.deployed.notify_all()
        if self.listener is not None:
            self.listener.close()
        self.shutdown()
        self.log.info("stopped")

    # -- deployment -----------------------------------------------------------------------
    def takes_shares(self) -> bool:
        return self.role in ("p0", "p1")

    def on_deploy(self, ch: TlsChannel, hello: Message) -> None:
        """A two-phase deploy: the owner sends the public plan and, to P0/P1, this party's
        weight shares, which are checked (the plan verified) and staged; the party answers
        "staged", and switches to them only when the owner says "activate" -- once all three
        have staged. Until then, and for good if the owner aborts or goes away, the previous
        deployment stays active and serving."""
        t = self.cfg.serving.setup_timeout_s
        ch.send_msg("welcome", {"role": self.role})
        staged: Deployment | None = None
        try:
            staged = self._receive_deployment(ch, t)
            ch.send_msg(
                "staged",
                {"role": self.role, "plan_hash": staged.plan_hash, "deploy_id": staged.deploy_id},
            )
            ch.recv_msg(t, expect="activate")
            with self.deployed:
                state.activate(self.state_dir, staged.deploy_id)
                dep = staged.public_part()
                self.deployment = dep
                self.deploy_generation += 1
                self.deployed.notify_all()
        except MpccError as e:
            if staged is None:
                self.log.error("deployment from %s rejected: %s", ch.peer, e)
                why = f"{self.role} rejected the deployment: {e}"
            else:
                self.log.warning(
                    "deployment %s… staged and not activated (%s): the previous one stays",
                    staged.deploy_id[:8],
                    e,
                )
                why = f"{self.role} did not activate the deployment: {e}"
                try:
                    state.discard(self.state_dir, staged.deploy_id)
                except (OSError, MpccError) as err:
                    self.log.error("could not remove the staged deployment: %s", err)
            try:
                ch.send_msg("error", {"msg": why})
                _drain_until_closed(ch, ERROR_LINGER_S)
            except PartyError:
                pass
            ch.close("deployment not activated")
            return
        self.log.info(
            "deployed plan %s (%s), deployment %s",
            dep.plan_hash[:12],
            dep.prog.name,
            dep.deploy_id[:8],
        )
        self.on_new_deployment()
        try:
            ch.send_msg("deployed", {"role": self.role, "plan_hash": dep.plan_hash})
        finally:
            ch.close("deployment done")

    def _receive_deployment(self, ch: TlsChannel, t: float) -> Deployment:
        """The deploy header, one message per weight share, then a commit."""
        head = ch.recv_msg(t, expect="deploy")
        names = head.meta.get("weights", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise PartyError("malformed deploy header")
        if self.takes_shares() != bool(names):
            raise PartyError(
                "the dealer takes the public plan only"
                if names
                else f"{self.role} needs its weight shares"
            )
        shares: dict[str, np.ndarray] = {}
        for n in names:
            msg = ch.recv_msg(t, expect="share")
            if msg.meta.get("name") != n or len(msg.arrays) != 1:
                raise PartyError("weight shares arrived out of order")
            shares[n] = msg.arrays[0]
        ch.recv_msg(t, expect="commit")
        dep = Deployment.build(  # checks the hash, verifies the plan, checks the shares
            head.meta.get("plan"),
            head.meta.get("plan_hash", ""),
            head.meta.get("deploy_id", ""),
            shares if names else None,
            role=self.role,
            commitments=head.meta.get("commitments"),
            salt=head.meta.get("salt"),
        )
        state.stage(self.state_dir, dep)
        # The shares stay on disk: each session reads (and checks) them afresh, so between
        # sessions a party holds its opened weights alone.
        return dep.public_part()
