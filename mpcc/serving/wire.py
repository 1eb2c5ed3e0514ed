"""Frames on the wire: a length-prefixed message of a kind, a small JSON header and arrays.

    frame = magic "MPCF" | u64 body length (little endian) | body
    body  = u32 header length | header JSON {"k": kind, "m": {...}, "a": [[dtype, shape], ...]}
            | the arrays' raw bytes, in order

The receiver checks the length against its limit before reading the body, and checks that
the header is well formed and that the arrays account for exactly the rest of the body.
Anything else is a `FrameError`; the connection that sent it is closed.
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


class FrameError(PartyError):
    """A peer sent a frame that is too large or malformed."""


@dataclass
class Message:
    """One frame's content. `wire_bytes`: bytes on the wire since the previous frame (receiver)."""

    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    arrays: list[np.ndarray] = field(default_factory=list)
    wire_bytes: int = 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)


def encode(kind: str, meta: dict[str, Any], arrays: list[np.ndarray]) -> list[memoryview | bytes]:
    """The frame as a list of buffers (the arrays are not copied)."""
    arrays = [np.ascontiguousarray(a) for a in arrays]
    for a in arrays:
        if a.dtype.str not in DTYPES:
            raise TypeError(f"arrays of dtype {a.dtype} are not sent")
    head = json.dumps(
        {"k": kind, "m": meta, "a": [[a.dtype.str, list(a.shape)] for a in arrays]},
        separators=(",", ":"),
    ).encode()
    body_len = META_HEAD.size + len(head) + sum(a.nbytes for a in arrays)
    prefix = FRAME_HEAD.pack(MAGIC, body_len) + META_HEAD.pack(len(head)) + head
    return [prefix, *(memoryview(a.reshape(-1).view(np.uint8)) for a in arrays if a.nbytes)]


def frame_size(bufs: list[memoryview | bytes]) -> int:
    return sum(len(b) if isinstance(b, bytes) else b.nbytes for b in bufs)


def decode_body(body: bytearray) -> Message:
    """Parse one frame body; raises FrameError if it is malformed."""
    if len(body) < META_HEAD.size:
        raise FrameError("frame body too short")
    (n,) = META_HEAD.unpack_from(body)
    end = META_HEAD.size + n
    if end > len(body):
        raise FrameError("frame header longer than the frame")
    try:
        head = json.loads(bytes(body[META_HEAD.size : end]))
        kind, meta, specs = head["k"], head["m"], head["a"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise FrameError("frame header is not valid JSON of the expected form") from None
    if not isinstance(kind, str) or not isinstance(meta, dict) or not isinstance(specs, list):
        raise FrameError("frame header has fields of the wrong type")
    arrays, off = [], end
    for spec in specs:
        if (
            not isinstance(spec, list)
            or len(spec) != 2
            or spec[0] not in DTYPES
            or not isinstance(spec[1], list)
            or len(spec[1]) > MAX_NDIM
            or not all(isinstance(d, int) and 0 <= d < 2**40 for d in spec[1])
        ):
            raise FrameError("frame describes an array badly")
        dtype, shape = DTYPES[spec[0]], tuple(spec[1])
        count = math.prod(shape)
        size = count * dtype.itemsize
        if off + size > len(body):
            raise FrameError("frame's arrays are longer than the frame")
        arrays.append(np.frombuffer(body, dtype=dtype, count=count, offset=off).reshape(shape))
        off += size
    if off != len(body):
        raise FrameError("frame has bytes beyond its arrays")
    return Message(kind, meta, arrays)


class FrameParser:
    """Turns a byte stream into messages, enforcing the frame size limit."""

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._need: int | None = None  # body length of the frame being read

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out = []
        while True:
            if self._need is None:
                if len(self._buf) < FRAME_HEAD.size:
                    return out
                magic, n = FRAME_HEAD.unpack_from(self._buf)
                if magic != MAGIC:
                    raise FrameError("stream is not mpcc frames (bad magic)")
                if n > self.max_frame_bytes:
                    raise FrameError(
                        f"frame of {n} bytes exceeds the limit of {self.max_frame_bytes} bytes"
                    )
                self._need = n
                del self._buf[: FRAME_HEAD.size]
            if len(self._buf) < self._need:
                return out
            body = self._buf[: self._need]
            del self._buf[: self._need]
            self._need = None
            out.append(decode_body(body))
