"""TLS 1.3 links with mutual authentication and role pinning, as a `Channel`.

Both ends load the cluster CA and their role's key and certificate, require the peer's
certificate (`CERT_REQUIRED` on both sides) and check the role it names against the role
expected for the link. Host names are not checked: the role is the identity.

TLS runs over memory BIOs (`ssl.SSLObject`) on a non-blocking socket, which lets one thread
decrypt while another encrypts and sends, bounds every wait by an explicit deadline, and
lets the channel count the exact bytes on the wire. Payload bytes (the arrays) are counted
by `Channel` as in the in-process transport; `WireTraffic` adds the framing and TLS overhead
on top.

Reading: whoever wants a message reads the socket itself (one reader at a time). A thread
waiting in `poll`/`recv_msg` takes the reader role, waits for the socket, decrypts and
parses, so a protocol round costs no hand-off between threads. A background thread reads
only while no consumer has asked for a message for `READ_LEASE_S` (and always for links
whose messages are forwarded to a queue), so a closed link is still noticed and its
`on_close` callbacks run when nobody is reading; it stops while `INBOX_MAX` messages wait
unread, so a peer that sends faster than it is read is held back by TCP. A sender whose
socket is full reads too while it waits, so two ends that send large messages at once never
block each other.

Large messages are split into frames no larger than the frame limit (`wire.encode_message`)
and reassembled by the receiver, which bounds their total separately (`max_message_bytes`).
"""

from __future__ import annotations

import logging
import math
import queue
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpcc.errors import MpccError, PartyError
from mpcc.runtime.transport import Channel
from mpcc.serving.certs import identity_from_peercert, role_from_peercert, serial_from_peercert
from mpcc.serving.config import ClusterConfig, format_address
from mpcc.serving.frameparser import FrameParser
from mpcc.serving.wire import FrameError, Message, encode_message

log = logging.getLogger("mpcc.serving.tls")

PROTOCOL_VERSION = 1
CHUNK = 1 << 18  # plaintext bytes encrypted (and sent) per step; bytes read per recv
READ_LEASE_S = 0.1  # the background reader stays parked this long after a consumer read
BG_WAIT_S = 1.0  # the background reader's longest single wait for the socket
# Messages the background reader lets wait unread before it stops reading: a peer that sends
# faster than its messages are taken (a client over its rate) is then held back by TCP, not
# queued for in memory (the soak benchmark's `info` flood grew P0's RSS 55% in 60 s).
INBOX_MAX = 256

_IN = select.POLLIN | select.POLLPRI
_OUT = select.POLLOUT


class LinkRefused(PartyError):
    """The peer's certificate or its hello does not fit the link."""


class HandshakeEOF(PartyError):
    """The peer hung up before the TLS handshake ended (e.g. a port probe)."""


class HandshakeTimeout(PartyError):
    """The TLS handshake (or the hello after it) did not finish by its deadline."""


class _ReadFailed(Exception):
    """Reading ended the link; `args[0]` says why."""


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
    sock.setblocking(False)  # every wait below has its own deadline


def _wait(sock: socket.socket, events: int, timeout: float | None) -> int:
    """Wait until the socket is ready for `events`, for at most `timeout` s (None: no limit).

    Returns the events that happened (0 if none did in time)."""
    fd = sock.fileno()
    if fd < 0:
        return select.POLLNVAL
    p = select.poll()
    p.register(fd, events)
    forever = timeout is None or timeout == math.inf
    got = p.poll(-1 if forever else max(0, math.ceil(timeout * 1000)))
    return got[0][1] if got else 0


@dataclass(frozen=True)
class LinkClosed:
    """Delivered to a forwarding queue (see `TlsChannel.forward_to`) when a link closes."""

    reason: str


_Closed = LinkClosed


