"""Property-based tests (hypothesis) of what parses untrusted input (issue 14): the frame
parser and the plan loader fail only with their own errors, whatever they are given, and
messages survive a byte stream cut anywhere.

Before: a header nested thousands deep raised RecursionError past FrameError and killed a
link's reader thread; nothing capped a header's length."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mpcc.compiler import planfile
from mpcc.errors import PlanError
from mpcc.serving.frameparser import FrameParser
from mpcc.serving.wire import (
    FRAME_HEAD,
    MAGIC,
    META_HEAD,
    MIN_PART,
    PART_HEADROOM,
    FrameError,
    decode_body,
    encode_message,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


def _parser() -> FrameParser:
    return FrameParser(1 << 17, 1 << 20, max_header_bytes=1 << 16)


nested = st.tuples(st.integers(1, 30_000), st.sampled_from([b"[]", b'{"":', b'["'])).map(
    lambda t: t[1][:1] * t[0] + t[1][1:] * (t[0] if t[1] == b"[]" else 1)
)  # nested thousands deep: json's RecursionError (issue 14), unclosed, ...


def _frame(header: bytes, rest: bytes = b"", declared: int | None = None) -> bytes:
    body = META_HEAD.pack(len(header)) + header + rest
    return FRAME_HEAD.pack(MAGIC, len(body) if declared is None else declared) + body


# -- the frame parser ------------------------------------------------------------------------
@FAST
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_are_frames_or_a_frame_error(data):
    try:
        _parser().feed(data)
    except FrameError:
        pass
    try:
        decode_body(bytearray(data), max_header_bytes=1 << 12)
    except FrameError:
        pass


@FAST
@given(
    header=st.binary(max_size=512) | json_values.map(lambda v: json.dumps(v).encode()) | nested,
    rest=st.binary(max_size=256),
    declared=st.none() | st.integers(0, 2**64 - 1),
)
def test_frames_with_arbitrary_headers_are_messages_or_a_frame_error(header, rest, declared):
    try:
        _parser().feed(_frame(header, rest, declared))
    except FrameError:
        pass


@FAST
@given(
    kind=st.sampled_from(["k", "m", "a", "n", "c"]),
    value=json_values,
    specs=st.lists(
        st.tuples(
            st.sampled_from(["<u8", "<f4", "|u1", "<i4", "x"]),
            st.lists(st.integers(-2, 2**41), max_size=3),
        ),
        max_size=3,
    ),
    rest=st.binary(max_size=64),
)
def test_headers_of_the_expected_shape_with_bad_fields_are_a_frame_error(kind, value, specs, rest):
    head = {"k": "request", "m": {}, "a": [[d, s] for d, s in specs]}
    head[kind] = value
    try:
        _parser().feed(_frame(json.dumps(head).encode(), rest))
    except FrameError:
        pass


def test_a_header_over_the_cap_is_refused_before_it_is_read():
    p = FrameParser(1 << 20, max_header_bytes=100)
    with pytest.raises(FrameError, match="header of 5000 bytes exceeds the limit of 100"):
        p.feed(FRAME_HEAD.pack(MAGIC, 6000) + META_HEAD.pack(5000))  # the header never came
    with pytest.raises(FrameError, match="exceeds the limit of 100"):
        decode_body(bytearray(META_HEAD.pack(101) + b" " * 101), max_header_bytes=100)


dtypes = st.sampled_from([np.uint64, np.int64, np.float64, np.float32, np.uint8])
arrays = st.builds(
    lambda dt, shape, seed: np.random.default_rng(seed).integers(0, 255, size=shape).astype(dt),
    dtypes,
    st.lists(st.integers(0, 40), max_size=3).map(tuple),
    st.integers(0, 2**32 - 1),
)
messages = st.tuples(
    st.text(min_size=1, max_size=10),
    st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    st.lists(arrays, max_size=3),
)


@settings(FAST, max_examples=60)
@given(
    msgs=st.lists(messages, min_size=1, max_size=4),
    frame=st.integers(MIN_PART + PART_HEADROOM + 1024, 8192),
    cuts=st.lists(st.integers(0, 100_000), max_size=12),
)
def test_messages_round_trip_through_a_stream_cut_anywhere(msgs, frame, cuts):
    stream = bytearray()
    for kind, meta, arrs in msgs:
        try:
            bufs, _ = encode_message(kind, meta, arrs, frame)
        except ValueError:  # a header larger than a frame: refused when sent
            assume(False)
        for b in bufs:
            stream += bytes(b)
    p = FrameParser(frame, 1 << 22, max_header_bytes=frame)
    got, start = [], 0
    for cut in sorted({c % (len(stream) + 1) for c in cuts}) + [len(stream)]:
        got += p.feed(stream[start:cut])
        start = cut
    assert len(got) == len(msgs)
    for m, (kind, meta, arrs) in zip(got, msgs, strict=True):
        assert m.kind == kind and m.meta == json.loads(json.dumps(meta))
        assert len(m.arrays) == len(arrs)
        for a, b in zip(m.arrays, arrs, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


# -- the plan loader ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def public(zoo_model):
    from mpcc.compiler.pipeline import compile_onnx

    prog, _ = compile_onnx(zoo_model("mlp"), (1, 1, 28, 28))
    return planfile.to_public(prog)


@FAST
@given(json_values)
def test_arbitrary_json_is_a_plan_or_a_plan_error(value):
    try:
        planfile.from_public(value)
    except PlanError:
        pass
    for extra in ({"format": planfile.FORMAT}, {"format": planfile.FORMAT, "version": 1}):
        d = {**value, **extra} if isinstance(value, dict) else extra
        try:
            planfile.from_public(d)
        except PlanError:
            pass


def _paths(node, path=()):
    """Every path into a JSON value (dict keys and list indices), the root included."""
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*path, i))


@FAST
@given(data=st.data())
def test_a_real_plan_with_any_part_replaced_is_a_plan_or_a_plan_error(public, data):
    paths = list(_paths(public))
    path = data.draw(st.sampled_from(paths[1:]))
    d = copy.deepcopy(public)
    node = d
    for k in path[:-1]:
        node = node[k]
    if data.draw(st.booleans()) and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = data.draw(json_values)
    try:
        planfile.from_public(d)
    except PlanError:
        pass
