"""The smooth ONNX ops through `mpcc.compile` and the secure protocols, against onnxruntime;
the fusions of the decomposed forms exporters emit; `keep_softmax`."""

from __future__ import annotations

import math

import numpy as np
import pytest

import mpcc
from mpcc.compiler.costmodel import estimate
from mpcc.errors import ModelError
from mpcc.runtime.cluster import LocalCluster
from tests.onnx_builders import model, node, run

RNG = np.random.default_rng(0)
X = (RNG.standard_normal((2, 3, 8)) * 3).astype(np.float32)
POS = (np.abs(X) + 0.05).astype(np.float32)
W8 = RNG.standard_normal(8).astype(np.float32)
B8 = RNG.standard_normal(8).astype(np.float32)


def _secure(m, x: np.ndarray, tol: float, keep_softmax: bool = False) -> mpcc.Plan:
    """Compile, run securely, compare with onnxruntime; the counted traffic is the model's."""
    ref = run(m, {"x": x})[0]
    plan = mpcc.compile(m, input_shape={"x": x.shape}, keep_softmax=keep_softmax)
    with LocalCluster(plan) as cluster:
        got = cluster.predict(x)
        stats = cluster.stats
    assert got.shape == ref.shape
    err = np.abs(got - ref).max()
    assert err <= tol, err
    want = estimate(plan.program).total
    assert stats.sent == (want.sent, want.sent)
    assert stats.rounds == want.rounds
    assert stats.dealer_bytes == want.dealer
    return plan


def _one(op: str, *extra: str, opset: int = 17, inits=None, **attrs):
    return model(
        [node(op, ["x", *extra], ["y"], **attrs)], {"x": X.shape}, ["y"], inits, opset=opset
    )


AXES = [((1,), 0), ((2,), 1), ((0, 2), 1), ((1, 2), 0)]


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceL2"])
@pytest.mark.parametrize("axes, keep", AXES)
def test_reduce_opset_18_axes_input(op, axes, keep) -> None:
    m = _one(op, "ax", opset=18, inits={"ax": np.array(axes, np.int64)}, keepdims=keep)
    _secure(m, X, 2e-3)


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax", "ReduceL2"])
def test_reduce_opset_13_axes_attribute(op) -> None:
    _secure(_one(op, opset=13, axes=[-1], keepdims=1), X, 2e-3)


def test_reduce_sum_opset_13_axes_input_and_all_axes() -> None:
    _secure(_one("ReduceSum", "ax", opset=13, inits={"ax": np.array([-2], np.int64)}), X, 1e-3)
    _secure(_one("ReduceMean", opset=13, keepdims=0), X, 1e-3)  # no axes: all of them


@pytest.mark.parametrize(
    "op, x, tol",
    [
        ("Sigmoid", X, 2**-10),
        ("Tanh", X, 2**-10),
        ("Erf", X, 2**-10),
        ("HardSigmoid", X, 2**-12),
        ("HardSwish", X, 2**-10),
        ("Exp", -POS, 2**-10),
        ("Exp", X / 2, 2**-10 * 100),  # e^x up to ~100 on x <= 8: relative 2^-10
        ("Sqrt", POS, 2**-9),
        ("Reciprocal", POS, 2**-10 * 20),  # 1/x up to 20: relative 2^-10
        ("Reciprocal", POS * np.sign(X), 2**-10 * 20),
        ("Log", POS, 2**-9),
    ],
)
def test_elementwise(op, x, tol) -> None:
    _secure(_one(op), x, tol)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate) -> None:
    _secure(_one("Gelu", opset=20, approximate=approximate), X, 2**-10)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax_inside_the_graph(op, axis) -> None:
    nodes = [node(op, ["x"], ["s"], axis=axis), node("Mul", ["s", "c"], ["y"])]
    m = model(nodes, {"x": X.shape}, ["y"], {"c": np.float32(2.0)})
    _secure(m, X, 2**-9)


def test_softmax_opset_11_coerces_to_2d() -> None:
    nodes = [node("Softmax", ["x"], ["s"], axis=1), node("Neg", ["s"], ["y"])]
    _secure(model(nodes, {"x": X.shape}, ["y"], opset=11), X, 2**-10)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_keep_softmax_computes_the_final_softmax(op) -> None:
    m = _one(op, axis=-1)
    plan = _secure(m, X, 2**-9, keep_softmax=True)
    assert not any("dropped final" in n for n in plan.program.notes)
    dropped = mpcc.compile(m, input_shape={"x": X.shape})
    assert any("dropped final" in n for n in dropped.program.notes)


