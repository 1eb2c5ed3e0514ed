"""TLS 1.3 links with mutual authentication and role pinning, as a `Channel`.

The contexts are `tlscontext`'s (the peer's certificate required both ways, its role the
identity); the TLS records are `tlsstream.TlsStream`'s, over memory BIOs on a non-blocking
socket; links are opened by `links.dial` and `links.greet`. Payload bytes (the arrays) are
counted by `Channel` as in the in-process transport; `tlsstream.WireTraffic` adds the
framing and TLS overhead on top.

Reading: whoever wants a message reads the socket itself (one reader at a time). A thread
waiting in `poll`/`recv_msg` takes the reader role, waits for the socket, decrypts and
parses, so a protocol round costs no hand-off between threads. A background thread reads
only while no consumer has asked for a message for `READ_LEASE_S` (and always for links
whose messages are forwarded to a queue), so a closed link is still noticed and its
`on_close` callbacks run when nobody is reading (with `reader=False`, from `start_reader`);
it stops while `INBOX_MAX` messages wait unread, so a peer that sends faster than it is read
is held back by TCP. A sender whose socket is full reads too while it waits, so two ends
that send large messages at once never block each other.

Large messages are split into frames no larger than the frame limit (`wire.encode_message`)
and reassembled by the receiver, which bounds their total separately (`max_message_bytes`).
"""

from __future__ import annotations

import logging
import math
import queue
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpcc.errors import PartyError
from mpcc.runtime.transport import Channel
from mpcc.serving.certs import identity_from_peercert, role_from_peercert, serial_from_peercert
from mpcc.serving.frameparser import FrameParser
from mpcc.serving.linkend import LinkEnd
from mpcc.serving.messages import Abort, ErrorReply
from mpcc.serving.priority import lower_thread
from mpcc.serving.tlscontext import ssl_reason
from mpcc.serving.tlsstream import CHUNK, POLL_IN, POLL_OUT, TlsStream, wait_for
from mpcc.serving.wire import FrameError, Message, encode_message

log = logging.getLogger("mpcc.serving.tls")

READ_LEASE_S = 0.1  # the background reader stays parked this long after a consumer read
BG_WAIT_S = 1.0  # the background reader's longest single wait for the socket
# Messages the background reader lets wait unread before it stops reading: a peer that sends
# faster than its messages are taken (a client over its rate) is then held back by TCP, not
# queued for in memory (the soak benchmark's `info` flood grew P0's RSS 55% in 60 s).
INBOX_MAX = 256
ROUND_LAYOUTS = 4096  # frame prefixes of round messages a link keeps, by layout


class _ReadFailed(Exception):
    """Reading ended the link; `args[0]` says why."""


@dataclass(frozen=True)
class LinkClosed:
    """Delivered to a forwarding queue (see `TlsChannel.forward_to`) when a link closes."""

    reason: str


_Closed = LinkClosed


@dataclass(frozen=True)
class Detached:
    """A link taken from its `TlsChannel` (see `TlsChannel.detach`)."""

    stream: TlsStream
    parser: FrameParser
    unread: list[Message]
    on_close: list[Callable[[str], None]]


