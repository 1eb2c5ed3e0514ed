"""Coverage beyond 2-D images, each op compiled with `mpcc.compile` and run in cleartext and
securely (LocalCluster) against onnxruntime, the transport's traffic equal to the cost model:
1-D and 3-D Conv / MaxPool / AveragePool, dilated AveragePool."""

from __future__ import annotations

import numpy as np
import pytest

import mpcc
from mpcc.compiler.costmodel import estimate
from mpcc.errors import ModelError
from mpcc.runtime.cleartext import predict
from tests.onnx_builders import model, node, rand, run


def w(*shape: int, seed: int = 1, scale: float = 0.5) -> np.ndarray:
    return (rand(*shape, seed=seed) * scale).astype(np.float32)


def check(m, x: np.ndarray, tol: float = 2e-3) -> mpcc.Plan:
    """Compile m for x; cleartext and secure outputs match onnxruntime within tol (relative to
    the largest output, at least 1), and the counted traffic is the cost model's."""
    ref = run(m, {"x": x})[0].astype(np.float64)
    plan = mpcc.compile(m, input_shape=x.shape)
    prog, weights = plan
    bound = tol * max(1.0, float(np.abs(ref).max()))
    clear = predict(prog, weights, x).reshape(ref.shape)
    assert np.abs(clear - ref).max() <= bound, prog.text()
    with mpcc.LocalCluster(plan) as cluster:
        secure = cluster.predict(x).reshape(ref.shape)
        stats = cluster.stats
    assert np.abs(secure - ref).max() <= bound, prog.text()
    want = estimate(prog).total
    assert (stats.rounds, stats.sent[0], stats.dealer_bytes) == (
        want.rounds,
        want.sent,
        want.dealer,
    )
    return plan


def one(op: str, shape, inits=None, inputs=("x",), opset: int = 17, **attrs):
    """A one-node model on input x of `shape` (inits: constant operands after x)."""
    names = [*inputs, *(inits or {})]
    return model([node(op, names, ["y"], **attrs)], {"x": shape}, ["y"], inits, opset=opset)


X1, X3 = (2, 3, 16), (2, 2, 5, 6, 7)

