"""Value ranges: MaxPool padding, scale budget of power-of-two average pools, and the errors
for inputs and options outside the range mpcc can represent."""

from __future__ import annotations

import numpy as np
import pytest

from mpcc.compiler.ir import SLACK_BITS
from mpcc.compiler.pipeline import compile_onnx
from mpcc.errors import InputError, ModelError, MpccError
from mpcc.runtime.cleartext import predict
from mpcc.runtime.cluster import LocalCluster
from mpcc.runtime.fixedpoint import encode
from mpcc.runtime.rules import pool as pool_rules
from tests.onnx_builders import model, node, rand, run
from tests.test_ops import check_cleartext_and_secure


def _check(m, x: np.ndarray, tol: float):
    ref = run(m, {"x": x})[0].astype(np.float64)
    return check_cleartext_and_secure(m, x, ref, tol)


# ---- MaxPool padding ------------------------------------------------------------------------


def test_maxpool_pad_is_below_every_legal_value_and_within_the_comparison_range() -> None:
    # MaxPool inputs must satisfy |x| < 2^61 (so that a - b of any two is within the
    # comparison's |x| < 2^62); the pad sits at the bottom of that range.
    assert pool_rules.MAXPOOL_PAD == -(2**61)
    legal = (-(2**61) + 1, 2**61 - 1)
    assert all(abs(pool_rules.MAXPOOL_PAD - v) < 2**62 for v in legal)
    assert all(pool_rules.MAXPOOL_PAD < v for v in legal)


