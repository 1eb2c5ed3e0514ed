"""Frames on the wire: a length-prefixed message of a kind, a small JSON header and arrays.

    frame = magic "MPCF" | u64 body length (little endian) | body
    body  = u32 header length | header JSON {"k": kind, "m": {...}, "a": [[dtype, shape], ...]}
            | the arrays' raw bytes, in order

A message too large for one frame (`encode_message`) is sent as several: a head frame whose
header also says how many frames the message has, `"n": N`, and carries no array bytes, then
N - 1 continuation frames whose header is `{"c": i}` (i = 1 .. N-1) and whose body holds the
next bytes of the arrays. So no frame exceeds the limit, whatever the size of an array.

The receiver (`frameparser.FrameParser`; `decode_body` for one frame at hand) checks every
frame's length against its frame limit before reading the body, its header's length
against the header limit (small for clients, whose headers hold a few fields; larger for
the parties and the owner, whose deploy header carries the public plan),
and a split message's total (declared in its head, before any of it is read) against its
message limit; it checks that headers are well formed and that the arrays account for
exactly the bytes that follow. Anything else is a `FrameError`; the connection that sent it
is closed.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mpcc.errors import PartyError

MAGIC = b"MPCF"
FRAME_HEAD = struct.Struct("<4sQ")
META_HEAD = struct.Struct("<I")
MAX_NDIM = 8
DTYPES = {np.dtype(t).str: np.dtype(t) for t in ("<u8", "<i8", "<f8", "<f4", "|u1")}
_CACHE_ENTRIES = 1024  # headers of meta-less messages, by layout
_ENCODED: dict[tuple, bytes] = {}
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
    check_header_length(n, max_header_bytes)
    end = META_HEAD.size + n
    if end > len(body):
        raise FrameError("frame header longer than the frame")
    return json_header(bytes(body[META_HEAD.size : end])), end


def check_header_length(n: int, limit: int) -> None:
    """FrameError if a header of `n` bytes is over the limit."""
    if n > limit:
        raise FrameError(f"frame header of {n} bytes exceeds the limit of {limit} bytes")


def json_header(raw: bytes) -> dict[str, Any]:
    """A frame's JSON header as a dict; every way it can fail is a FrameError (a header
    nested thousands deep makes json raise RecursionError, which must not kill a reader)."""
    try:
        head = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise FrameError("frame header is not valid JSON of the expected form") from None
    if not isinstance(head, dict):
        raise FrameError("frame header is not valid JSON of the expected form")
    return head


def message_head(head: dict[str, Any]) -> tuple[str, dict, list[tuple[np.dtype, tuple]]]:
    """A message head's kind, meta and array layouts (dtype, shape); FrameError if bad."""
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


def data_size(specs: list[tuple[np.dtype, tuple]]) -> int:
    """The bytes that arrays of these layouts fill."""
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
    kind, meta, specs = message_head(head)
    return Message(kind, meta, _arrays(body, end, specs))


def arrays_of(
    data: np.ndarray | bytearray, specs: list[tuple[np.dtype, tuple]]
) -> list[np.ndarray]:
    """The arrays whose bytes fill `data` exactly (checked before), as views of it."""
    arrays, off = [], 0
    for dtype, shape in specs:
        count = math.prod(shape)
        arrays.append(np.frombuffer(data, dtype, count, off).reshape(shape))
        off += count * dtype.itemsize
    return arrays
