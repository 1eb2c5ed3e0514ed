"""ONNX LSTM and GRU unrolled by mpcc.compiler.recurrent: the expansion computes what
onnxruntime's own LSTM/GRU kernels compute (to float rounding), for every supported attribute,
and what is not supported is refused by name."""

from __future__ import annotations

import numpy as np
import pytest

from mpcc.compiler.passes import run_all
from mpcc.compiler.recurrent import expand_recurrent
from mpcc.errors import ModelError
from tests.onnx_builders import check_graph, feeds_for, graph_of, model, node, ops, rand, run

SEQ, BATCH, IN, HID = 5, 3, 4, 6
GATES = {"LSTM": 4, "GRU": 3}


def rnn_model(
    op: str,
    direction: str = "forward",
    layout: int = 0,
    init: str = "none",
    peephole: bool = False,
    outputs: tuple[str, ...] = ("Y", "Y_h", "Y_c"),
    emulate: bool = False,
    **attrs,
):
    """One LSTM/GRU node on input x; `init` none | const | input (initial states).

    With `emulate`, layout 1 is a layout-0 node between Transposes (onnxruntime has no
    kernel for layout 1): the same function of the same inputs and initializers."""
    dirs = 2 if direction == "bidirectional" else 1
    gh = GATES[op] * HID
    inits = {
        "W": rand(dirs, gh, IN, seed=1) * 0.5,
        "R": rand(dirs, gh, HID, seed=2) * 0.5,
        "B": rand(dirs, 2 * gh, seed=3) * 0.5,
    }
    x_shape = (SEQ, BATCH, IN) if layout == 0 else (BATCH, SEQ, IN)
    s_shape = (dirs, BATCH, HID) if layout == 0 else (BATCH, dirs, HID)
    inputs = {"x": x_shape}
    names = ["x", "W", "R", "B", "", "", ""]
    states = ["h0", "c0"] if op == "LSTM" else ["h0"]
    for i, t in enumerate(states):
        if init == "const":
            inits[t] = rand(*s_shape, seed=4 + i)
        elif init == "input":
            inputs[t] = s_shape
        if init != "none":
            names[5 + i] = t
    if peephole:
        inits["P"] = rand(dirs, 3 * HID, seed=6)
        names = [*names[:7], "P"]
    if op == "GRU":
        names = names[:6]
        outputs = tuple(o for o in outputs if o != "Y_c")
    while not names[-1]:
        names.pop()
    outs = [o if o in outputs else "" for o in ("Y", "Y_h", "Y_c")[: 3 if op == "LSTM" else 2]]
    while not outs[-1]:
        outs.pop()
    if not (emulate and layout == 1):
        n = node(
            op, names, outs, "rnn", hidden_size=HID, direction=direction, layout=layout, **attrs
        )
        return model([n], inputs, list(outputs), inits)
    nodes = []
    for i, t in enumerate(names[:7]):
        if t and (i == 0 or i >= 5):
            nodes.append(node("Transpose", [t], [f"{t}_t"], perm=[1, 0, 2]))
            names[i] = f"{t}_t"
    inner = [f"{o}_0" if o else "" for o in outs]
    nodes.append(node(op, names, inner, "rnn", hidden_size=HID, direction=direction, **attrs))
    perms = {"Y": [2, 0, 1, 3], "Y_h": [1, 0, 2], "Y_c": [1, 0, 2]}
    for o in outs:
        if o:
            nodes.append(node("Transpose", [f"{o}_0"], [o], perm=perms[o]))
    return model(nodes, inputs, list(outputs), inits)


def check_expansion(m, reference=None) -> None:
    """The unrolled graph, then the legalized one, match onnxruntime on the original node
    (or on `reference`, the same function)."""
    g = graph_of(m)
    feeds = feeds_for(g)
    ref = run(reference or m, feeds)
    expand_recurrent(g)
    assert not set(ops(g)) & {"LSTM", "GRU"}
    check_graph(g, feeds, ref)
    run_all(g)
    check_graph(g, feeds, ref)
    assert set(ops(g)) <= {
        "MatMul", "Add", "Sub", "Mul", "Neg", "Sigmoid", "Tanh", "Relu",
        "Slice", "Reshape", "Concat", "Transpose", "Pad",
    }  # fmt: skip


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_directions_and_layouts(op, direction, layout):
    m = rnn_model(op, direction, layout, init="const")
    check_expansion(m, rnn_model(op, direction, layout, init="const", emulate=True))


@pytest.mark.parametrize("init", ["none", "input"])
@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_initial_states(op, init):
    check_expansion(rnn_model(op, "bidirectional", init=init))


@pytest.mark.parametrize("lbr", [0, 1])
def test_gru_linear_before_reset(lbr):
    check_expansion(rnn_model("GRU", init="input", linear_before_reset=lbr))
    m, ref = (
        rnn_model("GRU", "reverse", 1, "input", emulate=e, linear_before_reset=lbr) for e in (0, 1)
    )
    check_expansion(m, ref)


@pytest.mark.parametrize("init", ["none", "input"])
def test_lstm_peepholes(init):
    check_expansion(rnn_model("LSTM", "bidirectional", init=init, peephole=True))


