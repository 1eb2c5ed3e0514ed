"""`mpcc bench` and the benchmark suite's report: the CLI runs, its JSON has the fields, the
traffic it reports is the cost model's, and the network projection's arithmetic. No timed
assertions: performance is shown by `make bench`, not by tests."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from mpcc import bench
from mpcc.compiler import planfile
from mpcc.compiler.costmodel import estimate
from mpcc.compiler.pipeline import compile_onnx
from mpcc.errors import MpccError
from tests.onnx_builders import model, node, rand

REPO = Path(__file__).resolve().parents[1]
RESULT_FIELDS = {
    "batch",
    "plan",
    "repeat",
    "warmup",
    "setup_s",
    "compile_s",
    "first_query",
    "online_s",
    "offline_s",
    "dealer_s",
    "e2e_s",
    "sent_bytes",
    "rounds",
    "dealer_bytes",
    "client_bytes",
    "predicted",
    "matches_cost_model",
    "plaintext_s",
    "ratio",
    "projection",
    "layers",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """x[N, 4] -> Gemm(4, 3) -> Relu -> Gemm(3, 2): one ReLU, two linear layers."""
    m = model(
        [
            node("Gemm", ["x", "w1", "b1"], ["h"]),
            node("Relu", ["h"], ["r"]),
            node("Gemm", ["r", "w2"], ["y"]),
        ],
        {"x": ["N", 4]},
        ["y"],
        {"w1": rand(4, 3, seed=1), "b1": rand(3, seed=2), "w2": rand(3, 2, seed=3)},
    )
    path = tmp_path_factory.mktemp("bench") / "tiny.onnx"
    onnx.save(m, path)
    return path


def _report(capsys, *args: str) -> tuple[dict, str]:
    """Run `mpcc bench ... --json -`; the parsed report and stderr."""
    assert bench.main([*args, "--json", "-"]) == 0
    out = capsys.readouterr()
    return json.loads(out.out), out.err


def _check_traffic(result: dict, prog) -> None:
    want = estimate(prog).total
    assert result["sent_bytes"] == [want.sent, want.sent]
    assert result["rounds"] == want.rounds
    assert result["dealer_bytes"] == want.dealer
    assert result["predicted"]["sent"] == want.sent and result["matches_cost_model"]


def test_tiny_model_all_options(tiny, capsys) -> None:
    rep, _ = _report(
        capsys, str(tiny), "--batch", "1,3", "--repeat", "2", "--layers", "--network", "10,1"
    )
    assert rep["schema"] == bench.SCHEMA and rep["reference"] == str(tiny)
    assert {"cpu", "cores", "numpy", "numba", "date"} <= set(rep["machine"])
    assert "projection, not a measurement" in rep["network"]["note"]
    assert [r["batch"] for r in rep["results"]] == [1, 3]
    for r in rep["results"]:
        assert set(r) == RESULT_FIELDS
        prog, _ = compile_onnx(tiny, (r["batch"], 4))
        _check_traffic(r, prog)
        assert len(r["online_s"]["samples"]) == 2 and r["online_s"]["median"] > 0
        assert r["plaintext_s"]["threads"] == 1 and r["ratio"] > 0
        # Per instruction: every row's measured traffic is the cost model's, and they add up.
        rows = r["layers"]["instrs"]
        assert [row["op"] for row in rows] == [i.op for i in prog.instrs]
        for row, cost in zip(rows, estimate(prog).per_instr, strict=True):
            assert row["sent"] == [cost.sent, cost.sent] and row["rounds"] == cost.rounds
            assert row["predicted"] == cost.asdict()
        assert sum(row["sent"][0] for row in rows) == r["sent_bytes"][0]
    # Batch 3 needs no kernel that batch 1 did not load: its first query is not a cold start.
    assert rep["results"][1]["first_query"]["cold"] is False
    assert rep["results"][1]["first_query"]["numba_compiles"] == 0


def test_text_report(tiny, capsys) -> None:
    assert bench.main([str(tiny), "--repeat", "2", "--layers", "--network", "1,1"]) == 0
    text = capsys.readouterr().out
    for needle in (
        "online med",
        "plaintext",
        "first query",
        "equal the compiler's cost model",
        "projection, not a measurement",
        "per instruction",
        "thread hand-off",
    ):
        assert needle in text, needle


def test_mlp_onnx_and_plan_file(zoo_model, tmp_path, capsys) -> None:
    onnx_path = zoo_model("mlp")
    rep, _ = _report(capsys, str(onnx_path), "--repeat", "2")
    (r,) = rep["results"]
    prog, weights = compile_onnx(onnx_path, (1, 1, 28, 28))
    _check_traffic(r, prog)
    assert r["compile_s"] > 0 and r["plaintext_s"] is not None

    # A plan file runs at its own batch, with the plaintext floor from --reference.
    plan = tmp_path / "mlp.mpcc"
    prog2, weights2 = compile_onnx(onnx_path, (2, 1, 28, 28))
    planfile.save(plan, prog2, weights2)
    rep, _ = _report(capsys, str(plan), "--repeat", "2", "--reference", str(onnx_path))
    (r,) = rep["results"]
    assert r["batch"] == 2 and r["compile_s"] is None and r["plaintext_s"] is not None
    _check_traffic(r, prog2)

    # Without an ONNX model next to it, there is no plaintext floor, and the report says so.
    rep, _ = _report(capsys, str(plan), "--repeat", "1")
    assert rep["results"][0]["plaintext_s"] is None and "--reference" in rep["notes"][0]


def test_projection_arithmetic(tiny, capsys) -> None:
    link = bench.Link.parse("40,0.1")
    assert link.rtt_s == pytest.approx(0.04) and link.gbps == 0.1
    assert link.transfer_s(1_250_000) == pytest.approx(0.1)  # 10 Mbit at 100 Mbit/s
    assert link.project(0.010, 60, 728_704) == pytest.approx(0.010 + 60 * 0.04 + 0.05829632)

    rep, _ = _report(capsys, str(tiny), "--repeat", "3", "--network", "2.5,0.5", "--layers")
    (r,) = rep["results"]
    p, bw = r["projection"], 0.5e9 / 8  # bytes per second
    assert (p["rtt_ms"], p["gbps"]) == (2.5, 0.5)
    assert p["online_s"] == pytest.approx(
        r["online_s"]["median"] + r["rounds"] * 2.5e-3 + max(r["sent_bytes"]) / bw
    )
    assert p["dealer_transfer_s"] == pytest.approx(r["dealer_bytes"] / bw)
    for row in r["layers"]["instrs"]:
        assert row["projected_s"] == pytest.approx(
            row["time_s"][0] + row["rounds"] * 2.5e-3 + max(row["sent"]) / bw
        )


@pytest.mark.parametrize("bad", ["1", "x,1", "1,0", "-1,1", "1,2,3"])
def test_bad_network_is_a_user_error(bad) -> None:
    with pytest.raises(MpccError, match="--network"):
        bench.Link.parse(bad)


def test_user_errors_exit_2(tiny, tmp_path, capsys) -> None:
    prog, weights = compile_onnx(tiny, (1, 4))
    planfile.save(tmp_path / "p.mpcc", prog, weights)
    assert bench.main([str(tmp_path / "p.mpcc"), "--batch", "1,64"]) == 2
    assert "compiled for batch 1" in capsys.readouterr().err
    assert bench.main([str(tmp_path / "nope.onnx")]) == 2
    assert bench.main([str(tiny), "--batch", "0"]) == 2
    assert bench.main([str(tiny), "--batch", "1,2", "--repeat", "1,2,3"]) == 2
    err = capsys.readouterr().err
    assert err.count("mpcc: error: ") == 3 and "Traceback" not in err


def test_summarize_and_parse() -> None:
    s = bench.summarize(list(range(1, 11)))
    assert (s["median"], s["p90"], s["min"]) == (5.5, pytest.approx(9.1), 1.0)
    assert bench.parse_ints("1, 64", "--batch") == [1, 64]
    assert bench.fmt_s(0.0015) == "1.5 ms" and bench.fmt_bytes(1.5e6) == "1.5 MB"


def test_sample_inputs_are_digits() -> None:
    x = bench.sample_inputs((3, 1, 28, 28), 0)
    assert x.shape == (3, 1, 28, 28) and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1
    assert not np.array_equal(x, bench.sample_inputs((3, 1, 28, 28), 1))
    assert bench.sample_inputs((2, 5), 4).shape == (2, 5)


def test_suite_report_targets(tiny, capsys) -> None:
    """benchmarks/run.py's markdown and target arithmetic on a real (tiny) report."""
    spec = importlib.util.spec_from_file_location("bench_suite", REPO / "benchmarks" / "run.py")
    suite_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite_mod)

    rep, _ = _report(capsys, str(tiny), "--batch", "1,64", "--repeat", "1", "--layers")
    r1 = rep["results"][0]
    r1["online_s"]["median"] = 0.002  # 2 ms vs the MLP's 1.5 ms target: missed by 33%
    suite = {
        "models": {"mlp": rep, "lenet": rep},
        "machine": rep["machine"],
        "load_before": 0.1,
        "load_after": 0.2,
        "wall_s": 1.0,
    }
    rows = {t["target"]: t for t in suite_mod.target_rows(suite)}
    mlp = rows["MLP batch 1 online"]
    assert not mlp["met"] and suite_mod.status(mlp) == "**missed by 33%**"
    assert rows["MLP batch 1 bytes per compute party"]["met"]
    slower = json.loads(json.dumps(rep))
    slower["results"][0]["online_s"]["median"] = 0.003
    best = suite_mod.best_of([slower, rep])
    assert best["results"][0]["online_s"]["median"] == 0.002
    assert best["results"][0]["pass_medians"] == [0.003, 0.002]
    suite["models"]["mlp"] = best
    text = suite_mod.markdown(suite)
    assert "| MLP 784-500-10 | 1 | 2 ms |" in text and "missed by 33%" in text
    assert "| 3 ms, 2 ms |" in text
    assert "LeNet per instruction, batch 64" in text and "not a measurement" in text
