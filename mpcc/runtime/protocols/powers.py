"""Powers of one secret with every wire opened once: [x] -> [t^e] for e in a set of
exponents, t = trunc(x, shift), each power truncated back to t's scale s.

Evaluating a polynomial or a chain of squarings with Beaver products opens both operands of
every product and then opens the product again to truncate it: 16 + 8 bytes per element and
two rounds a level. But the known-MSB truncation (`truncation.py`) already opens a masked
form of its output. With c = z + 2^62 + r public, its output is

    y = P(c) - M,   P(c) = ((c mod 2^63) >> s) + c_63 2^(63-s) - 2^(62-s),
                    M = r_hi - sigma K r_63,   sigma = 1 - 2 c_63,   K = 2^(63-s),

so y is a public value minus a mask M whose shares the parties hold ([r_hi], [r_63], and the
public sigma). A product of two such wires a and b then needs no opening at all:

    y_a y_b = P_a P_b - P_a [M_b] - P_b [M_a] + [M_a M_b],
    M_a M_b = H_a H_b - sigma_b K_b H_a R_b - sigma_a K_a R_a H_b + sigma_a sigma_b K_a K_b R_a R_b

(H = r_hi, R = r_63): the dealer, who knows every r, deals shares of the four mask products
(two for a square, since R^2 = R and sigma^2 = 1). The parties compute [y_a y_b] locally and
truncate it, which opens the next wire. This is the masked-wire evaluation of ABY2.0 (Patra
et al., USENIX Security 2021) and of the FSS-based systems (Boyle et al., EUROCRYPT 2021;
SIGMA, Gupta et al., PETS 2024), where a gate's only online cost is opening its output,
here fused with the known-MSB truncation of Dalskov-Escudero-Keller (PETS 2020).

Schedule (`calls.power_levels`): t^e for e = hi + lo, hi the largest power of two below e,
so level l holds the exponents in (2^(l-1), 2^l]: degree 7 takes 3 levels (2; 3, 4; 5, 6, 7)
and t^16 four squarings. Cost: 1 + levels rounds, 8 bytes per wire and element (`costs.powers`);
with Beaver products the same powers cost 2 rounds a level and 16-24 bytes per product.

Error: each wire is a known-MSB truncation, so each may read 1 LSB high (P(u = 1) is the
dropped fraction; `truncation.py`), exactly as a product followed by a truncation. Every
opened c is masked by a fresh uniform r, so the view of each party is uniform; every piece
of material is used once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpcc.compiler import calls
from mpcc.runtime import powers_kernels as kernels
from mpcc.runtime.prg import Prg
from mpcc.runtime.protocols.base import Protocol
from mpcc.runtime.protocols.common import checked_correction, consume
from mpcc.runtime.protocols.truncation import LOW63, SIXTY_THREE, open_biased
from mpcc.runtime.transport import Channel

ONE = np.uint64(1)


@dataclass
class PowersMaterial:
    """One party's material for one call: per wire [r], [r_hi], [r_63] (rows of [W, n]),
    per product its mask cross terms (2 or 4 rows each, in schedule order)."""

    call: calls.Powers
    r: np.ndarray
    hi: np.ndarray
    r63: np.ndarray
    cross: np.ndarray
    used: bool = False


def _products(call: calls.Powers) -> list[tuple[int, int, int]]:
    return [p for level in call.levels() for p in level]


def _wires(call: calls.Powers) -> tuple[dict[int, int], np.ndarray]:
    """Wire index of each exponent (1 first, then the products in schedule order) and each
    wire's truncation shift."""
    prods = _products(call)
    index = {1: 0} | {e: k + 1 for k, (e, _, _) in enumerate(prods)}
    shifts = np.array([call.shift] + [call.scale] * len(prods), dtype=np.uint64)
    return index, shifts


def _cross_rows(call: calls.Powers) -> int:
    return sum(2 if hi == lo else 4 for _, hi, lo in _products(call))


def _draw(party: int, call: calls.Powers, prg: Prg) -> tuple[np.ndarray, ...]:
    """Seeded parts in the one order dealer and party both use: [r]_p for every wire, then
    (P0 only) [r_hi]_0, [r_63]_0 and the cross terms' [.]_0."""
    w = 1 + len(_products(call))
    r = prg.uint64(w, call.n)
    if party == 1:
        return (r,)
    return r, prg.uint64(w, call.n), prg.uint64(w, call.n), prg.uint64(_cross_rows(call), call.n)


