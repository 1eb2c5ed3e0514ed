"""Square Z = X * X of one secret with a Beaver pair (A, A^2).

A square needs half of a product's opening: with A drawn as a sum of seeded shares, the dealer
sends P1 only [C]_1 = A^2 - [C]_0. Online the parties open E = X - A in one round and set
[Z]_p = [C]_p + 2 E [A]_p, P0 adding E^2, since X^2 = (E + A)^2 = E^2 + 2 E A + A^2 (the
standard square pair of SPDZ-style preprocessing, e.g. Damgård et al., CRYPTO 2012; CrypTen
uses the same). E is uniformly masked by the fresh A, so it reveals nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpcc.compiler import calls
from mpcc.runtime.prg import Prg
from mpcc.runtime.protocols.base import Protocol
from mpcc.runtime.protocols.common import checked_correction, consume, open_shares
from mpcc.runtime.transport import Channel


@dataclass
class SquareMaterial:
    """One party's square-pair shares for one invocation (flat)."""

    a: np.ndarray
    c: np.ndarray
    used: bool = False


def _draw(party: int, n: int, prg: Prg) -> tuple[np.ndarray, np.ndarray]:
    """Seeded parts in the one order dealer and party both use: [A]_p, then [C]_0."""
    a = prg.uint64(n)
    c0 = prg.uint64(n) if party == 0 else np.empty(0, np.uint64)
    return a, c0


def deal(n: int, prg0: Prg, prg1: Prg) -> np.ndarray:
    """Dealer: the correction [C]_1 = A^2 - [C]_0 for P1 (n words)."""
    a0, c0 = _draw(0, n, prg0)
    a1, _ = _draw(1, n, prg1)
    a = a0 + a1
    return a * a - c0


def expand(party: int, n: int, prg: Prg, correction: np.ndarray | None) -> SquareMaterial:
    """Party side: [A]_p from the seed; [C]_p from the seed (P0) or the correction (P1)."""
    a, c = _draw(party, n, prg)
    corr = checked_correction("square", party, correction, n)
    if corr is not None:
        c = corr
    return SquareMaterial(a=a, c=c)


def run(ch: Channel, party: int, mat: SquareMaterial, x_share: np.ndarray) -> np.ndarray:
    """Online: open E = X - A (one round, `costs.square`); returns [X^2]_p (flat)."""
    consume("square", mat, "a reused pair would leak X1 - X2")
    x_share = np.asarray(x_share, dtype=np.uint64).reshape(-1)
    if x_share.shape != mat.a.shape:
        raise ValueError(f"square: input of {x_share.size} elements, material for {mat.a.size}")
    (e,) = open_shares(ch, [x_share - mat.a])
    z = mat.c + np.uint64(2) * e * mat.a
    if party == 0:
        z += e * e
    return np.asarray(z)


PROTOCOL = Protocol(
    call=calls.Square,
    deal=lambda c, prg0, prg1: deal(c.n, prg0, prg1),
    expand=lambda party, c, prg, corr: expand(party, c.n, prg, corr),
    run=run,
    correction_words=lambda c: c.n,
)
