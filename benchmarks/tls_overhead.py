"""The online phase over TLS on 127.0.0.1 against the in-process transport, A/B interleaved.

One `LocalCluster` (P0 and P1 as threads of this process, in-process queues) and one set of
three party processes over mutually authenticated TLS 1.3 (`serve_locally`) serve the same
plan at once; queries alternate between them (ABBA order), so both see the same machine
load. Each TLS query waits until the parties hold their stock of material again, as each
in-process query has its material made first: neither shares the cores with making the next
query's material. Reports the median online time of each (the slower party's, as each
transport counts it), their ratio, and the extra time per round. The machine's other work
shows in the numbers: compare ratios, and repeat. `--cpus p0=0,p1=1` pins the parties apart
(as on machines of their own), `--spin-us` sets their `[serving] spin_us`.

    .venv/bin/python benchmarks/tls_overhead.py --models lenet resnet18 --queries 30

Writes benchmarks/results/tls_overhead.md and .json (`--out` to change).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wan import MODELS, NAMES  # noqa: E402

from mpcc.bench import machine_info  # noqa: E402
from mpcc.bench.measure import wait_for_stock  # noqa: E402
from mpcc.compiler.pipeline import compile_onnx  # noqa: E402
from mpcc.runtime.cluster import LocalCluster  # noqa: E402
from mpcc.serving.local import serve_locally  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def measure(
    name: str, n: int, cpus: dict[str, str] | None = None, spin_us: float = 0.0
) -> dict[str, Any]:
    path, X = MODELS[name](max(n, 4))
    prog, weights = compile_onnx(path, (1, *X.shape[1:]))
    local, tls, stock = [], [], []
    served = serve_locally(
        prog, weights, cpus, timeout_s=30, handshake_timeout_s=30, spin_us=spin_us
    )
    with LocalCluster(prog, weights) as lc, served as client:

        def a(i: int) -> None:
            lc.preprocess(1)  # material first, outside the online clock, as `mpcc bench`
            lc.run_batch(X[i % len(X)][None])
            local.append(lc.stats.online_s)

        def b(i: int) -> None:
            wait_for_stock(client)  # the dealer and the parties idle, as `a` has its material
            client.predict(X[i % len(X)][None])
            r = client.stats.requests[-1]
            tls.append(r.online_s)
            stock.append(r)

        for i in range(3):  # warm both
            a(i)
            b(i)
        local.clear()
        tls.clear()
        stock.clear()
        for i in range(n):
            for f in (a, b) if i % 2 == 0 else (b, a):
                f(i)
    r = stock[-1]
    lm, tm = statistics.median(local), statistics.median(tls)
    return {
        "model": name,
        "queries": n,
        "rounds": r.rounds,
        "sent_bytes": list(r.sent),
        "wire_bytes": list(r.wire_sent),
        "inprocess_s": lm,
        "tls_s": tm,
        "ratio": tm / lm,
        "per_round_extra_us": (tm - lm) / r.rounds * 1e6,
        "cpus": cpus or {},
        "spin_us": spin_us,
        "inprocess_all": local,
        "tls_all": tls,
    }


def _pins(cpus: dict[str, str] | None) -> str:
    return ", ".join(f"{k} on CPU {v}" for k, v in sorted((cpus or {}).items())) or "no"


def markdown(report: dict) -> str:
    out = [
        "# Online phase over TLS (127.0.0.1) against in process (`benchmarks/tls_overhead.py`)",
        "",
        f"Generated {report['when']}; {report['note']}",
        "",
        "| model | rounds | bytes/party | in process (median) | TLS, 3 processes (median) "
        "| ratio | extra per round | parties pinned | spin |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in report["rows"]:
        out.append(
            f"| {NAMES[r['model']]} | {r['rounds']} | {max(r['sent_bytes']) / 1e6:.2f} MB "
            f"| {r['inprocess_s'] * 1e3:.1f} ms | {r['tls_s'] * 1e3:.1f} ms "
            f"| {r['ratio']:.2f}x | {r['per_round_extra_us']:.0f} us "
            f"| {_pins(r.get('cpus'))} | {r.get('spin_us', 0):g} us |"
        )
    m = report["machine"]
    out += ["", f"Machine: {m['cpu']}, {m['cores']} cores, load {m['load_avg_1m']:.1f}.", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["lenet", "resnet18"], choices=sorted(MODELS))
    ap.add_argument("--queries", type=int, default=30, help="queries per transport")
    ap.add_argument("--note", default="", help="what this run measures (e.g. before/after)")
    ap.add_argument(
        "--cpus",
        default="",
        help="pin parties to CPUs, e.g. p0=0,p1=1 (as on machines of their own; default: not)",
    )
    ap.add_argument("--spin-us", type=float, default=0.0, help="[serving] spin_us of the parties")
    ap.add_argument("--out", default=str(RESULTS / "tls_overhead"), help="path without suffix")
    args = ap.parse_args(argv)
    report = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "note": args.note or "queries interleaved ABBA, medians",
        "machine": machine_info(),
        "rows": [],
    }
    for name in args.models:
        cpus = dict(kv.split("=", 1) for kv in args.cpus.split(",") if kv)
        row = measure(name, args.queries, cpus, args.spin_us)
        print(
            f"{name}: in process {row['inprocess_s'] * 1e3:.1f} ms, TLS {row['tls_s'] * 1e3:.1f}"
            f" ms ({row['ratio']:.2f}x, {row['per_round_extra_us']:.0f} us/round extra)",
            flush=True,
        )
        report["rows"].append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