class TlsChannel(Channel):
    """One end of a mutually authenticated TLS 1.3 link to a peer of a pinned role.

    `max_frame_bytes` bounds each frame this end accepts, `max_message_bytes` a message split
    over several frames (default: one frame's worth); `send_frame_bytes` is the largest frame
    this end sends (default: `max_frame_bytes`). The TLS handshake must end by `deadline`
    (a `time.monotonic()` value; default: `timeout` s from now), however the peer paces it.
    """

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
        max_message_bytes: int | None = None,
        send_frame_bytes: int | None = None,
        deadline: float | None = None,
    ) -> None:
        super().__init__(name, label or "peer", timeout)
        self._sock = sock
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._ssl = ctx.wrap_bio(self._in, self._out, server_side=server)
        self._ssl_lock = threading.Lock()  # the SSLObject and its BIOs
        self._send_lock = threading.Lock()  # keeps frames whole and ciphertext in order
        # The inbox, the reader role and the consumers' lease, under one lock:
        self._lock = threading.Lock()
        self._msg_cv = threading.Condition(self._lock)  # consumers waiting for a message
        self._bg_cv = threading.Condition(self._lock)  # the background reader, parked
        self._inbox: deque[Message | _Closed] = deque()
        self._forward: tuple[queue.Queue, Any] | None = None
        self._reading = False  # a thread holds the reader role
        self._waiters = 0  # consumers waiting while another thread reads
        self._lease_until = 0.0  # the background reader stays parked until then
        self._parser = FrameParser(max_frame_bytes, max_message_bytes)
        self._rbuf = bytearray(CHUNK)  # what the socket gave the reader (reader role only)
        self._rview = memoryview(self._rbuf)
        self.send_frame_bytes = send_frame_bytes or max_frame_bytes
        self._closed: str | None = None
        self._close_lock = threading.Lock()
        self._on_close: list[Callable[[str], None]] = []
        self._last_wire = 0
        self.wire = WireTraffic()
        self.peer_role: str | None = None
        self.peer_identity: str | None = None  # the certificate's subject (see certs)
        self.peer_serial: int | None = None
        try:
            self.peer_addr = format_address(sock.getpeername()[:2])
        except OSError:
            self.peer_addr = "?"
        try:
            _tune(sock, timeout)
        except OSError as e:
            sock.close()
            raise PartyError(f"connection from {self.peer_addr} failed: {e}") from None
        self._handshake(time.monotonic() + timeout if deadline is None else deadline)
        cert = self._ssl.getpeercert()
        self.peer_role = role_from_peercert(cert)
        self.peer_identity = identity_from_peercert(cert)
        self.peer_serial = serial_from_peercert(cert)
        if label is None:
            who = self.peer_role or "unknown"
            if self.peer_identity not in (None, who):
                who = f"{who} {self.peer_identity}"
            self.peer = f"{who}@{self.peer_addr}"
        self._reading = True  # no other thread knows this channel yet
        try:
            self._process(b"")  # records that arrived together with the end of the handshake
        except _ReadFailed as e:
            self.close(e.args[0], _from_reader=True)
        finally:
            self._reading = False
        self._reader = threading.Thread(
            target=self._read_loop, name=f"mpcc-read-{self.peer}", daemon=True
        )
        self._reader.start()

    # -- TLS plumbing ---------------------------------------------------------------------
    def _handshake(self, deadline: float) -> None:
        budget = deadline - time.monotonic()
        try:
            while True:
                try:
                    self._ssl.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    pass
                self._flush_handshake(deadline)
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise HandshakeTimeout(
                            f"the TLS handshake with {self.peer_addr} did not finish within "
                            f"{max(budget, 0):.2g} s"
                        )
                    if not _wait(self._sock, _IN, left):
                        continue
                    try:
                        data = self._sock.recv(CHUNK)
                    except (BlockingIOError, InterruptedError):
                        continue
                    break
                if not data:
                    raise HandshakeEOF("the peer closed the connection in the TLS handshake")
                self.wire.received += len(data)
                self._in.write(data)
            self._flush_handshake(deadline)
        except ssl.SSLError as e:
            try:
                self._flush_handshake(min(deadline, time.monotonic() + 0.1))  # the alert
            except (TimeoutError, OSError):
                pass
            self._sock.close()
            raise LinkRefused(f"TLS handshake with {self.peer_addr} failed: {_reason(e)}") from None
        except (HandshakeEOF, HandshakeTimeout):
            self._sock.close()
            raise
        except TimeoutError:
            self._sock.close()
            raise HandshakeTimeout(
                f"the TLS handshake with {self.peer_addr} did not finish within "
                f"{max(budget, 0):.2g} s"
            ) from None
        except OSError as e:
            self._sock.close()
            raise PartyError(f"TLS handshake with {self.peer_addr} failed: {e}") from None
        self.wire.handshake = self.wire.sent + self.wire.received

    def _flush_handshake(self, deadline: float) -> None:
        data = self._out.read()
        if data:
            self._sock_send(data, deadline=deadline, read=False)

    def _sock_send(self, data: bytes, deadline: float | None = None, read: bool = True) -> None:
        """Send all of `data` on the socket.

        Fails with TimeoutError at `deadline`, or (None) once no byte went out for `timeout`
        s. While the socket is full, this thread reads if no other thread does (`read`), so
        two ends that send at once cannot block each other."""
        view = memoryview(data)
        limit = time.monotonic() + self.timeout if deadline is None else deadline
        while len(view):
            try:
                n = self._sock.send(view)
            except (BlockingIOError, InterruptedError):
                n = 0
            if n:
                self.wire.sent += n
                view = view[n:]
                if deadline is None:
                    limit = time.monotonic() + self.timeout
                continue
            left = limit - time.monotonic()
            if left <= 0:
                raise TimeoutError("send stalled")
            reader = read and self._take_role()
            try:
                ready = _wait(self._sock, _OUT | (_IN if reader else 0), left)
                if reader and ready & _IN and not ready & _OUT:
                    self._read_step(0)
            finally:
                if reader:
                    self._drop_role()

    def _read_step(self, wait: float | None) -> bool:
        """With the reader role: read what has arrived, waiting up to `wait` s (None: no
        limit) for something; deliver the messages it completes. Raises _ReadFailed when the
        link is over; returns whether anything arrived."""
        while True:
            try:
                n = self._sock.recv_into(self._rbuf)
                break
            except (BlockingIOError, InterruptedError):
                if wait == 0 or not _wait(self._sock, _IN, wait):
                    return False
                wait = 0
            except OSError as e:
                raise _ReadFailed(f"connection error: {e}") from None
        if not n:
            raise _ReadFailed("the connection was closed")
        self.wire.received += n
        self._process(self._rview[:n])
        return True

    def _process(self, data: bytes | memoryview) -> None:
        """Decrypt received bytes and deliver the messages they complete."""
        try:
            msgs, ended = self._decrypt(data)
            self.wire.frames_received = self._parser.frames
            if msgs:
                for msg in msgs:
                    msg.wire_bytes = self.wire.received - self._last_wire
                    self._last_wire = self.wire.received
                self._deliver(msgs)
        except ssl.SSLError as e:
            raise _ReadFailed(f"TLS error: {_reason(e)}") from None
        except FrameError as e:
            log.warning("%s: %s; closing the link", self.peer, e)
            raise _ReadFailed(f"rejected a frame: {e}") from None
        except (TimeoutError, OSError) as e:  # answering the peer's TLS messages
            raise _ReadFailed(f"connection error: {e}") from None
        if ended:
            raise _ReadFailed("the connection was closed")

    def _decrypt(self, data: bytes | memoryview) -> tuple[list[Message], bool]:
        """Decrypt received bytes into the frame parser: the messages they complete, and
        whether the peer closed TLS (close_notify). The plaintext goes where the parser
        wants it, e.g. straight into the arrays of the message being received."""
        msgs: list[Message] = []
        ended = False
        parser = self._parser
        with self._ssl_lock:
            if len(data):
                self._in.write(data)
            while True:
                buf = parser.buffer()
                try:
                    n = self._ssl.read(CHUNK, buf)  # (fewer if buf is shorter)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    ended = True
                    break
                if not n:
                    ended = True
                    break
                done = parser.advance(n)
                if done:
                    msgs += done
                if not self._in.pending and not self._ssl.pending():
                    break  # all decrypted (saves a failing read)
            pending = self._out.pending
        if pending and not ended and self._send_lock.acquire(blocking=False):
            try:  # TLS has something to say (e.g. a key update); else the sender flushes it
                self._write(b"")
            finally:
                self._send_lock.release()
        return msgs, ended

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
            if self._out.pending:  # written by a reader meanwhile
                self._write(b"")

    def _write(self, plain: bytes | memoryview) -> None:
        with self._ssl_lock:
            if len(plain):
                self._ssl.write(plain)
            data = self._out.read()
        if data:
            self._sock_send(data)

    # -- reading: one reader at a time ----------------------------------------------------
    def _take_role(self) -> bool:
        with self._lock:
            if self._reading:
                return False
            self._reading = True
            return True

    def _drop_role(self, lease: bool = False) -> None:
        with self._lock:
            self._reading = False
            if lease:
                self._lease_until = time.monotonic() + READ_LEASE_S
            if self._waiters:
                self._msg_cv.notify_all()

    def _read_loop(self) -> None:
        """The background reader: reads while no consumer does (see the module docstring)."""
        while True:
            with self._lock:
                while self._closed is None:
                    now = time.monotonic()
                    if self._reading or self._waiters:
                        self._bg_cv.wait(READ_LEASE_S)
                    elif self._forward is None and self._lease_until > now:
                        self._bg_cv.wait(self._lease_until - now)
                    elif self._forward is None and len(self._inbox) >= INBOX_MAX:
                        self._bg_cv.wait(READ_LEASE_S)  # until a consumer takes some
                    else:
                        break
                if self._closed is not None:
                    return
                self._reading = True
            failed = None
            try:
                self._read_step(BG_WAIT_S)
            except _ReadFailed as e:
                failed = e.args[0]
            finally:
                self._drop_role()
            if failed is not None:
                self.close(failed, _from_reader=True)
                return

    # -- messages ---------------------------------------------------------------------------
    def send_msg(self, kind: str, meta: dict[str, Any] | None = None, arrays=()) -> None:
        """Send one message (in as many frames as the frame limit needs); raises PartyError
        if the link is closed or stalls."""
        if self._closed is not None:
            raise PartyError(f"link to {self.peer} is closed: {self._closed}")
        try:
            bufs, frames = encode_message(kind, meta or {}, list(arrays), self.send_frame_bytes)
        except ValueError as e:
            raise PartyError(f"cannot send to {self.peer}: {e}") from None
        try:
            self._send_raw(*bufs)
        except _ReadFailed as e:  # reading while the socket was full: the link is over
            why = self._closed or e.args[0]
            self.close(why, _from_reader=True)
            raise PartyError(f"{self.peer}: {why}") from None
        except ssl.SSLError as e:
            why = self._closed or f"TLS error: {_reason(e)}"  # a reader may know better
            self.close(why)
            raise PartyError(f"{self.peer}: {why}") from None
        except (TimeoutError, OSError) as e:
            why = self._closed or ("send stalled" if isinstance(e, TimeoutError) else str(e))
            self.close(why)
            raise PartyError(f"{self.peer}: {why}") from None
        self.wire.frames_sent += frames

    def poll(self, timeout: float | None) -> Message | None:
        """The next message, or None after `timeout` s; raises PartyError if the link closed.

        Reads the socket in this thread when no other thread is reading it."""
        end = None if timeout is None else time.monotonic() + max(0.0, timeout)
        tried = False
        while True:
            with self._lock:
                item = self._inbox.popleft() if self._inbox else None
                if isinstance(item, _Closed):
                    self._inbox.appendleft(item)  # stays closed for every later reader
                elif item is None:
                    now = time.monotonic()
                    self._lease_until = now + READ_LEASE_S
                    left = None if end is None else end - now
                    if self._closed is not None:
                        raise PartyError(f"{self.peer}: {self._closed}")
                    if left is not None and left <= 0 and tried:
                        return None
                    if self._reading:
                        if left is not None and left <= 0:
                            return None
                        self._waiters += 1
                        try:
                            self._msg_cv.wait(left)
                        finally:
                            self._waiters -= 1
                        continue
                    self._reading = True
            if item is not None:
                if isinstance(item, _Closed):
                    raise PartyError(f"{self.peer}: {item.reason}")
                if item.kind == "abort":
                    raise PartyError(f"{self.peer} failed: {item.meta.get('reason', '?')}")
                return item
            failed = None
            try:
                self._read_step(BG_WAIT_S if left is None else max(0.0, left))
            except _ReadFailed as e:
                failed = e.args[0]
            finally:
                self._drop_role(lease=True)
                tried = True
            if failed is not None:
                self.close(failed, _from_reader=True)

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

    def _deliver(self, items: list[Message | _Closed]) -> None:
        with self._lock:
            if self._forward is None:
                self._inbox.extend(items)
                if self._waiters:
                    self._msg_cv.notify_all()
            else:
                q, tag = self._forward
                for item in items:
                    q.put((tag, item))

    def forward_to(self, q: queue.Queue, tag: Any) -> None:
        """Deliver this link's messages, and a `LinkClosed` at the end, to `q` as (tag, item).

        For waiting on several links at once; `poll` and `recv_msg` no longer see them."""
        with self._lock:
            while self._inbox:
                q.put((tag, self._inbox.popleft()))
            self._forward = (q, tag)
            self._bg_cv.notify_all()  # the background reader reads from now on

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

    def limit_frames(
        self,
        max_frame_bytes: int,
        max_message_bytes: int | None = None,
        max_header_bytes: int | None = None,
    ) -> None:
        """Change the largest frame this end accepts, the largest message split over frames
        (default: one frame's worth) and the largest frame header (default: unchanged), e.g.
        once the link's kind is known."""
        self._parser.max_frame_bytes = max_frame_bytes
        self._parser.max_message_bytes = (
            max_frame_bytes if max_message_bytes is None else max_message_bytes
        )
        if max_header_bytes is not None:
            self._parser.max_header_bytes = max_header_bytes

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
        self._deliver([_Closed(reason)])
        with self._lock:
            self._bg_cv.notify_all()
            self._msg_cv.notify_all()
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


