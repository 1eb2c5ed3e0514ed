"""`FrameParser`: a byte stream into messages (the frames of `mpcc.serving.wire`), checking
every length against its limit before anything is allocated for it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpcc.serving.wire import (
    FRAME_HEAD,
    MAGIC,
    META_HEAD,
    PARTY_HEADER_MAX,
    FrameError,
    Message,
    arrays_of,
    check_header_length,
    data_size,
    json_header,
    message_head,
)

_CACHE_ENTRIES = 1024  # headers of meta-less messages, by their bytes
_CACHE_HEADER_MAX = 1024  # longest header whose parse is cached
_PARSED: dict[bytes, tuple[str, list[tuple[np.dtype, tuple]], int]] = {}  # kind, specs, size


@dataclass
class _Split:
    """A split message being reassembled into `data`, allocated (not filled) at its head."""

    kind: str
    meta: dict[str, Any]
    specs: list[tuple[np.dtype, tuple]]
    total: int
    frames: int
    data: np.ndarray
    next: int = 1
    filled: int = 0  # bytes of `data` claimed by the continuation frames so far


_NOTHING = memoryview(bytearray())


class FrameParser:
    """Turns a byte stream into messages, enforcing the frame and message size limits.

    `max_frame_bytes` bounds every frame's body; `max_message_bytes` bounds the arrays of a
    message split over several frames (by default, no larger than one frame);
    `max_header_bytes` every frame's JSON header (by default a party's: `PARTY_HEADER_MAX`).

    The stream is written into the parser: `buffer()` is where the next bytes go and
    `advance(n)` says that n of them are there (`feed` does both for bytes at hand). Frame
    heads, headers and what is left of a small frame's body are parsed in a staging buffer;
    once a frame's header is parsed, the rest of its array bytes go straight to the memory
    the message's arrays are views of (a fresh buffer per message, which the message alone
    then holds), so a reader can decrypt into it without further copies. No buffer is
    allocated before the length it is for has been checked against its limit."""

    STAGE = 1 << 16  # the staging buffer's size
    HEADER_MAX = 1 << 14  # a frame whose header is longer is buffered whole, then parsed

    def __init__(
        self,
        max_frame_bytes: int,
        max_message_bytes: int | None = None,
        max_header_bytes: int = PARTY_HEADER_MAX,
    ) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.max_message_bytes = max_frame_bytes if max_message_bytes is None else max_message_bytes
        self.max_header_bytes = max_header_bytes
        self.frames = 0  # complete frames parsed
        self._stage = bytearray(self.STAGE)
        self._view = memoryview(self._stage)
        self._start = self._end = 0  # bytes not parsed yet: _stage[_start:_end]
        self._need: int | None = None  # body length of the frame being read (head parsed)
        self._sink = _NOTHING  # the rest of the current frame's bytes go here
        self._then: Callable[[], Message | None] | None = None  # ... and then this
        self._split: _Split | None = None

    def limit(
        self,
        max_frame_bytes: int,
        max_message_bytes: int | None = None,
        max_header_bytes: int | None = None,
    ) -> None:
        """Change the largest frame accepted, the largest message split over frames
        (default: one frame's worth) and the largest frame header (default: unchanged)."""
        self.max_frame_bytes = max_frame_bytes
        self.max_message_bytes = max_frame_bytes if max_message_bytes is None else max_message_bytes
        if max_header_bytes is not None:
            self.max_header_bytes = max_header_bytes

    def buffer(self) -> memoryview:
        """Where the next bytes of the stream go (never empty); see `advance`."""
        if len(self._sink):
            return self._sink
        if self._start == self._end:
            self._start = self._end = 0
        elif self.STAGE - self._end < self.HEADER_MAX + FRAME_HEAD.size + META_HEAD.size:
            rest = bytes(self._view[self._start : self._end])  # at most a frame head and header
            self._view[: len(rest)] = rest
            self._start, self._end = 0, len(rest)
        return self._view[self._end :]

    def advance(self, n: int) -> list[Message]:
        """The first n bytes of `buffer()` hold the next bytes of the stream: the messages
        they complete. Raises FrameError if the stream is malformed or over a limit."""
        if len(self._sink):
            self._sink = self._sink[n:]
            if len(self._sink):
                return []
            self._sink = _NOTHING  # (nothing is staged while a sink is open)
            msg = self._complete()
            return [] if msg is None else [msg]
        self._end += n
        return self._parse()

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """The messages that `data`, the next bytes of the stream, complete."""
        src = memoryview(data).cast("B")
        out: list[Message] = []
        while len(src):
            buf = self.buffer()
            k = min(len(buf), len(src))
            buf[:k] = src[:k]
            src = src[k:]
            out += self.advance(k)
        return out

    def _complete(self) -> Message | None:
        then, self._then = self._then, None
        self.frames += 1
        return then()

    def _parse(self) -> list[Message]:
        """Parse the staged bytes: whole frames, and the head of one that goes on."""
        out = []
        stage, view = self._stage, self._view
        while True:
            start, avail = self._start, self._end - self._start
            if self._need is None:
                if avail < FRAME_HEAD.size:
                    return out
                magic, n = FRAME_HEAD.unpack_from(stage, start)
                if magic != MAGIC:
                    raise FrameError("stream is not mpcc frames (bad magic)")
                if n > self.max_frame_bytes:
                    raise FrameError(
                        f"frame of {n} bytes exceeds the limit of {self.max_frame_bytes} bytes"
                    )
                if n < META_HEAD.size:
                    raise FrameError("frame body too short")
                self._need = n
                start += FRAME_HEAD.size
                avail -= FRAME_HEAD.size
                self._start = start
            n = self._need
            if avail < META_HEAD.size:
                return out
            (hlen,) = META_HEAD.unpack_from(stage, start)
            check_header_length(hlen, self.max_header_bytes)
            end = META_HEAD.size + hlen
            if end > n:
                raise FrameError("frame header longer than the frame")
            if avail >= n and hlen <= _CACHE_HEADER_MAX and self._split is None:
                hit = _PARSED.get(bytes(view[start + META_HEAD.size : start + end]))
                if hit is not None and hit[2] == n - end:  # a small round's message: at once
                    data = stage[start + end : start + n]  # the message's own copy
                    self._start = start + n
                    self._need = None
                    self.frames += 1
                    out.append(Message(hit[0], {}, arrays_of(data, hit[1])))
                    continue
            if hlen > self.HEADER_MAX:  # rare: buffer the body whole, parse it at its end
                body = bytearray(n)
                dest, then = memoryview(body), lambda body=body: self._whole(body)
            else:
                if avail < end:
                    return out
                dest, then = self._begin(view[start + META_HEAD.size : start + end], n - end)
                start += end
                avail -= end
            take = min(avail, len(dest))
            dest[:take] = view[start : start + take]
            self._start = start + take
            self._need = None
            self._then = then
            if take < len(dest):
                self._sink = dest[take:]
                return out
            msg = self._complete()
            if msg is not None:
                out.append(msg)

    def _whole(self, body: bytearray) -> Message | None:
        """The end of a frame whose header was too long to stage."""
        head_end = META_HEAD.size + META_HEAD.unpack_from(body)[0]
        dest, then = self._begin(memoryview(body)[META_HEAD.size : head_end], len(body) - head_end)
        dest[:] = memoryview(body)[head_end:]
        return then()

    def _begin(
        self, header: memoryview, size: int
    ) -> tuple[memoryview, Callable[[], Message | None]]:
        """Parse a frame's header: where the `size` bytes after it go, and what to do when
        they are there. Raises FrameError if the header is malformed or does not fit."""
        s = self._split
        key = None
        if s is None and len(header) <= _CACHE_HEADER_MAX:  # the same headers again and again
            key = bytes(header)
            hit = _PARSED.get(key)
            if hit is not None:
                return self._single(hit[0], {}, hit[1], size, hit[2])
        head = json_header(bytes(header) if key is None else key)
        if "c" in head:
            if s is None:
                raise FrameError("continuation frame without a message head")
            if set(head) != {"c"} or head["c"] != s.next:
                raise FrameError("continuation frame out of order")
            if s.filled + size > s.total:
                raise FrameError("split message is longer than its head declared")
            dest = memoryview(s.data)[s.filled : s.filled + size]
            s.filled += size
            return dest, self._continued
        if s is not None:
            raise FrameError("a message began before the previous split message ended")
        kind, meta, specs = message_head(head)
        if "n" not in head:
            if key is not None and not meta and set(head) == {"k", "m", "a"}:
                if len(_PARSED) >= _CACHE_ENTRIES:
                    _PARSED.clear()
                _PARSED[key] = (kind, specs, data_size(specs))
            return self._single(kind, meta, specs, size)
        frames, total = head["n"], data_size(specs)
        if type(frames) is not int or not 2 <= frames <= total + 1:
            raise FrameError("split message declares a bad number of frames")
        if size:
            raise FrameError("head of a split message carries array bytes")
        if total > self.max_message_bytes:
            raise FrameError(
                f"message of {total} bytes exceeds the limit of {self.max_message_bytes} bytes"
            )
        self._split = _Split(kind, meta, specs, total, frames, np.empty(total, np.uint8))
        return _NOTHING, _no_message

    def _single(
        self,
        kind: str,
        meta: dict[str, Any],
        specs: list[tuple[np.dtype, tuple]],
        size: int,
        total: int | None = None,
    ) -> tuple[memoryview, Callable[[], Message]]:
        """A one-frame message whose arrays (`total` bytes) are the `size` bytes after its
        header."""
        if total is None:
            total = data_size(specs)
        if total > size:
            raise FrameError("frame's arrays are longer than the frame")
        if total < size:
            raise FrameError("frame has bytes beyond its arrays")
        data = np.empty(size, np.uint8)
        return memoryview(data), lambda: Message(kind, meta, arrays_of(data, specs))

    def _continued(self) -> Message | None:
        s = self._split
        assert s is not None
        s.next += 1
        if s.next < s.frames:
            return None
        if s.filled != s.total:
            raise FrameError("split message is shorter than its head declared")
        self._split = None
        return Message(s.kind, s.meta, arrays_of(s.data, s.specs))


def _no_message() -> None:
    return None
