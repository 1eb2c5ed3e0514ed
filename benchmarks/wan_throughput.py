"""Answers per second across an emulated WAN with many clients at once (issue 13 item 4).

The three parties run as `python -m mpcc party` processes over TLS 1.3 in the namespaces of
`mpcc.bench.wan.WanBed` (a relay holds every chunk RTT/2 each way; tbf caps each role's
link); N clients in a fourth namespace each send one sample at a time, and the next as soon
as the answer is in, for a fixed time. A session runs one query at a time per lane
(`[serving] lanes`, each lane its own P0-P1 link), and a plan of batch B lets P0 put up to B
clients' requests into one query. Every answer is checked against onnxruntime.

    sudo .venv/bin/python benchmarks/wan_throughput.py --rtt 10 --clients 16 \\
        --setting 1x16 --setting 4x4 --setting 8x2 [--compile-network 10,1]

A setting BxL is a plan of batch B served with L lanes; each gets a fresh bed. Prints a line
per setting and writes benchmarks/results/wan_throughput.md and .json. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wan import MODELS, NAMES, RESULTS, TOLERANCE  # noqa: E402

from mpcc.bench import machine_info  # noqa: E402
from mpcc.bench.wan import WanBed, unavailable  # noqa: E402
from mpcc.compiler.costmodel import dealer_to_p0, estimate  # noqa: E402
from mpcc.compiler.pipeline import compile_onnx  # noqa: E402
from mpcc.serving.client import Client  # noqa: E402
from mpcc.serving.owner import deploy_program  # noqa: E402

WARM_S = 3.0  # each client's first queries, not counted (links, material stock)
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def usage(pid: int) -> tuple[float, float, int]:
    """CPU seconds in user and in system mode a process has used so far, and its minor page
    faults (a fresh page costs ~4 us on this VM: big arrays allocated anew are not free)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) * TICK_S, int(fields[12]) * TICK_S, int(fields[7])


def usage_of(bed: WanBed) -> dict[str, tuple[float, float, int]]:
    """`usage` of each party, the relay and this process (the clients)."""
    out = {role: usage(p.pid) for role, p in bed.procs.items()}
    if bed.relay is not None:
        out["relay"] = usage(bed.relay.pid)
    out["clients"] = usage(os.getpid())
    return out


def per_answer(marks: list[dict], answers: int) -> tuple[dict, dict, dict]:
    """CPU ms (user + system), system ms and minor faults per answer, by process, over the
    counted window."""
    n = max(1, answers)
    (a, b), keys = marks, marks[0]
    cpu = {k: (b[k][0] + b[k][1] - a[k][0] - a[k][1]) / n * 1e3 for k in keys}
    sys_ = {k: (b[k][1] - a[k][1]) / n * 1e3 for k in keys}
    faults = {k: (b[k][2] - a[k][2]) / n for k in keys}
    return cpu, sys_, faults


def renice(bed: WanBed, nice: int) -> None:
    """Set the three parties' main threads to `nice` and shift their other threads with them,
    keeping each thread's offset (`[serving] background_nice`; Linux keeps a nice value per
    thread, and threads made later inherit their maker's)."""
    for p in bed.procs.values():
        with contextlib.suppress(OSError):
            delta = nice - os.getpriority(os.PRIO_PROCESS, p.pid)
            for task in Path(f"/proc/{p.pid}/task").iterdir():
                with contextlib.suppress(OSError):  # a thread that has just ended
                    tid = int(task.name)
                    now = os.getpriority(os.PRIO_PROCESS, tid)
                    os.setpriority(os.PRIO_PROCESS, tid, max(-20, min(19, now + delta)))


def setting(text: str) -> tuple[int, int]:
    """'BxL' -> (batch, lanes)."""
    try:
        b, lanes = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a setting is BATCHxLANES, e.g. 4x4, not {text!r}"
        ) from None
    if b < 1 or lanes < 1:
        raise argparse.ArgumentTypeError(f"batch and lanes must be >= 1, not {text!r}")
    return b, lanes


