"""Which plans keep samples apart, and the serving layer never letting two clients share a
query of a plan that mixes them (one client's input would reach the other's answer)."""

from __future__ import annotations

import numpy as np
import pytest

from mpcc.compiler.batching import row_mixing, rows_independent
from mpcc.compiler.pipeline import compile_onnx
from mpcc.errors import InputError, PartyError
from tests.concurrent_clients import close_all, each_client
from tests.onnx_builders import model, node, rand, run

B = 2


def _mixing_model():
    """x [B, 4] -> transpose -> @ W[B, B] -> transpose: every output row mixes both rows."""
    return model(
        [
            node("Transpose", ["x"], ["t"], perm=[1, 0]),
            node("MatMul", ["t", "W"], ["m"]),
            node("Transpose", ["m"], ["y"], perm=[1, 0]),
        ],
        {"x": [B, 4]},
        ["y"],
        {"W": rand(B, B, seed=1)},
    )


def _rowwise_model():
    return model(
        [node("MatMul", ["x", "W"], ["m"]), node("Relu", ["m"], ["y"])],
        {"x": ["n", 4]},
        ["y"],
        {"W": rand(4, 3, seed=2)},
    )


@pytest.mark.parametrize(
    "nodes, inits, why",
    [
        ([node("Transpose", ["x"], ["y"], perm=[1, 0])], {}, "batch axis"),
        ([node("Reshape", ["x", "s"], ["y"])], {"s": np.array([1, 4 * B], np.int64)}, "batch"),
        ([node("Mul", ["x", "w"], ["y"])], {"w": rand(B, 4, seed=3)}, "differs per row"),
        ([node("Concat", ["x", "x"], ["y"], axis=0)], {}, "batch axis"),
        ([node("ReduceSum", ["x", "ax"], ["y"])], {"ax": np.array([0])}, "batch axis"),
        (
            [node("Slice", ["x", "st", "en", "ax"], ["y"])],
            {"st": np.array([1]), "en": np.array([2]), "ax": np.array([0])},
            "batch axis",
        ),
    ],
)
def test_plans_that_mix_rows_are_found(nodes, inits, why):
    prog, _ = compile_onnx(model(nodes, {"x": [B, 4]}, ["y"], inits))
    reason = row_mixing(prog)
    assert reason is not None and why in reason
    assert not rows_independent(prog)


@pytest.mark.parametrize(
    "nodes, inits",
    [
        ([node("Transpose", ["x"], ["y"], perm=[0, 1])], {}),
        ([node("Concat", ["x", "x"], ["y"], axis=1)], {}),
        ([node("Mul", ["x", "w"], ["y"])], {"w": rand(1, 4, seed=3)}),
        ([node("Add", ["x", "x"], ["s"]), node("Relu", ["s"], ["y"])], {}),
        # a sum over the last axis, kept or dropped, keeps each sample's row (Sigmoid and
        # Tanh sum over an internal last axis too)
        ([node("ReduceSum", ["x", "ax"], ["y"], keepdims=0)], {"ax": np.array([1])}),
        ([node("ReduceSum", ["x", "ax"], ["y"], keepdims=1)], {"ax": np.array([1])}),
        ([node("Sigmoid", ["x"], ["y"])], {}),
    ],
)
def test_plans_that_keep_rows_apart(nodes, inits):
    prog, _ = compile_onnx(model(nodes, {"x": [B, 4]}, ["y"], inits))
    assert row_mixing(prog) is None


@pytest.mark.parametrize("name", ["mlp", "cnn", "lenet", "resnet", "mobilenet"])
def test_zoo_models_batch_safely(zoo_model, name):
    prog, _ = compile_onnx(zoo_model(name), (4, 1, 28, 28))
    assert row_mixing(prog) is None


@pytest.fixture
def servers(tmp_path):
    from mpcc.serving.dealer import DealerParty
    from mpcc.serving.local import init_local
    from mpcc.serving.party import ComputeParty

    # A long batch wait: requests that could be merged would be.
    cfg = init_local(tmp_path, timeout_s=3.0, stock=2, batch_wait_ms=200.0)
    parties = [ComputeParty(cfg, "p0"), ComputeParty(cfg, "p1"), DealerParty(cfg, "dealer")]
    for p in parties:
        p.start()
    try:
        for p in parties:  # on a fresh checkout the first warm-up compiles every kernel
            p.await_kernels(600)
        yield cfg
    finally:
        close_all(parties)


def _serve_concurrently(cfg, xs):
    return each_client(cfg, len(xs), lambda c, k: (c.predict(xs[k]), c.stats))