@pytest.mark.parametrize("outputs", [("Y",), ("Y_h",), ("Y_c",), ("Y", "Y_c")])
def test_some_outputs_only(outputs):
    check_expansion(rnn_model("LSTM", outputs=outputs))


def test_activations_other_than_the_defaults():
    acts = ["Tanh", "Relu", "Sigmoid"]
    check_expansion(rnn_model("LSTM", activations=acts))
    check_expansion(rnn_model("GRU", "bidirectional", activations=["Relu", "Tanh"] * 2))
    # different activations per direction: two unrollings instead of one of double width
    acts = ["Sigmoid", "Tanh", "Tanh", "Sigmoid", "Tanh", "Relu"]
    check_expansion(rnn_model("LSTM", "bidirectional", init="input", activations=acts))


def test_full_sequence_lens():
    m = rnn_model("GRU")
    lens = np.full(BATCH, SEQ, np.int32)
    m.graph.initializer.append(__import__("onnx").numpy_helper.from_array(lens, "lens"))
    m.graph.node[0].input.extend(["lens"])
    check_expansion(m)


def test_zero_initial_state_costs_no_first_step_products():
    """With no initial state the first step has no recurrence MatMul and no f * c."""
    g = graph_of(rnn_model("LSTM", outputs=("Y_h",)))
    expand_recurrent(g)
    counted = ops(g)
    assert counted.count("MatMul") == 1 + (SEQ - 1)  # input projection + one per later step
    assert counted.count("Mul") == 2 + 3 * (SEQ - 1)
    assert counted.count("Sigmoid") == SEQ  # i, o, f together


def test_bidirectional_steps_run_both_directions_at_once():
    g = graph_of(rnn_model("GRU", "bidirectional", outputs=("Y",)))
    expand_recurrent(g)
    counted = ops(g)
    assert counted.count("Sigmoid") == counted.count("Tanh") == SEQ
    assert counted.count("MatMul") == 1 + 2 * (SEQ - 1)  # linear_before_reset=0: two a step


@pytest.mark.parametrize(
    "op, attrs, match",
    [
        ("LSTM", {"clip": 3.0}, "clip"),
        ("LSTM", {"input_forget": 1}, "input_forget"),
        ("GRU", {"activations": ["HardSigmoid", "Tanh"]}, "activation 'HardSigmoid'"),
        ("LSTM", {"activations": ["Sigmoid", "Tanh"]}, "expected 3 activations"),
    ],
)
def test_refusals(op, attrs, match):
    g = graph_of(rnn_model(op, **attrs))
    with pytest.raises(ModelError, match=rf"node 'rnn' \(op {op}\).*{match}"):
        expand_recurrent(g)


def test_variable_sequence_lens_refused():
    import onnx

    m = rnn_model("LSTM")
    lens = np.array([SEQ, SEQ - 1, SEQ], np.int32)
    m.graph.initializer.append(onnx.numpy_helper.from_array(lens, "lens"))
    m.graph.node[0].input.extend(["lens"])
    with pytest.raises(ModelError, match="sequence_lens must be absent or a constant equal"):
        expand_recurrent(graph_of(m))


# ---- torch: stacked bidirectional layers ----------------------------------------------------


def _stacked(cell: str):
    import torch

    torch.manual_seed(0)  # not secret

    class Stacked(torch.nn.Module):
        """Two bidirectional layers; the last step's output (a Gather) into a Linear."""

        def __init__(self) -> None:
            super().__init__()
            rnn = torch.nn.LSTM if cell == "LSTM" else torch.nn.GRU
            self.rnn = rnn(6, 8, num_layers=2, bidirectional=True, batch_first=True)
            self.fc = torch.nn.Linear(16, 3)

        def forward(self, x):
            return self.fc(self.rnn(x)[0][:, -1])

    return Stacked().eval()


@pytest.mark.parametrize(
    "dynamo", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["torchscript", "dynamo"]
)
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_torch_stacked_bidirectional(cell, dynamo):
    """torch's num_layers=2, bidirectional=True export: unrolled exactly, and (TorchScript
    export) securely within 1e-3 of onnxruntime, the traffic equal to the cost model."""
    pytest.importorskip("torch")
    import torch

    from mpcc.compiler.costmodel import estimate
    from mpcc.compiler.pipeline import compile_onnx
    from mpcc.frontends.torch import export
    from mpcc.runtime.cluster import LocalCluster

    x = rand(2, 5, 6, seed=7)
    m = export(_stacked(cell), torch.from_numpy(x), dynamo=dynamo)
    assert [n.op_type for n in m.graph.node].count(cell) == 2
    g = graph_of(m, x.shape)
    ref = run(m, {g.inputs[0]: x})
    run_all(g)
    check_graph(g, {g.inputs[0]: x}, ref)
    if dynamo:
        return
    plan = compile_onnx(m, x.shape)
    with LocalCluster(plan.program, plan.weights) as cluster:
        got = cluster.predict(x)
        stats = cluster.stats
    assert np.abs(got - ref[0]).max() <= 1e-3
    want = estimate(plan.program).total
    assert stats.sent == (want.sent, want.sent) and stats.rounds == want.rounds