def clients_run(
    cfg: Any,
    n: int,
    seconds: float,
    X: np.ndarray,
    ref: np.ndarray,
    on_window: Any = None,
) -> tuple[list[float], list[int], list[int], list[tuple[float, float]]]:
    """n clients, each one query at a time for WARM_S + seconds; returns the counted
    answers' latencies, the requests sharing each one's query, the lanes that ran them and
    each one's (wait at P0 before its query began, that query's online phase).
    A wrong answer (or any client's error) stops the run with an error. `on_window()` is
    called as the counted window opens and as it closes."""
    lat: list[float] = []
    shared: list[int] = []
    lanes: list[int] = []
    split: list[tuple[float, float]] = []  # each answer's wait at P0 and its query's online
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = time.perf_counter()
    count_from, end = start + WARM_S, start + WARM_S + seconds

    def one(k: int) -> None:
        try:
            with Client(cfg) as c:
                i = k
                while time.perf_counter() < end:
                    t0 = time.perf_counter()
                    y = c.predict(X[i % len(X) : i % len(X) + 1])
                    t = time.perf_counter() - t0
                    r = ref[i % len(X)]
                    if y.argmax() != r.argmax() or np.abs(y - r).max() > TOLERANCE:
                        raise AssertionError(f"wrong answer: {np.abs(y - r).max():.3g} off")
                    if t0 >= count_from and t0 + t <= end:
                        (req,) = c.stats.requests
                        with lock:
                            lat.append(t)
                            shared.append(req.batch_requests)
                            lanes.append(req.lane)
                            split.append((req.queued_s, req.online_s))
                    i += n
        except BaseException as e:  # noqa: BLE001 - reported below
            with lock:
                errors.append(e)

    threads = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(n)]
    for th in threads:
        th.start()
    for t in (count_from, end):
        time.sleep(max(0.0, t - time.perf_counter()))
        if on_window is not None:
            on_window()
    for th in threads:
        th.join(WARM_S + seconds + 120)
    if errors:
        raise RuntimeError(f"{len(errors)} clients failed; first: {errors[0]!r}")
    return lat, shared, lanes, split


def run_setting(
    tmp: str,
    name: str,
    rtt: float,
    gbps: float,
    clients: int,
    seconds: float,
    batch: int,
    lanes: int,
    network: str | None,
    nice: int = 0,
    batch_wait_ms: float | None = None,
    background_nice: int | None = None,
    material_budget_mb: float | None = None,
) -> dict[str, Any]:
    from mpcc.zoo.reference import run_logits

    path, X = MODELS[name](64)
    ref = run_logits(path, X)
    prog, weights = compile_onnx(
        path, (batch, *X.shape[1:]), network=network, material_budget_mb=material_budget_mb
    )
    plan = estimate(prog).total
    if network and material_budget_mb is not None:
        network = f"{network} within {material_budget_mb:g} MB"
    stock = max(4, 2 * lanes)
    serving: dict[str, Any] = {"timeout_s": 60, "lanes": lanes, "stock": stock}
    if batch_wait_ms is not None:
        serving["batch_wait_ms"] = batch_wait_ms
    if background_nice is not None:
        serving["background_nice"] = background_nice
    with WanBed(tempfile.mkdtemp(dir=tmp), rtt, gbps, **serving) as bed:
        bed.start_parties()
        with bed.inside("client"):
            deploy_program(prog, weights, bed.view("client"))
            with Client(bed.view("client")) as c:
                c.wait_ready(120)
            marks: list[dict[str, float]] = []

            def window() -> None:  # as the counted window opens and as it closes
                if not marks and nice:
                    renice(bed, nice)
                marks.append(usage_of(bed))

            if nice:
                renice(bed, nice)
            view = bed.view("client")
            lat, shared, used, split = clients_run(view, clients, seconds, X, ref, window)
    cpu, sys_ms, faults = per_answer(marks, len(lat))
    row = {
        "model": name,
        "rtt_ms": rtt,
        "gbps": gbps,
        "clients": clients,
        "batch": batch,
        "lanes": lanes,
        "stock": stock,
        "compiled_for": network,
        "rounds": plan.rounds,
        "dealer_mb_per_query": (plan.dealer + dealer_to_p0(prog)) / 1e6,
        "party_nice": nice,
        "batch_wait_ms": batch_wait_ms,
        "background_nice": background_nice,
        "seconds": seconds,
        "answers": len(lat),
        "answers_per_s": len(lat) / seconds,
        "latency_ms": {
            "median": statistics.median(lat) * 1e3,
            "p90": float(np.percentile(lat, 90)) * 1e3,
        },
        "requests_per_query": statistics.mean(shared),
        # where a median answer's time goes: waiting at P0 (for a lane, a batch and its
        # material) and its query's online phase; the rest is the client's legs
        "queued_ms_median": statistics.median(q for q, _ in split) * 1e3,
        "online_ms_median": statistics.median(o for _, o in split) * 1e3,
        "lanes_used": sorted(set(used)),
        "cpu_ms_per_answer": cpu,
        "sys_ms_per_answer": sys_ms,
        "minor_faults_per_answer": faults,
        "load_avg": os.getloadavg(),
    }
    print(line(row), flush=True)
    return row


