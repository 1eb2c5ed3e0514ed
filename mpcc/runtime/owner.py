"""The model owner's side: encode the weights and split them into shares for P0 and P1."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mpcc.compiler.costmodel import linear_weights
from mpcc.compiler.ir import Program
from mpcc.errors import InputError, ModelError
from mpcc.runtime.fixedpoint import encode
from mpcc.runtime.prg import Prg


def encode_weight(prog: Program, name: str, w: np.ndarray) -> np.ndarray:
    """One weight encoded at the scale its instruction needs."""
    spec = prog.weights[name]
    try:
        return encode(w, spec.scale)
    except InputError as e:
        src = f" (from {spec.source!r})" if spec.source else ""
        raise ModelError(f"weight {name}{src} cannot be encoded: {e}") from None


SHARE_CHUNK = 1 << 22  # elements shared at a time, by one of the sharing threads


def share_weights(
    prog: Program, weights: dict[str, np.ndarray], *, threads: int = 2
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each party's weight shares: P0's uniform from AES-CTR under fresh keys, P1's the
    encoding minus P0's. Made in chunks by `threads` threads (a big model's shares are GBs
    of fresh memory, whose first touch dominates), each chunk encoded straight into P1's
    share. With public weights, linear weights go to both parties in the clear and every
    other weight goes to P0 (P1 holds zeros), so the additive semantics of the executor are
    unchanged."""
    if prog.public_weights:
        linear = set(linear_weights(prog))
        s0 = {n: encode_weight(prog, n, weights[n]) for n in prog.weights}
        return s0, {n: w if n in linear else np.zeros_like(w) for n, w in s0.items()}
    s0: dict[str, np.ndarray] = {}
    s1: dict[str, np.ndarray] = {}
    jobs = []
    for n in prog.weights:
        w = np.asarray(weights[n], order="C")
        s0[n], s1[n] = np.empty(w.shape, np.uint64), np.empty(w.shape, np.uint64)
        jobs += [(n, w, at) for at in range(0, max(w.size, 1), SHARE_CHUNK)]

    def share_chunk(job: tuple[str, np.ndarray, int]) -> None:
        n, w, at = job
        part = slice(at, at + SHARE_CHUNK)
        enc = encode_weight(prog, n, w.reshape(-1)[part])
        mine = Prg.fresh().fill(s0[n].reshape(-1)[part])
        np.subtract(enc, mine, out=s1[n].reshape(-1)[part])

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mpcc-owner") as pool:
        list(pool.map(share_chunk, jobs))
    return s0, s1