class TlsChannel(LinkEnd, Channel):
    """One end of a mutually authenticated TLS 1.3 link to a peer of a pinned role.

    `max_frame_bytes` bounds each frame this end accepts, `max_message_bytes` a message split
    over several frames (default: one frame's worth); `send_frame_bytes` is the largest frame
    this end sends (default: `max_frame_bytes`). The TLS handshake must end by `deadline`
    (a `time.monotonic()` value; default: `timeout` s from now), however the peer paces it.
    With `reader=False` the background reader starts only at `start_reader()`: a link that
    may yet be detached is read by its consumers alone until then.
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
        reader: bool = True,
    ) -> None:
        super().__init__(name, label or "peer", timeout)
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
        self._reader_nice = 0  # see `lower_reader`
        self._rbuf = bytearray(CHUNK)  # what the socket gave the reader (reader role only)
        self._rview = memoryview(self._rbuf)
        self.send_frame_bytes = send_frame_bytes or max_frame_bytes
        self._round_prefixes: dict[tuple, bytes] = {}  # see `_put`
        self._closed: str | None = None
        self._close_lock = threading.Lock()
        self._on_close: list[Callable[[str], None]] = []
        self._last_wire = 0
        self._tls = TlsStream(
            sock,
            ctx,
            server=server,
            timeout=timeout,
            deadline=time.monotonic() + timeout if deadline is None else deadline,
            stall_s=lambda: self.timeout,
            wait_to_send=self._wait_to_send,
        )
        self._sock = sock
        self.wire = self._tls.wire
        self.peer_addr = self._tls.peer_addr
        cert = self._tls.peercert()
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
        self._reader: threading.Thread | None = None
        if reader:
            self.start_reader()

    def start_reader(self) -> None:
        """Start the background reader (once; see the module docstring)."""
        if self._reader is None:
            self._reader = threading.Thread(
                target=self._read_loop, name=f"mpcc-read-{self.peer}", daemon=True
            )
            self._reader.start()

    def lower_reader(self, nice: int) -> None:
        """Run the background reader `nice` steps nicer (`mpcc.serving.priority`): for a
        link that carries material, which must not take the cores from the rounds."""
        self._reader_nice = nice
        th = self._reader
        if th is not None and th.native_id is not None and th.is_alive():  # (ids are reused)
            lower_thread(th.native_id, nice)

    # -- TLS plumbing ---------------------------------------------------------------------
    def _wait_to_send(self, left: float) -> None:
        """A send waits up to `left` s for the socket to take more: it reads meanwhile if
        no other thread does, so two ends that send large messages at once never block."""
        reader = self._take_role()
        try:
            ready = wait_for(self._sock, POLL_OUT | (POLL_IN if reader else 0), left)
            if reader and ready & POLL_IN and not ready & POLL_OUT:
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
                if wait == 0 or not wait_for(self._sock, POLL_IN, wait):
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
            msgs, ended = self._tls.decrypt(data, self._parser)
            self.wire.frames_received = self._parser.frames
            if msgs:
                for msg in msgs:
                    msg.wire_bytes = self.wire.received - self._last_wire
                    self._last_wire = self.wire.received
                self._deliver(msgs)
        except ssl.SSLError as e:
            raise _ReadFailed(f"TLS error: {ssl_reason(e)}") from None
        except FrameError as e:
            log.warning("%s: %s; closing the link", self.peer, e)
            raise _ReadFailed(f"rejected a frame: {e}") from None
        except (TimeoutError, OSError) as e:  # answering the peer's TLS messages
            raise _ReadFailed(f"connection error: {e}") from None
        if ended:
            raise _ReadFailed("the connection was closed")

    def _send_raw(self, *bufs: bytes | memoryview) -> None:
        """Encrypt and send bytes as they are (whole frames, one unit)."""
        self._tls.send(*bufs)

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
        lower_thread(threading.get_native_id(), self._reader_nice)
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
        bufs, frames = self._encode(kind, meta or {}, list(arrays))
        self._send_frames(bufs, frames)

    def _encode(self, kind: str, meta: dict[str, Any], arrays: list[np.ndarray]) -> tuple:
        if self._closed is not None:
            raise PartyError(f"link to {self.peer} is closed: {self._closed}")
        try:
            return encode_message(kind, meta, arrays, self.send_frame_bytes)
        except ValueError as e:
            raise PartyError(f"cannot send to {self.peer}: {e}") from None

    def _send_frames(self, bufs: list, frames: int) -> None:
        """Send whole frames; raises PartyError if the link is closed or stalls."""
        try:
            self._send_raw(*bufs)
        except _ReadFailed as e:  # reading while the socket was full: the link is over
            why = self._closed or e.args[0]
            self.close(why, _from_reader=True)
            raise PartyError(f"{self.peer}: {why}") from None
        except ssl.SSLError as e:
            why = self._closed or f"TLS error: {ssl_reason(e)}"  # a reader may know better
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
                if item.kind == Abort.KIND:
                    raise PartyError(f"{self.peer} failed: {Abort.lenient(item.meta).reason}")
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
        if msg.kind == ErrorReply.KIND:
            raise PartyError(f"{self.peer}: {ErrorReply.lenient(msg.meta).msg}")
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
        self.start_reader()  # (a channel made with reader=False has none yet)

    # -- Channel interface (protocol rounds) ------------------------------------------------
    def _put(self, arrays: list[np.ndarray]) -> None:
        """A round's message: its frame's prefix depends only on the arrays' layout, so it is
        kept per layout and the arrays follow it as they are (a message over one frame, or
        of a new layout, takes `send_msg`'s way)."""
        key = tuple([(a.dtype.str, a.shape) for a in arrays])
        prefix = self._round_prefixes.get(key)
        if prefix is None or self._closed is not None:
            bufs, frames = self._encode("data", {}, arrays)
            if frames == 1 and len(self._round_prefixes) < ROUND_LAYOUTS:
                self._round_prefixes[key] = bytes(bufs[0])
            self._send_frames(bufs, frames)
            return
        self._send_frames([prefix, *[a for a in arrays if a.nbytes]], 1)

    def _get(self) -> list[np.ndarray]:
        return self.recv_msg(expect="data").arrays

    def abort(self, reason: str) -> None:
        try:
            Abort(reason).send(self)
        except PartyError:
            pass

    # -- lifecycle ------------------------------------------------------------------------
    def detach(self, wait_s: float = 2.0) -> Detached:
        """Give the link to another owner (an event loop's task): its TLS stream (disowned:
        see `TlsStream.disown`), frame parser, messages read and not taken, and close
        callbacks. The channel is closed without closing the socket and its reader thread
        ends. PartyError if it closed first, or its reader is still in a read after
        `wait_s` (a reader's wait for the socket lasts up to `BG_WAIT_S`: a channel meant
        to be detached is made with `reader=False`, and then nothing waits)."""
        end = time.monotonic() + wait_s
        with self._lock:
            self._lease_until = math.inf  # the background reader stays parked
            while self._reading:  # ... once it ends the read it is in
                if time.monotonic() > end:
                    raise PartyError(f"{self.peer}: its reader did not let go of the link")
                self._waiters += 1
                try:
                    self._msg_cv.wait(0.05)
                finally:
                    self._waiters -= 1
            self._reading = True
        with self._close_lock:
            if self._closed is not None:
                raise PartyError(f"{self.peer}: {self._closed}")
            self._closed = "detached"
            callbacks, self._on_close = self._on_close, []
        with self._lock:
            self._bg_cv.notify_all()
            unread = [m for m in self._inbox if isinstance(m, Message)]
            self._inbox.clear()
        if self._reader is not None:
            self._reader.join(wait_s)
        self._tls.disown()
        return Detached(self._tls, self._parser, unread, callbacks)

    def close(self, reason: str = "closed by this side", _from_reader: bool = False) -> None:
        callbacks = self._mark_closed(reason)
        if callbacks is None:
            return
        self._deliver([_Closed(reason)])
        with self._lock:
            self._bg_cv.notify_all()
            self._msg_cv.notify_all()
        self._tls.close(notify=not _from_reader)
        self._closed_callbacks(callbacks, reason)
