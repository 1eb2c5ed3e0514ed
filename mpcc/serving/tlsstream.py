"""TLS 1.3 over memory BIOs (`ssl.SSLObject`) on one non-blocking socket: the handshake,
encrypting and sending, and decrypting received bytes into a frame parser.

Memory BIOs let one thread decrypt while another encrypts and sends, bound every wait by an
explicit deadline, and let `WireTraffic` count the exact bytes on the wire. `TlsStream`
knows nothing of messages or of who reads: `tls.TlsChannel` builds on it.
"""

from __future__ import annotations

import math
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from mpcc.errors import PartyError
from mpcc.serving.config import format_address
from mpcc.serving.frameparser import FrameParser
from mpcc.serving.tlscontext import ssl_reason
from mpcc.serving.wire import Message

CHUNK = 1 << 18  # plaintext bytes encrypted (and sent) per step; bytes read per recv

POLL_IN = select.POLLIN | select.POLLPRI
POLL_OUT = select.POLLOUT


class LinkRefused(PartyError):
    """The peer's certificate or its hello does not fit the link."""


class HandshakeEOF(PartyError):
    """The peer hung up before the TLS handshake ended (e.g. a port probe)."""


class HandshakeTimeout(PartyError):
    """The TLS handshake (or the hello after it) did not finish by its deadline."""


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


def wait_for(sock: socket.socket, events: int, timeout: float | None) -> int:
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


def _owned_elsewhere(*_args: object) -> float:
    raise AssertionError("a disowned TLS stream was asked to send")


