"""Bilinear layers Z = L(X, W) on secret X and W: matrix/conv Beaver triples, W masked once.

Session setup: each party draws its share of the weight mask B from its seed
(`weight_mask`; the dealer adds both, `dealer_weight_mask`) and the parties open
F = W - B once (`open_weights`). The dealer never sees F.

Per query the dealer draws a fresh A = A_0 + A_1 from the seeds and sends P1 only the
correction C_1 = L(A, B) - C_0. Each party precomputes L([A]_p, F) + [C]_p offline, so the
online phase opens E = X - A (one round) and evaluates one bilinear map per party:

    [Z]_0 = L(E, [B]_0 + F) + L([A]_0, F) + [C]_0
    [Z]_1 = L(E, [B]_1)     + L([A]_1, F) + [C]_1

which sums to L(E, W) + L(A, F) + L(A, B) = L(E + A, W) = L(X, W).

`bilinear` is any map (x, w) -> z that is bilinear over Z_2^64: `kernels.dense` (or
`kernels.dense_t` with every weight operand transposed once per session), a
`functools.partial` of `kernels.conv2d`, `np.multiply` (elementwise with broadcasting).
B is the only mask ever reused (it masks the constant W); every A is used exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mpcc.runtime.prg import Prg
from mpcc.runtime.protocols.common import checked_correction, consume, open_shares
from mpcc.runtime.transport import Channel

Bilinear = Callable[[np.ndarray, np.ndarray], np.ndarray]
Shape = tuple[int, ...]


@dataclass
class LinearMaterial:
    """One party's preprocessing for one invocation: [A]_p and L([A]_p, F) + [C]_p."""

    a: np.ndarray
    pre: np.ndarray
    used: bool = False


# --- session setup ---------------------------------------------------------------------------


def weight_mask(w_shape: Shape, prg: Prg) -> np.ndarray:
    """This party's share [B]_p of the weight mask, drawn from its session seed."""
    return prg.uint64(*w_shape)


def dealer_weight_mask(w_shape: Shape, prg0: Prg, prg1: Prg) -> np.ndarray:
    """The dealer's B = [B]_0 + [B]_1 from both seeds (nothing is sent)."""
    return weight_mask(w_shape, prg0) + weight_mask(w_shape, prg1)


def open_weights(ch: Channel, w_share: np.ndarray, b_share: np.ndarray) -> np.ndarray:
    """Open F = W - B once per session (one round, `costs.weight_opening`)."""
    f_share = np.asarray(w_share, dtype=np.uint64) - b_share
    (f,) = open_shares(ch, [f_share])
    return f


# --- per query -------------------------------------------------------------------------------


def _draw(party: int, x_shape: Shape, z_shape: Shape, prg: Prg) -> tuple[np.ndarray, np.ndarray]:
    """The seeded parts of party's material, in the one order dealer and party both use.

    Returns ([A]_p, [C]_0) for P0 and ([A]_1, empty) for P1.
    """
    a = prg.uint64(*x_shape)
    c0 = prg.uint64(*z_shape) if party == 0 else np.empty(0, np.uint64)
    return a, c0


def deal(
    bilinear: Bilinear,
    x_shape: Shape,
    z_shape: Shape,
    b: np.ndarray,
    prg0: Prg,
    prg1: Prg,
) -> np.ndarray:
    """Dealer: the correction [C]_1 = L(A, B) - [C]_0 for P1, flat (|Z| words)."""
    x_shape, z_shape = tuple(x_shape), tuple(z_shape)
    a0, c0 = _draw(0, x_shape, z_shape, prg0)
    a1, _ = _draw(1, x_shape, z_shape, prg1)
    c = np.asarray(bilinear(a0 + a1, b), dtype=np.uint64)
    if c.shape != z_shape:
        raise ValueError(f"bilinear map gives shape {c.shape}, expected {z_shape}")
    return (c - c0).reshape(-1)


def expand(
    party: int,
    bilinear: Bilinear,
    x_shape: Shape,
    z_shape: Shape,
    prg: Prg,
    correction: np.ndarray | None,
    f: np.ndarray,
) -> LinearMaterial:
    """Party side: [A]_p from the seed, [C]_p from the seed (P0) or the correction (P1),
    and the offline precompute L([A]_p, F) + [C]_p."""
    x_shape, z_shape = tuple(x_shape), tuple(z_shape)
    a, c = _draw(party, x_shape, z_shape, prg)
    corr = checked_correction("linear", party, correction, math.prod(z_shape))
    if corr is not None:
        c = corr.reshape(z_shape)
    pre = np.asarray(bilinear(a, f), dtype=np.uint64)
    if pre.shape != z_shape:
        raise ValueError(f"bilinear map gives shape {pre.shape}, expected {z_shape}")
    pre += c
    return LinearMaterial(a=a, pre=pre)


def run(
    ch: Channel,
    party: int,
    mat: LinearMaterial,
    x_share: np.ndarray,
    w_term: np.ndarray,
    bilinear: Bilinear,
) -> np.ndarray:
    """Online: open E = X - A (one round, `costs.linear`), then one bilinear map; [Z]_p.

    `w_term` is `weight_term(party, [B]_p, F)`, fixed for the session (computed once, not
    per query: a weight-sized add that would dominate small batches)."""
    consume("linear", mat, "a reused A would leak X1 - X2")
    x_share = np.asarray(x_share, dtype=np.uint64)
    if x_share.shape != mat.a.shape:
        raise ValueError(f"linear: input shape {x_share.shape}, material for {mat.a.shape}")
    e_share = x_share - mat.a
    (e,) = open_shares(ch, [e_share])
    return np.asarray(bilinear(e, w_term), dtype=np.uint64) + mat.pre


def weight_term(party: int, b_share: np.ndarray, f: np.ndarray) -> np.ndarray:
    """The weight operand of party's online map: [B]_0 + F for P0, [B]_1 for P1."""
    return b_share + f if party == 0 else b_share


# --- public weights --------------------------------------------------------------------------


def public_weights(x_share: np.ndarray, w: np.ndarray, bilinear: Bilinear) -> np.ndarray:
    """L([X]_p, W) for public W: local, no material, no communication."""
    return np.asarray(bilinear(np.asarray(x_share, dtype=np.uint64), w), dtype=np.uint64)
