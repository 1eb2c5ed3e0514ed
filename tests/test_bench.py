"""`mpcc bench` and the benchmark suite's report: the CLI runs, its JSON has the fields, the
traffic it reports is the cost model's, and the network projection's arithmetic. No timed
assertions: performance is shown by `make bench`, not by tests."""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from mpcc import bench
from mpcc.bench.network import QueryTraffic, wire_bytes
from mpcc.cli import main as cli_main
from mpcc.compiler import planfile
from mpcc.compiler.costmodel import estimate
from mpcc.compiler.pipeline import compile_onnx
from mpcc.errors import MpccError
from mpcc.runtime.transport import ChannelObserver
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
    "tls",
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
    assert cli_main(["bench", *args, "--json", "-"]) == 0
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
    assert rep["mode"] == "threads" and all(r["tls"] is None for r in rep["results"])
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
        assert [row["op"] for row in rows] == [i.op.name for i in prog.instrs]
        for row, cost in zip(rows, estimate(prog).per_instr, strict=True):
            assert row["sent"] == [cost.sent, cost.sent] and row["rounds"] == cost.rounds
            assert row["predicted"] == cost.asdict()
        assert sum(row["sent"][0] for row in rows) == r["sent_bytes"][0]
    # Batch 3 needs no kernel that batch 1 did not load: its first query is not a cold start.
    assert rep["results"][1]["first_query"]["cold"] is False
    assert rep["results"][1]["first_query"]["numba_compiles"] == 0


def test_text_report(tiny, capsys) -> None:
    assert cli_main(["bench", str(tiny), "--repeat", "2", "--layers", "--network", "1,1"]) == 0
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
    assert link.project(0.010, 60, 728_704) == pytest.approx(0.010 + 60 * 0.02 + 0.05829632)

    rep, _ = _report(capsys, str(tiny), "--repeat", "3", "--network", "2.5,0.5", "--layers")
    (r,) = rep["results"]
    p, bw = r["projection"], 0.5e9 / 8  # bytes per second
    assert (p["rtt_ms"], p["gbps"]) == (2.5, 0.5)
    online_wire = wire_bytes(max(r["sent_bytes"]), r["rounds"])
    assert p["online_s"] == pytest.approx(
        r["online_s"]["median"] + r["rounds"] * 1.25e-3 + online_wire / bw
    )
    # the latency at the client: from the measured no-delay latency, the client's legs and
    # P0's announcement included (the formula itself: tests/test_projection.py)
    q = QueryTraffic(r["rounds"], max(r["sent_bytes"]), r["client_bytes"], 8 * 2)
    want = bench.Link(2.5e-3, 0.5).project_query(r["e2e_s"]["median"], q)
    assert p["latency_s"] == pytest.approx(want["latency_s"])
    assert p["latency_s"] > p["online_s"] + 4 * 1.25e-3
    assert p["dealer_transfer_s"] == pytest.approx(wire_bytes(r["dealer_bytes"], 1) / bw)
    for row in r["layers"]["instrs"]:
        assert row["projected_s"] == pytest.approx(
            row["time_s"][0] + row["rounds"] * 1.25e-3 + max(row["sent"]) / bw
        )


@pytest.mark.parametrize("bad", ["1", "x,1", "1,0", "-1,1", "1,2,3"])
def test_bad_network_is_a_user_error(bad) -> None:
    with pytest.raises(MpccError, match="--network"):
        bench.Link.parse(bad)


def test_user_errors_exit_2(tiny, tmp_path, capsys) -> None:
    prog, weights = compile_onnx(tiny, (1, 4))
    planfile.save(tmp_path / "p.mpcc", prog, weights)
    assert cli_main(["bench", str(tmp_path / "p.mpcc"), "--batch", "1,64"]) == 2
    assert "compiled for batch 1" in capsys.readouterr().err
    assert cli_main(["bench", str(tmp_path / "nope.onnx")]) == 2
    assert cli_main(["bench", str(tiny), "--batch", "0"]) == 2
    assert cli_main(["bench", str(tiny), "--batch", "1,2", "--repeat", "1,2,3"]) == 2
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


class _Sent(ChannelObserver):
    """The messages one channel sends (copies)."""

    def __init__(self) -> None:
        self.msgs: list[list[np.ndarray]] = []

    def sent(self, channel, arrays) -> None:
        self.msgs.append([a.copy() for a in arrays])


def _frames_per_query(prog, weights) -> list[list[list[np.ndarray]]]:
    """The messages P0 and P1 send each other in one (warm) query of a LocalCluster."""
    from mpcc.runtime.cluster import LocalCluster

    shape = prog.value(prog.inputs[0][1]).shape
    with LocalCluster(prog, weights) as cluster:
        cluster.run_batch(bench.sample_inputs(shape, 0))
        sent = [_Sent() for _ in cluster.parties]
        for party, obs in zip(cluster.parties, sent, strict=True):
            party.ch.observers.append(obs)
        cluster.run_batch(bench.sample_inputs(shape, 1))
    return [obs.msgs for obs in sent]


