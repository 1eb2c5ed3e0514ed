"""Elementwise product Z = X * Y of two secrets (numpy broadcasting) with a Beaver triple.

The dealer draws A (shape of X) and B (shape of Y) as sums of seeded shares and sends P1
only [C]_1 = A * B - [C]_0 (shape of Z). Online the parties open E = X - A and F = Y - B in
one round and set [Z]_p = [C]_p + E * [B]_p + [A]_p * F, P0 adding E * F.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mpcc.compiler import calls
from mpcc.runtime.prg import Prg
from mpcc.runtime.protocols.base import Protocol
from mpcc.runtime.protocols.common import checked_correction, consume, open_shares
from mpcc.runtime.transport import Channel

Shape = tuple[int, ...]


@dataclass
class MultiplyMaterial:
    """One party's Beaver triple shares for one invocation."""

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    used: bool = False


def _draw(
    party: int, x_shape: Shape, y_shape: Shape, prg: Prg
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded parts in the one order dealer and party both use: [A]_p, [B]_p, then [C]_0."""
    a = prg.uint64(*x_shape)
    b = prg.uint64(*y_shape)
    z_shape = np.broadcast_shapes(x_shape, y_shape)
    c0 = prg.uint64(*z_shape) if party == 0 else np.empty(0, np.uint64)
    return a, b, c0


def deal(x_shape: Shape, y_shape: Shape, prg0: Prg, prg1: Prg) -> np.ndarray:
    """Dealer: the correction [C]_1 = A * B - [C]_0 for P1, flat (|Z| words)."""
    x_shape, y_shape = tuple(x_shape), tuple(y_shape)
    a0, b0, c0 = _draw(0, x_shape, y_shape, prg0)
    a1, b1, _ = _draw(1, x_shape, y_shape, prg1)
    return ((a0 + a1) * (b0 + b1) - c0).reshape(-1)


def expand(
    party: int, x_shape: Shape, y_shape: Shape, prg: Prg, correction: np.ndarray | None
) -> MultiplyMaterial:
    """Party side: [A]_p, [B]_p from the seed; [C]_p from the seed (P0) or correction (P1)."""
    x_shape, y_shape = tuple(x_shape), tuple(y_shape)
    z_shape = np.broadcast_shapes(x_shape, y_shape)
    a, b, c = _draw(party, x_shape, y_shape, prg)
    corr = checked_correction("multiply", party, correction, math.prod(z_shape))
    if corr is not None:
        c = corr.reshape(z_shape)
    return MultiplyMaterial(a=a, b=b, c=c)


def run(
    ch: Channel, party: int, mat: MultiplyMaterial, x_share: np.ndarray, y_share: np.ndarray
) -> np.ndarray:
    """Online: open E = X - A and F = Y - B (one round, `costs.multiply`); returns [X * Y]_p."""
    consume("multiply", mat, "a reused triple would leak X1 - X2 and Y1 - Y2")
    x_share = np.asarray(x_share, dtype=np.uint64)
    y_share = np.asarray(y_share, dtype=np.uint64)
    if x_share.shape != mat.a.shape or y_share.shape != mat.b.shape:
        raise ValueError(
            f"multiply: inputs {x_share.shape}, {y_share.shape}; "
            f"material for {mat.a.shape}, {mat.b.shape}"
        )
    e_share, f_share = x_share - mat.a, y_share - mat.b
    e, f = open_shares(ch, [e_share, f_share])
    z = mat.c + e * mat.b + mat.a * f
    if party == 0:
        z += e * f
    return np.asarray(z)


PROTOCOL = Protocol(
    call=calls.Multiply,
    deal=lambda c, prg0, prg1: deal(c.x_shape, c.y_shape, prg0, prg1),
    expand=lambda party, c, prg, corr: expand(party, c.x_shape, c.y_shape, prg, corr),
    run=run,
    correction_words=lambda c: math.prod(c.z_shape),
)
