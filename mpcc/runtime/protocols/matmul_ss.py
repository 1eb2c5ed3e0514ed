"""Matrix product Z = X @ Y of two secrets with a matrix Beaver triple (one round).

**Setting.** P0 and P1 hold additive shares over Z_2^64 of X (..., M, K) and Y (..., K, N);
the leading axes broadcast as numpy's `matmul` does (attention's Q K^T and P V are products
of this kind, batched over heads). Neither operand is a constant, so the masked-weight
protocol of `linear` (W masked once per session) does not apply: both are masked afresh.

**Protocol.** Beaver's multiplication triples (Beaver, "Efficient multiparty protocols using
circuit randomization", CRYPTO 1991) carry over to any bilinear map; for matrices the
dealer's triple is (A, B, C = A @ B) with A, B uniform of X's and Y's shapes. This is the
protocol of CrypTen's trusted-third-party provider (`crypten/mpc/primitives/beaver.py`,
Knott et al., NeurIPS 2021), and of `/work/shared/protocols.md` section 1 without the weight
mask reuse.

- *Offline.* From the session seeds, party p draws [A]_p and [B]_p, and P0 also [C]_0; the
  dealer, holding both seeds, draws the same values and sends P1 only the correction
  [C]_1 = (A_0 + A_1) @ (B_0 + B_1) - [C]_0, |Z| words (seed-compressed preprocessing,
  protocols.md section 2).
- *Online, one round.* The parties open E = X - A and F = Y - B together (|X| + |Y| words
  each way) and set

      [Z]_0 = [C]_0 + E @ ([B]_0 + F) + [A]_0 @ F
      [Z]_1 = [C]_1 + E @ [B]_1       + [A]_1 @ F

  which sums to C + E @ B + A @ F + E @ F = (E + A) @ (F + B) = X @ Y, exactly in the ring.
  Each party evaluates two batched products (`kernels.batched_matmul`).

**Security.** E and F are X and Y masked by the uniform, never-revealed A and B, so each
party's view is uniform and independent of the inputs. A triple must never be used twice:
two openings X1 - A and X2 - A would reveal X1 - X2. `run` marks the material used and
refuses it the second time (`common.consume`).

**Cost** (`costs.matmul_ss`): 1 round; 8 (|X| + |Y|) bytes sent per party; 8 |Z| dealer
bytes; 2 |Z| K multiply-adds per party. The product's scale is the sum of the operands'
scales, so the compiler follows it with a truncation as for any product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mpcc.compiler import calls
from mpcc.runtime.kernels import batched_matmul
from mpcc.runtime.prg import Prg
from mpcc.runtime.protocols.base import Protocol
from mpcc.runtime.protocols.common import checked_correction, consume, open_shares
from mpcc.runtime.transport import Channel

Shape = tuple[int, ...]


@dataclass
class MatMulMaterial:
    """One party's matrix triple shares for one invocation: [A]_p, [B]_p, [C]_p."""

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    used: bool = False


def _draw(party: int, call: calls.MatMulSS, prg: Prg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded parts in the one order dealer and party both use: [A]_p, [B]_p, then [C]_0."""
    a = prg.uint64(*call.x_shape)
    b = prg.uint64(*call.y_shape)
    c0 = prg.uint64(*call.z_shape) if party == 0 else np.empty(0, np.uint64)
    return a, b, c0


def deal(call: calls.MatMulSS, prg0: Prg, prg1: Prg) -> np.ndarray:
    """Dealer: the correction [C]_1 = A @ B - [C]_0 for P1, flat (|Z| words)."""
    a0, b0, c0 = _draw(0, call, prg0)
    a1, b1, _ = _draw(1, call, prg1)
    return (batched_matmul(a0 + a1, b0 + b1) - c0).reshape(-1)


def expand(
    party: int, call: calls.MatMulSS, prg: Prg, correction: np.ndarray | None
) -> MatMulMaterial:
    """Party side: [A]_p, [B]_p from the seed; [C]_p from the seed (P0) or correction (P1)."""
    a, b, c = _draw(party, call, prg)
    corr = checked_correction("matmul_ss", party, correction, math.prod(call.z_shape))
    if corr is not None:
        c = corr.reshape(call.z_shape)
    return MatMulMaterial(a=a, b=b, c=c)


def run(
    ch: Channel, party: int, mat: MatMulMaterial, x_share: np.ndarray, y_share: np.ndarray
) -> np.ndarray:
    """Online: open E = X - A and F = Y - B (one round, `costs.matmul_ss`); returns
    [X @ Y]_p."""
    consume("matmul_ss", mat, "a reused triple would leak X1 - X2 and Y1 - Y2")
    x_share = np.asarray(x_share, dtype=np.uint64)
    y_share = np.asarray(y_share, dtype=np.uint64)
    if x_share.shape != mat.a.shape or y_share.shape != mat.b.shape:
        raise ValueError(
            f"matmul_ss: inputs {x_share.shape}, {y_share.shape}; "
            f"material for {mat.a.shape}, {mat.b.shape}"
        )
    e, f = open_shares(ch, [x_share - mat.a, y_share - mat.b])
    b_term = mat.b + f if party == 0 else mat.b  # P0 folds E @ F into E @ [B]_0
    z = batched_matmul(e, b_term)
    z += batched_matmul(mat.a, f)
    z += mat.c
    return z


PROTOCOL = Protocol(
    call=calls.MatMulSS,
    deal=lambda c, prg0, prg1: deal(c, prg0, prg1),
    expand=lambda party, c, prg, corr: expand(party, c, prg, corr),
    run=run,
    correction_words=lambda c: math.prod(c.z_shape),
)
