"""Serving LeNet from three party processes on 127.0.0.1 over mutually authenticated TLS 1.3.

For 1, 4 and 16 concurrent clients (one thread and one connection pair each, one sample per
request), prints requests/s (= queries/s at batch 1), median and p99 latency, and how much of
a request's time was the online phase. With `--batch B` the plan takes B samples per query
and P0 fills each query with queued requests. Then the bytes on the wire per query against
the in-process count of `LocalCluster`: the payload is the same; framing and TLS come on top.

Run: `.venv/bin/python benchmarks/serving.py [--seconds 5] [--clients 1 4 16] [--batch 1]`.
Writes `benchmarks/results/serving.md`, `serving.json` and (with matplotlib) `serving.png`
(`serving-batchB.*` for another batch). Numbers depend on the machine: all three parties
and the clients share its cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpcc.compiler.pipeline import compile_onnx  # noqa: E402
from mpcc.runtime.cluster import LocalCluster  # noqa: E402
from mpcc.serving.client import Client, RequestStats  # noqa: E402
from mpcc.serving.local import serve_locally  # noqa: E402
from mpcc.zoo import digits, models  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def load_run(cfg, X: np.ndarray, clients: int, seconds: float) -> tuple[list[RequestStats], float]:
    """`clients` threads send one sample at a time for `seconds`; all requests' stats."""
    stats: list[RequestStats] = []
    errors: list[Exception] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    stop = threading.Event()

    def work(k: int) -> None:
        try:
            with Client(cfg, window=1) as c:
                c.predict(X[k % len(X)])  # connect and warm up outside the clock
                start.wait()
                i = k
                while not stop.is_set():
                    c.predict(X[i % len(X)])
                    with lock:
                        stats.extend(c.stats.requests)
                    i += clients
        except Exception as e:  # noqa: BLE001 - reported by the caller
            errors.append(e)
            start.abort()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return stats, wall


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def summarise(clients: int, stats: list[RequestStats], wall: float) -> dict[str, float]:
    """One row of the figure: throughput, latency and its online / queued / other split."""
    lat = [s.latency_s for s in stats]
    online = [s.online_s for s in stats]
    return {
        "clients": clients,
        "requests": len(stats),
        "requests_per_s": len(stats) / wall,
        "median_ms": statistics.median(lat) * 1e3,
        "p99_ms": pct(lat, 99) * 1e3,
        "online_ms": statistics.median(online) * 1e3,
        "online_share": sum(online) / sum(lat),
        "queued_ms": statistics.median(s.queued_s for s in stats) * 1e3,
        "offline_ms": statistics.median(s.offline_s for s in stats) * 1e3,
        "requests_per_query": statistics.mean(s.batch_requests for s in stats),
    }


def warm_local_online_s(prog, weights, X: np.ndarray, queries: int = 20) -> tuple[float, object]:
    """`LocalCluster`'s median online time over warm queries, and its last query's stats."""
    with LocalCluster(prog, weights) as lc:
        lc.predict(X[: prog.batch])  # the first query loads the kernels
        times = []
        for i in range(queries):
            lc.predict(X[(i * prog.batch) % (len(X) - prog.batch) :][: prog.batch])
            times.append(lc.stats.online_s)
        return statistics.median(times), lc.stats


