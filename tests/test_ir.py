"""The IR's op declarations and its verifier.

Every op is declared once with every rule (the compiler's and the runtime's); the verifier
refuses a hand-corrupted plan for each of its rules, naming the instruction and the rule,
wherever a plan enters: after lowering, from a file (`mpcc inspect`, `mpcc run`, `mpcc
deploy`: exit 2), and at a party receiving a deployment.
"""

from __future__ import annotations

import ast
import copy
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

import mpcc
from mpcc.cli import main
from mpcc.compiler import calls, ops, planfile
from mpcc.compiler.ops import RuleError, Site
from mpcc.compiler.ops.base import no_row_rule
from mpcc.compiler.pipeline import compile_onnx
from mpcc.compiler.verify import VerifyError, verify
from mpcc.errors import PlanError
from mpcc.runtime.protocols import BY_CALL
from mpcc.runtime.rules import RULES
from tests.onnx_builders import model, node, rand, run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def plan():
    """conv -> relu -> maxpool -> flatten -> matmul + bias: most rule kinds in a few lines."""
    m = model(
        [
            node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
            node("Relu", ["c"], ["r"]),
            node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
            node("Flatten", ["p"], ["f"]),
            node("Gemm", ["f", "M", "B"], ["y"], transB=1),
        ],
        {"x": [1, 2, 6, 6]},
        ["y"],
        {"W": rand(3, 2, 3, 3), "M": rand(4, 27, seed=1), "B": rand(4, seed=2)},
    )
    return compile_onnx(m, (1, 2, 6, 6))


# ---- declarations ------------------------------------------------------------------------


def test_every_op_has_every_rule() -> None:
    assert len(ops.ALL) == len(ops.REGISTRY) == len({op.name for op in ops.ALL})
    for op in ops.ALL:
        assert op.doc and callable(op.infer) and callable(op.calls), op
        assert op.rows is not no_row_rule, f"{op.name} has no row rule"
        assert all(hasattr(spec, "problem") for spec in op.attrs.values()), op
        assert op in RULES and callable(RULES[op].eval), f"{op.name}: no runtime rule"
        # an op that masks a weight is bilinear: the runtime knows its map
        assert (RULES[op].bilinear is not None) == op.masks_weight, op


def test_every_call_type_has_a_protocol_priced_as_it_deals() -> None:
    samples = {
        calls.Linear: calls.Linear((2, 5), (2, 3), 30),
        calls.Multiply: calls.Multiply((2, 1, 4), (3, 4)),
        calls.MatMulSS: calls.MatMulSS((2, 1, 3, 4), (5, 4, 6)),
        calls.Truncate: calls.Truncate(70, 16),
        calls.Relu: calls.Relu(130, 16),
        calls.Square: calls.Square(70),
        calls.Sign: calls.Sign(130),
        calls.Powers: calls.Powers(70, 3, 20, (1, 2, 3, 5, 7)),
        calls.SignFss: calls.SignFss(130),
        calls.ReluFss: calls.ReluFss(130, 16),
        calls.MaxPairs: calls.MaxPairs(70, 4, 16),
    }
    assert set(calls.CALL_TYPES) == set(BY_CALL) == set(samples)
    for kind, call in samples.items():
        proto = BY_CALL[kind]
        assert proto.call is kind
        assert 8 * proto.correction_words(call) == proto.cost(call).dealer, kind
        # the leading words the dealer sends P0 too (FSS keys' common words) are priced
        assert 8 * proto.shared_words(call) == call.dealer_p0(), kind
        assert proto.shared_words(call) <= proto.correction_words(call), kind


def test_the_ir_op_table_in_the_docs_is_current() -> None:
    from mpcc import optable

    text = (REPO / "docs" / "ops.md").read_text()
    start, end = text.index(optable.IR_START), text.index(optable.IR_END)
    assert text[start + len(optable.IR_START) : end].strip("\n") == optable.ir_table(), (
        "run python -m mpcc.optable --write docs/ops.md"
    )
    for op in ops.ALL:
        assert f"| `{op.name}` |" in text


def _compares_op_to_a_string(node: ast.AST) -> bool:
    if not isinstance(node, ast.Compare):
        return False
    sides = [node.left, *node.comparators]

    def is_ir_op(e: ast.AST) -> bool:  # x.op or x.op.name
        if isinstance(e, ast.Attribute) and e.attr == "name":
            e = e.value
        return isinstance(e, ast.Attribute) and e.attr == "op"

    def is_str(e: ast.AST) -> bool:
        if isinstance(e, ast.Constant):
            return isinstance(e.value, str)
        return isinstance(e, ast.Tuple | ast.List | ast.Set) and any(is_str(x) for x in e.elts)

    return any(is_ir_op(s) for s in sides) and any(is_str(s) for s in sides)


# Modules that work on the ONNX graph, whose nodes' ops are ONNX op names (strings).
ONNX_LEVEL = {
    "frontends",
    "graph.py",
    "legalize.py",
    "rewriter.py",
    "rewrites.py",
    "rewrites_affine.py",
    "optable.py",
}