def deal(call: calls.Powers, prg0: Prg, prg1: Prg) -> np.ndarray:
    """Dealer: P1's corrections, flat: [r_hi]_1, [r_63]_1 (W rows each), then the cross terms."""
    r0, hi0, r63_0, cross0 = _draw(0, call, prg0)
    (r1,) = _draw(1, call, prg1)
    index, shifts = _wires(call)
    r = r0 + r1
    hi = (r & LOW63) >> shifts[:, None]
    r63 = r >> SIXTY_THREE
    cross = []
    for _, a_exp, b_exp in _products(call):
        a, b = index[a_exp], index[b_exp]
        if a == b:
            cross += [hi[a] * hi[a], hi[a] * r63[a]]
        else:
            cross += [hi[a] * hi[b], hi[a] * r63[b], r63[a] * hi[b], r63[a] * r63[b]]
    cross_arr = np.array(cross, dtype=np.uint64).reshape(-1, call.n) if cross else cross0
    return np.concatenate(
        [(hi - hi0).reshape(-1), (r63 - r63_0).reshape(-1), (cross_arr - cross0).reshape(-1)]
    )


def correction_words(call: calls.Powers) -> int:
    return call.n * (2 * (1 + len(_products(call))) + _cross_rows(call))


def expand(
    party: int, call: calls.Powers, prg: Prg, correction: np.ndarray | None
) -> PowersMaterial:
    """Party side: [r] from the seed; the rest from the seed (P0) or the correction (P1)."""
    drawn = _draw(party, call, prg)
    corr = checked_correction("powers", party, correction, correction_words(call))
    if corr is None:
        return PowersMaterial(call, *drawn)
    w, n = drawn[0].shape
    hi = corr[: w * n].reshape(w, n)
    r63 = corr[w * n : 2 * w * n].reshape(w, n)
    cross = corr[2 * w * n :].reshape(-1, n)
    return PowersMaterial(call, drawn[0], hi, r63, cross)


def run(ch: Channel, party: int, mat: PowersMaterial, x_share: np.ndarray) -> np.ndarray:
    """Online: open the truncation of t (round 1), then one truncation round per level;
    returns [t^e] for the call's exponents, shape [n, len(exponents)]."""
    consume("powers", mat, "reused masks would leak the differences of the wires")
    call = mat.call
    x_share = np.asarray(x_share, dtype=np.uint64).reshape(-1)
    if x_share.size != call.n:
        raise ValueError(f"powers: input of {x_share.size} elements, material for {call.n}")
    index, _ = _wires(call)
    n_w = mat.r.shape[0]
    pub = np.empty((n_w, call.n), np.uint64)  # the public P(c) of every wire
    m = np.empty((n_w, call.n), np.uint64)  # this party's share of its mask M
    sk = np.empty((n_w, call.n), np.uint64)  # its sigma K
    r63, lead = mat.r63, party == 0

    def opened(w: int, c: np.ndarray, shift: int) -> None:
        kernels.open_wire(c, mat.hi[w], r63[w], np.uint64(shift), pub[w], m[w], sk[w])

    opened(0, open_biased(ch, party, x_share, mat.r[0]), call.shift)
    row = 0  # next cross-term row
    for level in call.levels():
        z = np.empty((len(level), call.n), np.uint64)
        for j, (_, a_exp, b_exp) in enumerate(level):
            a, b = index[a_exp], index[b_exp]
            if a == b:
                hh, hr = mat.cross[row], mat.cross[row + 1]
                kernels.square(pub[a], m[a], sk[a], r63[a], hh, hr, lead, z[j])
                row += 2
            else:
                hh, hr, rh, rr = mat.cross[row : row + 4]
                kernels.product(
                    pub[a], m[a], sk[a], pub[b], m[b], sk[b], hh, hr, rh, rr, lead, z[j]
                )
                row += 4
        first = index[level[0][0]]
        c = open_biased(ch, party, z, mat.r[first : first + len(level)])
        for j in range(len(level)):
            opened(first + j, c[j], call.scale)
    y = -m if party == 1 else pub - m
    return np.ascontiguousarray(y[[index[e] for e in call.exponents]].T)


PROTOCOL = Protocol(
    call=calls.Powers,
    deal=lambda c, prg0, prg1: deal(c, prg0, prg1),
    expand=lambda party, c, prg, corr: expand(party, c, prg, corr),
    run=run,
    correction_words=correction_words,
)

__all__ = ["PROTOCOL", "PowersMaterial", "deal", "expand", "run"]