def line(r: dict) -> str:
    net = f", plan for {r['compiled_for']}" if r["compiled_for"] else ""
    if "rounds" in r:
        net += f" ({r['rounds']} rounds, {r['dealer_mb_per_query']:.1f} MB of material a query)"
    if r.get("batch_wait_ms") is not None:
        net += f", batch wait {r['batch_wait_ms']:g} ms"
    if r.get("party_nice"):
        net += f", parties at nice {r['party_nice']}"
    if r.get("background_nice") is not None:
        net += f", material makers at +{r['background_nice']}"
    return (
        f"{r['model']} RTT {r['rtt_ms']:g} ms, {r['clients']} clients, batch {r['batch']} x "
        f"{r['lanes']} lanes{net}: {r['answers_per_s']:.1f} answers/s, median "
        f"{r['latency_ms']['median']:.0f} ms, p90 {r['latency_ms']['p90']:.0f} ms, "
        f"{r['requests_per_query']:.1f} requests per query (median wait at P0 "
        f"{r['queued_ms_median']:.0f} ms, online {r['online_ms_median']:.0f} ms); CPU ms "
        "per answer: "
        + ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_ms_per_answer"].items())
        + " (of which system: "
        + ", ".join(f"{v:.1f}" for v in r["sys_ms_per_answer"].values())
        + f"); load {r['load_avg'][0]:.1f}"
    )


def markdown(report: dict) -> str:
    out = [
        "# Answers per second across an emulated WAN (`benchmarks/wan_throughput.py`)",
        "",
        f"Generated {report['when']} by `{report['command']}`.",
        "",
        "Three party processes over TLS 1.3, each in its own network namespace, every link",
        "through a relay holding each chunk RTT/2 each way; clients in a fourth namespace,",
        "each sending one sample and the next when the answer is in. Counted after a",
        f"{WARM_S:g} s warm-up; every answer checked against onnxruntime (a wrong one stops",
        "the run, so every row had none). A setting B x L is",
        "a plan of batch B (P0 puts up to B clients' requests in one query) served with L",
        "lanes (queries in flight at once, each on its own P0-P1 link).",
        "",
        "| model | RTT ms | clients | batch x lanes | plan | answers/s | median ms | p90 ms "
        "| requests/query | CPU ms per answer (system): P0, P1, dealer, relay | load |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in report["rows"]:
        out.append(
            f"| {NAMES[r['model']]} | {r['rtt_ms']:g} | {r['clients']} | {r['batch']} x "
            f"{r['lanes']} | {r['compiled_for'] or 'LAN'} | {r['answers_per_s']:.1f} "
            f"| {r['latency_ms']['median']:.0f} | {r['latency_ms']['p90']:.0f} "
            f"| {r['requests_per_query']:.1f} | "
            + ", ".join(
                f"{r['cpu_ms_per_answer'][k]:.1f} ({r['sys_ms_per_answer'][k]:.1f})"
                for k in ("p0", "p1", "dealer", "relay")
                if k in r["cpu_ms_per_answer"]
            )
            + f" | {r['load_avg'][0]:.1f} |"
        )
    m = report["machine"]
    out += [
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, load average {m['load_avg_1m']:.1f} at "
        "the start (the three parties, the relays and the clients share those cores).",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rtt", type=float, default=10.0, help="round trip, ms")
    ap.add_argument("--gbps", type=float, default=1.0, help="each role's link rate")
    ap.add_argument("--model", default="lenet", choices=sorted(MODELS))
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20.0, help="measured time per setting")
    ap.add_argument(
        "--setting", type=setting, action="append", help="BATCHxLANES (repeatable; default 1x1)"
    )
    ap.add_argument("--compile-network", metavar="RTT_ms,Gbps", help="mpcc compile --network")
    ap.add_argument(
        "--material-budget",
        type=float,
        metavar="MB",
        help="with --compile-network: mpcc compile --material-budget (dealer MB per query)",
    )
    ap.add_argument(
        "--party-nice",
        type=int,
        default=0,
        help="the parties' threads' nice value for the counted window (root may go below 0: "
        "other work on a shared machine then takes less of their time; the relay runs at "
        "-10 always)",
    )
    ap.add_argument(
        "--batch-wait-ms",
        type=float,
        help="[serving] batch_wait_ms: how long P0 waits to fill a batch (default: the config's)",
    )
    ap.add_argument(
        "--background-nice",
        type=int,
        help="[serving] background_nice: niceness added to the threads that make material "
        "(default: the config's)",
    )
    ap.add_argument("--out", default=str(RESULTS / "wan_throughput"), help="path without suffix")
    args = ap.parse_args(argv)
    why = unavailable()
    if why:
        print(f"benchmarks/wan_throughput.py: {why}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/wan_throughput.py " + " ".join(argv or sys.argv[1:]),
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "machine": machine_info(),
        "rows": [],
    }
    with tempfile.TemporaryDirectory(prefix="mpcc-wanthr-") as tmp:
        for batch, lanes in args.setting or [(1, 1)]:
            report["rows"].append(
                run_setting(
                    tmp,
                    args.model,
                    args.rtt,
                    args.gbps,
                    args.clients,
                    args.seconds,
                    batch,
                    lanes,
                    args.compile_network,
                    args.party_nice,
                    args.batch_wait_ms,
                    args.background_nice,
                    args.material_budget,
                )
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
