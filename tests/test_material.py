"""Preprocessing material is consumed exactly once, in order, and only in its own session."""

from __future__ import annotations

import numpy as np
import pytest

from mpcc.errors import MaterialError
from mpcc.runtime.material import Bundle, MaterialStore


def _store(session: str = "s1", query: int = 0, calls: int = 3) -> MaterialStore:
    st = MaterialStore(session)
    st.add_query(query, [((session, query, i, 0), f"m{i}") for i in range(calls)])
    return st


def test_taken_in_order_then_gone() -> None:
    st = _store()
    assert [st.take(("s1", 0, i, 0)) for i in range(3)] == ["m0", "m1", "m2"]
    st.finish(0)
    with pytest.raises(MaterialError, match="already consumed"):
        st.take(("s1", 0, 0, 0))


def test_twice_raises() -> None:
    st = _store()
    st.take(("s1", 0, 0, 0))
    with pytest.raises(MaterialError, match="out of order"):
        st.take(("s1", 0, 0, 0))


def test_out_of_order_raises() -> None:
    st = _store()
    with pytest.raises(MaterialError, match="out of order"):
        st.take(("s1", 0, 1, 0))


def test_other_session_raises() -> None:
    st = _store()
    with pytest.raises(MaterialError, match="session"):
        st.take(("s2", 0, 0, 0))
    with pytest.raises(MaterialError, match="session"):
        st.add_query(1, [(("s2", 1, 0, 0), "x")])


def test_query_cannot_be_prepared_again_after_use() -> None:
    st = _store()
    for i in range(3):
        st.take(("s1", 0, i, 0))
    st.finish(0)
    with pytest.raises(MaterialError, match="already"):
        st.add_query(0, [(("s1", 0, 0, 0), "again")])


def test_unused_material_is_an_error() -> None:
    st = _store()
    st.take(("s1", 0, 0, 0))
    with pytest.raises(MaterialError, match="unused"):
        st.finish(0)


def test_bundle_round_trips_through_arrays() -> None:
    b = Bundle("00112233445566778899aabbccddeeff", 7, [np.arange(5, dtype=np.uint64)])
    got = Bundle.from_arrays(b.to_arrays())
    assert got.session == b.session and got.query == 7
    assert np.array_equal(got.corrections[0], b.corrections[0])
    assert b.nbytes == 40


@pytest.fixture(scope="module")
def tiny():
    from mpcc.compiler.pipeline import compile_onnx
    from tests.onnx_builders import model, node, rand

    m = model(
        [node("Gemm", ["x", "W"], ["h"], transB=1), node("Relu", ["h"], ["y"])],
        {"x": [2, 6]},
        ["y"],
        {"W": rand(4, 6)},
    )
    return compile_onnx(m, (2, 6))


def test_dealer_material_from_another_session_is_refused(tiny) -> None:
    from mpcc.runtime.cluster import LocalCluster

    prog, weights = tiny
    with LocalCluster(prog, weights) as a, LocalCluster(prog, weights) as b:
        foreign = a.dealer.deal(0)
        with pytest.raises(MaterialError, match="session"):
            b.parties[1].prepare(0, foreign)


def test_a_query_cannot_run_twice_on_the_same_material(tiny) -> None:
    from mpcc.runtime.cluster import LocalCluster
    from mpcc.runtime.prg import share

    prog, weights = tiny
    with LocalCluster(prog, weights) as c:
        c.predict(np.ones((2, 6)))
        s0, s1 = share(np.zeros((2, 6), dtype=np.uint64))
        with pytest.raises(MaterialError, match="already consumed"):
            c._both(lambda p, s: p.run(0, {"x": s}), (s0, s1))
