"""Time of the FSS comparison (issue 13 item 2): DCF key generation and evaluation, and the
whole one-round sign / two-round ReLU beside the 8-round bit-tree protocols, in-process.

Prints, for n elements (default 10^5): the dealer's Gen and one party's Eval for a DCF on 62
bits with 64-bit and with one-bit outputs (wall and CPU seconds, best of --reps, and CPU ns
per element and tree level), by both paths (AES-NI inside the fused kernels, where the CPU
has it; OpenSSL's ECB between level kernels), what OpenSSL's AES alone takes, and deal /
expand / online wall time of `sign_fss`, `relu_fss`, `sign`, `relu` and `max_pairs` beside a
tournament's ReLUs (both parties in two threads, no network: the online time is compute
only).
Run: `.venv/bin/python benchmarks/fss.py [--n 100000] [--reps 3] [--protocols-only]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpcc.compiler import calls  # noqa: E402
from mpcc.runtime import aesni, dcf  # noqa: E402
from mpcc.runtime.prg import Prg, share  # noqa: E402
from mpcc.runtime.protocols import BY_CALL  # noqa: E402
from tests.twoparty import run_parties  # noqa: E402


def _best(fn, reps: int) -> tuple[float, float]:
    """Best wall and best CPU seconds of fn() over reps runs."""
    wall, cpu = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return min(wall), min(cpu)


def _aes_seconds(blocks: int, reps: int) -> float:
    enc = Cipher(algorithms.AES(dcf.FIXED_KEY), modes.ECB()).encryptor()
    buf = np.zeros(16 * blocks, np.uint8)
    out = np.empty(buf.size + 16, np.uint8)
    return _best(lambda: enc.update_into(buf, out), reps)[1]


def dcf_times(n: int, reps: int) -> None:
    rng = np.random.default_rng(1)
    alpha = rng.integers(0, 2**62, n, dtype=np.uint64)
    x = rng.integers(0, 2**62, n, dtype=np.uint64)
    roots = (dcf.root_seeds(Prg.fresh(), n), dcf.root_seeds(Prg.fresh(), n))
    paths = [(True, "fused")] if aesni.AVAILABLE else []
    paths.append((False, "levels"))
    print(
        f"DCF on 62 bits, n = {n}: seconds (wall / CPU) and CPU ns per element and level, "
        f"best of {reps}; fused = AES-NI in the kernel (VAES: {aesni.WIDE}), levels = "
        "OpenSSL's ECB per level"
    )
    fused = dcf.FUSED
    try:
        for ring, label in ((True, "64-bit out"), (False, "1-bit out ")):
            for dcf.FUSED, path in paths:
                gen = partial(dcf.gen, alpha, 1, 0, roots, 62, ring)
                key = gen()  # warm (numba cache, pages)
                evaluate = partial(dcf.evaluate, 0, roots[0], key, x, 62, ring)
                evaluate()
                g, e = _best(gen, reps), _best(evaluate, reps)
                per = 1e9 / (62 * n)
                print(
                    f"  {label} {path:6}  gen {g[0]:.3f} / {g[1]:.3f} ({g[1] * per:.1f} ns)   "
                    f"eval/party {e[0]:.3f} / {e[1]:.3f} ({e[1] * per:.1f} ns)   "
                    f"key {key.nbytes / n:.0f} B/elem"
                )
            gen_blocks, eval_blocks = (6, 2) if ring else (4, 1)
            ag = 62 * _aes_seconds(gen_blocks * n, reps)
            ae = 62 * _aes_seconds(eval_blocks * n, reps)
            print(f"  {label} (OpenSSL ECB alone would take: gen {ag:.3f}, eval {ae:.3f})")
    finally:
        dcf.FUSED = fused


def _deal(proto, call, seeds):
    return proto.deal(call, *(Prg.derive(s, "bench") for s in seeds))


def _expand(proto, call, seeds, corr):
    """Both parties' material (P0 gets the words the dealer shares with it, if any)."""
    p0, p1 = (Prg.derive(s, "bench") for s in seeds)
    shared = proto.shared_words(call)
    return [proto.expand(0, call, p0, corr[:shared] if shared else None),
            proto.expand(1, call, p1, corr)]  # fmt: skip


def _online(proto, mats, xs, ch, party):
    return proto.run(ch, party, mats[party], xs[party])


def protocol_times(n: int, reps: int) -> None:
    rng = np.random.default_rng(2)
    print(
        f"protocols, n = {n}: wall seconds, best of {reps} (online: two threads, no network); "
        "MaxPairs: n maxima of 4, beside the tournament's two levels of Relu (2n, then n)"
    )
    tournament = (calls.Relu(2 * n, 0), calls.Relu(n, 0))
    for call in (
        calls.SignFss(n),
        calls.ReluFss(n, 16),
        calls.Sign(n),
        calls.Relu(n, 16),
        calls.MaxPairs(n, 4),
        *tournament,
    ):
        shape = (call.k, call.n) if isinstance(call, calls.MaxPairs) else (call.n,)
        xs = share(rng.integers(-(2**60), 2**60, shape).view(np.uint64))
        proto = BY_CALL[type(call)]
        seeds = (os.urandom(16), os.urandom(16))
        deal_s, _ = _best(partial(_deal, proto, call, seeds), reps)
        corr = _deal(proto, call, seeds)
        expand_s, _ = _best(partial(_expand, proto, call, seeds, corr), reps)
        online = []
        for _ in range(reps):
            m = _expand(proto, call, seeds, corr)
            t = time.perf_counter()
            run_parties(partial(_online, proto, m, xs))
            online.append(time.perf_counter() - t)
        cost = call.cost()
        print(
            f"  {type(call).__name__:8} rounds {cost.rounds}  deal {deal_s:.3f}  "
            f"expand {expand_s:.3f}  online {min(online):.3f}  "
            f"dealer {(cost.dealer + call.dealer_p0()) / n:.0f} B/elem (P1 + P0)  "
            f"sent {cost.sent / n:.1f} B/elem/party"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--protocols-only", action="store_true", help="skip the DCF kernels alone")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()}, {os.cpu_count()} cores")
    if not args.protocols_only:
        dcf_times(args.n, args.reps)
    protocol_times(args.n, args.reps)


if __name__ == "__main__":
    main()