def test_padded_maxpool_of_strongly_negative_values_at_scale_2f() -> None:
    # A 1x1 conv with weight 1 leaves x at 2f = 32 fractional bits; the padded pool sees
    # values around -4e8 * 2^32 ~ -2^60.6, below the old pad (-2^60), inside |x| < 2^61.
    m = model(
        [
            node("Conv", ["x", "W"], ["c"]),
            node("MaxPool", ["c"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        ],
        {"x": [1, 2, 5, 5]},
        ["y"],
        {"W": np.eye(2, dtype=np.float32).reshape(2, 2, 1, 1)},
    )
    x = (-3.0e8 - 1.5e8 * np.abs(rand(1, 2, 5, 5, seed=3))).astype(np.float32)
    x = np.maximum(x, -4.5e8).astype(np.float32)
    prog = _check(m, x, tol=1e-3 * 4.5e8)
    pool = next(i for i in prog.instrs if i.op.name == "maxpool")
    assert prog.value(pool.args[0]).scale == 2 * prog.frac_bits


# ---- the scale budget -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pools", "side"),
    [
        ([dict(kernel_shape=[2, 2], strides=[2, 2])] * 5, 32),
        ([dict(kernel_shape=[4, 4], strides=[4, 4])] * 2 + ["global"], 64),
    ],
    ids=["avgpool2x2_x5", "avgpool4x4_x2_then_global"],
)
def test_stacked_power_of_two_average_pools_stay_within_the_scale_budget(pools, side) -> None:
    # Each pool adds k fractional bits to the conv's 2f (the window sum is the mean at k
    # more bits): 10 or 12 bits in all, past the budget 2f + SLACK_BITS. Values ~2^21 would
    # then overflow the ring; within the budget they are far inside it.
    nodes, prev = [node("Conv", ["x", "W"], ["c"])], "c"
    for i, p in enumerate(pools):
        out = f"p{i}"
        if p == "global":
            nodes.append(node("GlobalAveragePool", [prev], [out]))
        else:
            nodes.append(node("AveragePool", [prev], [out], **p))
        prev = out
    nodes.append(node("Relu", [prev], ["y"]))
    w = np.ones((1, 1, 1, 1), np.float32)
    m = model(nodes, {"x": [1, 1, side, side]}, ["y"], {"W": w})
    x = (1.5e6 + 5e5 * rand(1, 1, side, side, seed=4)).astype(np.float32)
    prog = _check(m, x, tol=1e-3 * 2e6)
    budget = 2 * prog.frac_bits + SLACK_BITS
    assert max(prog.value(i.out).scale for i in prog.instrs) <= budget, prog.text()
    assert [i.op.name for i in prog.instrs].count("trunc") == 1, prog.text()


def test_average_pool_with_a_large_non_power_of_two_window_stays_within_the_budget() -> None:
    # A global mean over 20x20 = 400 positions: the reciprocal's bits are capped.
    m = model(
        [node("GlobalAveragePool", ["x"], ["g"]), node("Relu", ["g"], ["y"])],
        {"x": [1, 3, 20, 20]},
        ["y"],
    )
    x = rand(1, 3, 20, 20, seed=5) + 0.5
    prog = _check(m, x, tol=2e-3)
    budget = 2 * prog.frac_bits + SLACK_BITS
    assert max(prog.value(i.out).scale for i in prog.instrs) <= budget, prog.text()


# ---- errors ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_plan():
    m = model(
        [node("Gemm", ["x", "W"], ["y"], transB=1)], {"x": ["N", 4]}, ["y"], {"W": rand(3, 4)}
    )
    return compile_onnx(m, (2, 4))


def test_encode_rejects_values_outside_the_range_with_an_input_error() -> None:
    limit = 2.0**46  # |x| < 2^62 at 16 fractional bits
    assert encode(np.array([limit - 1, -(limit - 1)]), 16).view(np.int64)[0] > 0
    for bad in (limit, -limit, 1e30, np.nan, np.inf):
        with pytest.raises(InputError, match=r"2\^46"):
            encode(np.array([0.0, bad]), 16)


@pytest.mark.parametrize("bad", [1e20, np.nan])
def test_out_of_range_input_raises_input_error_in_cleartext_and_secure(small_plan, bad) -> None:
    prog, weights = small_plan
    x = np.zeros((2, 4))
    x[1, 2] = bad
    with pytest.raises(InputError, match=r"within \|v\| < 2\^46"):
        predict(prog, weights, x)
    with LocalCluster(prog, weights) as cluster:
        with pytest.raises(InputError, match="within"):
            cluster.predict(x)
        x[1, 2] = 0.5  # the session goes on: the bad input used no material
        want = predict(prog, weights, x)
        assert np.abs(cluster.predict(x) - want).max() < 1e-3


def test_empty_input_raises_input_error(small_plan) -> None:
    prog, weights = small_plan
    x = np.zeros((0, 4))
    with pytest.raises(InputError, match=r"n >= 1 samples"):
        predict(prog, weights, x)
    with LocalCluster(prog, weights) as cluster, pytest.raises(InputError, match=r"n >= 1 samples"):
        cluster.predict(x)


def test_weights_outside_the_range_raise_model_error() -> None:
    m = model(
        [node("Gemm", ["x", "W"], ["y"], transB=1)],
        {"x": [1, 4]},
        ["y"],
        {"W": np.full((3, 4), 1e30, np.float32)},
    )
    prog, weights = compile_onnx(m, (1, 4))
    with pytest.raises(ModelError, match="weight"):
        predict(prog, weights, np.zeros((1, 4)))


@pytest.mark.parametrize("frac_bits", [4, 30])
def test_frac_bits_out_of_range_is_a_user_error(small_plan, frac_bits) -> None:
    m = model([node("Relu", ["x"], ["y"])], {"x": [1, 4]}, ["y"])
    with pytest.raises(ModelError, match="frac_bits") as info:
        compile_onnx(m, (1, 4), frac_bits=frac_bits)
    assert isinstance(info.value, MpccError)


def test_cli_reports_bad_frac_bits_and_inputs_cleanly(tmp_path, capsys) -> None:
    from mpcc.cli import main

    m = model([node("Gemm", ["x", "W"], ["y"], transB=1)], {"x": [1, 4]}, ["y"], {"W": rand(3, 4)})
    src, plan = tmp_path / "m.onnx", tmp_path / "m.mpcc"
    src.write_bytes(m.SerializeToString())
    assert main(["compile", str(src), "--frac-bits", "30", "-o", str(plan)]) == 2
    assert "frac_bits must be between 8 and 24, got 30" in capsys.readouterr().err
    assert main(["compile", str(src), "-o", str(plan)]) == 0
    for name, x in [("big", np.full((1, 4), 1e20)), ("empty", np.zeros((0, 4)))]:
        np.save(tmp_path / f"{name}.npy", x)
        capsys.readouterr()
        assert main(["run", str(plan), "--input", str(tmp_path / f"{name}.npy")]) == 2
        err = capsys.readouterr().err
        assert ("within |v| < 2^46" if name == "big" else "n >= 1 samples") in err, err
