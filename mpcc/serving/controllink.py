"""A greeted control link (a client's, or the owner's deploy link) as a task of the party's
event loop (`controlloop.ControlLoop`), instead of the threads of a `TlsChannel`.

The listener handshakes and greets every link on a synchronous `TlsChannel` (its bounded
handshake pool, `handshakes`), then `ControlLink.adopt` moves a control link's socket and
TLS state -- the `TlsStream` (an `ssl.SSLObject` over memory BIOs), the frame parser with
whatever it holds, the messages already read -- to the loop (the listener's channels start
no reader thread, so none has to let go). From then on the loop waits for the socket,
reads, decrypts and parses, and the link's sends encrypt and write without blocking, each
bounded by its stall timeout.

Reading stops while a message read is not taken (`recv`): a peer that sends faster than
its messages are handled is held back by TCP, not queued for.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from mpcc.errors import PartyError
from mpcc.serving.linkend import LinkEnd
from mpcc.serving.messages import Abort, ControlMessage, ErrorReply
from mpcc.serving.tls import TlsChannel
from mpcc.serving.tlscontext import ssl_reason
from mpcc.serving.wire import FrameError, Message, encode_message

if TYPE_CHECKING:
    from mpcc.serving.controlloop import ControlLoop

log = logging.getLogger("mpcc.serving.controllink")
ADOPT_WAIT_S = 2.0  # longest wait for a channel's reader thread, if it has one, to let go
# Bytes read per step: the messages one read completes wait in the link's inbox until taken
# (a client's are paced one by one), so this bounds what a flooding client makes it hold.
READ_BYTES = 1 << 16
YIELD_EVERY = 16  # messages `recv` returns in a row without letting the loop run others


class ControlLink(LinkEnd):
    """One end of a control link, served by the control loop. `recv`, `send_msg` and `send`
    are coroutines of the loop; `close`, `on_close` and `limit_frames` may be called from
    any thread. The peer's names (`peer`, `peer_role`, `peer_identity`, `peer_serial`) and
    the wire counters (`wire`) are the channel's."""

    def __init__(self, ch: TlsChannel, control: ControlLoop) -> None:
        """Use `adopt`: this takes over what `TlsChannel.detach` gives up."""
        self.control = control
        self.peer, self.peer_role, self.peer_addr = ch.peer, ch.peer_role, ch.peer_addr
        self.peer_identity, self.peer_serial = ch.peer_identity, ch.peer_serial
        self.timeout = ch.timeout  # a send that makes no progress this long fails
        self.send_frame_bytes = ch.send_frame_bytes
        link = ch.detach(ADOPT_WAIT_S)
        self._tls, self._parser, self._on_close = link.stream, link.parser, link.on_close
        inbox = link.unread
        self.wire = self._tls.wire
        self._sock = self._tls.sock
        self._inbox: deque[Message] = deque(inbox)
        self._rbuf = bytearray(READ_BYTES)
        self._closed: str | None = None
        self._close_lock = threading.Lock()
        self._send_lock: asyncio.Lock | None = None  # made in the loop, at the first send
        self._waiters: set[asyncio.Future] = set()
        self._last_wire = self.wire.received
        self._unyielded = 0  # messages returned without waiting for the socket

    @classmethod
    def adopt(cls, ch: TlsChannel, control: ControlLoop) -> ControlLink:
        """Move a greeted channel to the control loop (the channel is done with after)."""
        return cls(ch, control)

    # -- state --------------------------------------------------------------------------------
    def close(self, reason: str = "closed by this side") -> None:
        """Close the link (from any thread): its waits end, its socket closes in the loop."""
        callbacks = self._mark_closed(reason)
        if callbacks is None:
            return
        self.control.call(self._teardown)
        self._closed_callbacks(callbacks, reason)

    def _teardown(self) -> None:
        """In the loop: wake the waits, say close_notify if no send is under way and the
        socket takes it at once, and close the socket."""
        fd = self._sock.fileno()
        if fd >= 0:
            self.control.loop.remove_reader(fd)
            self.control.loop.remove_writer(fd)
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(False)
        if self._send_lock is None or not self._send_lock.locked():  # not amid a record
            try:
                self._sock.send(self._tls.close_notify())
            except OSError:
                pass
        self._tls.close(notify=False)

    # -- waiting for the socket -----------------------------------------------------------
    async def _ready(self, write: bool, timeout: float | None) -> bool:
        """Wait until the socket is readable (writable); False after `timeout` s or when
        the link closed meanwhile."""
        if self._closed is not None:
            return False
        loop = self.control.loop
        fut = loop.create_future()
        fd = self._sock.fileno()
        (loop.add_writer if write else loop.add_reader)(fd, _settle, fut, True)
        timer = None if timeout is None else loop.call_later(timeout, _settle, fut, False)
        self._waiters.add(fut)
        try:
            return await fut
        finally:
            self._waiters.discard(fut)
            if timer is not None:
                timer.cancel()
            if self._closed is None:
                (loop.remove_writer if write else loop.remove_reader)(fd)

    # -- reading --------------------------------------------------------------------------
    def _read_step(self) -> bool:
        """Read what the socket has, decrypt it, and queue the messages it completes; closes
        the link if the peer closed it or sent something bad. False if nothing had come."""
        try:
            n = self._sock.recv_into(self._rbuf)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as e:
            self.close(f"connection error: {e}")
            return True
        if not n:
            self.close("the connection was closed")
            return True
        self.wire.received += n
        try:
            msgs, ended = self._tls.decrypt(memoryview(self._rbuf)[:n], self._parser)
        except ssl.SSLError as e:
            self.close(f"TLS error: {ssl_reason(e)}")
            return True
        except FrameError as e:
            log.warning("%s: %s; closing the link", self.peer, e)
            self.close(f"rejected a frame: {e}")
            return True
        self.wire.frames_received = self._parser.frames
        for msg in msgs:
            msg.wire_bytes = self.wire.received - self._last_wire
            self._last_wire = self.wire.received
        self._inbox.extend(msgs)
        if ended:
            self.close("the connection was closed")
        return True

    async def recv(self, timeout: float | None) -> Message | None:
        """The next message, or None after `timeout` s; PartyError once the link is closed
        (messages read and not yet taken are dropped then) or the peer aborted."""
        end = None if timeout is None else time.monotonic() + timeout
        self._unyielded += 1
        if self._unyielded >= YIELD_EVERY:  # a link whose peer keeps sending lets others run
            self._unyielded = 0
            await asyncio.sleep(0)
        reads = 0
        while not self._inbox or self._closed is not None:
            if self._closed is not None:  # what it sent before is not acted on any more,
                why = next((m for m in self._inbox if m.kind == Abort.KIND), None)
                if why is not None:  # ... but a last word says why it ended
                    raise PartyError(f"{self.peer} failed: {Abort.lenient(why.meta).reason}")
                raise PartyError(f"{self.peer}: {self._closed}")
            left = None if end is None else end - time.monotonic()
            if self._read_step():  # what has arrived already, without waiting for it
                reads += 1
                if reads % YIELD_EVERY == 0:  # a large message coming in lets others run
                    await asyncio.sleep(0)
                continue
            if left is not None and left <= 0:
                return None
            await self._ready(False, left)
            self._unyielded = 0
        msg = self._inbox.popleft()
        if msg.kind == Abort.KIND:
            raise PartyError(f"{self.peer} failed: {Abort.lenient(msg.meta).reason}")
        return msg

    async def recv_msg(self, timeout: float, expect: str | None = None) -> Message:
        """The next message within `timeout` s, of kind `expect` if given; PartyError
        otherwise (an error reply raises with its text)."""
        msg = await self.recv(timeout)
        if msg is None:
            raise PartyError(f"{self.peer} sent nothing for {timeout:g} s")
        if msg.kind == ErrorReply.KIND:
            raise PartyError(f"{self.peer}: {ErrorReply.lenient(msg.meta).msg}")
        if expect is not None and msg.kind != expect:
            raise PartyError(f"{self.peer} sent {msg.kind!r} where {expect!r} was expected")
        return msg

    # -- sending --------------------------------------------------------------------------
    async def send(self, msg: ControlMessage, arrays: list[Any] | tuple = ()) -> None:
        """Send a typed message (see `send_msg`)."""
        await self.send_msg(msg.KIND, msg.to_meta(), arrays)

    async def send_msg(self, kind: str, meta: dict[str, Any] | None = None, arrays=()) -> None:
        """Send one message (as many frames as the frame limit needs); PartyError if the
        link is closed or a send makes no progress for `timeout` s (the link is closed)."""
        await self.send_msgs([(kind, meta, arrays)])

    async def send_msgs(self, msgs: list[tuple[str, dict[str, Any] | None, Any]]) -> None:
        """Send several messages at once, in as few TLS records and system calls as they
        fit; a message that cannot be encoded is logged and left out. PartyError as
        `send_msg`."""
        if self._closed is not None:
            raise PartyError(f"link to {self.peer} is closed: {self._closed}")
        bufs: list[Any] = []
        frames = 0
        for kind, meta, arrays in msgs:
            try:
                b, n = encode_message(kind, meta or {}, list(arrays), self.send_frame_bytes)
            except ValueError as e:
                log.warning("cannot send a %s to %s: %s", kind, self.peer, e)
                continue
            bufs += b
            frames += n
        if self._send_lock is None:
            self._send_lock = asyncio.Lock()
        async with self._send_lock:
            for data in self._tls.records(bufs):
                await self._send_bytes(data)
        self.wire.frames_sent += frames

    async def _send_bytes(self, data: bytes) -> None:
        view = memoryview(data)
        while len(view):
            if self._closed is not None:
                raise PartyError(f"{self.peer}: {self._closed}")
            try:
                n = self._sock.send(view)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                self.close(str(e))
                raise PartyError(f"{self.peer}: {self._closed}") from None
            if n:
                self.wire.sent += n
                view = view[n:]
            elif not await self._ready(True, self.timeout) and self._closed is None:
                self.close("send stalled")


def _settle(fut: asyncio.Future, ready: bool) -> None:
    if not fut.done():
        fut.set_result(ready)
