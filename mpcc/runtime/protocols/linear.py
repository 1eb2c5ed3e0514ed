"""Bilinear layers Z = L(X, W) on secret X and W: matrix/conv Beaver triples, W masked once.

Session setup: each party draws its share of the weight mask B from its seed
(`weight_mask`; the dealer adds both, `dealer_weight_mask`) and the parties open
F = W - B once (`open_weights`), OPEN_WORDS words a round, so a model of any size opens
with a bounded transient. The dealer never sees F.

Per query the dealer draws a fresh A = A_0 + A_1 from the seeds and sends P1 only the
correction C_1 = L(A, B) - C_0. Each party precomputes L([A]_p, F) + [C]_p offline, so the
online phase opens E = X - A (one round) and evaluates one bilinear map per party:

    [Z]_0 = L(E, [B]_0 + F) + L([A]_0, F) + [C]_0
    [Z]_1 = L(E, [B]_1)     + L([A]_1, F) + [C]_1

which sums to L(E, W) + L(A, F) + L(A, B) = L(E + A, W) = L(X, W).

`bilinear` is any map (x, w) -> z that is bilinear over Z_2^64: `kernels.dense` (or
`kernels.dense_t` with every weight operand transposed once per session), a
`functools.partial` of `kernels.conv`, `np.multiply` (elementwise with broadcasting).
B is the only mask ever reused (it masks the constant W); every A is used exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mpcc.compiler import calls
from mpcc.runtime.prg import Prg
from mpcc.runtime.protocols.base import Protocol
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

OPEN_WORDS = 1 << 20  # words opened per round at session setup (8 MiB each way)


def weight_mask(w_shape: Shape, prg: Prg) -> np.ndarray:
    """This party's share [B]_p of the weight mask, drawn from its session seed."""
    return prg.uint64(*w_shape)


def dealer_weight_mask(w_shape: Shape, prg0: Prg, prg1: Prg) -> np.ndarray:
    """The dealer's B = [B]_0 + [B]_1 from both seeds (nothing is sent), drawn in chunks so
    that it costs B's size and no more."""
    b = weight_mask(w_shape, prg0)
    flat = b.reshape(-1)
    for at in range(0, flat.size, OPEN_WORDS):
        chunk = flat[at : at + OPEN_WORDS]
        chunk += prg1.uint64(chunk.size)
    return b


def open_weights(
    ch: Channel,
    party: int,
    shares: dict[str, np.ndarray],
    masks: dict[str, Prg],
    *,
    in_place: bool = False,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Open F = W - B for every weight in `shares` (`costs.weight_opening` bytes each),
    drawing [B]_p from `masks[name]`; returns, per weight, (the party's online operand
    [B]_0 + F for P0 or [B]_1 for P1, F).

    Weights travel together, OPEN_WORDS words a round (LeNet: one round), so neither a
    party nor the wire ever holds more than a round's worth beyond the results. With
    `in_place`, F overwrites the share (which the caller then no longer needs)."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    flat: dict[str, np.ndarray] = {}  # each share, C-contiguous, as one row of words
    pieces: list[tuple[str, int, int]] = []  # (weight, start, stop) of the next round
    filled = 0

    def flush() -> None:
        mine = []
        for name, a, b in pieces:
            w = flat[name][a:b]
            m = masks[name].fill(out[name][0].reshape(-1)[a:b])  # [B]_p, drawn into the term
            if in_place:
                np.subtract(w, m, out=w)
                mine.append(w)
            else:
                mine.append(w - m)
        theirs = ch.exchange(mine)
        for (name, a, b), mi, th in zip(pieces, mine, theirs, strict=True):
            term, f = (t.reshape(-1)[a:b] for t in out[name])
            np.add(mi, th, out=f)
            if party == 0:
                term += f  # [B]_0 + F; P1's term is [B]_1 as drawn
        pieces.clear()

    for name, share in shares.items():
        if share.dtype != np.uint64:
            raise ValueError(f"weight share {name!r} is {share.dtype}, not uint64")
        w = np.asarray(share, order="C")  # the share itself, unless it must be copied
        flat[name] = w.reshape(-1)
        f = w if in_place else np.empty(w.shape, np.uint64)
        out[name] = (np.empty(w.shape, np.uint64), f)
        at = 0
        while at < w.size:
            take = min(w.size - at, OPEN_WORDS - filled)
            pieces.append((name, at, at + take))
            at += take
            filled += take
            if filled == OPEN_WORDS:
                flush()
                filled = 0
    if pieces:
        flush()
    return out


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

    `w_term` is the online operand `open_weights` returns, fixed for the session (not
    per query: a weight-sized add that would dominate small batches)."""
    consume("linear", mat, "a reused A would leak X1 - X2")
    x_share = np.asarray(x_share, dtype=np.uint64)
    if x_share.shape != mat.a.shape:
        raise ValueError(f"linear: input shape {x_share.shape}, material for {mat.a.shape}")
    e_share = x_share - mat.a
    (e,) = open_shares(ch, [e_share])
    return np.asarray(bilinear(e, w_term), dtype=np.uint64) + mat.pre


# --- public weights --------------------------------------------------------------------------


def public_weights(x_share: np.ndarray, w: np.ndarray, bilinear: Bilinear) -> np.ndarray:
    """L([X]_p, W) for public W: local, no material, no communication."""
    return np.asarray(bilinear(np.asarray(x_share, dtype=np.uint64), w), dtype=np.uint64)


PROTOCOL = Protocol(
    call=calls.Linear,
    deal=lambda c, prg0, prg1, bilinear, b: deal(bilinear, c.x_shape, c.z_shape, b, prg0, prg1),
    expand=lambda party, c, prg, corr, bilinear, f: expand(
        party, bilinear, c.x_shape, c.z_shape, prg, corr, f
    ),
    run=run,
    correction_words=lambda c: math.prod(c.z_shape),
)