def test_a_plan_that_mixes_rows_serves_each_client_alone(servers):
    from mpcc.serving.client import Client
    from mpcc.serving.owner import deploy_program

    onnx_model = _mixing_model()
    prog, weights = compile_onnx(onnx_model)
    deploy_program(prog, weights, servers)
    with Client(servers) as c:
        c.wait_ready(30)
        with pytest.raises(InputError, match="mixes samples"):
            c.predict(rand(1, 4, seed=9))  # a part of a batch would be padded by others' rows
        share = np.zeros((1, 4), np.uint64)
        meta = {"rid": "ab" * 16, "rows": 1, "plan": c._interface()["plan_hash"]}
        reply = c.send_raw("p0", "request", meta, [share])
        assert reply.kind == "failed" and "exactly 2 samples" in reply.meta["msg"]
    xs = [rand(B, 4, seed=10 + k) for k in range(4)]
    for k, (y, stats) in _serve_concurrently(servers, xs).items():
        (ref,) = run(onnx_model, {"x": xs[k]})
        assert np.abs(y - ref).max() < 1e-3
        assert all(r.batch_requests == 1 for r in stats.requests)


def test_a_rowwise_plan_still_merges_clients(servers):
    from mpcc.serving.owner import deploy_program

    onnx_model = _rowwise_model()
    prog, weights = compile_onnx(onnx_model, (B, 4))
    deploy_program(prog, weights, servers)
    from mpcc.serving.client import Client

    with Client(servers) as c:
        c.wait_ready(30)
    xs = [rand(1, 4, seed=20 + k) for k in range(6)]
    results = _serve_concurrently(servers, xs)
    shared = 0
    for k, (y, stats) in results.items():
        (ref,) = run(onnx_model, {"x": xs[k]})
        assert np.abs(y - ref).max() < 1e-3
        shared += max(r.batch_requests for r in stats.requests) > 1
    assert shared > 0


def test_output_that_drops_the_batch_axis_is_answered_whole(servers):
    """A batch-1 plan flattening to a vector: the whole output goes back, not a row of it."""
    from mpcc.serving.client import Client
    from mpcc.serving.owner import deploy_program

    onnx_model = model(
        [node("Reshape", ["x", "s"], ["r"]), node("MatMul", ["r", "W"], ["y"])],
        {"x": [1, 4]},
        ["y"],
        {"s": np.array([4], np.int64), "W": rand(4, 3, seed=4)},
    )
    prog, weights = compile_onnx(onnx_model)
    assert not rows_independent(prog)
    deploy_program(prog, weights, servers)
    x = rand(1, 4, seed=5)
    with Client(servers) as c:
        c.wait_ready(30)
        try:
            y = c.predict(x)
        except PartyError as e:  # a 1-D MatMul may be unsupported; then say so clearly
            pytest.skip(str(e))
    (ref,) = run(onnx_model, {"x": x})
    assert y.shape == ref.shape and np.abs(y - ref).max() < 1e-3


def test_the_compile_report_says_how_requests_are_batched():
    from mpcc.compiler.report import format_report, report_json

    mixing, _ = compile_onnx(_mixing_model())
    assert "one client per query" in format_report(mixing)
    assert "transpose" in report_json(mixing)["rows_mixed_by"]
    rowwise, _ = compile_onnx(_rowwise_model(), (B, 4))
    assert f"up to {B} samples of several clients" in format_report(rowwise)
    assert report_json(rowwise)["rows_mixed_by"] is None


def test_local_runs_refuse_to_pad_a_plan_that_mixes_rows():
    from mpcc.runtime.cleartext import predict
    from mpcc.runtime.cluster import LocalCluster

    onnx_model = _mixing_model()
    prog, weights = compile_onnx(onnx_model)
    with pytest.raises(InputError, match="mixes samples"):
        predict(prog, weights, rand(3, 4, seed=6))
    x = rand(2 * B, 4, seed=7)  # two whole batches: two queries, nothing padded
    ref = np.concatenate([run(onnx_model, {"x": x[i : i + B]})[0] for i in (0, B)])
    with LocalCluster(prog, weights) as cluster:
        assert np.abs(cluster.predict(x) - ref).max() < 1e-3


def test_one_request_limit_stops_all_three_on_a_plan_that_mixes_rows(tmp_path):
    """--num-requests: the dealer counts the requests P1 answered, also for plans whose
    queries carry one client's request each."""
    from mpcc.serving.client import Client
    from mpcc.serving.dealer import DealerParty
    from mpcc.serving.local import init_local
    from mpcc.serving.owner import deploy_program
    from mpcc.serving.party import ComputeParty

    onnx_model = _mixing_model()
    prog, weights = compile_onnx(onnx_model)
    cfg = init_local(tmp_path, timeout_s=3.0)
    parties = [
        ComputeParty(cfg, "p0", num_requests=2),
        ComputeParty(cfg, "p1", num_requests=2),
        DealerParty(cfg, "dealer", num_requests=2),
    ]
    try:
        for p in parties:
            p.start()
        deploy_program(prog, weights, cfg)
        x = rand(2 * B, 4, seed=11)
        with Client(cfg) as c:
            c.wait_ready(30)
            y = c.predict(x)  # two queries, one request each
        ref = np.concatenate([run(onnx_model, {"x": x[i : i + B]})[0] for i in (0, B)])
        assert np.abs(y - ref).max() < 1e-3
        assert all(p.stop_event.wait(10) for p in parties)
    finally:
        close_all(parties)