def test_no_dispatch_on_op_names_outside_the_declarations() -> None:
    found = []
    for path in sorted((REPO / "mpcc").rglob("*.py")):
        if ONNX_LEVEL & set(path.relative_to(REPO / "mpcc").parts):
            continue
        for n in ast.walk(ast.parse(path.read_text())):
            if _compares_op_to_a_string(n):
                found.append(f"{path.relative_to(REPO)}:{n.lineno}")
    assert not found, f"IR ops compared by name (use the declared op): {found}"


def test_a_misspelt_op_fails_at_import_and_by_name() -> None:
    with pytest.raises(AttributeError):
        ops.reluu  # noqa: B018
    with pytest.raises(RuleError, match="unknown op 'reluu'.*relu"):
        ops.lookup("reluu")
    with pytest.raises(ValueError, match="declared twice"):
        ops.base.declare(ops.base.Op("relu", "again", ops.relu.infer))


def test_emit_types_the_output_by_the_rule(plan) -> None:
    prog, _ = plan
    for ins in prog.instrs:
        t = ins.op.infer(Site(prog, ins))
        v = prog.value(ins.out)
        assert (t.shape, t.scale, t.vis) == (v.shape, v.scale, v.vis)
    text = prog.text()
    assert "= conv %0, w1 p=1,1,1,1\n" in text, text  # defaults hidden, short names


# ---- the verifier: one hand-corrupted plan per rule ----------------------------------------


def _corrupt(prog, change) -> dict:
    public = copy.deepcopy(planfile.to_public(prog))
    change(public)
    return public


def _instr(public: dict, op: str) -> dict:
    return next(i for i in public["instrs"] if i["op"] == op)


def _set_value(public: dict, vid: int, shape=None, scale=None) -> None:
    v = public["values"][vid]
    public["values"][vid] = [shape or v[0], v[1] if scale is None else scale, v[2]]


CORRUPTIONS = {
    "ids": lambda p: p["values"].append([[1], 16, "secret"]),
    "ids ": lambda p: _instr(p, "relu").update(out=_instr(p, "conv")["out"]),
    "defined before use": lambda p: _instr(p, "relu").update(args=[len(p["values"]) - 1]),
    "known op": lambda p: _instr(p, "relu").update(op="reluu"),
    "operands": lambda p: _instr(p, "relu").update(args=[0, 0]),
    "operands ": lambda p: _instr(p, "matmul").update(weights=[]),
    "attributes": lambda p: _instr(p, "relu")["attrs"].update(shift=70),
    "attributes ": lambda p: _instr(p, "relu")["attrs"].update(bogus=1),
    "attributes  ": lambda p: _instr(p, "maxpool")["attrs"].update(kernel=[2]),
    "type": lambda p: _set_value(p, _instr(p, "maxpool")["out"], shape=[1, 3, 4, 4]),
    "type ": lambda p: _set_value(p, _instr(p, "relu")["out"], scale=20),
    "type  ": lambda p: _instr(p, "conv")["attrs"].update(strides=[2, 2]),
    "weights   ": lambda p: _instr(p, "conv")["attrs"].update(groups=2),
    "ring budget": lambda p: p.update(frac_bits=30),
    "ring budget ": lambda p: _set_value(p, 1, scale=60),
    "inputs and outputs": lambda p: p.update(outputs=[["y", 0]]),
    "weights": lambda p: _instr(p, "matmul").update(weights=["nope"]),
    "weights ": lambda p: p["weights"][_instr(p, "matmul")["weights"][0]].update(shape=[5, 4]),
    "weights  ": lambda p: p["weights"]["w1"].update(scale=20),
    "weights    ": lambda p: p.update(public_weights="no"),  # truthy, but not a bool
    "weights     ": lambda p: _instr(p, "matmul")["weights"].__setitem__(1, "w1"),  # masked
    "ring budget  ": lambda p: p["weights"]["w1"].update(scale=16.0),
}


@pytest.mark.parametrize("rule", list(CORRUPTIONS))
def test_each_rule_refuses_a_corrupted_plan(plan, rule) -> None:
    prog, _ = plan
    public = _corrupt(prog, CORRUPTIONS[rule])
    with pytest.raises(VerifyError) as e:
        planfile.from_public(public)
    assert e.value.rule == rule.strip(), str(e.value)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("plan check: ") and f"[rule: {e.value.rule}]" in msg
    if e.value.index is not None:
        assert f"instruction {e.value.index} (" in msg


def test_a_slice_may_not_repeat_an_axis(plan) -> None:
    prog, _ = plan

    def twice(p: dict) -> None:
        r = _instr(p, "reshape")["out"]
        p["instrs"].insert(
            len(p["instrs"]) - 1,
            {"op": "slice", "out": len(p["values"]), "args": [r], "weights": [],
             "attrs": {"starts": [0, 0], "ends": [20, 9], "axes": [1, 1], "steps": [1, 1]}},
        )  # fmt: skip
        p["values"].append([[1, 9], 16, "secret"])

    with pytest.raises(VerifyError, match=r"axes \[1, 1\] repeat an axis"):
        planfile.from_public(_corrupt(prog, twice))


