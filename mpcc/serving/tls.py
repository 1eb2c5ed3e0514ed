"""TLS 1.3 links with mutual authentication and role pinning, as a `Channel`.

Both ends load the cluster CA and their role's key and certificate, require the peer's
certificate (`CERT_REQUIRED` on both sides) and check the role it names against the role
expected for the link. Host names are not checked: the role is the identity.

TLS runs over memory BIOs (`ssl.SSLObject`), which lets a reader thread decrypt while
another thread encrypts and sends, and lets the channel count the exact bytes on the
wire. Payload bytes (the arrays) are counted by `Channel` as in the in-process transport;
`WireTraffic` adds the framing and TLS overhead on top.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpcc.errors import MpccError, PartyError
from mpcc.runtime.transport import Channel
from mpcc.serving.certs import role_from_peercert
from mpcc.serving.config import ClusterConfig, format_address
from mpcc.serving.wire import FrameError, FrameParser, Message, encode

log = logging.getLogger("mpcc.serving.tls")

PROTOCOL_VERSION = 1
CHUNK = 1 << 18  # plaintext bytes encrypted (and sent) per step


class LinkRefused(PartyError):
    """The peer's certificate or its hello does not fit the link."""


class HandshakeEOF(PartyError):
    """The peer hung up before the TLS handshake ended (e.g. a port probe)."""


@dataclass
class WireTraffic:
    """Bytes on the socket (TLS records included) and frames, each way."""

    sent: int = 0
    received: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    handshake: int = 0  # both directions, during the TLS handshake

    def snapshot(self) -> WireTraffic:
        return WireTraffic(
            self.sent, self.received, self.frames_sent, self.frames_received, self.handshake
        )


def _context(cfg: ClusterConfig, server: bool, cert=None, key=None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # the peer's role, not its host name, is checked
    ctx.verify_mode = ssl.CERT_REQUIRED
    if server:
        ctx.num_tickets = 0  # no session resumption: every link authenticates afresh
    try:
        ctx.load_verify_locations(cafile=str(cfg.ca))
        if cert is not None:
            ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        raise MpccError(f"cannot load TLS credentials ({e})") from None
    return ctx


def server_context(cfg: ClusterConfig, role: str) -> ssl.SSLContext:
    """Context for a party's listening socket: TLS 1.3 only, client certificate required."""
    return _context(cfg, True, *cfg.credential(role))


def client_context(
    cfg: ClusterConfig, role: str | None, cert: str | None = None, key: str | None = None
) -> ssl.SSLContext:
    """Context for dialing a party as `role` (or with explicit cert/key; None: no certificate)."""
    if cert is None and role is not None:
        cert, key = cfg.credential(role)
    return _context(cfg, False, cert, key)


def _tune(sock: socket.socket, timeout: float) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, val in (
        ("TCP_KEEPIDLE", max(1, int(timeout))),
        ("TCP_KEEPINTVL", 1),
        ("TCP_KEEPCNT", 3),
    ):
        if hasattr(socket, opt):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), val)
    sock.settimeout(timeout)


@dataclass(frozen=True)
class LinkClosed:
    """Delivered to a forwarding queue (see `TlsChannel.forward_to`) when a link closes."""

    reason: str


_Closed = LinkClosed


