"""Square of a secret with a seeded Beaver pair (A, A^2)."""

from __future__ import annotations

import numpy as np
import pytest

from mpcc.compiler import costs
from mpcc.errors import MaterialError
from mpcc.runtime.prg import Prg, share
from mpcc.runtime.protocols import square
from tests.twoparty import run_parties

SEED0, SEED1 = b"P0 session seed!", b"P1 session seed!"


def secure_square(x: np.ndarray, q: int = 0):
    """Deal, expand and run one square; returns (z, correction, materials, traffic)."""
    prgs = lambda: [Prg.derive(s, "sess", q, 5) for s in (SEED0, SEED1)]  # noqa: E731
    corr = square.deal(x.size, *prgs())
    p0, p1 = prgs()
    mats = [square.expand(0, x.size, p0, None), square.expand(1, x.size, p1, corr)]
    xs = share(x, Prg.derive(b"client seed 0000", "x", q))
    z0, z1, chans = run_parties(lambda ch, p: square.run(ch, p, mats[p], xs[p]))
    return z0 + z1, corr, mats, [c.traffic for c in chans]


@pytest.mark.parametrize("n", [1, 7, 1000])
def test_square_is_exact_in_the_ring_and_priced(n: int) -> None:
    x = np.random.default_rng(n).integers(0, 2**64, size=n, dtype=np.uint64)
    z, corr, _, traffic = secure_square(x)
    np.testing.assert_array_equal(z, x * x)
    cost = costs.square(n)
    assert 8 * corr.size == cost.dealer
    for t in traffic:
        assert (t.bytes_sent, t.rounds) == (cost.sent, cost.rounds)


def test_square_material_is_used_once() -> None:
    x = np.arange(5, dtype=np.uint64)
    _, _, mats, _ = secure_square(x)
    with pytest.raises(MaterialError, match="already used"):
        square.run(None, 0, mats[0], x)


def test_square_p1_needs_its_correction() -> None:
    with pytest.raises(MaterialError, match="correction words"):
        square.expand(1, 4, Prg.derive(SEED1, "sess", 0, 5), None)
