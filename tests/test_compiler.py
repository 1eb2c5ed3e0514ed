"""Lowering, cost model, plan files and the compile report."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from mpcc.compiler import planfile
from mpcc.compiler.costmodel import estimate
from mpcc.compiler.pipeline import compile_onnx
from mpcc.compiler.report import format_report, report_json
from mpcc.errors import PlanError
from tests.onnx_builders import model, node, rand


@pytest.fixture(scope="module")
def lenet(zoo_model):
    path = zoo_model("lenet")
    return path, *compile_onnx(path, (1, 1, 28, 28), name="lenet")


def _ops(prog) -> list[str]:
    return [i.op.name for i in prog.instrs]


def test_lenet_lowering_swaps_relu_after_maxpool_and_fuses_truncation(lenet) -> None:
    _, prog, _ = lenet
    assert _ops(prog) == [
        "input",
        "conv",
        "maxpool",
        "relu",
        "conv",
        "maxpool",
        "relu",
        "reshape",
        "matmul",
        "relu",
        "matmul",
        "output",
    ]
    scales = [prog.value(i.out).scale for i in prog.instrs]
    assert scales == [16, 32, 32, 16, 32, 32, 16, 16, 32, 16, 32, 32]
    assert all(i.attrs["shift"] == 16 for i in prog.instrs if i.op.name == "relu")


def _relu(n: int, truncating: bool) -> tuple[int, int, int]:
    """rounds, bytes sent per party, dealer bytes of one ReLU over n elements, by hand:
    open c (8n); the tree's three levels of 16, 4 and 1 groups of four nodes, the first
    local, each group of the other two 7 masked wires of 8 B per 64 elements; d (8n), e (1
    bit); dealer: 63 mask-bit words, 11 products of r bits per leaf group (16 groups) and 22
    monomials per later group (5 groups) per 64 elements, [rho], [rho*sigma] (16n), and for
    a truncating ReLU [r_hi], [r_63] (16n)."""
    w = -(-n // 64)
    return (
        4,
        8 * n + 5 * 7 * 8 * w + 8 * n + 8 * w,
        (63 + 16 * 11 + 5 * 22) * 8 * w + 16 * n + (16 * n if truncating else 0),
    )


def test_lenet_cost_totals_match_a_hand_computation(lenet) -> None:
    _, prog, _ = lenet
    rounds = sent = dealer = 0
    # Linear layers: one round, 8 bytes per input element, dealer 8 bytes per output element.
    for x_elems, z_elems in [
        (784, 20 * 24 * 24),
        (20 * 12 * 12, 50 * 8 * 8),
        (800, 500),
        (500, 10),
    ]:
        rounds, sent, dealer = rounds + 1, sent + 8 * x_elems, dealer + 8 * z_elems
    # MaxPool 2x2 = two tournament levels (2 pairs, then 1) of plain ReLUs; then a
    # truncating ReLU on the pooled tensor. Same for the second block; one more ReLU.
    relus = [
        (2 * 2880, False),
        (2880, False),
        (2880, True),
        (2 * 800, False),
        (800, False),
        (800, True),
        (500, True),
    ]
    for n, t in relus:
        r, s, d = _relu(n, t)
        rounds, sent, dealer = rounds + r, sent + s, dealer + d
    macs = 20 * 24 * 24 * 25 + 50 * 8 * 8 * 500 + 800 * 500 + 500 * 10
    total = estimate(prog).total
    assert (total.rounds, total.sent, total.dealer, total.macs) == (rounds, sent, dealer, macs)
    assert total.rounds == 32  # 39 with the tree's first level opened, 60 with the pairwise tree
    assert estimate(prog).setup.setup == 8 * (20 * 25 + 50 * 500 + 800 * 500 + 500 * 10)


def test_report_prints_every_instruction_and_the_totals(lenet) -> None:
    _, prog, _ = lenet
    text = format_report(prog)
    total = estimate(prog).total
    assert f"online rounds          {total.rounds}" in text
    assert f"({total.sent} B)" in text and f"({total.dealer} B;" in text
    assert text.count("= conv") == 2 and text.count("= relu") == 3
    data = report_json(prog)
    assert data["total"]["rounds"] == total.rounds
    assert len(data["instructions"]) == len(prog.instrs)
    json.dumps(data)


def test_plan_hash_is_stable_and_weights_are_stored_apart(lenet, tmp_path) -> None:
    path, prog, weights = lenet
    again, _ = compile_onnx(path, (1, 1, 28, 28), name="lenet")
    assert planfile.plan_hash(again) == planfile.plan_hash(prog)
    a, b = tmp_path / "a.mpcc", tmp_path / "b.mpcc"
    ha = planfile.save(a, prog, weights)
    hb = planfile.save(b, again, weights)
    assert ha == hb == planfile.plan_hash(prog)
    assert a.read_bytes() == b.read_bytes()  # reproducible files, no timestamps
    with zipfile.ZipFile(a) as z:
        weight_files = sorted(f"weights/{n}.npy" for n in weights)
        assert sorted(z.namelist()) == ["manifest.json", "plan.json", *weight_files]
        # weights hardly compress: stored as they are, which keeps big models fast to save
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
        public = json.loads(z.read("plan.json"))
    assert "weights" in public and all("shape" in v for v in public["weights"].values())
    assert not any(isinstance(v, list) and len(v) > 1000 for v in public["weights"].values())
    loaded, lw = planfile.load(a)
    assert planfile.plan_hash(loaded) == ha
    assert all(np.array_equal(lw[n], weights[n]) for n in weights)
    # in the source precision: torch exports float32, and so the plan stores float32
    assert {w.dtype for w in lw.values()} == {np.dtype(np.float32)}
    public_only, none = planfile.load(a, with_weights=False)
    assert none == {} and planfile.plan_hash(public_only) == ha


def test_another_batch_or_precision_changes_the_hash(lenet) -> None:
    path, prog, _ = lenet
    b64, _ = compile_onnx(path, (64, 1, 28, 28), name="lenet")
    f20, _ = compile_onnx(path, (1, 1, 28, 28), name="lenet", frac_bits=20)
    hashes = {planfile.plan_hash(p) for p in (prog, b64, f20)}
    assert len(hashes) == 3


def test_tampered_or_foreign_plan_files_are_rejected(lenet, tmp_path) -> None:
    _, prog, weights = lenet
    good = tmp_path / "good.mpcc"
    planfile.save(good, prog, weights)
    with zipfile.ZipFile(good) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    public = json.loads(entries["plan.json"])
    public["instrs"][1]["attrs"]["groups"] = 2
    bad = tmp_path / "bad.mpcc"
    with zipfile.ZipFile(bad, "w") as z:
        for n, data in entries.items():
            z.writestr(n, json.dumps(public).encode() if n == "plan.json" else data)
    with pytest.raises(PlanError, match="does not match the hash"):
        planfile.load(bad)
    junk = tmp_path / "junk.mpcc"
    junk.write_bytes(b"not a zip")
    with pytest.raises(PlanError, match="not a readable mpcc plan"):
        planfile.load(junk)
    with pytest.raises(PlanError, match="no plan file"):
        planfile.load(tmp_path / "missing.mpcc")
    public["version"] = 99
    with pytest.raises(PlanError, match="version 99"):
        planfile.from_public(public)


def test_residual_add_aligns_scales_without_a_truncation() -> None:
    # y = relu(conv(x) + x): the skip is lifted to the conv's scale (exact, local) and the
    # truncation happens once, inside the ReLU.
    m = model(
        [
            node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
            node("Add", ["c", "x"], ["s"]),
            node("Relu", ["s"], ["y"]),
        ],
        {"x": [1, 2, 4, 4]},
        ["y"],
        {"W": rand(2, 2, 3, 3)},
    )
    prog, _ = compile_onnx(m, (1, 2, 4, 4))
    assert _ops(prog) == ["input", "conv", "rescale", "add", "relu", "output"]
    lift = prog.instrs[2]
    assert lift.attrs == {"bits": 16}
    assert prog.instrs[4].attrs["shift"] == 16


def test_linear_input_is_truncated_when_its_scale_is_too_high() -> None:
    m = model(
        [node("Conv", ["x", "W1"], ["a"]), node("Conv", ["a", "W2"], ["y"])],
        {"x": [1, 1, 6, 6]},
        ["y"],
        {"W1": rand(1, 1, 3, 3), "W2": rand(1, 1, 3, 3, seed=1)},
    )
    prog, _ = compile_onnx(m, (1, 1, 6, 6))
    assert _ops(prog) == ["input", "conv", "trunc", "conv", "output"]
    assert prog.instrs[2].attrs["shift"] == 16
    assert prog.value(prog.instrs[3].out).scale == 32


def test_ir_text_shows_shapes_scales_and_visibility(lenet) -> None:
    _, prog, _ = lenet
    text = prog.text()
    assert "%0 : secret [1,1,28,28] @16" in text
    assert "client [1,10] @32" in text and "= output %10" in text