def test_processes_over_tls(tiny, capsys) -> None:
    """`mpcc bench --processes`: the same payload, rounds and dealer bytes as in-process (the
    cost model's), and on the wire exactly that payload + mpcc framing + TLS 1.3 records."""
    from mpcc.serving.wire import encode, frame_size

    rep, err = _report(capsys, str(tiny), "--processes", "--repeat", "8", "--network", "1,1")
    assert rep["mode"] == "processes" and "TLS" in rep["setting"]
    (r,) = rep["results"]
    assert set(r) == RESULT_FIELDS
    prog, weights = compile_onnx(tiny, (1, 4))
    _check_traffic(r, prog)
    assert r["dealer_s"] is None and r["first_query"]["cold"] is None
    assert r["online_s"]["median"] > 0 and r["e2e_s"]["median"] >= r["online_s"]["median"]
    assert r["plaintext_s"] is not None and r["projection"] is not None

    tls = r["tls"]
    for party, msgs in enumerate(_frames_per_query(prog, weights)):
        payload = sum(a.nbytes for m in msgs for a in m)
        assert payload == r["sent_bytes"][party]  # the in-process count of the same query
        framing = sum(frame_size(encode("data", {}, m)) for m in msgs) - payload
        records = tls["wire_sent"][party] - payload - framing
        # TLS 1.3 adds 22 bytes per record (5 header, 1 content type, 16 AEAD tag): at least
        # one record per message, at most one more per 16 KiB of it.
        most = sum(1 + math.ceil(frame_size(encode("data", {}, m)) / 16384) for m in msgs)
        assert records % 22 == 0 and len(msgs) <= records // 22 <= most, (records, len(msgs))
        assert tls["overhead"][party] == framing + records
    assert 0 < tls["dealer_overhead"] == tls["dealer_wire"] - r["dealer_bytes"] < 1024
    assert set(tls["handshake"]) == {"p0", "p1"}
    assert all(1000 < n < 20000 for n in tls["handshake"].values())

    text = bench.format_text(rep)
    for needle in ("three local processes", "bytes on the wire", "handshake", "online", "ahead"):
        assert needle in text, needle
    assert "--layers" in _error(capsys, str(tiny), "--processes", "--layers")


def _error(capsys, *args: str) -> str:
    assert cli_main(["bench", *args]) == 2
    return capsys.readouterr().err


def test_progress_one_line_per_phase() -> None:
    out = io.StringIO()
    p = bench.Progress(True, after=0.0, stream=out, every=0.0)
    p.phase("compiling")
    p.phase("first query")
    p.update("query 1/2")
    p.done()
    # Phases and the end carry the seconds into the run; not on a terminal, a status is a line.
    lines = [re.sub(r"^\[ *\d+\.\d s\] ", "", ln) for ln in out.getvalue().splitlines()]
    assert lines == ["compiling", "first query", "query 1/2", "done"]

    # A short run prints nothing; a phase still running after `after` s is shown by a timer.
    quiet = io.StringIO()
    p = bench.Progress(True, after=5.0, stream=quiet)
    p.phase("compiling")
    p.done()
    assert quiet.getvalue() == ""
    late = io.StringIO()
    p = bench.Progress(True, after=0.05, stream=late)
    p.phase("starting the parties")
    deadline = time.monotonic() + 5
    while "starting the parties" not in late.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    p.done()
    assert late.getvalue().splitlines()[0].endswith("] starting the parties")
    assert bench.Progress(False, after=0.0, stream=late).phase("x") is None


def test_serving_benchmark_writes_its_table_and_figure(tmp_path, capsys) -> None:
    """benchmarks/serving.py on a short run: a row per client count, the served payload equal
    to the in-process count (it asserts that itself), and TLS on top of it on the wire."""
    spec = importlib.util.spec_from_file_location(
        "bench_serving", REPO / "benchmarks" / "serving.py"
    )
    serving = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serving)

    assert serving.main(["--seconds", "0.5", "--clients", "1", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "serving.json").read_text())
    assert [r["clients"] for r in result["rows"]] == [1, 2]
    for r in result["rows"]:
        assert r["requests"] > 0 and 0 < r["online_ms"] <= r["median_ms"] <= r["p99_ms"]
    for b in result["bytes"]:
        assert b["payload"] == b["in_process"]
        if b["link"].startswith("dealer"):
            # P1 credits each bundle with the bytes read since the previous one, so bundles
            # arriving back to back can shift a little from one to the next: the mean is close
            assert abs(b["wire"] - b["payload"]) < 0.05 * b["payload"]
        else:  # one message per round, answered before the next: exact per message
            assert b["payload"] < b["wire"] < 1.05 * b["payload"]
    assert result["rounds_served"] == result["rounds_in_process"]
    assert "| 2 |" in (tmp_path / "serving.md").read_text()
    assert (tmp_path / "serving.png").stat().st_size > 10_000