def test_keep_softmax_on_the_command_line(tmp_path) -> None:
    import onnx

    from mpcc.cli import main
    from mpcc.compiler import planfile

    onnx.save(_one("Softmax", axis=-1), tmp_path / "m.onnx")
    out = tmp_path / "m.mpcc"
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(out), "--keep-softmax"]) == 0
    prog, _ = planfile.load(out)
    assert any(i.op.name == "reduce_sum" for i in prog.instrs)


@pytest.mark.parametrize("axis", [-1, 1])
def test_layernormalization(axis) -> None:
    shape = X.shape[axis:] if axis != -1 else X.shape[-1:]
    g, b = RNG.standard_normal(shape).astype(np.float32), RNG.standard_normal(shape)
    m = _one("LayerNormalization", "g", "b", inits={"g": g, "b": b}, axis=axis)
    _secure(m, X, 2**-8)


def test_pow_2_and_div_by_a_secret() -> None:
    nodes = [
        node("Pow", ["x", "two"], ["sq"]),
        node("ReduceSum", ["sq", "ax"], ["n"], keepdims=1),
        node("Div", ["x", "n"], ["y"]),
    ]
    inits = {"two": np.float32(2.0), "ax": np.array([-1], np.int64)}
    _secure(model(nodes, {"x": X.shape}, ["y"], inits), X, 2**-10)


def test_constant_over_a_secret() -> None:
    nodes = [node("Div", ["c", "x"], ["y"])]
    _secure(model(nodes, {"x": X.shape}, ["y"], {"c": np.float32(3.0)}), POS, 2**-10 * 60)


def test_lp_normalization() -> None:
    _secure(_one("LpNormalization", axis=-1, p=2), X, 2**-10)


# ---- fusions ---------------------------------------------------------------------------


def _fused(m, x: np.ndarray, tol: float, note: str) -> None:
    plan = _secure(m, x, tol)
    assert any(note in n for n in plan.program.notes), plan.program.notes


@pytest.mark.parametrize("twice", [False, True])
def test_decomposed_layernorm_is_fused(twice) -> None:
    """`twice`: the deviation computed by two Subs, as the dynamo exporter emits it."""
    nodes = [
        node("ReduceMean", ["x"], ["mu"], axes=[-1]),
        node("Sub", ["x", "mu"], ["d"]),
        *([node("Sub", ["x", "mu"], ["d_again"])] if twice else []),
        node("Pow", ["d_again" if twice else "d", "two"], ["d2"]),
        node("ReduceMean", ["d2"], ["var"], axes=[-1]),
        node("Add", ["var", "eps"], ["ve"]),
        node("Sqrt", ["ve"], ["sd"]),
        node("Div", ["d", "sd"], ["n"]),
        node("Mul", ["n", "g"], ["ng"]),
        node("Add", ["ng", "b"], ["y"]),
    ]
    inits = {"two": np.float32(2.0), "eps": np.float32(1e-5), "g": W8, "b": B8}
    m = model(nodes, {"x": X.shape}, ["y"], inits, opset=13)
    _fused(m, X, 2**-8, "fused a decomposed layer norm")


@pytest.mark.parametrize("form", ["div", "mul_half_first", "half_last"])
def test_gelu_erf_form_is_fused(form) -> None:
    if form == "div":
        nodes = [node("Div", ["x", "r2"], ["u"])]
    else:
        nodes = [node("Mul", ["x", "ir2"], ["u"])]
    nodes += [node("Erf", ["u"], ["e"]), node("Add", ["e", "one"], ["a"])]
    if form == "mul_half_first":
        nodes += [node("Mul", ["x", "half"], ["h"]), node("Mul", ["h", "a"], ["y"])]
    else:
        nodes += [node("Mul", ["x", "a"], ["p"]), node("Mul", ["p", "half"], ["y"])]
    inits = {
        "r2": np.float32(math.sqrt(2)),
        "ir2": np.float32(1 / math.sqrt(2)),
        "one": np.float32(1.0),
        "half": np.float32(0.5),
    }
    _fused(model(nodes, {"x": X.shape}, ["y"], inits), X, 2**-10, "erf form of GELU")


