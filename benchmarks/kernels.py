"""Throughput of the ring kernels (uint64, mod 2^64) on one core, warm (after JIT compilation).

Prints G multiply-adds per second for LeNet-like matmul shapes and LeNet's convolutions.
Run: `.venv/bin/python benchmarks/kernels.py [--seconds 0.5]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpcc.runtime import kernels  # noqa: E402

MATMULS = [
    ("lenet fc, im2col conv1 (batch 1)", (576, 25, 20)),
    ("fc1 batch 64 / conv2 im2col", (64, 500, 50)),
    ("fc 800->500 batch 1", (1, 800, 500)),
    ("fc 800->500 batch 64", (64, 800, 500)),
    ("conv1 im2col batch 64", (36864, 25, 20)),
    ("conv2 im2col batch 64", (4096, 500, 50)),
]

# (label, x shape, w shape, conv2d keyword arguments)
CONVS = [
    ("lenet conv1 b1", (1, 1, 28, 28), (20, 1, 5, 5), {}),
    ("lenet conv2 b1", (1, 20, 12, 12), (50, 20, 5, 5), {}),
    ("lenet conv1 b64", (64, 1, 28, 28), (20, 1, 5, 5), {}),
    ("lenet conv2 b64", (64, 20, 12, 12), (50, 20, 5, 5), {}),
    ("depthwise 3x3 b1", (1, 64, 56, 56), (64, 1, 3, 3), {"pads": 1, "groups": 64}),
    ("resnet 3x3 64ch b1", (1, 64, 32, 32), (64, 64, 3, 3), {"pads": 1}),
]


def _rate(fn, macs: int, seconds: float) -> tuple[float, float]:
    """(G MAC/s, seconds per call), best of repeated calls over about `seconds`."""
    fn()  # compile / warm caches
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return macs / best / 1e9, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=0.5, help="time per shape")
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    def ring(shape: tuple[int, ...]) -> np.ndarray:
        return rng.integers(0, 2**64, size=shape, dtype=np.uint64)

    print(f"{'matmul M x K x N':<22} {'G MAC/s':>8} {'ms':>8}  note")
    for label, (m, k, n) in MATMULS:
        a, b = ring((m, k)), ring((k, n))
        gmacs, secs = _rate(lambda a=a, b=b: kernels.matmul(a, b), m * k * n, args.seconds)
        print(f"{f'{m} x {k} x {n}':<22} {gmacs:8.2f} {secs * 1e3:8.3f}  {label}")

    print(f"\n{'conv2d':<22} {'G MAC/s':>8} {'ms':>8}  x, w")
    for label, xs, ws, kw in CONVS:
        x, w = ring(xs), ring(ws)
        out_shape = kernels.conv2d(x, w, **kw).shape
        macs = int(np.prod(out_shape)) * int(np.prod(ws[1:]))
        gmacs, secs = _rate(lambda x=x, w=w, kw=kw: kernels.conv2d(x, w, **kw), macs, args.seconds)
        print(f"{label:<22} {gmacs:8.2f} {secs * 1e3:8.3f}  {xs} * {ws}")


if __name__ == "__main__":
    main()