def test_whatever_a_plan_holds_only_a_plan_error_comes_out(plan) -> None:
    # one field at a time replaced by junk of every JSON kind: refused as a PlanError, never
    # an AttributeError or a TypeError from deep inside
    prog, _ = plan
    base = planfile.to_public(prog)
    junk = [None, -1, 2**70, 1.5, "x", [], {}, ["w1"], [[1, 2]], True, {"a": 1}]

    def paths(o, at=()):
        yield at
        items = o.items() if isinstance(o, dict) else enumerate(o) if isinstance(o, list) else ()
        for k, v in items:
            yield from paths(v, (*at, k))

    for at in [p for p in paths(base) if p]:
        for j in junk:
            d = copy.deepcopy(base)
            t = d
            for k in at[:-1]:
                t = t[k]
            t[at[-1]] = j
            try:
                planfile.from_public(d)
            except PlanError:
                pass
    for d in ([], "plan", None, {"format": planfile.FORMAT, "version": planfile.VERSION}):
        with pytest.raises(PlanError):
            planfile.from_public(d)


def test_a_constant_both_masked_and_read_as_it_is_runs(tmp_path) -> None:
    # y = (x + C) @ C: C is a bilinear op's masked weight and an added constant; its shares
    # become F at session setup, so the two uses must be two weights
    m = model(
        [node("Add", ["x", "C"], ["a"]), node("MatMul", ["a", "C"], ["y"])],
        {"x": [3, 3]},
        ["y"],
        {"C": rand(3, 3, seed=7)},
    )
    p = compile_onnx(m, (3, 3))
    assert len(p.program.weights) == 2
    x = rand(3, 3, seed=8)
    ref = run(m, {"x": x})[0]
    with mpcc.LocalCluster(p) as c:
        assert np.abs(c.predict(x) - ref).max() < 1e-3


def test_weights_of_another_shape_are_refused(plan) -> None:
    prog, weights = plan
    verify(prog, weights)
    bad = dict(weights, w1=np.zeros((3, 2, 3, 4)))
    with pytest.raises(VerifyError, match=r"weight w1 has shape \[3, 2, 3, 4\].*rule: weights"):
        verify(prog, bad)
    with pytest.raises(VerifyError, match="no array for weight b5"):
        verify(prog, {k: v for k, v in weights.items() if k != "b5"})


def _bad_plan_file(prog, weights, path: Path) -> Path:
    """A plan file whose relu reads a value defined after it, with a consistent hash."""
    public = _corrupt(prog, CORRUPTIONS["defined before use"])
    planfile.save(path, prog, weights)
    raw = planfile.canonical_json(public)
    manifest = {"format": planfile.FORMAT, "version": planfile.VERSION}
    manifest["sha256"] = __import__("hashlib").sha256(raw).hexdigest()
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    entries.update({"plan.json": raw, "manifest.json": json.dumps(manifest).encode()})
    with zipfile.ZipFile(path, "w") as z:
        for n, data in entries.items():
            z.writestr(n, data)
    return path


@pytest.mark.parametrize(
    "argv",
    [["inspect"], ["run", "--input", "X"], ["deploy", "--config", "none.toml"]],
    ids=["inspect", "run", "deploy"],
)
def test_cli_refuses_a_bad_plan_with_exit_2(plan, tmp_path, capsys, argv) -> None:
    prog, weights = plan
    bad = _bad_plan_file(prog, weights, tmp_path / "bad.mpcc")
    np.save(tmp_path / "x.npy", np.zeros((1, 2, 6, 6)))
    argv = [a.replace("X", str(tmp_path / "x.npy")) for a in argv]
    assert main([argv[0], str(bad), *argv[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "not defined before it" in err and "[rule: defined before use]" in err, err


def test_compile_returns_a_plan_that_runs_and_still_unpacks(plan, tmp_path) -> None:
    p = plan
    assert isinstance(p, mpcc.Plan)
    prog, weights = p  # the old tuple form
    assert prog is p.program and weights is p.weights
    assert p.cost.rounds == p.report.total.rounds and p.cost.setup == p.report.setup.setup
    assert "totals per query" in str(p) and "sha256=" in repr(p)
    path = tmp_path / "p.mpcc"
    assert p.save(path) == p.hash
    again = mpcc.load(path)
    assert again.hash == p.hash and set(again.weights) == set(weights)
    x = rand(1, 2, 6, 6, seed=5)
    from mpcc.runtime.cleartext import predict

    with mpcc.LocalCluster(again) as c:
        y = c.predict(x)
        assert c.stats.material_bytes > c.stats.dealer_bytes > 0
    assert np.abs(y - predict(prog, weights, x)).max() < 1e-3
