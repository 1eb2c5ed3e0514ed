"""Lanes (issue 13, many queries in flight): a session runs one query at a time on each of
its `[serving] lanes` P0-P1 links, all taking material from one store. Party servers in this
process over real TLS on 127.0.0.1; answers are checked against onnxruntime."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest

from mpcc.compiler.costmodel import estimate
from mpcc.serving.client import Client
from mpcc.serving.local import init_local
from mpcc.serving.owner import deploy_program
from tests.concurrent_clients import each_client
from tests.test_serving_party import Servers, check

LANES = 3


@pytest.fixture(scope="module")
def mlp1(zoo_model):
    from mpcc.compiler.pipeline import compile_onnx

    return compile_onnx(zoo_model("mlp"), (1, 1, 28, 28))


@pytest.fixture(scope="module")
def reference(zoo_model, digits_test):
    from mpcc.zoo.reference import run_logits

    X = np.asarray(digits_test[0][:12])
    return X, run_logits(zoo_model("mlp"), X)


def _servers(tmp_path, **kw) -> Servers:
    cfg = init_local(tmp_path, timeout_s=3.0, stock=2, batch_wait_ms=1.0, **kw)
    return Servers(cfg)


def test_lanes_run_queries_at_once_and_every_answer_is_right(tmp_path, mlp1, reference):
    prog, weights = mlp1
    X, ref = reference
    servers = _servers(tmp_path, lanes=LANES)
    try:
        for role in ("p0", "p1", "dealer"):
            servers.start(role)
        p0 = servers.parties["p0"]
        running, most, lock = set(), [0], threading.Lock()
        run = p0._execute

        def execute(s, lane, q, batch):  # hold each query a while, so lanes must overlap
            with lock:
                running.add(lane.index)
                most[0] = max(most[0], len(running))
            try:
                time.sleep(0.05)
                return run(s, lane, q, batch)
            finally:
                with lock:
                    running.discard(lane.index)

        p0._execute = execute
        servers.deploy(prog, weights)
        results = each_client(
            servers.cfg, 6, lambda c, k: [(c.predict(X[k + 6 * i]), c.stats) for i in range(2)]
        )
        with Client(servers.cfg) as c:
            info = c.info()
    finally:
        servers.close()
    cost = estimate(prog).total
    lanes_used = set()
    for k, pairs in results.items():
        for i, (y, stats) in enumerate(pairs):
            check(y, ref[k + 6 * i : k + 6 * i + 1])
            (r,) = stats.requests
            lanes_used.add(r.lane)
            # each lane's traffic is its own query's: as the cost model says
            assert r.rounds == cost.rounds
            assert r.sent == (cost.sent, cost.sent)
            assert r.dealer_bytes == cost.dealer
    assert info["p0"]["lanes"] == info["p1"]["lanes"] == LANES
    assert lanes_used == set(range(LANES))
    assert most[0] == LANES  # all lanes had a query in flight at once


def test_parties_with_different_lane_counts_refuse_the_session(tmp_path, mlp1):
    prog, weights = mlp1
    servers = _servers(tmp_path, lanes=2)
    try:
        servers.start("p0")
        cfg1 = dataclasses.replace(
            servers.cfg, serving=dataclasses.replace(servers.cfg.serving, lanes=3)
        )
        p1 = Servers(cfg1).start("p1")
        servers.parties["p1"] = p1
        servers.start("dealer")
        deploy_program(prog, weights, servers.cfg)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "lanes" not in str(p1.last_error):
            time.sleep(0.1)
        assert "disagree on the lanes (P1: 3, P0: 2)" in str(p1.last_error)
    finally:
        servers.close()


def test_many_lanes_fit_in_the_party_link_pool(tmp_path, mlp1, reference):
    # 20 lanes are 20 links from P1 to P0, more than the party pool's fixed 16 slots
    prog, weights = mlp1
    X, ref = reference
    servers = _servers(tmp_path, lanes=20)
    try:
        for role in ("p0", "p1", "dealer"):
            servers.start(role)
        servers.deploy(prog, weights)
        with Client(servers.cfg) as c:
            check(c.predict(X[:1]), ref[:1])
            assert c.info()["p0"]["lanes"] == 20
    finally:
        servers.close()


def test_lanes_keep_one_query_of_material_each_over_the_memory_limit(tmp_path, mlp1, reference):
    # A stock under the lane count (stock_mb below one query) let a lane take a query number
    # beyond P1's credit while the lane holding the lower one sat idle: the session stalled,
    # then ended ("no preprocessing for query N"), for a sequential client (4 of 40 failed).
    prog, weights = mlp1
    X, ref = reference
    servers = Servers(init_local(tmp_path, timeout_s=2.0, stock=1, stock_mb=0.001, lanes=2))
    try:
        for role in ("p0", "p1", "dealer"):
            servers.start(role)
        servers.deploy(prog, weights)
        with Client(servers.cfg) as c:
            assert c.info()["p1"]["stock"] == 2
            for i in range(30):
                check(c.predict(X[i % 12 : i % 12 + 1]), ref[i % 12 : i % 12 + 1])
    finally:
        servers.close()
