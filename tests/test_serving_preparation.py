"""When a compute party makes material and lets the dealer make more: never beside the online
phase of a query that finds the stock full on a one-lane session (it would share the cores,
and the GIL, with the rounds); on several lanes, meanwhile. The session's bookkeeping alone,
without links or executors, and then real parties in this process, timed."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from mpcc.bench.measure import wait_for_stock
from mpcc.errors import PartyError
from mpcc.runtime.dealer import Dealer
from mpcc.runtime.executor import PartyExecutor
from mpcc.serving.client import Client
from mpcc.serving.dealer import DealerParty
from mpcc.serving.local import init_local
from mpcc.serving.owner import deploy_program
from mpcc.serving.party import ComputeParty
from mpcc.serving.sessionstate import Lane, PartySession, Prepared
from tests.concurrent_clients import close_all


def _session(lanes: int, stock: int = 2) -> PartySession:
    s = PartySession.__new__(PartySession)  # the state alone: no links, no executor
    s.lanes = [Lane(i, None, None) for i in range(lanes)]  # type: ignore[arg-type]
    s.cond = threading.Condition()
    s.prepared, s.prepared_upto, s.next_q = {}, -1, 0
    s._ran_below, s._ran, s._credited = 0, set(), -1
    s.running, s.starting, s.waiting, s.pieces = 0, set(), 0, 0
    s.ended = None
    s.stock = lambda: stock  # type: ignore[method-assign]
    s.prep_timeout = lambda: 5.0  # type: ignore[method-assign]
    return s


@contextlib.contextmanager
def _serving(cfg, prog, weights) -> Iterator[Client]:
    """P0, P1 and the dealer in this process, serving `prog` with a full stock; a client."""
    parties = {}
    try:
        for role in ("p0", "p1", "dealer"):
            parties[role] = (DealerParty if role == "dealer" else ComputeParty)(cfg, role)
            parties[role].start()
        deploy_program(prog, weights, cfg)
        with Client(cfg) as c:
            c.wait_ready(30)
            wait_for_stock(c, timeout=30)
            yield c
    finally:
        close_all(parties.values())


def _made(s: PartySession, *qs: int) -> None:
    for q in qs:
        s.mark_prepared(q, Prepared(0.0, time.monotonic()), 1)


def test_one_lane_defers_preparing_from_the_moment_a_query_is_numbered():
    s = _session(lanes=1)
    _made(s, 0, 1)
    assert not s.defer_preparing()
    q = s.number(None)  # P0 took requests: the prep thread is woken, the stock one short
    assert q == 0 and not s.stock_full()
    assert s.defer_preparing(), "material was made in the round trip before the online phase"
    s.wait_prepared(q)
    assert s.defer_preparing()
    s.online_over()
    s.consumed(q)
    s.settled(q)
    assert not s.defer_preparing()


def test_one_lane_makes_the_material_a_numbered_query_still_lacks():
    s = _session(lanes=1)
    q = s.number(None)
    assert not s.defer_preparing(), "the query would wait for material nobody makes"
    got = []
    waiter = threading.Thread(target=lambda: got.append(s.wait_prepared(q)))
    waiter.start()
    _made(s, q)
    waiter.join(5)
    assert got and s.running == 1


def test_a_skipped_query_stops_deferring_until_its_lane_takes_requests_again():
    s = _session(lanes=1)
    _made(s, 0)
    q = s.number(None)
    s.settled(q)  # P1 had none of the requests: the lane keeps q and waits
    assert not s.defer_preparing()
    assert s.number(q) == q and s.next_q == 1
    assert s.defer_preparing()


def test_one_lane_p1_raises_the_dealers_credit_only_after_the_online_phase():
    s = _session(lanes=1, stock=2)
    assert s.credit() == (1, True)  # at the session's start: queries 0 and 1
    assert s.announced(0) is None  # the dealer must not make query 2's material now
    assert s.defer_preparing() is False  # (query 0's material is not here yet)
    _made(s, 0)
    assert s.defer_preparing()  # nor may P1 read the dealer's link for it
    s.wait_prepared(0)
    s.online_over()
    s.settled(0)
    assert s.credit() == (2, True)  # sent as the query ends


def test_one_lane_with_a_stock_of_one_lets_the_dealer_make_the_next_query_meanwhile():
    s = _session(lanes=1, stock=1)
    assert s.credit() == (0, True)
    assert s.announced(0) == 1, "else query 1 would wait for the dealer after query 0"


@pytest.mark.parametrize("progress", ["yield_to_online", "progress"])
def test_a_query_waits_for_material_as_long_as_it_is_being_made(progress):
    """A query's material made slower than the timeout allows (a big model whose maker other
    programs starve) still arrives: each call's material made (`yield_to_online`), or the
    dealer's word of how far its dealing of P1's bundle got (`progress`), restarts the wait.
    Material that stops coming fails it."""
    s = _session(lanes=1)
    s.prep_timeout = lambda: 0.2  # type: ignore[method-assign]

    def maker() -> None:  # 0.6 s for one query's material, a call every 0.05 s
        for _ in range(12):
            time.sleep(0.05)
            getattr(s, progress)()
        _made(s, 0)

    th = threading.Thread(target=maker)
    th.start()
    s.wait_prepared(0)
    th.join()
    with pytest.raises(PartyError, match="no preprocessing for query 1 after 0.2 s"):
        s.wait_prepared(1)


@pytest.mark.parametrize("lanes", [2, 4])
def test_several_lanes_let_the_dealer_on_at_each_announcement(lanes):
    s = _session(lanes=lanes, stock=lanes)
    s.credit()
    assert s.announced(0) == lanes
    _made(s, 0)
    s.wait_prepared(0)
    assert not s.defer_preparing(), "the other lanes' material is made meanwhile"
    _made(s, *range(1, lanes + 1))
    assert s.defer_preparing()


def _timed(spans: list, who, fn):
    def wrapper(self, *args, **kwargs):
        t0 = time.monotonic()
        try:
            return fn(self, *args, **kwargs)
        finally:
            spans.append((who(self), t0, time.monotonic()))

    return wrapper


def test_a_query_that_finds_the_stock_full_runs_alone(
    tmp_path, zoo_model, digits_test, monkeypatch
):
    """One lane: while a query's online phase runs at a party, that party expands no
    material, and while it runs at P1 the dealer deals none (each query sent once the stock
    is full again)."""
    from mpcc.compiler.pipeline import compile_onnx
    from mpcc.zoo.reference import run_logits

    spans: list[tuple[str, float, float]] = []
    party = lambda ex: f"p{ex.party}"  # noqa: E731
    monkeypatch.setattr(
        PartyExecutor, "run", _timed(spans, lambda ex: "run " + party(ex), PartyExecutor.run)
    )
    monkeypatch.setattr(
        PartyExecutor,
        "prepare",
        _timed(spans, lambda ex: "prepare " + party(ex), PartyExecutor.prepare),
    )
    monkeypatch.setattr(Dealer, "deal", _timed(spans, lambda _: "deal", Dealer.deal))
    prog, weights = compile_onnx(zoo_model("mlp"), (1, 1, 28, 28))
    X = np.asarray(digits_test[0][:8])
    ref = run_logits(zoo_model("mlp"), X)
    with _serving(init_local(tmp_path, timeout_s=5.0, stock=2), prog, weights) as c:
        start = time.monotonic()  # (the parties' kernel warm-up runs plans too)
        for i in range(len(X)):
            wait_for_stock(c, timeout=30)
            y = c.predict(X[i : i + 1])
            assert y.argmax() == ref[i].argmax()
    spans = [span for span in spans if span[1] >= start]
    runs = {p: [(a, b) for w, a, b in spans if w == f"run {p}"] for p in ("p0", "p1")}
    assert len(runs["p0"]) == len(runs["p1"]) == len(X)
    # P1 lets the dealer on when its online phase ends; P0's may end a little later
    beside = [
        (w, p, round(1e3 * (min(b, rb) - max(a, ra)), 2))
        for w, a, b in spans
        for p in ("p0", "p1")
        if w == f"prepare {p}" or (w, p) == ("deal", "p1")
        for ra, rb in runs[p]
        if a < rb and ra < b
    ]
    assert not beside, f"material made during an online phase (what, ms): {beside}"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a niceness per thread")
def test_the_threads_that_make_material_yield_to_the_rounds(tmp_path, zoo_model):
    """The compute parties' preparation threads, their dealer links' readers and the dealer's
    dealing thread run at the configured niceness above the rest of the process (the lanes'
    threads among them)."""
    from mpcc.compiler.pipeline import compile_onnx

    prog, weights = compile_onnx(zoo_model("mlp"), (1, 1, 28, 28))
    cfg = init_local(tmp_path, timeout_s=5.0, stock=2, background_nice=7)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    before = {th.native_id for th in threading.enumerate()}
    with _serving(cfg, prog, weights):
        nice: dict[str, list[int]] = {}
        for th in threading.enumerate():
            if th.native_id in before:
                continue  # another test's thread, still ending
            try:
                nice.setdefault(th.name, []).append(os.getpriority(os.PRIO_PROCESS, th.native_id))
            except OSError:
                pass  # the thread ended meanwhile
    lowered = min(19, base + 7)
    assert nice["mpcc-prep"] == [lowered, lowered]  # P0's and P1's
    assert nice["mpcc-dealer"] == [lowered]
    readers = [n for name, ns in nice.items() if name.startswith("mpcc-read-dealer") for n in ns]
    assert readers == [lowered, lowered]  # the links bringing P0 and P1 their material
    assert set(nice["mpcc-conn"]) == {base}  # lane 0 at each party, and the handshakes
