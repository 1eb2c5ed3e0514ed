"""Precision from calibration data: f chosen from real inputs' ranges, the headroom and
resolution report, the warning for tiny outputs, the refusal of an overflow, and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import mpcc
from mpcc.cli import main
from mpcc.compiler import calibrate as cal
from mpcc.compiler import passes
from mpcc.compiler.graph import Graph
from mpcc.compiler.ir import MAX_FRAC_BITS, MIN_FRAC_BITS
from mpcc.compiler.report import format_report, report_json
from mpcc.errors import ModelError
from mpcc.frontends.onnx import load
from mpcc.zoo.reference import run_onnxruntime
from tests.onnx_builders import model, node, rand, run

# Distinct columns, so the two outputs differ (equal ones would rightly warn of a tied argmax).
W2 = np.array([[1, 0], [0, 1], [1, 0], [0, 0.5]], np.float32)


def _mlp(w1: np.ndarray, w2: np.ndarray = W2):
    """x [1, 4] -> MatMul w1 -> Relu -> MatMul w2 -> y."""
    return model(
        [
            node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            node("Relu", ["h"], ["r"], name="act"),
            node("MatMul", ["r", "w2"], ["y"], name="fc2"),
        ],
        {"x": [1, 4]},
        ["y"],
        {"w1": w1, "w2": w2},
    )


def _calibrated(m, x, frac_bits=None):
    proto = load(m)
    g = passes.run_all(Graph.from_onnx(proto))
    return cal.calibrate(proto, g, x, frac_bits)


@pytest.fixture(scope="module")
def lenet_calibrated(zoo_model, digits_test):
    path = zoo_model("lenet")
    x = digits_test[0]
    plan = mpcc.compile(path, input_shape=(4, 1, 28, 28), calibrate=x[:100])
    return path, plan


def test_demo_model_gets_the_largest_f_and_a_report(lenet_calibrated) -> None:
    _, plan = lenet_calibrated
    rep = plan.calibration
    assert rep is not None and rep.chosen and rep.samples == 100
    # LeNet's values (|logits| < 30 on the digits) leave room at every f: the IR's most.
    assert plan.program.frac_bits == rep.frac_bits == MAX_FRAC_BITS
    assert not rep.warnings
    by_tensor = {v.tensor: v for v in rep.values}
    assert by_tensor["input"].max == pytest.approx(1.0, abs=1e-6)  # digits are in [0, 1]
    logits = by_tensor["logits"]
    assert 5 < logits.max < 100 and logits.scale == 2 * rep.frac_bits
    assert all(v.headroom() >= cal.MARGIN_BITS for v in rep.values)
    assert all(not v.bound for v in rep.values)  # every value of LeNet is a measured tensor
    assert not rep.unmapped
    # Every instruction's output but the final `output` has a line.
    assert len(rep.values) == len(plan.program.instrs) - 1
    # The passes moved each Relu after its MaxPool: the ONNX Relu outputs are not in the plan.
    assert any("Relu" in t for t in rep.measured.folded)
    assert rep.measured.reference["logits"] < 1e-4  # the rewritten float graph is the model
    samples, max_err, _, agree = rep.fixed_point["logits"]  # the plan's cleartext arithmetic
    assert samples == 100 and agree == 1.0 and max_err < 1e-4
    text = str(plan)
    assert f"precision at f={MAX_FRAC_BITS}, chosen from 100 calibration samples" in text
    assert "headroom" in text and "output 'logits': rms" in text and "warning:" not in text
    assert f"f={MAX_FRAC_BITS} chosen from calibration data" in plan.program.notes[-1]
    data = report_json(plan.program, calibration=rep)["precision"]
    assert data["calibrated"] and data["frac_bits"] == MAX_FRAC_BITS
    assert len(data["values"]) == len(rep.values)
    json.dumps(data)


def test_calibrated_plan_matches_onnxruntime_securely(lenet_calibrated, digits_test) -> None:
    path, plan = lenet_calibrated
    x = digits_test[0][200:208]
    with mpcc.LocalCluster(plan) as cluster:
        secure = cluster.predict(x)
    plain = run_onnxruntime(path, x)
    assert (secure.argmax(1) == plain.argmax(1)).all()
    # At f = 24 the logits are within a few 2^-24 rounding steps per layer of the float model.
    assert np.abs(secure - plain).max() < 1e-4


def test_f_is_the_largest_that_keeps_the_margin() -> None:
    w1 = np.eye(4, dtype=np.float32)
    w2 = W2
    x = 1e5 * np.abs(rand(64, 4, seed=1))
    rep = _calibrated(_mlp(w1, w2), x)
    y = np.maximum(x.astype(np.float64) @ w1, 0) @ w2  # at scale 2f: the tightest
    want = math.floor((62 - cal.MARGIN_BITS - math.log2(np.abs(y).max())) / 2)
    assert MIN_FRAC_BITS < want < MAX_FRAC_BITS
    assert rep.frac_bits == want and not rep.warnings
    assert f"f={want + 1} would leave less than {cal.MARGIN_BITS} bits" in rep.limit
    assert "'y'" in rep.limit
    # One more bit is within the ring but not within the margin: checked, with a warning.
    with pytest.warns(cal.CalibrationWarning, match="bits of headroom"):
        tighter = _calibrated(_mlp(w1, w2), x, frac_bits=want + 1)
    assert not tighter.chosen and tighter.frac_bits == want + 1


def test_overflowing_calibration_data_is_refused() -> None:
    w1 = 1e5 * np.eye(4, dtype=np.float32)
    x = 1e9 * np.abs(rand(8, 4, seed=2))  # fc1 gives ~1e14 > 2^46, the bound at f = 8
    with pytest.raises(ModelError, match=r"tensor 'h', node 'fc1'.*overflow the ring at f=8"):
        _calibrated(_mlp(w1, 1e-3 * np.ones((4, 2), np.float32)), x)
    # The same data at a given f too large for it: refused as well, naming that f.
    small = 1e5 * np.abs(rand(8, 4, seed=2))
    with pytest.raises(ModelError, match=r"f=24 \(the f given\)"):
        _calibrated(_mlp(np.eye(4, dtype=np.float32) * 1e3), small, 24)


def test_untrained_model_with_tiny_logits_warns(digits_test) -> None:
    pytest.importorskip("torch")
    import torch

    from mpcc.zoo.architectures import MobileNetV2Untrained

    torch.manual_seed(0)
    x = digits_test[0][:16].copy()
    proto = mpcc.export_onnx(MobileNetV2Untrained().eval(), x[:1], dynamo=False)
    with pytest.warns(cal.CalibrationWarning, match="argmax can become noise"):
        plan = mpcc.compile(proto, calibrate=x)
    rep = plan.calibration
    ((name, out, gap),) = rep.outputs
    assert out.rms < 1e-4 and rep.lsbs(out.rms) < cal.MIN_OUTPUT_LSBS
    assert f"warning: output {name!r}" in str(plan)
    # BatchNormalization folded into the convs: their raw outputs have no value in the plan.
    assert rep.measured.folded
    # Calibration chose f = 24; the plan's own fixed-point arithmetic on the calibration
    # samples shows what that buys: at f = 16 (where the logits are a third of an LSB) the
    # error is a visible part of the logits, and that is measured and warned about too.
    assert rep.frac_bits == MAX_FRAC_BITS
    samples, _, rms24, agree24 = rep.fixed_point[name]
    assert samples == 16 and agree24 is not None
    with pytest.warns(cal.CalibrationWarning) as caught:
        at16 = mpcc.compile(proto, calibrate=x, frac_bits=16).calibration
    assert any("plan's fixed-point" in str(w.message) for w in caught)
    _, _, rms16, _ = at16.fixed_point[name]
    assert rms16 > 0.01 * out.rms > rms24


def test_input_check_and_multi_input_names() -> None:
    m = _mlp(np.eye(4, dtype=np.float32))
    with pytest.raises(ModelError, match=r"shape \[8, 3\]; expected \[N, 4\]"):
        _calibrated(m, np.ones((8, 3), np.float32))
    with pytest.raises(ModelError, match="no array for input"):
        _calibrated(m, {"z": np.ones((8, 4), np.float32)})
    rep = _calibrated(m, {"x": np.ones((3, 4), np.float32)})  # by name; 3 rows, batch 1
    assert rep.samples == 3


def test_report_without_calibration_states_its_assumptions(zoo_model) -> None:
    plan = mpcc.compile(zoo_model("lenet"), input_shape=(1, 1, 28, 28))
    assert plan.calibration is None and plan.program.frac_bits == 16
    text = format_report(plan.program)
    assert "precision at f=16 (assumed, not measured" in text
    assert "resolution 2^-16" in text and "100 LSBs = 0.00153" in text
    assert "@32: |v| < 2^30" in text  # the layer outputs, at 2f
    assert report_json(plan.program)["precision"]["calibrated"] is False


def test_cli_compile_with_calibration(zoo_model, digits_test, tmp_path, capsys) -> None:
    np.save(tmp_path / "x.npy", digits_test[0][:40])
    out = tmp_path / "lenet.mpcc"
    args = ["compile", str(zoo_model("lenet")), "--calibrate", str(tmp_path / "x.npy")]
    assert main([*args, "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "chosen from 40 calibration samples" in text and f"wrote {out}" in text
    assert mpcc.load(out).program.frac_bits == MAX_FRAC_BITS
    assert main(["inspect", str(out)]) == 0
    assert f"precision at f={MAX_FRAC_BITS} (calibrated when compiled" in capsys.readouterr().out
    assert main([*args, "-o", str(out), "--frac-bits", "12", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)["precision"]
    assert data["frac_bits"] == 12 and not data["chosen"] and data["samples"] == 40


def test_cli_warns_and_refuses(tmp_path, capsys) -> None:
    path = tmp_path / "tiny.onnx"
    import onnx

    onnx.save(_mlp(1e-4 * np.eye(4, dtype=np.float32)), path)
    np.save(tmp_path / "x.npy", np.abs(rand(16, 4, seed=3)) * 1e-3)
    assert main(["compile", str(path), "--calibrate", str(tmp_path / "x.npy")]) == 0
    captured = capsys.readouterr()
    assert "mpcc: warning: output 'y'" in captured.err and "warning: output 'y'" in captured.out
    np.save(tmp_path / "big.npy", np.abs(rand(16, 4, seed=3)) * 1e17)
    assert main(["compile", str(path), "--calibrate", str(tmp_path / "big.npy")]) == 2
    err = capsys.readouterr().err
    assert "mpcc: error: calibration:" in err and "overflow" in err
    assert main(["compile", str(path), "--calibrate", str(tmp_path / "none.npy")]) == 2
    assert "no input file" in capsys.readouterr().err


def test_values_inside_a_nodes_lowering_are_bounded() -> None:
    """PRelu lowers to relu, x - relu(x), slope * that, and a sum: the parts hold no ONNX
    tensor; their bound must cover what they hold."""
    w, slope = rand(4, 3), np.float32([0.1, 0.2, 3.0])
    m = model(
        [
            node("MatMul", ["x", "w"], ["h"], name="fc"),
            node("PRelu", ["h", "s"], ["y"], name="prelu"),
        ],
        {"x": [2, 4]},
        ["y"],
        {"w": w, "s": slope},
    )
    x = rand(10, 4, seed=3)
    rep = _calibrated(m, x)
    inside = {v.op: v for v in rep.values if v.bound}
    assert set(inside) >= {"relu", "sub", "mul_w"}
    assert all(v.node == "prelu" for v in inside.values())
    h = x.astype(np.float64) @ w
    assert inside["sub"].max >= np.abs(np.minimum(h, 0)).max()
    assert inside["mul_w"].max >= np.abs(slope * np.minimum(h, 0)).max()
    assert "value(s) internal to a node's lowering" in rep.text()


def test_softmax_inside_the_graph_calibrates_and_checks_its_fixed_point() -> None:
    """A Softmax mid-graph lowers to a smooth-function approximation: calibration still
    chooses f, and the plan's own fixed-point outputs are measured against the float model
    (whether or not onnxruntime takes the rewritten graph)."""
    m = model(
        [
            node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            node("Softmax", ["h"], ["p"], name="sm", axis=-1),
            node("MatMul", ["p", "w2"], ["y"], name="fc2"),
        ],
        {"x": [1, 8]},
        ["y"],
        {"w1": rand(8, 8, seed=4), "w2": rand(8, 3, seed=5)},
    )
    x = rand(32, 8, seed=6)
    plan = mpcc.compile(m, calibrate=x)
    rep = plan.calibration
    assert MIN_FRAC_BITS <= rep.frac_bits <= MAX_FRAC_BITS
    n, max_err, _, agree = rep.fixed_point["y"]
    assert n == 32 and max_err < 1e-2 and agree is not None and agree >= 0.9
    y = run(m, {"x": x[:1]})[0]
    assert np.abs(rep.measured.outputs["y"][:1] - y).max() < 1e-5  # the float reference
