"""Serving LeNet from three party processes on 127.0.0.1 over mutually authenticated TLS 1.3.

For 1, 4 and 16 concurrent clients (one thread and one connection pair each, one sample per
request), prints requests/s (= queries/s at batch 1), median and p99 latency, and how much of
a request's time was the online phase. With `--batch B` the plan takes B samples per query
and P0 fills each query with queued requests. Then the bytes on the wire per query against
the in-process count of `LocalCluster`: the payload is the same; framing and TLS come on top.

Run: `.venv/bin/python benchmarks/serving.py [--seconds 5] [--clients 1 4 16] [--batch 1]`.
Numbers depend on the machine: all three parties and the clients share its cores.
"""

from __future__ import annotations

import argparse
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0, help="measuring time per setting")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--stock", type=int, default=4, help="queries of preprocessing kept ahead")
    ap.add_argument(
        "--batch", type=int, default=1, help="the plan's batch: concurrent requests share it"
    )
    args = ap.parse_args()

    prog, weights = compile_onnx(models.build("lenet"), (args.batch, 1, 28, 28))
    X, _ = digits.load_digits_28("test")
    X = np.asarray(X[:64])

    with LocalCluster(prog, weights) as lc:
        lc.predict(X[: args.batch])
        local = lc.stats

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
            lat = [s.latency_s for s in stats]
            online = [s.online_s for s in stats]
            print(
                f"{n:>7} {len(stats) / wall:>10.1f} {statistics.median(lat) * 1e3:>10.1f} "
                f"{pct(lat, 99) * 1e3:>8.1f} {statistics.median(online) * 1e3:>10.1f} "
                f"{sum(online) / sum(lat):>9.0%} "
                f"{statistics.median(s.queued_s for s in stats) * 1e3:>10.1f} "
                f"{statistics.median(s.offline_s for s in stats) * 1e3:>11.1f} "
                f"{statistics.mean(s.batch_requests for s in stats):>9.1f}"
            )
            last = stats
        r = last[-1]

    print(f"\nbytes per query (batch {args.batch})   in-process   on the wire (TLS)   overhead")
    rows = [
        ("P0 -> P1 online", local.sent[0], r.sent[0], r.wire_sent[0]),
        ("P1 -> P0 online", local.sent[1], r.sent[1], r.wire_sent[1]),
        ("dealer -> P1 (offline)", local.dealer_bytes, r.dealer_bytes, r.dealer_wire),
    ]
    for name, in_proc, payload, wire in rows:
        assert in_proc == payload, (name, in_proc, payload)
        print(
            f"  {name:<28} {in_proc / 1e3:>10.1f} KB {wire / 1e3:>14.1f} KB "
            f"{(wire - payload) / payload:>10.2%}"
        )
    print(f"  {'rounds':<28} {local.rounds:>13} {r.rounds:>17}")
    print(f"  in-process online phase: {local.online_s * 1e3:.1f} ms per query")
    return 0


if __name__ == "__main__":
    sys.exit(main())
