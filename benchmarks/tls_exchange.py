"""What one protocol round costs the transport alone: `Channel.exchange` of one array between
two processes over a `TlsChannel` (TLS 1.3 on 127.0.0.1) against two threads over the
in-process `QueueChannel`, by message size, wall time (median) and CPU time per exchange.

    .venv/bin/python benchmarks/tls_exchange.py [--rounds 300]

No compute between rounds, so this is the transport's own cost; the online phase adds the
parties' compute and the machine's scheduling (see benchmarks/tls_overhead.py). Prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import os
import queue
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpcc.runtime.transport import Channel, QueueChannel  # noqa: E402
from mpcc.serving.local import init_local  # noqa: E402
from mpcc.serving.tls import TlsChannel  # noqa: E402
from mpcc.serving.tlscontext import client_context, server_context  # noqa: E402

SIZES = (8, 1024, 16 << 10, 256 << 10, 2 << 20)


def rounds(ch: Channel, n: int, size: int) -> tuple[float, float]:
    """(median wall s, CPU s of this process) per exchange of `size` bytes."""
    a = np.ones(max(1, size // 8), dtype=np.uint64)
    wall = []
    c0 = time.process_time()
    for _ in range(n):
        t = time.perf_counter()
        ch.exchange([a])
        wall.append(time.perf_counter() - t)
    return statistics.median(wall), (time.process_time() - c0) / n


def tls(n: int) -> dict[int, tuple[float, float]]:
    """P0 in a forked child, P1 here; per size (wall, CPU of one end) per exchange."""
    with tempfile.TemporaryDirectory() as d:
        cfg = init_local(Path(d))
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        kw = {"timeout": 30.0, "max_frame_bytes": 1 << 28}
        pid = os.fork()
        if pid == 0:  # P0
            try:
                conn, _ = ls.accept()
                ch = TlsChannel(conn, server_context(cfg, "p0"), server=True, name="p0", **kw)
                for size in SIZES:
                    rounds(ch, n, size)
            finally:
                os._exit(0)
        sock = socket.create_connection(ls.getsockname())
        ch = TlsChannel(sock, client_context(cfg, "p1"), server=False, name="p1", **kw)
        out = {size: rounds(ch, n, size) for size in SIZES}
        os.waitpid(pid, 0)
        ch.close()
        return out


def in_process(n: int) -> dict[int, tuple[float, float]]:
    """Two threads over queues; CPU is the process's (both ends), halved."""
    a, b = queue.SimpleQueue(), queue.SimpleQueue()
    c0, c1 = QueueChannel("p0", "P1", a, b), QueueChannel("p1", "P0", b, a)
    t = threading.Thread(target=lambda: [rounds(c1, n, s) for s in SIZES])
    t.start()
    out = {s: rounds(c0, n, s) for s in SIZES}
    t.join()
    return {s: (w, c / 2) for s, (w, c) in out.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=300, help="exchanges per size")
    ap.add_argument("--repeat", type=int, default=3, help="alternating runs of each (medians)")
    args = ap.parse_args(argv)
    runs: dict[str, list[dict]] = {"queue": [], "tls": []}
    for _ in range(args.repeat):  # A/B interleaved: the machine's load hits both alike
        runs["queue"].append(in_process(args.rounds))
        runs["tls"].append(tls(args.rounds))
    med = {
        k: {s: tuple(statistics.median(r[s][i] for r in v) for i in (0, 1)) for s in SIZES}
        for k, v in runs.items()
    }
    print("| message | in process: wall | CPU per end | TLS: wall | CPU per end | wall ratio |")
    print("|---:|---:|---:|---:|---:|---:|")
    for s in SIZES:
        (qw, qc), (tw, tc) = med["queue"][s], med["tls"][s]
        print(
            f"| {s:,} B | {qw * 1e6:.0f} us | {qc * 1e6:.0f} us | {tw * 1e6:.0f} us "
            f"| {tc * 1e6:.0f} us | {tw / qw:.1f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
