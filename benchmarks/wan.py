"""Secure inference across a WAN emulated on this machine, measured end to end at the client.

P0, P1 and the dealer run as `python -m mpcc party` processes over mutually authenticated
TLS 1.3, each in its own network namespace, and the client in a fourth; every link crosses
a relay that holds each chunk RTT/2 each way, and tbf caps each role's link at the given
rate (`mpcc.bench.wan.WanBed`). For each model and RTT it reports the client's end-to-end
latency over N queries (median, p90), the rounds and bytes of one query, and
`mpcc bench --network`'s projection of the same query beside it
(`mpcc.bench.network.Link.project_query`: the no-delay latency + (rounds + 4) x RTT/2 +
bytes on the wire / rate), with the no-delay latency measured over TLS on localhost
(`mpcc bench --processes`), in process (`mpcc bench`), and in the bed at 0 ms RTT. Every
answer is checked against onnxruntime.

    sudo .venv/bin/python benchmarks/wan.py --rtt 10 --gbps 1        # one point, LeNet
    sudo .venv/bin/python benchmarks/wan.py --sweep --models lenet resnet18

`resnet18` is torchvision's ResNet-18 written by hand (benchmarks/bigmodels.py) with 10
classes at 32x32 (CIFAR), random weights under a fixed seed. Writes benchmarks/results/wan.md
and wan.json. Needs root (network namespaces); the machine's load shows in the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpcc.bench import bench, machine_info  # noqa: E402
from mpcc.bench.measure import wait_for_stock  # noqa: E402
from mpcc.bench.network import Link, QueryTraffic, tls_bytes  # noqa: E402
from mpcc.bench.wan import WanBed, unavailable  # noqa: E402
from mpcc.compiler.pipeline import compile_onnx  # noqa: E402
from mpcc.serving.client import Client  # noqa: E402
from mpcc.serving.owner import deploy_program  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CACHE = REPO / ".cache" / "wan"
SWEEP_MS = (0.2, 5.0, 10.0, 40.0)
TOLERANCE = 1e-2  # served logits against onnxruntime's (16 fractional bits)
NAMES = {"lenet": "LeNet (MNIST 28x28)", "resnet18": "ResNet-18 (CIFAR 32x32)"}


def lenet(n: int) -> tuple[Path, np.ndarray]:
    from mpcc.zoo.digits import load_digits_28
    from mpcc.zoo.models import build

    X, _ = load_digits_28("test")
    return build("lenet"), X[:n]


def resnet18(n: int) -> tuple[Path, np.ndarray]:
    """torchvision's ResNet-18 layer shapes, 10 classes, exported once at 1x3x32x32."""
    import hashlib

    src = (REPO / "benchmarks" / "bigmodels.py").read_bytes()
    path = CACHE / f"resnet18-cifar-{hashlib.sha256(src).hexdigest()[:10]}.onnx"
    if not path.exists():
        import onnx
        import torch

        sys.path.insert(0, str(REPO / "benchmarks"))
        import bigmodels

        from mpcc.api import export_onnx

        torch.manual_seed(0)
        module = bigmodels.ResNet18(num_classes=10)
        bigmodels.init_like_torchvision("resnet18", module)
        module.eval()
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        onnx.save(export_onnx(module, torch.randn(1, 3, 32, 32)), str(tmp))
        tmp.replace(path)
    rng = np.random.default_rng(0)  # test data, not masks
    return path, rng.standard_normal((n, 3, 32, 32)).astype(np.float32)


MODELS = {"lenet": lenet, "resnet18": resnet18}


def stats(xs: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(xs),
        "p90": float(np.percentile(xs, 90)),
        "min": min(xs),
        "n": len(xs),
    }


def traffic(prog: Any, r: Any) -> QueryTraffic:
    """One served query's traffic as the client saw it (`RequestStats`)."""
    out = prog.value(prog.outputs[0][1])
    return QueryTraffic(r.rounds, max(r.sent), r.client_bytes, 8 * int(np.prod(out.shape)))


def checked(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, ref: np.ndarray) -> float:
    """One query's latency; its answer must match onnxruntime's."""
    t0 = time.perf_counter()
    y = predict(x)
    t = time.perf_counter() - t0
    if y.argmax() != ref.argmax() or np.abs(y - ref).max() > TOLERANCE:
        raise AssertionError(f"wrong answer: {np.abs(y - ref).max():.3g} off onnxruntime")
    return t