def markdown(result: dict) -> str:
    head = (
        f"LeNet, batch {result['batch']}, 3 processes on 127.0.0.1, TLS 1.3 mutual auth, "
        f"stock {result['stock']}, {result['seconds']:g} s per setting ({result['machine']})"
    )
    lines = [
        "# Serving benchmark",
        "",
        head,
        "",
        "| clients | requests/s | median ms | p99 ms | online ms | online % | queued ms "
        "| offline ms (ahead) | requests/query |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['clients']} | {r['requests_per_s']:.1f} | {r['median_ms']:.1f} "
            f"| {r['p99_ms']:.1f} | {r['online_ms']:.1f} | {r['online_share']:.0%} "
            f"| {r['queued_ms']:.1f} | {r['offline_ms']:.1f} | {r['requests_per_query']:.1f} |"
        )
    lines += [
        "",
        f"Bytes per query (batch {result['batch']}): payload as counted in-process and on the "
        "wire (mpcc framing and TLS records on top).",
        "",
        "| link | in-process | on the wire | overhead |",
        "|---|---:|---:|---:|",
    ]
    for b in result["bytes"]:
        lines.append(
            f"| {b['link']} | {b['in_process'] / 1e3:.1f} KB | {b['wire'] / 1e3:.1f} KB "
            f"| {(b['wire'] - b['payload']) / b['payload']:.2%} |"
        )
    lines += [
        f"| rounds | {result['rounds_in_process']} | {result['rounds_served']} | |",
        "",
        f"In-process (`LocalCluster`, threads) online phase: "
        f"{result['local_online_ms']:.1f} ms per warm query.",
        "",
    ]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> bool:
    """Requests/s, and median latency split into online / queued / the rest; False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = result["rows"]
    xs = np.arange(len(rows))
    labels = [str(r["clients"]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.bar(xs, [r["requests_per_s"] for r in rows], color="tab:blue")
    ax1.set_title("throughput")
    ax1.set_ylabel("requests / s")
    online = np.array([r["online_ms"] for r in rows])
    queued = np.array([r["queued_ms"] for r in rows])
    rest = np.maximum(np.array([r["median_ms"] for r in rows]) - online - queued, 0)
    ax2.bar(xs, online, label="online phase", color="tab:green")
    ax2.bar(xs, queued, bottom=online, label="queued at P0", color="tab:orange")
    ax2.bar(xs, rest, bottom=online + queued, label="sharing, TLS, client", color="tab:gray")
    ax2.plot(xs, [r["p99_ms"] for r in rows], "k_", markersize=22, label="p99")
    ax2.set_title("latency (median, split) and p99")
    ax2.set_ylabel("ms")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.set_xticks(xs, labels)
        ax.set_xlabel("concurrent clients")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"mpcc serving LeNet (batch {result['batch']}), three processes over TLS: "
        f"{result['machine']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0, help="measuring time per setting")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--stock", type=int, default=4, help="queries of preprocessing kept ahead")
    ap.add_argument(
        "--batch", type=int, default=1, help="the plan's batch: concurrent requests share it"
    )
    ap.add_argument("--out", default=str(RESULTS), help="folder for serving.md/json/png")
    args = ap.parse_args(argv)

    prog, weights = compile_onnx(models.build("lenet"), (args.batch, 1, 28, 28))
    X, _ = digits.load_digits_28("test")
    X = np.asarray(X[:64])

    local_online_s, local = warm_local_online_s(prog, weights, X)
    result: dict = {
        "schema": "mpcc-bench-serving/1",
        "batch": prog.batch,
        "stock": args.stock,
        "seconds": args.seconds,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}",
        "rows": [],
    }
    with serve_locally(prog, weights, stock=args.stock, max_connections=128) as client:
        cfg = client.cfg
        print(
            f"LeNet, batch {prog.batch}, 3 processes on 127.0.0.1, TLS 1.3 mutual auth, "
            f"stock {args.stock}, {args.seconds:g} s per setting"
        )
        print(
            f"{'clients':>7} {'requests/s':>10} {'median ms':>10} {'p99 ms':>8} "
            f"{'online ms':>10} {'online %':>9} {'queued ms':>10} {'offline ms':>11} "
            f"{'req/query':>9}"
        )
        last: list[RequestStats] = []
        for n in args.clients:
            stats, wall = load_run(cfg, X, n, args.seconds)
            row = summarise(n, stats, wall)
            result["rows"].append(row)
            print(
                f"{n:>7} {row['requests_per_s']:>10.1f} {row['median_ms']:>10.1f} "
                f"{row['p99_ms']:>8.1f} {row['online_ms']:>10.1f} {row['online_share']:>9.0%} "
                f"{row['queued_ms']:>10.1f} {row['offline_ms']:>11.1f} "
                f"{row['requests_per_query']:>9.1f}"
            )
            last = stats

    # Every query's payload must equal the in-process count. Wire bytes are the mean over the
    # last setting's requests: a receiver credits each message with the bytes read since the
    # previous one, so back-to-back bundles can shift a few KB from one to the next.
    print(f"\nbytes per query (batch {args.batch})   in-process   on the wire (TLS)   overhead")
    rows = [
        ("P0 -> P1 online", local.sent[0], [(r.sent[0], r.wire_sent[0]) for r in last]),
        ("P1 -> P0 online", local.sent[1], [(r.sent[1], r.wire_sent[1]) for r in last]),
        (
            "dealer -> P1 (offline)",
            local.dealer_bytes,
            [(r.dealer_bytes, r.dealer_wire) for r in last],
        ),
    ]
    result["bytes"] = []
    for name, in_proc, served in rows:
        payload = served[0][0]
        assert all(p == in_proc for p, _ in served), (name, in_proc, served)
        wire = statistics.mean(w for _, w in served)
        result["bytes"].append(
            {"link": name, "in_process": in_proc, "payload": payload, "wire": wire}
        )
        print(
            f"  {name:<28} {in_proc / 1e3:>10.1f} KB {wire / 1e3:>14.1f} KB "
            f"{(wire - payload) / payload:>10.2%}"
        )
    rounds = {r.rounds for r in last}
    assert rounds == {local.rounds}, (rounds, local.rounds)
    result["rounds_in_process"], result["rounds_served"] = local.rounds, rounds.pop()
    result["local_online_ms"] = local_online_s * 1e3
    print(f"  {'rounds':<28} {local.rounds:>13} {result['rounds_served']:>17}")
    print(f"  in-process online phase: {local_online_s * 1e3:.1f} ms per warm query")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "serving" if args.batch == 1 else f"serving-batch{args.batch}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    figure = " and the figure" if plot(result, out / f"{stem}.png") else ""
    print(f"wrote {out / stem}.md, .json{figure}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