class TlsChannel(Channel):
    """One end of a mutually authenticated TLS 1.3 link to a peer of a pinned role."""

    def __init__(
        self,
        sock: socket.socket,
        ctx: ssl.SSLContext,
        *,
        server: bool,
        name: str,
        timeout: float,
        max_frame_bytes: int,
        label: str | None = None,
    ) -> None:
        super().__init__(name, label or "peer", timeout)
        self._sock = sock
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._ssl = ctx.wrap_bio(self._in, self._out, server_side=server)
        self._ssl_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._inbox: queue.Queue[Message | _Closed] = queue.Queue()
        self._forward: tuple[queue.Queue, Any] | None = None
        self._fwd_lock = threading.Lock()
        self._parser = FrameParser(max_frame_bytes)
        self._closed: str | None = None
        self._close_lock = threading.Lock()
        self._on_close: list[Callable[[str], None]] = []
        self._last_wire = 0
        self.wire = WireTraffic()
        self.peer_role: str | None = None
        try:
            self.peer_addr = format_address(sock.getpeername()[:2])
        except OSError:
            self.peer_addr = "?"
        _tune(sock, timeout)
        self._handshake()
        self.peer_role = role_from_peercert(self._ssl.getpeercert())
        if label is None:
            self.peer = f"{self.peer_role or 'unknown'}@{self.peer_addr}"
        self._reader = threading.Thread(
            target=self._read_loop, name=f"mpcc-read-{self.peer}", daemon=True
        )
        self._reader.start()

    # -- TLS plumbing ---------------------------------------------------------------------
    def _handshake(self) -> None:
        try:
            while True:
                try:
                    self._ssl.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    pass
                self._flush_handshake()
                data = self._sock.recv(CHUNK)
                if not data:
                    raise HandshakeEOF("the peer closed the connection in the TLS handshake")
                self.wire.received += len(data)
                self._in.write(data)
            self._flush_handshake()
        except ssl.SSLError as e:
            self._flush_handshake(quiet=True)
            self._sock.close()
            raise LinkRefused(f"TLS handshake with {self.peer_addr} failed: {_reason(e)}") from None
        except HandshakeEOF:
            self._sock.close()
            raise
        except (TimeoutError, OSError) as e:
            self._sock.close()
            raise PartyError(f"TLS handshake with {self.peer_addr} failed: {e}") from None
        self.wire.handshake = self.wire.sent + self.wire.received

    def _flush_handshake(self, quiet: bool = False) -> None:
        data = self._out.read()
        if data:
            try:
                self._sock.sendall(data)
                self.wire.sent += len(data)
            except OSError:
                if not quiet:
                    raise

    def _read_loop(self) -> None:
        reason = "closed"
        data = b""  # first, records that arrived together with the end of the handshake
        try:
            while self._closed is None:
                plain, ended = self._decrypt(data)
                if plain:
                    for msg in self._parser.feed(plain):
                        msg.wire_bytes = self.wire.received - self._last_wire
                        self._last_wire = self.wire.received
                        self.wire.frames_received += 1
                        self._deliver(msg)
                if ended:
                    reason = "the connection was closed"
                    break
                try:
                    data = self._sock.recv(CHUNK)
                except TimeoutError:
                    data = b""
                    continue
                if not data:
                    reason = "the connection was closed"
                    break
                self.wire.received += len(data)
        except ssl.SSLError as e:
            reason = f"TLS error: {_reason(e)}"
        except FrameError as e:
            reason = f"rejected a frame: {e}"
            log.warning("%s: %s; closing the link", self.peer, e)
        except OSError as e:
            reason = f"connection error: {e}"
        self.close(reason, _from_reader=True)

    def _decrypt(self, data: bytes) -> tuple[bytes, bool]:
        """Plaintext from received bytes, and whether the peer closed TLS (close_notify)."""
        plain, ended = bytearray(), False
        with self._ssl_lock:
            self._in.write(data)
            while True:
                try:
                    chunk = self._ssl.read(CHUNK)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    ended = True
                    break
                if not chunk:
                    ended = True
                    break
                plain += chunk
            pending = self._out.pending
        if pending and not ended:
            self._send_raw(b"")
        return bytes(plain), ended

    def _send_raw(self, *bufs: bytes | memoryview) -> None:
        """Encrypt and send buffers as one unit. Small buffers are coalesced into one TLS
        record and one system call; `_send_lock` keeps frames whole and ciphertext in order."""
        with self._send_lock:
            small = bytearray()
            for b in bufs:
                view = memoryview(b).cast("B")
                if len(small) + len(view) <= CHUNK:
                    small += view
                    continue
                if small:
                    self._write(small)
                    small = bytearray()
                for start in range(0, len(view), CHUNK):
                    self._write(view[start : start + CHUNK])
            self._write(small)  # also flushes what TLS itself has to send

    def _write(self, plain: bytes | memoryview) -> None:
        with self._ssl_lock:
            if len(plain):
                self._ssl.write(plain)
            data = self._out.read()
        if data:
            self._sock.sendall(data)
            self.wire.sent += len(data)

    # -- messages ---------------------------------------------------------------------------
    def send_msg(self, kind: str, meta: dict[str, Any] | None = None, arrays=()) -> None:
        """Send one frame; raises PartyError if the link is closed or stalls."""
        if self._closed is not None:
            raise PartyError(f"link to {self.peer} is closed: {self._closed}")
        bufs = encode(kind, meta or {}, list(arrays))
        try:
            self._send_raw(*bufs)
        except ssl.SSLError as e:
            why = self._closed or f"TLS error: {_reason(e)}"  # the reader may know better
            self.close(why)
            raise PartyError(f"{self.peer}: {why}") from None
        except (TimeoutError, OSError) as e:
            why = self._closed or ("send stalled" if isinstance(e, TimeoutError) else str(e))
            self.close(why)
            raise PartyError(f"{self.peer}: {why}") from None
        self.wire.frames_sent += 1

    def poll(self, timeout: float | None) -> Message | None:
        """The next message, or None after `timeout` s; raises PartyError if the link closed."""
        try:
            if timeout is None:
                msg = self._inbox.get()
            elif timeout <= 0:
                msg = self._inbox.get_nowait()
            else:
                msg = self._inbox.get(timeout=timeout)
        except queue.Empty:
            if self._closed is not None:
                raise PartyError(f"{self.peer}: {self._closed}") from None
            return None
        if isinstance(msg, _Closed):
            self._inbox.put(msg)  # stays closed for every later reader
            raise PartyError(f"{self.peer}: {msg.reason}")
        if msg.kind == "abort":
            raise PartyError(f"{self.peer} failed: {msg.meta.get('reason', '?')}")
        return msg

    def recv_msg(self, timeout: float | None = None, expect: str | None = None) -> Message:
        """The next message within `timeout` (default: the channel's); raises PartyError."""
        t = self.timeout if timeout is None else timeout
        msg = self.poll(t)
        if msg is None:
            raise PartyError(f"{self.peer} sent nothing for {t:g} s")
        if msg.kind == "error":
            raise PartyError(f"{self.peer}: {msg.meta.get('msg', 'error')}")
        if expect is not None and msg.kind != expect:
            raise PartyError(f"{self.peer} sent {msg.kind!r} where {expect!r} was expected")
        return msg

    def _deliver(self, item: Message | _Closed) -> None:
        with self._fwd_lock:
            if self._forward is None:
                self._inbox.put(item)
            else:
                self._forward[0].put((self._forward[1], item))

    def forward_to(self, q: queue.Queue, tag: Any) -> None:
        """Deliver this link's messages, and a `LinkClosed` at the end, to `q` as (tag, item).

        For waiting on several links at once; `poll` and `recv_msg` no longer see them."""
        with self._fwd_lock:
            while True:
                try:
                    q.put((tag, self._inbox.get_nowait()))
                except queue.Empty:
                    break
            self._forward = (q, tag)

    # -- Channel interface (protocol rounds) ------------------------------------------------
    def _put(self, arrays: list[np.ndarray]) -> None:
        self.send_msg("data", None, arrays)

    def _get(self) -> list[np.ndarray]:
        return self.recv_msg(expect="data").arrays

    def abort(self, reason: str) -> None:
        try:
            self.send_msg("abort", {"reason": reason})
        except PartyError:
            pass

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def closed(self) -> str | None:
        """None while open, else why it closed."""
        return self._closed

    def limit_frames(self, max_frame_bytes: int) -> None:
        """Change the largest frame this end accepts (e.g. once the link's kind is known)."""
        self._parser.max_frame_bytes = max_frame_bytes

    def on_close(self, fn: Callable[[str], None]) -> None:
        """Call fn(reason) once when the link closes (at once if it is closed already)."""
        with self._close_lock:
            if self._closed is None:
                self._on_close.append(fn)
                return
        fn(self._closed)

    def close(self, reason: str = "closed by this side", _from_reader: bool = False) -> None:
        with self._close_lock:
            if self._closed is not None:
                return
            self._closed = reason
            callbacks, self._on_close = self._on_close, []
        self._deliver(_Closed(reason))
        if not _from_reader:
            try:
                with self._ssl_lock:
                    self._ssl.unwrap()
            except (ssl.SSLError, ValueError):
                pass
            data = self._out.read()
            if data and self._send_lock.acquire(timeout=0.1):
                try:
                    self._sock.settimeout(0.1)
                    self._sock.sendall(data)
                except OSError:
                    pass
                finally:
                    self._send_lock.release()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        for fn in callbacks:
            try:
                fn(reason)
            except Exception:  # noqa: BLE001 - a callback must not break closing
                log.exception("close callback failed")