CASES = {
    # 1-D
    "conv1d": (one("Conv", X1, {"W": w(4, 3, 3), "B": w(4, seed=3)}, pads=[1, 1]), X1),
    "conv1d_stride_dilation_asym": (
        one("Conv", X1, {"W": w(6, 1, 4)}, group=3, strides=[2], dilations=[2], pads=[3, 0]),
        X1,
    ),
    "conv1d_same_lower": (
        one("Conv", X1, {"W": w(2, 3, 4)}, auto_pad="SAME_LOWER", strides=[3]),
        X1,
    ),
    "maxpool1d_ceil_pads_dilation": (
        one("MaxPool", X1, kernel_shape=[3], strides=[2], pads=[1, 1], dilations=[2], ceil_mode=1),
        X1,
    ),
    "maxpool1d_same_upper": (
        one("MaxPool", X1, kernel_shape=[3], strides=[2], auto_pad="SAME_UPPER"),
        X1,
    ),
    "avgpool1d_pow2": (one("AveragePool", X1, kernel_shape=[4], strides=[4]), X1),
    "avgpool1d_include_pad_ceil": (
        one(
            "AveragePool",
            X1,
            kernel_shape=[3],
            strides=[2],
            pads=[1, 2],
            ceil_mode=1,
            count_include_pad=1,
        ),
        X1,
    ),
    "avgpool1d_exclude_pad": (
        one("AveragePool", X1, kernel_shape=[5], strides=[3], pads=[2, 2]),
        X1,
    ),
    "global_pools_1d": (
        model(
            [
                node("GlobalAveragePool", ["x"], ["a"]),
                node("GlobalMaxPool", ["x"], ["m"]),
                node("Add", ["a", "m"], ["y"]),
            ],
            {"x": X1},
            ["y"],
        ),
        X1,
    ),
    # 3-D
    "conv3d": (
        one("Conv", X3, {"W": w(3, 2, 3, 3, 3), "B": w(3, seed=3)}, pads=[1] * 6),
        X3,
    ),
    "conv3d_strides_dilations_groups": (
        one(
            "Conv",
            X3,
            {"W": w(4, 1, 2, 3, 2)},
            group=2,
            strides=[2, 1, 2],
            dilations=[2, 1, 1],
            pads=[1, 0, 1, 0, 1, 1],
        ),
        X3,
    ),
    "conv3d_same_upper": (
        one("Conv", X3, {"W": w(2, 2, 2, 3, 3)}, auto_pad="SAME_UPPER", strides=[2, 2, 2]),
        X3,
    ),
    "maxpool3d": (one("MaxPool", X3, kernel_shape=[2, 2, 2], strides=[2, 2, 2]), X3),
    "maxpool3d_ceil_pads": (
        one(
            "MaxPool",
            X3,
            kernel_shape=[3, 2, 3],
            strides=[2, 2, 2],
            pads=[1, 0, 1, 1, 1, 0],
            ceil_mode=1,
        ),
        X3,
    ),
    "avgpool3d_exclude_pad_ceil": (
        one(
            "AveragePool",
            X3,
            kernel_shape=[2, 3, 3],
            strides=[2, 2, 2],
            pads=[1, 1, 1, 0, 1, 1],
            ceil_mode=1,
        ),
        X3,
    ),
    "avgpool3d_include_pad": (
        one("AveragePool", X3, kernel_shape=[3, 3, 3], pads=[1] * 6, count_include_pad=1),
        X3,
    ),
    "global_average_pool_3d": (one("GlobalAveragePool", X3), X3),
    # dilated AveragePool (opset 19)
    "avgpool2d_dilated": (
        one(
            "AveragePool",
            (2, 3, 9, 9),
            kernel_shape=[3, 3],
            dilations=[2, 2],
            pads=[1, 1, 2, 2],
            opset=19,
        ),
        (2, 3, 9, 9),
    ),
    "avgpool2d_dilated_ceil_include_pad": (
        one(
            "AveragePool",
            (2, 3, 9, 8),
            kernel_shape=[2, 3],
            strides=[2, 2],
            dilations=[2, 1],
            pads=[0, 1, 1, 1],
            ceil_mode=1,
            count_include_pad=1,
            opset=19,
        ),
        (2, 3, 9, 8),
    ),
    "avgpool1d_dilated": (
        one("AveragePool", X1, kernel_shape=[2], dilations=[3], strides=[2], opset=19),
        X1,
    ),
    "avgpool3d_dilated": (
        one("AveragePool", X3, kernel_shape=[2, 2, 2], dilations=[2, 1, 2], opset=19),
        X3,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_matches_onnxruntime_securely(name: str) -> None:
    m, shape = CASES[name]
    check(m, (rand(*shape, seed=7) * 1.5).astype(np.float32))


# ---- MatMul and Gemm by constants of any rank, either side ------------------------------------

XM = (2, 3, 4, 6)

MATMUL_CASES = {
    "matmul_by_rank3_stack": ((2, 4, 6), "xw", w(2, 6, 5)),
    "matmul_by_rank4_broadcast": (XM, "xw", w(1, 3, 6, 5)),
    "matmul_rank2_secret_by_stack": ((4, 6), "xw", w(3, 6, 5)),
    "matmul_stack_broadcasts_secret": ((2, 1, 4, 6), "xw", w(3, 6, 5)),
    "matmul_by_vector": (XM, "xw", w(6)),
    "matmul_vector_secret_by_stack": ((6,), "xw", w(2, 6, 3)),
    "matmul_constant_first_2d": (XM, "wx", w(5, 4)),
    "matmul_constant_first_rank3": ((2, 4, 6), "wx", w(2, 5, 4)),
    "matmul_constant_first_rank4": (XM, "wx", w(2, 1, 5, 4)),
    "matmul_constant_vector_first": (XM, "wx", w(4)),
    "matmul_constant_first_secret_vector": ((4,), "wx", w(3, 5, 4)),
}


@pytest.mark.parametrize("name", sorted(MATMUL_CASES))
def test_matmul_by_constants_of_any_rank(name: str) -> None:
    shape, order, c = MATMUL_CASES[name]
    inputs = ["x", "W"] if order == "xw" else ["W", "x"]
    m = model([node("MatMul", inputs, ["y"])], {"x": shape}, ["y"], {"W": c})
    plan = check(m, (rand(*shape, seed=7) * 1.5).astype(np.float32))
    # one product (a single Beaver triple), whatever the ranks: the rest is local movement
    assert [i.op.name for i in plan.program.instrs].count("matmul") == 1


@pytest.mark.parametrize("trans_a, trans_b", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_gemm_with_a_constant_first_operand(trans_a: int, trans_b: int) -> None:
    a = w(5, 4) if trans_a else w(4, 5)
    xs = (3, 5) if trans_b else (5, 3)
    m = model(
        [node("Gemm", ["A", "x", "C"], ["y"], transA=trans_a, transB=trans_b, alpha=0.5, beta=2.0)],
        {"x": xs},
        ["y"],
        {"A": a, "C": w(4, 1, seed=3)},
    )
    check(m, (rand(*xs, seed=7) * 1.5).astype(np.float32))


# ---- Pad in reflect, edge and wrap modes: local copies of elements -----------------------------

PAD_CASES = {
    "reflect_4d": ("reflect", (2, 3, 6, 7), [0, 0, 2, 1, 0, 0, 1, 3], None, 17),
    "edge_4d": ("edge", (2, 3, 6, 7), [0, 1, 2, 3, 0, 2, 0, 4], None, 17),
    "reflect_1d_signal": ("reflect", (2, 3, 9), [0, 0, 3, 0, 0, 2], None, 17),
    "edge_axes_input": ("edge", (2, 3, 4, 5, 6), [1, 2, 3, 0], [2, -1], 18),
    "wrap": ("wrap", (2, 3, 6, 7), [0, 0, 2, 3, 0, 0, 1, 2], None, 19),
}


@pytest.mark.parametrize("name", sorted(PAD_CASES))
def test_pad_modes(name: str) -> None:
    mode, shape, pads, axes, opset = PAD_CASES[name]
    inits = {"pads": np.array(pads, np.int64)}
    inputs = ["x", "pads"]
    if axes is not None:
        inits |= {"value": np.float32(0.0), "axes": np.array(axes, np.int64)}
        inputs += ["value", "axes"]
    m = model([node("Pad", inputs, ["y"], mode=mode)], {"x": shape}, ["y"], inits, opset=opset)
    plan = check(m, (rand(*shape, seed=7) * 1.5).astype(np.float32))
    assert [i.op.name for i in plan.program.instrs] == ["input", "pad", "output"]
    assert estimate(plan.program).total.rounds == 0


def test_reflect_pads_larger_than_the_axis_are_refused() -> None:
    m = model(
        [node("Pad", ["x", "pads"], ["y"], mode="reflect")],
        {"x": (1, 2, 3)},
        ["y"],
        {"pads": np.array([0, 0, 3, 0, 0, 0], np.int64)},
    )
    with pytest.raises(ModelError, match="reflect pads .* smaller than the axes"):
        mpcc.compile(m, input_shape=(1, 2, 3))


# ---- ConvTranspose: a bilinear map like Conv (one Beaver triple, the weight masked once) -------

CONV_T_CASES = {
    "1d_stride_output_padding": (
        (2, 3, 7),
        (3, 2, 3),
        dict(strides=[2], pads=[1, 0], output_padding=[1]),
    ),
    "2d": ((2, 4, 5, 6), (4, 3, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "2d_groups_dilations": (
        (1, 4, 4, 5),
        (4, 3, 3, 2),
        dict(strides=[2, 3], pads=[1, 0, 0, 2], dilations=[1, 2], output_padding=[1, 0], group=2),
    ),
    "2d_same_upper_odd": ((1, 2, 5, 5), (2, 3, 4, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    "2d_same_lower_odd": ((1, 2, 5, 5), (2, 3, 4, 3), dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    "2d_output_shape": ((1, 2, 4, 4), (2, 2, 3, 3), dict(strides=[2, 2], output_shape=[8, 9])),
    "3d": (
        (1, 2, 3, 4, 3),
        (2, 2, 2, 3, 2),
        dict(
            strides=[2, 1, 2],
            pads=[0, 1, 1, 0, 0, 1],
            dilations=[1, 1, 2],
            output_padding=[0, 0, 1],
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(CONV_T_CASES))
def test_conv_transpose(name: str) -> None:
    xs, ws, attrs = CONV_T_CASES[name]
    inits = {"W": w(*ws), "B": w(ws[1] * attrs.get("group", 1), seed=3)}
    m = one("ConvTranspose", xs, inits, **attrs)
    plan = check(m, (rand(*xs, seed=7) * 1.5).astype(np.float32))
    assert [i.op.name for i in plan.program.instrs] == ["input", "conv_transpose", "output"]
    assert estimate(plan.program).total.rounds == 1


# ---- Resize / Upsample in nearest mode: local copies of elements -------------------------------

RESIZE_CASES = {
    "scales_2x": ((2, 3, 4, 5), dict(), [1, 1, 2, 2], None, 13),
    "scales_fractional_half_pixel": ((2, 3, 6, 5), dict(), [1, 1, 1.5, 0.6], None, 13),
    "sizes_asymmetric_floor": (
        (2, 3, 4, 5),
        dict(coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        None,
        [2, 3, 7, 9],
        13,
    ),
    "sizes_align_corners_ceil": (
        (1, 2, 5, 4),
        dict(coordinate_transformation_mode="align_corners", nearest_mode="ceil"),
        None,
        [1, 2, 8, 3],
        13,
    ),
    "pytorch_half_pixel_prefer_ceil_3d": (
        (1, 2, 3, 4, 5),
        dict(coordinate_transformation_mode="pytorch_half_pixel", nearest_mode="round_prefer_ceil"),
        [1, 1, 2, 1.5, 0.8],
        None,
        13,
    ),
    "scales_1d": ((2, 3, 7), dict(), [1, 1, 3], None, 13),
    "axes_opset18": ((2, 3, 4, 5), dict(axes=[2, 3]), [2, 3], None, 18),
}


@pytest.mark.parametrize("name", sorted(RESIZE_CASES))
def test_resize_nearest(name: str) -> None:
    shape, attrs, scales, sizes, opset = RESIZE_CASES[name]
    inits = {"roi": np.zeros(0, np.float32)}
    if scales is not None:
        inits["scales"] = np.array(scales, np.float32)
        inputs = ["x", "roi", "scales"]
    else:
        inits["scales"] = np.zeros(0, np.float32)
        inits["sizes"] = np.array(sizes, np.int64)
        inputs = ["x", "roi", "scales", "sizes"]
    m = model([node("Resize", inputs, ["y"], mode="nearest", **attrs)], {"x": shape}, ["y"], inits,
              opset=opset)  # fmt: skip
    plan = check(m, (rand(*shape, seed=7) * 1.5).astype(np.float32))
    assert [i.op.name for i in plan.program.instrs] == ["input", "resize", "output"]


def test_upsample_nearest_opset9() -> None:
    m = model(
        [node("Upsample", ["x", "scales"], ["y"], mode="nearest")],
        {"x": (2, 3, 4, 5)},
        ["y"],
        {"scales": np.array([1, 1, 2, 3], np.float32)},
        opset=9,
    )
    check(m, (rand(2, 3, 4, 5, seed=7) * 1.5).astype(np.float32))


def test_resize_linear_is_refused() -> None:
    m = model(
        [node("Resize", ["x", "", "scales"], ["y"], mode="linear")],
        {"x": (1, 1, 4, 4)},
        ["y"],
        {"scales": np.array([1, 1, 2, 2], np.float32)},
    )
    with pytest.raises(ModelError, match="only mode 'nearest'"):
        mpcc.compile(m, input_shape=(1, 1, 4, 4))


@pytest.mark.parametrize("groups", [1, 2])
def test_batchnorm_and_scale_after_conv_transpose_fold_into_it(groups: int) -> None:
    xs = (2, 4, 5, 5)
    pos = (np.abs(rand(6, seed=4)) + 0.5).astype(np.float32)
    m = model(
        [
            node("ConvTranspose", ["x", "W", "B"], ["c"], strides=[2, 2], group=groups),
            node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"]),
            node("Mul", ["n", "k"], ["y"]),
        ],
        {"x": xs},
        ["y"],
        {
            "W": w(4, 6 // groups, 3, 3),
            "B": w(6, seed=3),
            "g": w(6, seed=5),
            "b": w(6, seed=6),
            "m": w(6, seed=8),
            "v": pos,
            "k": w(1, 6, 1, 1, seed=9),
        },
    )
    plan = check(m, (rand(*xs, seed=7) * 1.5).astype(np.float32))
    assert [i.op.name for i in plan.program.instrs] == ["input", "conv_transpose", "output"]