@pytest.mark.parametrize("cube", ["pow", "mul"])
def test_gelu_tanh_form_is_fused(cube) -> None:
    if cube == "pow":
        nodes = [node("Pow", ["x", "three"], ["x3"])]
    else:
        nodes = [node("Mul", ["x", "x"], ["xx"]), node("Mul", ["xx", "x"], ["x3"])]
    nodes += [
        node("Mul", ["x3", "c"], ["cx3"]),
        node("Add", ["x", "cx3"], ["inner"]),
        node("Mul", ["inner", "k"], ["ki"]),
        node("Tanh", ["ki"], ["t"]),
        node("Add", ["t", "one"], ["a"]),
        node("Mul", ["x", "half"], ["h"]),
        node("Mul", ["h", "a"], ["y"]),
    ]
    inits = {
        "three": np.float32(3.0),
        "c": np.float32(0.044715),
        "k": np.float32(math.sqrt(2 / math.pi)),
        "one": np.float32(1.0),
        "half": np.float32(0.5),
    }
    _fused(model(nodes, {"x": X.shape}, ["y"], inits), X, 2**-10, "tanh form of GELU")


def test_silu_is_fused() -> None:
    nodes = [node("Sigmoid", ["x"], ["s"]), node("Mul", ["x", "s"], ["y"])]
    _fused(model(nodes, {"x": X.shape}, ["y"]), X, 2**-10, "SiLU")


def test_l2_normalize_is_fused_through_clip_and_expand() -> None:
    nodes = [
        node("ReduceL2", ["x"], ["n"], axes=[-1], keepdims=1),
        node("Clip", ["n", "eps"], ["nc"]),
        node("Div", ["x", "nc"], ["y"]),
    ]
    m = model(nodes, {"x": X.shape}, ["y"], {"eps": np.float32(1e-12)}, opset=13)
    _fused(m, X, 2**-10, "L2 normalisation")


def test_unsupported_pow_names_the_node() -> None:
    m = _one("Pow", "e", inits={"e": np.float32(3.0)})
    with pytest.raises(ModelError, match=r"node 'y' \(op Pow\): exponent \[3.0\]"):
        mpcc.compile(m, input_shape={"x": X.shape})


# ---- a torch module through both exporters ------------------------------------------------


def _torch_block():
    import torch
    import torch.nn.functional as tf
    from torch import nn

    class HandNorm(nn.Module):
        """A layer norm written out, as older code does (exported decomposed)."""

        def forward(self, x):
            mu = x.mean(-1, keepdim=True)
            var = (x - mu).pow(2).mean(-1, keepdim=True)
            return (x - mu) / torch.sqrt(var + 1e-5)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.ln = nn.Linear(16, 32), nn.LayerNorm(32)
            self.l2, self.l3, self.hand = nn.Linear(32, 32), nn.Linear(32, 8), HandNorm()

        def forward(self, x):
            h = tf.gelu(self.ln(self.l1(x)))
            h = tf.gelu(self.l2(h), approximate="tanh") + tf.silu(h)
            a = torch.softmax(h.reshape(-1, 4, 8), dim=-1).reshape(-1, 32)
            h = torch.sigmoid(self.l3(a * h)) + torch.tanh(self.l3(h))
            h = self.hand(h)
            return h / h.norm(dim=-1, keepdim=True)

    torch.manual_seed(0)
    return Block().eval(), torch.randn(4, 16)


@pytest.mark.parametrize(
    "dynamo",
    [False, pytest.param(True, marks=pytest.mark.slow)],  # its export takes 25 s
)
def test_a_torch_block_with_every_smooth_op(dynamo) -> None:
    module, x = _torch_block()
    ref = module(x).detach().numpy()
    plan = mpcc.compile(module, example_input=x, dynamo=dynamo)
    notes = " ".join(plan.program.notes)
    assert "SiLU" in notes and "L2 normalisation" in notes and "layer norm" in notes
    with LocalCluster(plan) as cluster:
        got = cluster.predict(x.numpy())
        stats = cluster.stats
    assert np.abs(got - ref).max() <= 2e-3
    want = estimate(plan.program).total
    assert stats.sent == (want.sent, want.sent) and stats.dealer_bytes == want.dealer
