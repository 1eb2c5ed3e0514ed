"""Ring kernels: bit-exact against Python-int references, and ONNX semantics against onnxruntime."""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from mpcc.runtime import kernels

MOD = 2**64
U64_MAX = MOD - 1


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


def ring(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform ring elements over the full 64-bit range (test data only)."""
    return rng.integers(0, MOD, size=shape, dtype=np.uint64)


def as_objects(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.uint64).astype(object)


def from_objects(x: np.ndarray) -> np.ndarray:
    return (x % MOD).astype(np.uint64)


# ----- Python-int references -------------------------------------------------------------------


def ref_padded(x: np.ndarray, pads: tuple[int, int, int, int], fill: int = 0) -> np.ndarray:
    pt, pl, pb, pr = pads
    n, c, h, w = x.shape
    out = np.full((n, c, h + pt + pb, w + pl + pr), fill, dtype=object)
    out[:, :, pt : pt + h, pl : pl + w] = as_objects(x)
    return out


def ref_windows(xp, kernel, strides, dilations, out_hw) -> np.ndarray:
    """(N, C, OH, OW, kh*kw) windows of an already padded object array."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, strides, dilations, out_hw
    taps = [
        xp[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]
    return np.stack(taps, axis=-1)


def ref_conv2d(x, w, strides, pads, dilations, groups) -> np.ndarray:
    o, cg, kh, kw = w.shape
    oh, ow = kernels.pool_output_shape(x.shape[2:], (kh, kw), strides, pads, dilations)
    cols = ref_windows(ref_padded(x, pads), (kh, kw), strides, dilations, (oh, ow))
    wo, og = as_objects(w).reshape(o, cg, kh * kw), o // groups
    out = np.zeros((x.shape[0], o, oh, ow), dtype=object)
    for k in range(o):
        g = k // og
        out[:, k] = np.einsum("nchwt,ct->nhw", cols[:, g * cg : (g + 1) * cg], wo[k])
    return from_objects(out)


# ----- matmul / dense --------------------------------------------------------------------------

MATMUL_SHAPES = [
    (1, 1, 1),
    (1, 7, 3),
    (3, 5, 9),
    (4, 4, 4),
    (7, 13, 5),
    (15, 9, 33),  # last size that streams rows of b
    (16, 9, 33),  # first size that transposes b
    (17, 33, 10),
    (21, 64, 7),
    (9, 3, 600),
    (40, 70, 2),
    (33, 257, 18),
    (0, 3, 2),
    (3, 0, 2),
    (5, 2, 0),
]


@pytest.mark.parametrize("m,k,n", MATMUL_SHAPES)
def test_matmul_exact(rng, m, k, n):
    a, b = ring(rng, (m, k)), ring(rng, (k, n))
    out = kernels.matmul(a, b)
    assert out.dtype == np.uint64 and out.shape == (m, n)
    np.testing.assert_array_equal(out, from_objects(as_objects(a) @ as_objects(b)))


def test_matmul_extremes_and_layouts(rng):
    a = np.full((6, 5), U64_MAX, dtype=np.uint64)
    b = np.full((5, 19), U64_MAX, dtype=np.uint64)
    b[0, :] = 2**63
    ref = from_objects(as_objects(a) @ as_objects(b))
    np.testing.assert_array_equal(kernels.matmul(a, b), ref)
    # Non-contiguous views and int64 input (the same ring elements) are accepted.
    big = ring(rng, (24, 30))
    a2, b2 = big[::2, 1:9], big[3:11, ::3].view(np.int64)
    ref2 = from_objects(as_objects(a2) @ as_objects(b2.view(np.uint64)))
    np.testing.assert_array_equal(kernels.matmul(a2, b2), ref2)


def test_matmul_rejects_bad_input():
    with pytest.raises(TypeError):
        kernels.matmul(np.ones((2, 2)), np.ones((2, 2), np.uint64))
    with pytest.raises(ValueError):
        kernels.matmul(np.ones((2, 3), np.uint64), np.ones((2, 2), np.uint64))
    with pytest.raises(ValueError):
        kernels.matmul(np.ones(3, np.uint64), np.ones((3, 2), np.uint64))


def test_dense(rng):
    x, w = ring(rng, (2, 3, 11)), ring(rng, (11, 6))
    out = kernels.dense(x, w)
    assert out.shape == (2, 3, 6)
    np.testing.assert_array_equal(out, from_objects(as_objects(x) @ as_objects(w)))
    np.testing.assert_array_equal(kernels.dense(x[0, 0], w), out[0, 0])


def test_kernels_from_two_threads(rng):
    """The two compute parties call kernels concurrently from two threads of one process."""
    a, b = ring(rng, (64, 40)), ring(rng, (40, 24))
    x, w = ring(rng, (2, 4, 9, 9)), ring(rng, (6, 4, 3, 3))
    want = (kernels.matmul(a, b), kernels.conv2d(x, w, pads=1))
    got: list[bool] = []

    def party() -> None:
        for _ in range(20):
            ok = np.array_equal(kernels.matmul(a, b), want[0])
            got.append(ok and np.array_equal(kernels.conv2d(x, w, pads=1), want[1]))

    threads = [threading.Thread(target=party) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 40 and all(got)


# ----- conv2d ----------------------------------------------------------------------------------

# (name, x shape, w shape, strides, pads [t, l, b, r], dilations, groups)
CONV_CASES = [
    ("dense3x3", (2, 3, 7, 8), (4, 3, 3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("dense_pad1", (1, 5, 6, 6), (6, 5, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ("stride2", (2, 3, 9, 8), (5, 3, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),
    ("stride_1x2", (1, 2, 7, 9), (3, 2, 2, 3), (1, 2), (0, 1, 0, 2), (1, 1), 1),
    ("asym_pads", (1, 2, 6, 7), (3, 2, 3, 2), (1, 1), (2, 0, 1, 3), (1, 1), 1),
    ("dilation2", (1, 3, 9, 9), (2, 3, 3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1),
    ("dilation_stride", (2, 2, 11, 10), (4, 2, 3, 2), (2, 3), (1, 0, 2, 1), (2, 3), 1),
    ("pointwise", (2, 6, 5, 4), (7, 6, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("pointwise_s2", (1, 4, 7, 7), (3, 4, 1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),
    ("groups2", (2, 4, 6, 6), (6, 2, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2),
    ("groups3_s2", (1, 6, 8, 7), (9, 2, 2, 2), (2, 2), (0, 1, 1, 0), (1, 1), 3),
    ("depthwise", (2, 5, 7, 6), (5, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 5),
    ("depthwise_s2", (1, 4, 9, 8), (4, 1, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 4),
    ("depthwise_dil", (1, 3, 9, 9), (3, 1, 3, 3), (1, 2), (2, 1, 0, 2), (2, 2), 3),
    ("depthwise_mult2", (1, 3, 6, 7), (6, 1, 2, 3), (1, 1), (0, 2, 1, 0), (1, 1), 3),
    ("one_channel", (3, 1, 10, 9), (4, 1, 5, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("one_channel_s3", (1, 1, 10, 11), (2, 1, 4, 3), (3, 2), (1, 2, 0, 1), (1, 2), 1),
    ("kernel_fills_input", (1, 2, 4, 5), (3, 2, 4, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("rect_kernel_big_pad", (1, 2, 3, 4), (2, 2, 1, 5), (1, 1), (3, 4, 0, 4), (1, 1), 1),
]
CONV_IDS = [case[0] for case in CONV_CASES]


@pytest.mark.parametrize("name,xs,ws,strides,pads,dilations,groups", CONV_CASES, ids=CONV_IDS)
def test_conv2d_exact(rng, name, xs, ws, strides, pads, dilations, groups):
    x, w = ring(rng, xs), ring(rng, ws)
    out = kernels.conv2d(x, w, strides, pads, dilations, groups)
    assert out.dtype == np.uint64
    np.testing.assert_array_equal(out, ref_conv2d(x, w, strides, pads, dilations, groups))


def ort_run(op: str, inputs: dict[str, np.ndarray], **attrs) -> np.ndarray:
    """Run one ONNX node (opset 19) on float32 inputs with onnxruntime."""
    node = helper.make_node(op, list(inputs), ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        op.lower(),
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, inputs)[0]


def small_ints(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(-4, 5, size=shape).astype(np.int64)


@pytest.mark.parametrize("name,xs,ws,strides,pads,dilations,groups", CONV_CASES, ids=CONV_IDS)
def test_conv2d_matches_onnxruntime(rng, name, xs, ws, strides, pads, dilations, groups):
    x, w = small_ints(rng, xs), small_ints(rng, ws)
    want = ort_run(
        "Conv",
        {"x": x.astype(np.float32), "w": w.astype(np.float32)},
        strides=list(strides),
        pads=list(pads),
        dilations=list(dilations),
        group=groups,
    )
    got = kernels.conv2d(x, w, strides, pads, dilations, groups).view(np.int64)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want.astype(np.int64))


def test_conv2d_rejects_bad_input(rng):
    x = ring(rng, (1, 4, 5, 5))
    with pytest.raises(ValueError):
        kernels.conv2d(x, ring(rng, (3, 4, 3, 3)), groups=2)  # C/groups != w's channels
    with pytest.raises(ValueError):
        kernels.conv2d(x, ring(rng, (3, 2, 3, 3)), groups=2)  # O not divisible by groups
    with pytest.raises(ValueError):
        kernels.conv2d(x, ring(rng, (2, 4, 7, 7)))  # kernel larger than the padded input
    with pytest.raises(ValueError):
        kernels.conv2d(x, ring(rng, (2, 4, 3, 3)), pads=(1, 1))


# ----- pooling ---------------------------------------------------------------------------------

# (input hw, kernel, strides, pads, dilations, ceil_mode)
POOL_CASES = [
    ((8, 8), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), False),
    ((7, 9), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), True),
    ((7, 8), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), False),
    ((7, 8), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), True),
    ((6, 9), (3, 2), (3, 2), (0, 1, 2, 0), (1, 1), True),  # a ceil window would start in pads
    ((5, 5), (3, 3), (2, 2), (1, 0, 0, 1), (1, 1), True),
    ((9, 8), (3, 2), (1, 2), (1, 0, 2, 1), (2, 2), False),
    ((9, 10), (2, 3), (2, 3), (1, 1, 0, 2), (2, 2), True),
    ((6, 7), (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), True),
    ((5, 6), (5, 6), (1, 1), (0, 0, 0, 0), (1, 1), False),
]


def pool_id(case) -> str:
    hw, k, s, p, d, ceil = case
    return f"{hw}-k{k}-s{s}-p{p}-d{d}-{'ceil' if ceil else 'floor'}".replace(" ", "")


@pytest.mark.parametrize("case", POOL_CASES, ids=[pool_id(c) for c in POOL_CASES])
def test_pool_windows_and_sum_exact(rng, case):
    hw, kernel, strides, pads, dilations, ceil = case
    x = ring(rng, (2, 3, *hw))
    oh, ow = kernels.pool_output_shape(hw, kernel, strides, pads, dilations, ceil)
    # Pad generously on the bottom/right so that ceil_mode overhangs are covered too.
    big = (pads[0], pads[1], pads[2] + kernel[0] * dilations[0], pads[3] + kernel[1] * dilations[1])
    fill = 2**63
    want = ref_windows(ref_padded(x, big, fill), kernel, strides, dilations, (oh, ow))
    got = kernels.pool_windows(x, kernel, strides, pads, dilations, ceil, pad_value=-(2**63))
    assert got.shape == (2, 3, oh, ow, kernel[0] * kernel[1])
    np.testing.assert_array_equal(got, from_objects(want))
    zero_pad = ref_windows(ref_padded(x, big), kernel, strides, dilations, (oh, ow))
    sums = kernels.sum_pool(x, kernel, strides, pads, ceil, dilations)
    np.testing.assert_array_equal(sums, from_objects(zero_pad.sum(axis=-1)))


@pytest.mark.parametrize("case", POOL_CASES, ids=[pool_id(c) for c in POOL_CASES])
def test_pooling_matches_onnxruntime(rng, case):
    hw, kernel, strides, pads, dilations, ceil = case
    x = small_ints(rng, (1, 2, *hw))
    attrs = {
        "kernel_shape": list(kernel),
        "strides": list(strides),
        "pads": list(pads),
        "dilations": list(dilations),
        "ceil_mode": int(ceil),
    }
    xf = {"x": x.astype(np.float32)}
    shape = kernels.pool_output_shape(hw, kernel, strides, pads, dilations, ceil)

    want_max = ort_run("MaxPool", xf, **attrs)
    windows = kernels.pool_windows(x, kernel, strides, pads, dilations, ceil, -(2**63))
    assert want_max.shape[2:] == shape
    np.testing.assert_array_equal(windows.view(np.int64).max(axis=-1), want_max.astype(np.int64))

    sums = kernels.sum_pool(x, kernel, strides, pads, ceil, dilations).view(np.int64)
    for include_pad in (False, True):
        want_avg = ort_run("AveragePool", xf, count_include_pad=int(include_pad), **attrs)
        counts = kernels.pool_counts(hw, kernel, strides, pads, ceil, dilations, include_pad)
        assert counts.dtype == np.int64 and counts.shape == shape and counts.min() >= 1
        np.testing.assert_allclose(sums / counts, want_avg, rtol=1e-6)


def test_pool_output_shape():
    # ceil_mode keeps a partial last window (5 + 1 pad, k=2, s=2: the third window starts at 4,
    # inside the image) but drops one that would start in the padding (4 + 1 pad: starts at 4).
    assert kernels.pool_output_shape((28, 28), 2, 2, 0) == (14, 14)
    assert kernels.pool_output_shape((5, 5), 2, 2, (0, 0, 1, 1), ceil_mode=True) == (3, 3)
    assert kernels.pool_output_shape((4, 4), 2, 2, (0, 0, 1, 1), ceil_mode=True) == (2, 2)
    assert kernels.pool_output_shape((4, 4), 2, 2, (0, 0, 1, 1)) == (2, 2)
    assert kernels.pool_output_shape((7, 7), 3, 2, 1, dilations=2) == (3, 3)
    with pytest.raises(ValueError):
        kernels.pool_output_shape((2, 2), 3, 1, 0)
    with pytest.raises(ValueError):
        kernels.pool_output_shape((4, 4), 2, 0, 0)


def test_dense_t_matches_dense() -> None:
    rng = np.random.default_rng(0)
    w = rng.integers(0, 2**64, size=(13, 7), dtype=np.uint64)
    for shape in [(1, 13), (3, 13), (17, 13), (2, 5, 13)]:
        x = rng.integers(0, 2**64, size=shape, dtype=np.uint64)
        wt = kernels.transpose(w)
        assert wt.flags.c_contiguous and wt.shape == (7, 13)
        np.testing.assert_array_equal(kernels.dense_t(x, wt), kernels.dense(x, w))
    with pytest.raises(ValueError):
        kernels.dense_t(np.zeros((2, 7), np.uint64), wt)


# ----- 1-D and 3-D: the same kernels over a unit height, or one depth tap at a time ------------

# (name, x shape, w shape, strides, pads (begins, ends), dilations, groups)
CONV_ND_CASES = [
    ("1d", (2, 3, 11), (4, 3, 3), (1,), (1, 1), (1,), 1),
    ("1d_stride_dil_asym", (1, 4, 17), (6, 2, 4), (3,), (2, 0), (2,), 2),
    ("1d_depthwise", (2, 3, 9), (6, 1, 2), (2,), (0, 1), (1,), 3),
    ("3d", (2, 2, 5, 6, 7), (3, 2, 3, 3, 3), (1, 1, 1), (1, 1, 1, 1, 1, 1), (1, 1, 1), 1),
    (
        "3d_strides_pads",
        (1, 3, 7, 6, 5),
        (4, 3, 2, 3, 2),
        (2, 1, 2),
        (0, 1, 2, 1, 0, 1),
        (1, 1, 1),
        1,
    ),
    (
        "3d_dil_groups",
        (1, 4, 8, 7, 6),
        (4, 2, 3, 2, 2),
        (1, 2, 1),
        (2, 0, 1, 1, 1, 0),
        (2, 1, 2),
        2,
    ),
    (
        "3d_big_depth_pad",
        (1, 1, 2, 4, 4),
        (2, 1, 3, 1, 1),
        (1, 1, 1),
        (3, 0, 0, 2, 0, 0),
        (1, 1, 1),
        1,
    ),
]


@pytest.mark.parametrize(
    "name,xs,ws,strides,pads,dilations,groups", CONV_ND_CASES, ids=[c[0] for c in CONV_ND_CASES]
)
def test_conv_1d_3d_match_onnxruntime(rng, name, xs, ws, strides, pads, dilations, groups):
    x, w = small_ints(rng, xs), small_ints(rng, ws)
    want = ort_run(
        "Conv",
        {"x": x.astype(np.float32), "w": w.astype(np.float32)},
        strides=list(strides),
        pads=list(pads),
        dilations=list(dilations),
        group=groups,
    )
    got = kernels.conv(x, w, strides, pads, dilations, groups)
    assert got.dtype == np.uint64 and got.flags.c_contiguous
    np.testing.assert_array_equal(got.view(np.int64), want.astype(np.int64))
    # Bilinear over the whole ring: wrap-around inputs agree with the 2-D kernel's exactness.
    xr, wr = ring(rng, xs), ring(rng, ws)
    lhs = kernels.conv(xr + x.view(np.uint64), wr, strides, pads, dilations, groups)
    rhs = kernels.conv(xr, wr, strides, pads, dilations, groups) + kernels.conv(
        x.view(np.uint64), wr, strides, pads, dilations, groups
    )
    np.testing.assert_array_equal(lhs, rhs)


# (input spatial shape, kernel, strides, pads, dilations, ceil_mode)
POOL_ND_CASES = [
    ((9,), (2,), (2,), (0, 0), (1,), False),
    ((10,), (3,), (2,), (1, 1), (2,), True),
    ((7,), (4,), (3,), (2, 1), (1,), True),
    ((4, 6, 6), (2, 2, 2), (2, 2, 2), (0, 0, 0, 0, 0, 0), (1, 1, 1), False),
    ((5, 7, 6), (3, 2, 3), (2, 2, 1), (1, 0, 1, 1, 1, 0), (1, 1, 1), True),
    ((7, 6, 7), (2, 3, 2), (2, 1, 3), (1, 1, 0, 0, 1, 1), (2, 1, 2), True),
]


@pytest.mark.parametrize("case", POOL_ND_CASES, ids=[pool_id(c) for c in POOL_ND_CASES])
def test_pooling_1d_3d_match_onnxruntime(rng, case):
    size, kernel, strides, pads, dilations, ceil = case
    x = small_ints(rng, (2, 3, *size))
    attrs = {
        "kernel_shape": list(kernel),
        "strides": list(strides),
        "pads": list(pads),
        "dilations": list(dilations),
        "ceil_mode": int(ceil),
    }
    xf = {"x": x.astype(np.float32)}
    shape = kernels.pool_output_shape(size, kernel, strides, pads, dilations, ceil)
    want_max = ort_run("MaxPool", xf, **attrs)
    windows = kernels.pool_windows(x, kernel, strides, pads, dilations, ceil, -(2**63))
    assert want_max.shape[2:] == shape and windows.shape == (2, 3, *shape, int(np.prod(kernel)))
    np.testing.assert_array_equal(windows.view(np.int64).max(axis=-1), want_max.astype(np.int64))
    sums = kernels.sum_pool(x, kernel, strides, pads, ceil, dilations).view(np.int64)
    taps = windows.view(np.int64)
    np.testing.assert_array_equal(sums, np.where(taps == -(2**63), 0, taps).sum(axis=-1))
    for include_pad in (False, True):
        want_avg = ort_run("AveragePool", xf, count_include_pad=int(include_pad), **attrs)
        counts = kernels.pool_counts(size, kernel, strides, pads, ceil, dilations, include_pad)
        assert counts.shape == shape and counts.min() >= 1
        np.testing.assert_allclose(sums / counts, want_avg, rtol=1e-6)


def test_conv_transpose_and_batched_matmul_are_exact_ring_maps(rng):
    """Bit-exact against Python-int references on full-range ring elements."""
    x, w = ring(rng, (2, 4, 3, 4)), ring(rng, (4, 3, 2, 3))  # groups 2: w (C, O/g, kh, kw)
    s, p, d, extra = (2, 1), (1, 0, 0, 1), (1, 2), (1, 0)
    got = kernels.conv_transpose(x, w, s, p, d, extra, groups=2)
    xo, wo = as_objects(x), as_objects(w)
    full = np.zeros((2, 6, 2 * 2 + 1 + 1 + 1, 3 + 2 * 2 + 1), dtype=object)
    for c in range(4):
        g = c // 2
        for o in range(3):
            for i in range(2):
                for j in range(3):
                    full[:, g * 3 + o, i : i + 3 * 2 : 2, j * 2 : j * 2 + 4] += (
                        xo[:, c] * wo[c, o, i, j]
                    )
    want = from_objects(full[:, :, 1:, : full.shape[3] - 1])
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)

    a, b = ring(rng, (3, 1, 4, 5)), ring(rng, (2, 5, 6))
    want = np.einsum("xyik,ykj->xyij", np.broadcast_to(as_objects(a), (3, 2, 4, 5)), as_objects(b))
    np.testing.assert_array_equal(kernels.batched_matmul(a, b), from_objects(want))