def run_model(
    bed: WanBed,
    name: str,
    rtts: list[float],
    gbps: float,
    n: int,
    min_s: float = 0.0,
    network: str | None = None,
) -> list[dict]:
    """The model at each RTT through the bed, beside `mpcc bench --network`'s projections.

    The projection's no-delay term is measured four ways. Interleaved with the point's
    queries, so that all see the same machine load (in turn: a query at the point's RTT, one
    with the relays at 0 ms, one on localhost, each once the parties hold their stock of
    material again: `wait_for_stock`): *TLS*, three party processes over TLS on localhost
    (what `mpcc bench --processes` measures), and *bed 0*, this bed at 0 ms (the same
    processes and relays: it isolates the network model from the no-delay estimate). Run
    just before the point: *bench*, `mpcc bench --processes` itself, and *in process*,
    `mpcc bench` (threads and queues). `network` ("RTT_ms,Gbps"): the model compiled for
    that link (`mpcc compile --network`), not for the LAN."""
    from mpcc.compiler import planfile
    from mpcc.serving.local import serve_locally
    from mpcc.zoo.reference import run_logits

    path, X = MODELS[name](n)
    ref = run_logits(path, X)
    prog, weights = compile_onnx(path, (1, *X.shape[1:]), network=network)
    if network is not None:  # mpcc bench measures this very plan (a plan file)
        plan = CACHE / f"{name}-{network.replace(',', '_')}.mpcc"
        plan.parent.mkdir(parents=True, exist_ok=True)
        planfile.save(plan, prog, weights)
        path = plan
    rows = []
    with serve_locally(prog, weights) as local:
        with bed.inside("client"):  # the client's links are made in its namespace
            deploy_program(prog, weights, bed.view("client"))
            c = Client(bed.view("client"))
            c.wait_ready(600)
        with c:
            for rtt in rtts:
                before = {}
                for key, processes in (("bench", True), ("inprocess", False)):
                    print(f"{name}: mpcc bench{' --processes' * processes}", flush=True)
                    res = bench(path, [1], n, plaintext=False, processes=processes)
                    before[key] = res["results"][0]["e2e_s"]
                lat: dict[str, list[float]] = {"bed": [], "bed0": [], "tls": []}
                # the first two warm the links at this delay; short points run on to
                # `min_s` of queries (at most 5n), as the machine's load swings most there
                i, t0 = 0, time.perf_counter()
                while i < n + 2 or (time.perf_counter() - t0 < min_s and i < 5 * n + 2):
                    for key in lat:
                        client = local if key == "tls" else c
                        if key != "tls":
                            bed.set_rtt(rtt if key == "bed" else 0.0)
                        t = checked(client.predict, X[i % n : i % n + 1], ref[i % n])
                        if key == "bed":
                            r = c.stats.requests[-1]
                        wait_for_stock(client)
                        if i >= 2:
                            lat[key].append(t)
                    i += 1
                rows.append(point(name, prog, Link(rtt / 1e3, gbps), r, lat, before))
                rows[-1]["compiled_for"] = network
                print(line(rows[-1]), flush=True)
    return rows


def point(name: str, prog: Any, link: Link, r: Any, lat: dict, before: dict) -> dict:
    """One RTT's row: the bed's latencies, the query's traffic, the projections."""
    q = traffic(prog, r)
    no_delay = {k: stats(v) for k, v in lat.items() if k != "bed"} | before
    proj = {k: link.project_query(v["median"], q)["latency_s"] for k, v in no_delay.items()}
    row = {
        "model": name,
        "rtt_ms": link.rtt_s * 1e3,
        "gbps": link.gbps,
        "latency_s": stats(lat["bed"]),
        "online_s_at_parties": r.online_s,
        "rounds": r.rounds,
        "sent_bytes": list(r.sent),
        "wire_bytes": list(r.wire_sent),
        "wire_bytes_projected": tls_bytes(max(r.sent), r.rounds),
        "dealer_bytes": r.dealer_bytes,
        "client_bytes": r.client_bytes,
        "answer_bytes": q.answer_bytes,
        "floor_s": link.project_query(0.0, q)["delay_s"],
        "no_delay_s": no_delay,
        "terms": link.project_query(no_delay["tls"]["median"], q),
    }
    med = row["latency_s"]["median"]
    for k in ("tls", "bench", "inprocess", "bed0"):
        key = "projection" if k == "tls" else f"projection_{k}"
        row[key + "_s"] = proj[k]
        row[key + "_error"] = proj[k] / med - 1
    return row


