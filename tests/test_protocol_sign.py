"""The comparison bit [x >= 0] as an arithmetic share (DReLU)."""

from __future__ import annotations

import numpy as np
import pytest

from mpcc.compiler import costs
from mpcc.errors import MaterialError
from mpcc.runtime.prg import Prg, share
from mpcc.runtime.protocols import sign
from tests.twoparty import run_parties

SEED0, SEED1 = b"P0 session seed!", b"P1 session seed!"


def secure_sign(x: np.ndarray, q: int = 0):
    prgs = lambda: [Prg.derive(s, "sess", q, 7) for s in (SEED0, SEED1)]  # noqa: E731
    corr = sign.deal(x.size, *prgs())
    p0, p1 = prgs()
    mats = [sign.expand(0, x.size, p0, None), sign.expand(1, x.size, p1, corr)]
    xs = share(x, Prg.derive(b"client seed 0000", "x", q))
    b0, b1, chans = run_parties(lambda ch, p: sign.run(ch, p, mats[p], xs[p]))
    return b0 + b1, corr, mats, [c.traffic for c in chans]


@pytest.mark.parametrize("n", [1, 63, 64, 65, 1000])
def test_sign_is_exact_at_the_edges_and_priced(n: int) -> None:
    rng = np.random.default_rng(n)
    edges = np.array([0, 1, -1, 2**62 - 1, -(2**62) + 1, 2**61, -(2**61)], dtype=np.int64)
    x = rng.integers(-(2**62) + 1, 2**62, size=n, dtype=np.int64)
    x[: min(n, edges.size)] = edges[: min(n, edges.size)]
    b, corr, _, traffic = secure_sign(x.view(np.uint64))
    np.testing.assert_array_equal(b, (x >= 0).astype(np.uint64))
    cost = costs.sign(n)
    assert 8 * corr.size == cost.dealer
    for t in traffic:
        assert (t.bytes_sent, t.rounds) == (cost.sent, cost.rounds)


def test_sign_material_is_used_once() -> None:
    x = np.arange(5, dtype=np.uint64)
    _, _, mats, _ = secure_sign(x)
    with pytest.raises(MaterialError, match="already used"):
        sign.run(None, 0, mats[0], x)
