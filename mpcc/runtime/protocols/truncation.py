"""Known-MSB truncation with a 2^62 bias (Dalskov-Escudero-Keller PETS'20, Escudero et al.
CRYPTO'20): [x] -> [y] with y = floor(x / 2^shift) + u, u in {0, 1}, for signed
-2^62 <= x < 2^62 and any shift in 1..62.

The dealer draws r = r_0 + r_1 from the seeds and corrects P1's shares of
r_hi = (r mod 2^63) >> shift and of the arithmetic bit r_63. Online the parties open
c = x + 2^62 + r (P0 adds the bias) in one round and set

    y = ((c mod 2^63) >> shift) - [r_hi] + [b] * 2^(63 - shift) - 2^(62 - shift),
    [b] = c_63 + [r_63] - 2 c_63 [r_63]      (public terms added by P0 only).

Why: x' = x + 2^62 lies in [0, 2^63), so x' + (r mod 2^63) = (c mod 2^63) + b * 2^63 with
the carry b = c_63 xor r_63 (no large-error event). Splitting at bit `shift` leaves only the
borrow u = [c mod 2^shift < r mod 2^shift] of the low bits, so y = floor(x / 2^shift) + u.
Since u = 1 exactly when (x mod 2^shift) + (r mod 2^shift) >= 2^shift, P(u = 1) is
(x mod 2^shift) / 2^shift: the rounding is stochastic and unbiased, E[y] = x / 2^shift.
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

BIAS = np.uint64(1 << 62)
LOW63 = np.uint64((1 << 63) - 1)
SIXTY_THREE = np.uint64(63)


@dataclass
class TruncMaterial:
    """One party's preprocessing for one invocation: [r], [r_hi], [r_63]."""

    shift: int
    r: np.ndarray
    r_hi: np.ndarray
    r_63: np.ndarray
    used: bool = False


def _check_shift(shift: int) -> int:
    shift = int(shift)
    if not 1 <= shift <= 62:
        raise ValueError(f"truncation shift must be in 1..62, got {shift}")
    return shift


def _shape(shape: Shape | int) -> Shape:
    return (int(shape),) if np.isscalar(shape) else tuple(int(d) for d in shape)


def _draw(party: int, shape: Shape, prg: Prg) -> tuple[np.ndarray, ...]:
    """Seeded parts in the one order dealer and party both use: [r]_p, then [r_hi]_0, [r_63]_0."""
    r = prg.uint64(*shape)
    if party == 1:
        return (r,)
    return r, prg.uint64(*shape), prg.uint64(*shape)


def deal(shape: Shape | int, shift: int, prg0: Prg, prg1: Prg) -> np.ndarray:
    """Dealer: P1's corrections [r_hi]_1 then [r_63]_1, flat (2n words)."""
    shape, shift = _shape(shape), _check_shift(shift)
    r0, r_hi0, r_63_0 = _draw(0, shape, prg0)
    (r1,) = _draw(1, shape, prg1)
    r = r0 + r1
    r_hi = (r & LOW63) >> np.uint64(shift)
    r_63 = r >> SIXTY_THREE
    return np.concatenate([(r_hi - r_hi0).reshape(-1), (r_63 - r_63_0).reshape(-1)])


def expand(
    party: int, shape: Shape | int, shift: int, prg: Prg, correction: np.ndarray | None
) -> TruncMaterial:
    """Party side: [r]_p from the seed; [r_hi]_p, [r_63]_p from the seed (P0) or correction."""
    shape, shift = _shape(shape), _check_shift(shift)
    drawn = _draw(party, shape, prg)
    n = math.prod(shape)
    corr = checked_correction("truncation", party, correction, 2 * n)
    if corr is not None:
        r_hi, r_63 = corr[:n].reshape(shape), corr[n:].reshape(shape)
        return TruncMaterial(shift, drawn[0], r_hi, r_63)
    return TruncMaterial(shift, *drawn)


def open_biased(ch: Channel, party: int, x_share: np.ndarray, r_share: np.ndarray) -> np.ndarray:
    """Open c = x + 2^62 + r in one round (P0 adds the bias); x' = x + 2^62 is in [0, 2^63)."""
    c_share = x_share + r_share
    if party == 0:
        c_share += BIAS
    (c,) = open_shares(ch, [c_share])
    return c


def output_share(
    party: int, c: np.ndarray, r_hi: np.ndarray, r_63: np.ndarray, shift: int
) -> np.ndarray:
    """[y]_p from the opened c = x + 2^62 + r and the shares [r_hi]_p, [r_63]_p (local)."""
    c_63 = c >> SIXTY_THREE
    b = r_63 - ((c_63 * r_63) << np.uint64(1))  # [r_63] - 2 c_63 [r_63]
    y = (b << np.uint64(63 - shift)) - r_hi
    if party == 0:
        y += ((c & LOW63) >> np.uint64(shift)) + (c_63 << np.uint64(63 - shift))
        y -= np.uint64(1 << (62 - shift))
    return y


def run(ch: Channel, party: int, mat: TruncMaterial, x_share: np.ndarray) -> np.ndarray:
    """Online: open c = x + 2^62 + r (one round, `costs.truncate`); returns [y]_p."""
    consume("truncation", mat, "a reused r leaks x1 - x2")
    x_share = np.asarray(x_share, dtype=np.uint64)
    if x_share.shape != mat.r.shape:
        raise ValueError(f"truncation: input shape {x_share.shape}, material for {mat.r.shape}")
    c = open_biased(ch, party, x_share, mat.r)
    return output_share(party, c, mat.r_hi, mat.r_63, mat.shift)


PROTOCOL = Protocol(
    call=calls.Truncate,
    deal=lambda c, prg0, prg1: deal(c.n, c.shift, prg0, prg1),
    expand=lambda party, c, prg, corr: expand(party, c.n, c.shift, prg, corr),
    run=run,
    correction_words=lambda c: 2 * c.n,
)