def label(r: dict) -> str:
    """The model's name, and the link its plan was compiled for (if not the LAN)."""
    net = r.get("compiled_for")
    return NAMES[r["model"]] + (f", compiled for {net.replace(',', ' ms, ')} Gbit/s" if net else "")


def line(r: dict) -> str:
    lat = r["latency_s"]
    return (
        f"{r['model']:9s} RTT {r['rtt_ms']:5g} ms: median {lat['median'] * 1e3:7.1f} ms "
        f"p90 {lat['p90'] * 1e3:7.1f} ms | {r['rounds']} rounds, delays "
        f"{r['floor_s'] * 1e3:7.1f} ms | projection {r['projection_s'] * 1e3:7.1f} ms "
        f"({r['projection_error']:+.0%}), bench {r['projection_bench_error']:+.0%}, in process "
        f"{r['projection_inprocess_error']:+.0%}, bed 0 {r['projection_bed0_error']:+.0%}"
    )


def markdown(report: dict) -> str:
    out = [
        "# Secure inference across an emulated WAN (`benchmarks/wan.py`)",
        "",
        f"Generated {report['when']} by `{report['command']}`.",
        "",
        "P0, P1 and the dealer as `python -m mpcc party` processes over TLS 1.3, each in its",
        "own network namespace, the client in a fourth; every link crosses a relay holding",
        f"each chunk RTT/2 each way; tbf caps each role's link at {report['gbps']:g} Gbit/s.",
        "Latency is the client's, end to end (its request and answer included), batch 1,",
        f"at least {report['queries']} queries per point, short points more, up to "
        f"{report.get('min_seconds', 0):g} s (*n*);",
        "every answer checked against onnxruntime.",
        f"The harness, the parties and the references ran at niceness {report.get('nice', 0)}",
        "(the relays at -10), against the other work on the machine.",
        "",
        "Projection (`mpcc.bench.network.Link.project_query`) = the query's latency with no",
        "delay + (rounds + 4) x RTT/2 (*delays*: the rounds, the client's two legs, P0's",
        "announcement and P1's go) + bytes on the wire (frames, TLS records, TCP/IP headers)",
        "/ rate. Its no-delay term (the query's latency with no delay) is measured four ways.",
        "Interleaved with the point's queries (in turn, each once the parties hold their stock",
        "of material again), so all see the same load: **TLS** = three party processes over",
        "TLS on localhost (what `mpcc bench --processes` measures, and so what",
        "`mpcc bench --processes --network RTT,Gbps` projects from), and **bed 0** = this bed",
        "with the relays at 0 ms (the same processes and relays: it isolates the network",
        "model from the no-delay estimate). Run just before the point: **bench** =",
        "`mpcc bench --processes` itself, and **in process** = `mpcc bench` (threads and",
        "queues: what `mpcc bench --network RTT,Gbps` projects from).",
        "Errors are against the measured median.",
        "",
        "| model | RTT ms | n | median ms | p90 ms | rounds | bytes/party | delays ms "
        "| projection (TLS) ms | error | bench | in process | bed 0 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lat = r["latency_s"]
        out.append(
            f"| {label(r)} | {r['rtt_ms']:g} | {lat['n']} | {lat['median'] * 1e3:.1f} "
            f"| {lat['p90'] * 1e3:.1f} | {r['rounds']} | {max(r['sent_bytes']) / 1e6:.2f} MB "
            f"| {r['floor_s'] * 1e3:.1f} | {r['projection_s'] * 1e3:.1f} "
            f"| {r['projection_error']:+.0%} | {r['projection_bench_error']:+.0%} "
            f"| {r['projection_inprocess_error']:+.0%} | {r['projection_bed0_error']:+.0%} |"
        )
    out += ["", "No-delay latencies (median ms):", ""]
    for r in report["rows"]:
        b = r["no_delay_s"]
        out.append(
            f"- {label(r)} at {r['rtt_ms']:g} ms: TLS {b['tls']['median'] * 1e3:.1f}, "
            f"bed 0 {b['bed0']['median'] * 1e3:.1f}, bench {b['bench']['median'] * 1e3:.1f}, "
            f"in process {b['inprocess']['median'] * 1e3:.1f}; P0's bytes on the socket "
            f"{r['wire_bytes'][0]:,} measured, {r['wire_bytes_projected']:,.0f} "
            "projected"
        )
    m = report["machine"]
    out += [
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, load average {m['load_avg_1m']:.1f} at "
        "the start (other work shares the cores: the parties' compute time varies with it).",
        "",
    ]
    return "\n".join(out)


def chart(report: dict, path: Path) -> bool:
    """Latency against RTT per model: measured (median, p90 bar), the delays alone and the
    projections."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    models = list(dict.fromkeys(r["model"] for r in report["rows"]))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, name in zip(axes[0], models, strict=True):
        rows = [r for r in report["rows"] if r["model"] == name]
        rtt = [r["rtt_ms"] for r in rows]
        med = [r["latency_s"]["median"] * 1e3 for r in rows]
        p90 = [r["latency_s"]["p90"] * 1e3 for r in rows]
        ax.errorbar(
            rtt,
            med,
            yerr=[[0] * len(med), [b - a for a, b in zip(med, p90, strict=True)]],
            marker="o",
            capsize=3,
            label="measured (median, p90)",
        )
        ax.plot(rtt, [r["projection_s"] * 1e3 for r in rows], "s--", label="projection (TLS)")
        ax.plot(rtt, [r["projection_bench_s"] * 1e3 for r in rows], "+", label="projection (bench)")
        ax.plot(
            rtt,
            [r["projection_inprocess_s"] * 1e3 for r in rows],
            "^:",
            label="projection (in process)",
        )
        ax.plot(rtt, [r["projection_bed0_s"] * 1e3 for r in rows], "x", label="projection (bed 0)")
        ax.plot(rtt, [r["floor_s"] * 1e3 for r in rows], ":", color="gray", label="delays alone")
        ax.set_title(f"{label(rows[0])}, {rows[0]['rounds']} rounds")
        ax.set_xlabel("RTT (ms)")
        ax.set_ylabel("latency per query at the client (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rtt", type=float, nargs="+", default=[10.0], help="round trips, ms")
    ap.add_argument("--sweep", action="store_true", help=f"RTT {', '.join(map(str, SWEEP_MS))}")
    ap.add_argument("--gbps", type=float, default=1.0, help="each role's link rate")
    ap.add_argument("--models", nargs="+", default=["lenet"], choices=sorted(MODELS))
    ap.add_argument("--queries", type=int, default=20, help="timed queries per point")
    ap.add_argument(
        "--min-seconds", type=float, default=20.0, help="a point's least time (at most 5x queries)"
    )
    ap.add_argument(
        "--compile-network",
        metavar="RTT_ms,Gbps",
        help="compile the models for this link (mpcc compile --network), not for the LAN",
    )
    ap.add_argument("--out", default=str(RESULTS / "wan"), help="output path without suffix")
    args = ap.parse_args(argv)
    why = unavailable()
    if why:
        print(f"benchmarks/wan.py: {why}", file=sys.stderr)
        return 2
    # killed (SIGTERM): leave through the `with` blocks, which delete the bed and stop
    # every process this run started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rtts = list(SWEEP_MS) if args.sweep else args.rtt
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/wan.py " + " ".join(argv or sys.argv[1:]),
        "gbps": args.gbps,
        "queries": args.queries,
        "min_seconds": args.min_seconds,
        "nice": os.getpriority(os.PRIO_PROCESS, 0),  # e.g. `nice -n -5`: inherited by all
        "machine": machine_info(),
        "rows": [],
    }
    with (
        tempfile.TemporaryDirectory(prefix="mpcc-wan-") as tmp,
        WanBed(tmp, rtts[0], args.gbps, timeout_s=60, handshake_timeout_s=60) as bed,
    ):
        bed.start_parties()
        for name in args.models:
            report["rows"] += run_model(
                bed, name, rtts, args.gbps, args.queries, args.min_seconds, args.compile_network
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    chart(report, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
