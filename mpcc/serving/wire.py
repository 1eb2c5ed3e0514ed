"""Frames on the wire: a length-prefixed message of a kind, a small JSON header and arrays.

    frame = magic "MPCF" | u64 body length (little endian) | body
    body  = u32 header length | header JSON {"k": kind, "m": {...}, "a": [[dtype, shape], ...]}
            | the arrays' raw bytes, in order

A message too large for one frame (`encode_message`) is sent as several: a head frame whose
header also says how many frames the message has, `"n": N`, and carries no array bytes, then
N - 1 continuation frames whose header is `{"c": i}` (i = 1 .. N-1) and whose body holds the
next bytes of the arrays. So no frame exceeds the limit, whatever the size of an array.

The receiver checks every frame's length against its frame limit before reading the body,
its header's length against the header limit (small for clients, whose headers hold a few
fields; larger for the parties and the owner, whose deploy header carries the public plan),
and a split message's total (declared in its head, before any of it is read) against its
message limit; it checks that headers are well formed and that the arrays account for
exactly the bytes that follow. Anything else is a `FrameError`; the connection that sent it
is closed.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mpcc.errors import PartyError

MAGIC = b"MPCF"
FRAME_HEAD = struct.Struct("<4sQ")
META_HEAD = struct.Struct("<I")
MAX_NDIM = 8
DTYPES = {np.dtype(t).str: np.dtype(t) for t in ("<u8", "<i8", "<f8", "<f4", "|u1")}
_CACHE_ENTRIES = 1024  # headers of meta-less messages, by layout (encoding) or bytes (parsing)
_CACHE_HEADER_MAX = 1024  # longest header whose parse is cached
_ENCODED: dict[tuple, bytes] = {}
_PARSED: dict[bytes, tuple[str, list[tuple[np.dtype, tuple]], int]] = {}  # kind, specs, size
PART_HEADROOM = 32  # bytes kept for a continuation frame's header ({"c": i})
MIN_PART = 1024  # a frame limit must leave at least this much room for array bytes
CLIENT_HEADER_MAX = 1 << 16  # a client's header: a request's or info's few fields
# a party's or the owner's: the deploy header holds the public plan, 100 to 250 bytes per
# instruction (MobileNetV2's is 28 KB), so 64 MiB fits plans of some 250k instructions
PARTY_HEADER_MAX = 1 << 26


class FrameError(PartyError):
    """A peer sent a frame that is too large or malformed."""


@dataclass
class Message:
    """One message's content. `wire_bytes`: bytes on the wire since the previous message
    (receiver)."""

    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    arrays: list[np.ndarray] = field(default_factory=list)
    wire_bytes: int = 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)


Buffer = memoryview | bytes


def _checked(arrays: list[np.ndarray]) -> list[np.ndarray]:
    arrays = [a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in arrays]
    for a in arrays:
        if a.dtype.str not in DTYPES:
            raise TypeError(f"arrays of dtype {a.dtype} are not sent")
    return arrays


def _header(head: dict[str, Any]) -> bytes:
    return json.dumps(head, separators=(",", ":")).encode()


def _frame_prefix(header: bytes, data_len: int) -> bytes:
    body_len = META_HEAD.size + len(header) + data_len
    return FRAME_HEAD.pack(MAGIC, body_len) + META_HEAD.pack(len(header)) + header


def _views(arrays: list[np.ndarray]) -> list[memoryview]:
    return [memoryview(a.reshape(-1).view(np.uint8)) for a in arrays if a.nbytes]


def encode(kind: str, meta: dict[str, Any], arrays: list[np.ndarray]) -> list[Buffer]:
    """The message as one frame, a list of buffers (the arrays are not copied)."""
    arrays = _checked(arrays)
    specs = [[a.dtype.str, list(a.shape)] for a in arrays]
    head = _header({"k": kind, "m": meta, "a": specs})
    return [_frame_prefix(head, sum(a.nbytes for a in arrays)), *_views(arrays)]


def _plain_header(kind: str, arrays: list[np.ndarray]) -> bytes:
    """The header of a message without meta (a protocol round's), cached by layout."""
    key = (kind, *((a.dtype.str, a.shape) for a in arrays))
    head = _ENCODED.get(key)
    if head is None:
        head = _header({"k": kind, "m": {}, "a": [[a.dtype.str, list(a.shape)] for a in arrays]})
        if len(_ENCODED) >= _CACHE_ENTRIES:
            _ENCODED.clear()
        _ENCODED[key] = head
    return head


def encode_message(
    kind: str, meta: dict[str, Any], arrays: list[np.ndarray], max_frame_bytes: int
) -> tuple[list[Buffer], int]:
    """The message as frames whose bodies are at most `max_frame_bytes` each.

    Returns the buffers of all its frames, in order, and the number of frames. One frame if
    it fits, else a head frame and continuation frames (see the module docstring); the
    arrays are not copied. Raises ValueError if even the head does not fit in a frame.
    """
    arrays = _checked(arrays)
    total = sum(a.nbytes for a in arrays)
    if meta:
        specs = [[a.dtype.str, list(a.shape)] for a in arrays]
        head = _header({"k": kind, "m": meta, "a": specs})
    else:
        head = _plain_header(kind, arrays)
    if META_HEAD.size + len(head) + total <= max_frame_bytes:
        return [_frame_prefix(head, total), *_views(arrays)], 1
    specs = [[a.dtype.str, list(a.shape)] for a in arrays]
    room = max_frame_bytes - META_HEAD.size - PART_HEADROOM
    if room < MIN_PART:
        raise ValueError(f"a frame limit of {max_frame_bytes} bytes is too small to split into")
    n = 1 + math.ceil(total / room)
    head = _header({"k": kind, "m": meta, "a": specs, "n": n})
    if META_HEAD.size + len(head) > max_frame_bytes:
        raise ValueError(
            f"the header of a {kind!r} message ({len(head)} bytes) exceeds the frame limit "
            f"of {max_frame_bytes} bytes"
        )
    out: list[Buffer] = [_frame_prefix(head, 0)]
    part: list[memoryview] = []
    filled, index = 0, 1

    def flush() -> None:
        nonlocal part, filled, index
        out.append(_frame_prefix(_header({"c": index}), filled))
        out.extend(part)
        part, filled, index = [], 0, index + 1

    for view in _views(arrays):
        while len(view):
            take = min(room - filled, len(view))
            part.append(view[:take])
            view = view[take:]
            filled += take
            if filled == room:
                flush()
    if filled:
        flush()
    assert index == n, (index, n)
    return out, n


def frame_size(bufs: list[Buffer]) -> int:
    return sum(len(b) if isinstance(b, bytes) else b.nbytes for b in bufs)


def _parse_header(body: bytearray, max_header_bytes: int) -> tuple[Any, int]:
    """The JSON header of a frame body and the offset of what follows it."""
    if len(body) < META_HEAD.size:
        raise FrameError("frame body too short")
    (n,) = META_HEAD.unpack_from(body)
    _check_header(n, max_header_bytes)
    end = META_HEAD.size + n
    if end > len(body):
        raise FrameError("frame header longer than the frame")
    return _json_header(bytes(body[META_HEAD.size : end])), end


def _check_header(n: int, limit: int) -> None:
    if n > limit:
        raise FrameError(f"frame header of {n} bytes exceeds the limit of {limit} bytes")


def _json_header(raw: bytes) -> dict[str, Any]:
    """A frame's JSON header as a dict; every way it can fail is a FrameError (a header
    nested thousands deep makes json raise RecursionError, which must not kill a reader)."""
    try:
        head = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise FrameError("frame header is not valid JSON of the expected form") from None
    if not isinstance(head, dict):
        raise FrameError("frame header is not valid JSON of the expected form")
    return head


def _message_head(head: dict[str, Any]) -> tuple[str, dict, list[tuple[np.dtype, tuple]]]:
    try:
        kind, meta, specs = head["k"], head["m"], head["a"]
    except KeyError:
        raise FrameError("frame header is not valid JSON of the expected form") from None
    if not isinstance(kind, str) or not isinstance(meta, dict) or not isinstance(specs, list):
        raise FrameError("frame header has fields of the wrong type")
    parsed = []
    for spec in specs:
        if (
            not isinstance(spec, list)
            or len(spec) != 2
            or not isinstance(spec[0], str)  # (a list is unhashable: TypeError, not a miss)
            or spec[0] not in DTYPES
            or not isinstance(spec[1], list)
            or len(spec[1]) > MAX_NDIM
            or not all(type(d) is int and 0 <= d < 2**40 for d in spec[1])
        ):
            raise FrameError("frame describes an array badly")
        parsed.append((DTYPES[spec[0]], tuple(spec[1])))
    return kind, meta, parsed


def _data_size(specs: list[tuple[np.dtype, tuple]]) -> int:
    return sum(math.prod(shape) * dtype.itemsize for dtype, shape in specs)


def _arrays(buf: bytearray, off: int, specs: list[tuple[np.dtype, tuple]]) -> list[np.ndarray]:
    """The arrays from buf[off:], which must hold exactly their bytes."""
    arrays = []
    for dtype, shape in specs:
        count = math.prod(shape)
        size = count * dtype.itemsize
        if off + size > len(buf):
            raise FrameError("frame's arrays are longer than the frame")
        arrays.append(np.frombuffer(buf, dtype=dtype, count=count, offset=off).reshape(shape))
        off += size
    if off != len(buf):
        raise FrameError("frame has bytes beyond its arrays")
    return arrays


def decode_body(body: bytearray, max_header_bytes: int = PARTY_HEADER_MAX) -> Message:
    """Parse the body of a one-frame message; raises FrameError if it is malformed."""
    head, end = _parse_header(body, max_header_bytes)
    if "n" in head or "c" in head:
        raise FrameError("frame is part of a split message")
    kind, meta, specs = _message_head(head)
    return Message(kind, meta, _arrays(body, end, specs))


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
            _check_header(hlen, self.max_header_bytes)
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
                    out.append(Message(hit[0], {}, _arrays_of(data, hit[1])))
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
        head = _json_header(bytes(header) if key is None else key)
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
        kind, meta, specs = _message_head(head)
        if "n" not in head:
            if key is not None and not meta and set(head) == {"k", "m", "a"}:
                if len(_PARSED) >= _CACHE_ENTRIES:
                    _PARSED.clear()
                _PARSED[key] = (kind, specs, _data_size(specs))
            return self._single(kind, meta, specs, size)
        frames, total = head["n"], _data_size(specs)
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
            total = _data_size(specs)
        if total > size:
            raise FrameError("frame's arrays are longer than the frame")
        if total < size:
            raise FrameError("frame has bytes beyond its arrays")
        data = np.empty(size, np.uint8)
        return memoryview(data), lambda: Message(kind, meta, _arrays_of(data, specs))

    def _continued(self) -> Message | None:
        s = self._split
        assert s is not None
        s.next += 1
        if s.next < s.frames:
            return None
        if s.filled != s.total:
            raise FrameError("split message is shorter than its head declared")
        self._split = None
        return Message(s.kind, s.meta, _arrays_of(s.data, s.specs))


def _no_message() -> None:
    return None


def _arrays_of(
    data: np.ndarray | bytearray, specs: list[tuple[np.dtype, tuple]]
) -> list[np.ndarray]:
    """The arrays whose bytes fill `data` exactly (checked before), as views of it."""
    arrays, off = [], 0
    for dtype, shape in specs:
        count = math.prod(shape)
        arrays.append(np.frombuffer(data, dtype, count, off).reshape(shape))
        off += count * dtype.itemsize
    return arrays