def _bench_modules() -> list[Path]:
    return sorted((REPO / "mpcc" / "bench").glob("*.py"))


def test_bench_patches_nothing_it_does_not_own() -> None:
    """The benchmark measures through the runtime's observer hooks: no module of mpcc.bench
    assigns (or deletes, or setattr's) an attribute of anything but its own `self`, as the
    old clocks did (`party.prog = ...`, `party.run = ...`, `ch._get = ...`, `dealer.deal`)."""
    owned = {"self._timer.daemon"}  # Progress's own timer thread, made in its __init__
    found = []
    for path in _bench_modules():
        for n in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[ast.expr] = []
            if isinstance(n, ast.Assign | ast.Delete):
                targets = list(n.targets)
            elif isinstance(n, ast.AugAssign | ast.AnnAssign):
                targets = [n.target]
            elif isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setattr":
                found.append(f"{path.name}:{n.lineno}: setattr")
            for t in targets:
                for sub in ast.walk(t):
                    if (
                        isinstance(sub, ast.Attribute)
                        and not (isinstance(sub.value, ast.Name) and sub.value.id == "self")
                        and ast.unparse(sub) not in owned
                    ):
                        found.append(f"{path.name}:{n.lineno}: {ast.unparse(t)}")
    assert len(_bench_modules()) > 3 and not found, found


def test_imports_run_one_way() -> None:
    """Only the CLI imports mpcc.bench: no module of it imports mpcc.cli (not even inside a
    function), importing it loads no mpcc.cli, and there is no `python -m mpcc.bench`."""
    for path in _bench_modules():
        for n in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(n, ast.Import):
                names = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom):
                names = [n.module or "", *(f"{n.module}.{a.name}" for a in n.names)]
            else:
                continue
            assert not any(m == "mpcc.cli" or m.startswith("mpcc.cli.") for m in names), (
                f"{path.name}:{n.lineno}"
            )
    code = "import sys, mpcc.bench; assert 'mpcc.cli' not in sys.modules, 'mpcc.cli loaded'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    assert not (REPO / "mpcc" / "bench" / "__main__.py").exists()
    assert not hasattr(bench, "main")


def test_clocks_observe_and_detach(tiny) -> None:
    """PartyClock rides on the observer lists and leaves them as it found them; its rows add
    up to the transport's per-query counts."""
    from mpcc.bench.clock import attach_clocks, layer_rows
    from mpcc.runtime.cluster import LocalCluster

    prog, weights = compile_onnx(tiny, (2, 4))
    with LocalCluster(prog, weights) as cluster:
        cluster.run_batch(bench.sample_inputs((2, 4), 0))
        clocks = attach_clocks(cluster.parties)
        for i in range(2):
            cluster.run_batch(bench.sample_inputs((2, 4), 1 + i))
        for c in clocks:
            c.detach()
        assert all(not p.observers and not p.ch.observers for p in cluster.parties)
        stats = cluster.stats
    assert 0 < stats.dealer_s <= stats.offline_s
    lay = layer_rows(prog, estimate(prog).per_instr, clocks, None, [stats.online_s] * 2)
    assert [row["op"] for row in lay["instrs"]] == [i.op.name for i in prog.instrs]
    assert sum(row["sent"][1] for row in lay["instrs"]) == stats.sent[1]
    assert sum(row["rounds"] for row in lay["instrs"]) == stats.rounds
    for key in ("wall_s", "cpu_s", "in_receive_s"):
        assert len(lay["run"][key]) == 2
    assert 0 < lay["loop_s"] <= lay["run"]["wall_s"][0]


def test_token_id_inputs_are_benched_with_ids(tmp_path, capsys) -> None:
    """A model whose input is token ids (one-hot encoded by the client) is benched with
    integer ids, and the plaintext floor gets them as int64."""
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Gather", ["word", "ids"], ["y"], "word_emb")],
        "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 8])],
        [numpy_helper.from_array(table, "word")],
    )
    model = tmp_path / "emb.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    rep, _ = _report(capsys, str(model), "--repeat", "1")
    (r,) = rep["results"]
    assert r["matches_cost_model"] and r["plaintext_s"]["median"] > 0
    ids = bench.sample_inputs((2, 3), 1, depth=40)
    assert ids.dtype == np.int64 and 0 <= ids.min() and ids.max() < 40