# TLS alerts about certificates: what the peer found wrong with this side's certificate chain
_ALERTS = {
    "CERTIFICATE_EXPIRED": "the peer says this side's certificate or its CA has expired",
    "UNKNOWN_CA": "the peer does not trust this side's CA (is it another cluster's?)",
    "BAD_CERTIFICATE": "the peer rejected this side's certificate",
    "CERTIFICATE_UNKNOWN": "the peer could not verify this side's certificate",
    "UNSUPPORTED_CERTIFICATE": "the peer cannot use this side's certificate",
    "CERTIFICATE_REQUIRED": "the peer requires a certificate and this side sent none",
}
_EXPIRED_HINT = "run `mpcc cluster init` again and distribute the new files"
_X509_EXPIRED, _X509_NOT_YET_VALID = 10, 9  # OpenSSL's X509_V_ERR_CERT_HAS_EXPIRED and _NOT_YET


def _reason(e: ssl.SSLError) -> str:
    """An SSL error in words: OpenSSL's reason, what it means, and for expiry what to do."""
    reason = getattr(e, "reason", None) or str(e)
    detail = getattr(e, "verify_message", None)  # SSLCertVerificationError: why verify failed
    code = getattr(e, "verify_code", None)
    if detail:
        text = f"{reason}: {detail}"
        if code == _X509_EXPIRED or "expired" in detail:
            return f"{text}; {_EXPIRED_HINT}"
        if code == _X509_NOT_YET_VALID:
            return f"{text}; check the clocks of both machines"
        return text
    _, alert, name = reason.partition("_ALERT_")
    if alert and name in _ALERTS:
        text = f"{_ALERTS[name]} ({reason})"
        return f"{text}; {_EXPIRED_HINT}" if name == "CERTIFICATE_EXPIRED" else text
    return reason


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

    Connecting and the TLS handshake must end within the timeout (the serving `timeout_s`
    by default); so must the answer to the hello. Returns the channel and the meta of the
    peer's welcome; raises PartyError or LinkRefused.
    """
    addr = cfg.address(target)
    t = cfg.serving.timeout_s if timeout is None else timeout
    deadline = time.monotonic() + t
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
        max_message_bytes=cfg.serving.max_message_bytes,  # the peer is a party (checked below)
        label=target.upper() if target != "dealer" else "dealer",
        deadline=deadline,
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