class TlsStream:
    """A TLS 1.3 connection on a non-blocking socket, handshaken by `deadline`.

    `stall_s()` is how long a send may make no progress (read at each send: the owner may
    change it); `wait_to_send(left)` waits up to `left` s for the socket to take more bytes
    (the channel reads meanwhile, so two ends that send at once cannot block each other).
    Raises LinkRefused, HandshakeEOF, HandshakeTimeout or PartyError (the socket closed)
    if the handshake fails."""

    def __init__(
        self,
        sock: socket.socket,
        ctx: ssl.SSLContext,
        *,
        server: bool,
        timeout: float,
        deadline: float,
        stall_s: Callable[[], float],
        wait_to_send: Callable[[float], None],
    ) -> None:
        self.sock = sock
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._ssl = ctx.wrap_bio(self._in, self._out, server_side=server)
        self._ssl_lock = threading.Lock()  # the SSLObject and its BIOs
        self.send_lock = threading.Lock()  # keeps frames whole and ciphertext in order
        self._stall_s = stall_s
        self._wait_to_send = wait_to_send
        self.wire = WireTraffic()
        try:
            self.peer_addr = format_address(sock.getpeername()[:2])
        except OSError:
            self.peer_addr = "?"
        try:
            _tune(sock, timeout)
        except OSError as e:
            sock.close()
            raise PartyError(f"connection from {self.peer_addr} failed: {e}") from None
        self._handshake(deadline)

    def peercert(self) -> dict:
        return self._ssl.getpeercert()

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
                    if not wait_for(self.sock, POLL_IN, left):
                        continue
                    try:
                        data = self.sock.recv(CHUNK)
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
            self.sock.close()
            raise LinkRefused(
                f"TLS handshake with {self.peer_addr} failed: {ssl_reason(e)}"
            ) from None
        except (HandshakeEOF, HandshakeTimeout):
            self.sock.close()
            raise
        except TimeoutError:
            self.sock.close()
            raise HandshakeTimeout(
                f"the TLS handshake with {self.peer_addr} did not finish within "
                f"{max(budget, 0):.2g} s"
            ) from None
        except OSError as e:
            self.sock.close()
            raise PartyError(f"TLS handshake with {self.peer_addr} failed: {e}") from None
        self.wire.handshake = self.wire.sent + self.wire.received

    def _flush_handshake(self, deadline: float) -> None:
        data = self._out.read()
        if data:
            self._sock_send(data, deadline=deadline, read=False)

    def _sock_send(self, data: bytes, deadline: float | None = None, read: bool = True) -> None:
        """Send all of `data` on the socket.

        Fails with TimeoutError at `deadline`, or (None) once no byte went out for
        `stall_s()` s. While the socket is full, `wait_to_send` waits (`read`), else this
        thread only waits for room."""
        view = memoryview(data)
        stall = self._stall_s() if deadline is None else 0.0
        limit = time.monotonic() + stall if deadline is None else deadline
        while len(view):
            try:
                n = self.sock.send(view)
            except (BlockingIOError, InterruptedError):
                n = 0
            if n:
                self.wire.sent += n
                view = view[n:]
                if deadline is None:
                    limit = time.monotonic() + stall
                continue
            left = limit - time.monotonic()
            if left <= 0:
                raise TimeoutError("send stalled")
            if read:
                self._wait_to_send(left)
            else:
                wait_for(self.sock, POLL_OUT, left)

    def decrypt(self, data: bytes | memoryview, parser: FrameParser) -> tuple[list[Message], bool]:
        """Decrypt received bytes into the frame parser: the messages they complete, and
        whether the peer closed TLS (close_notify). The plaintext goes where the parser
        wants it, e.g. straight into the arrays of the message being received."""
        msgs: list[Message] = []
        ended = False
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
        if pending and not ended and self.send_lock.acquire(blocking=False):
            try:  # TLS has something to say (e.g. a key update); else the sender flushes it
                self.write(b"")
            finally:
                self.send_lock.release()
        return msgs, ended

    def send(self, *bufs: bytes | memoryview) -> None:
        """Encrypt and send buffers as one unit (see `records`); `send_lock` keeps frames
        whole and ciphertext in order."""
        with self.send_lock:
            for data in self.records(bufs):
                if data:
                    self._sock_send(data)
            if self._out.pending:  # written by a reader meanwhile
                self.write(b"")

    def records(self, bufs: Iterable[bytes | memoryview]) -> Iterator[bytes]:
        """The buffers as TLS records, about `CHUNK` plaintext bytes at a time, small ones
        coalesced (one record, one system call), and at the end what TLS itself has to send;
        for the caller to send in order (it holds `send_lock`, or owns the stream)."""
        small = bytearray()
        for b in bufs:
            view = memoryview(b).cast("B")
            if len(small) + len(view) <= CHUNK:
                small += view
                continue
            if small:
                yield self.encrypt(small)
                small = bytearray()
            for start in range(0, len(view), CHUNK):
                yield self.encrypt(view[start : start + CHUNK])
        yield self.encrypt(small)

    def write(self, plain: bytes | memoryview) -> None:
        """Encrypt `plain` and send the records (the caller holds `send_lock`)."""
        data = self.encrypt(plain)
        if data:
            self._sock_send(data)

    def encrypt(self, plain: bytes | bytearray | memoryview) -> bytes:
        """`plain` as TLS records, and whatever TLS itself has to send, for the caller to
        send in order (it holds `send_lock`, or owns the stream: see `TlsChannel.detach`)."""
        with self._ssl_lock:
            if len(plain):
                self._ssl.write(plain)
            return self._out.read()

    def close_notify(self) -> bytes:
        """TLS's close_notify, for the caller to send (empty if TLS cannot say it now)."""
        with self._ssl_lock:
            try:
                self._ssl.unwrap()  # raises SSLWantReadError once the alert is written: the
            except (ssl.SSLError, ValueError):  # peer's own close_notify has not come yet
                pass
            return self._out.read()

    def disown(self) -> None:
        """From now on nobody but the caller sends on this stream, and it never sends by
        itself: `send_lock` is held for good, and the callbacks into the old owner cut."""
        self.send_lock.acquire()
        self._stall_s = self._wait_to_send = _owned_elsewhere

    def close(self, notify: bool) -> None:
        """Close the socket; first, if `notify`, try briefly to send TLS's close_notify."""
        if notify:
            try:
                with self._ssl_lock:
                    self._ssl.unwrap()
            except (ssl.SSLError, ValueError):
                pass
            data = self._out.read()
            if data and self.send_lock.acquire(timeout=0.1):
                try:
                    self.sock.settimeout(0.1)
                    self.sock.sendall(data)
                except OSError:
                    pass
                finally:
                    self.send_lock.release()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