def _reason(e: ssl.SSLError) -> str:
    return getattr(e, "reason", None) or str(e)


# -- link establishment ---------------------------------------------------------------------
def dial(
    cfg: ClusterConfig,
    ctx: ssl.SSLContext,
    target: str,
    *,
    me: str,
    link: str,
    meta: dict[str, Any] | None = None,
    timeout: float | None = None,
) -> tuple[TlsChannel, dict[str, Any]]:
    """Connect to party `target`, check its certificate's role, open a `link`.

    Returns the channel and the meta of the peer's welcome; raises PartyError or LinkRefused.
    """
    addr = cfg.address(target)
    t = cfg.serving.timeout_s if timeout is None else timeout
    where = f"{target} at {format_address(addr)}"
    try:
        sock = socket.create_connection(addr, timeout=t)
    except OSError as e:
        raise PartyError(f"cannot reach {where}: {e.strerror or e}") from None
    ch = TlsChannel(
        sock,
        ctx,
        server=False,
        name=me,
        timeout=t,
        max_frame_bytes=cfg.serving.max_frame_bytes,
        label=target.upper() if target != "dealer" else "dealer",
    )
    if ch.peer_role != target:
        ch.close("wrong peer role")
        raise LinkRefused(f"expected {where}, but its certificate is for {ch.peer_role!r}")
    try:
        ch.send_msg("hello", {"link": link, "version": PROTOCOL_VERSION, **(meta or {})})
        msg = ch.recv_msg(t)
    except PartyError as e:
        ch.close(str(e))
        raise PartyError(f"{target} did not accept the {link} link: {_strip(e, ch)}") from None
    if msg.kind == "refused":
        ch.close("refused")
        raise LinkRefused(f"{target} refused the {link} link: {msg.meta.get('msg', '')}")
    if msg.kind != "welcome":
        ch.close("bad welcome")
        raise PartyError(f"{target} answered the hello with {msg.kind!r}")
    return ch, msg.meta


def _strip(e: Exception, ch: TlsChannel) -> str:
    s = str(e)
    return s[len(ch.peer) + 2 :] if s.startswith(ch.peer + ": ") else s


def greet(ch: TlsChannel, allowed: dict[str, set[str]], timeout: float) -> Message:
    """Server side: read the hello and check the link kind against the peer's pinned role.

    `allowed` maps link kinds to the certificate roles that may open them. On success the
    hello is returned (the caller sends the welcome); otherwise the peer is told why, the
    channel closed and LinkRefused raised.
    """
    msg = ch.recv_msg(timeout, expect="hello")
    link, version = msg.meta.get("link"), msg.meta.get("version")
    why = None
    if version != PROTOCOL_VERSION:
        why = f"protocol version {version!r} is not {PROTOCOL_VERSION}"
    elif link not in allowed:
        why = f"no {link!r} links here"
    elif ch.peer_role not in allowed[link]:
        why = f"a certificate of role {ch.peer_role!r} may not open a {link} link"
    if why:
        try:
            ch.send_msg("refused", {"msg": why})
        except PartyError:
            pass
        ch.close(why)
        raise LinkRefused(f"refused {ch.peer}: {why}")
    return msg
