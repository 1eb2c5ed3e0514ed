"""`mpcc compile --network`: each comparison's protocol chosen for the link (function secret
sharing on a WAN, the bit tree on a LAN), run securely against onnxruntime with the counted
traffic and dealer material equal to the cost model."""

from __future__ import annotations

import numpy as np
import pytest

from mpcc.cli import main as cli_main
from mpcc.compiler import network, planfile
from mpcc.compiler.costmodel import dealer_to_p0, estimate
from mpcc.compiler.network import Network, fuse_pool_relu
from mpcc.compiler.ops.base import RuleError, Site
from mpcc.compiler.pipeline import compile_onnx
from mpcc.errors import MpccError
from mpcc.runtime.cluster import LocalCluster
from mpcc.zoo.reference import session


def _cmps(prog) -> list[str | None]:
    return [ins.attrs.get("cmp") for ins in prog.instrs if "cmp" in ins.op.attrs]


@pytest.fixture(scope="module")
def lenet_path(zoo_model):
    return zoo_model("lenet")


def test_on_a_wan_lenet_takes_16_rounds(lenet_path, digits_test) -> None:
    """At 10 ms each MaxPool and the ReLU after it become one instruction that compares all
    pairs and each candidate with 0 at once (5 rounds for what took 12 on the tree), and the
    last ReLU takes FSS: 16 rounds, with ~3 MB of dealer material (FSS everywhere: 18
    rounds and ~29 MB)."""
    prog, weights = compile_onnx(lenet_path, (1, 1, 28, 28), network="10,1")
    assert _cmps(prog) == ["pairs", "pairs", "fss"]
    assert [i.attrs.get("relu_shift") for i in prog.instrs if i.op.name == "maxpool"] == [16, 16]
    assert "2 with the ReLU after them fused in" in prog.notes[-1]
    want = estimate(prog).total
    assert want.rounds == 16  # issue 13's target for LeNet at 10 ms RTT: at most 20
    assert want.dealer + dealer_to_p0(prog) < 3.5e6
    X = digits_test[0][:4]
    ref = session(lenet_path).run(None, {"input": X.astype(np.float32)})[0]
    with LocalCluster(prog, weights) as cluster:
        for i in range(len(X)):
            y = cluster.predict(X[i : i + 1])
            st = cluster.stats
            assert st.sent == (want.sent, want.sent) and st.rounds == want.rounds
            assert st.dealer_bytes == want.dealer
            assert st.dealer_p0_bytes == dealer_to_p0(prog) > 0
            assert np.abs(y - ref[i : i + 1]).max() < 2e-3
            assert y.argmax() == ref[i].argmax()


def test_by_default_the_tree_stays_and_on_a_lan_the_big_layers_keep_it(lenet_path) -> None:
    prog, _ = compile_onnx(lenet_path, (1, 1, 28, 28))
    assert set(_cmps(prog)) == {None} and dealer_to_p0(prog) == 0
    # At 0.2 ms a round is 0.1 ms: FSS's extra CPU (~0.2 us an element) only pays on the
    # small layers; the first block's 11k compared elements stay on the tree.
    prog, _ = compile_onnx(lenet_path, (1, 1, 28, 28), network="0.2,10")
    first = [i.attrs.get("cmp") for i in prog.instrs if "cmp" in i.op.attrs][0]
    assert first is None, first  # None: the tree


def test_a_material_budget_gives_up_first_what_buys_least_time_per_byte(lenet_path) -> None:
    def plan(mb: float):
        prog, _ = compile_onnx(lenet_path, (1, 1, 28, 28), network="10,1", material_budget_mb=mb)
        total = estimate(prog).total
        assert total.dealer + dealer_to_p0(prog) <= mb * 1e6
        assert "material budget" in prog.notes[-1]
        return _cmps(prog), total.rounds

    # the last ReLU's FSS keys go first (one round for ~0.8 MB), then the big MaxPool's
    # all pairs (7 rounds for ~0.9 MB), then the small one's
    assert plan(2.5) == (["pairs", "pairs", None], 18)
    tree = estimate(compile_onnx(lenet_path, (1, 1, 28, 28))[0]).total.dealer
    assert plan(tree * 1.3 / 1e6) == ([None, "pairs", None], 25)
    with pytest.raises(MpccError, match="material-budget 0.001 MB is below"):
        compile_onnx(lenet_path, (1, 1, 28, 28), network="10,1", material_budget_mb=0.001)


def test_all_pairs_maxpools_match_onnxruntime_and_the_cost_model(lenet_path, digits_test) -> None:
    """Within 5 MB a batch-2 query, both MaxPools (with their ReLUs) compare all pairs at
    once: run securely, answers as onnxruntime's, traffic as priced."""
    prog, weights = compile_onnx(lenet_path, (2, 1, 28, 28), network="10,1", material_budget_mb=5)
    assert _cmps(prog) == ["pairs", "pairs", None]
    want = estimate(prog).total
    assert want.rounds == 18 and dealer_to_p0(prog) == 0
    X = digits_test[0][:6]
    ref = session(lenet_path).run(None, {"input": X.astype(np.float32)})[0]
    with LocalCluster(prog, weights) as cluster:
        for i in range(0, len(X), 2):
            y = cluster.predict(X[i : i + 2])
            st = cluster.stats
            assert st.sent == (want.sent, want.sent) and st.rounds == want.rounds
            assert st.dealer_bytes == want.dealer
            assert np.abs(y - ref[i : i + 2]).max() < 2e-3
            np.testing.assert_array_equal(y.argmax(axis=1), ref[i : i + 2].argmax(axis=1))


def test_fusing_a_maxpool_with_its_relu_keeps_the_plan_whole(lenet_path, tmp_path) -> None:
    """`fuse_pool_relu` on LeNet's LAN plan: two MaxPools take their ReLUs, the rebuilt
    program verifies (ids, inputs, outputs, types), keeps its notes and flags, and a second
    pass changes nothing; a MaxPool that is also an output, or over a window of two, keeps
    its ReLU apart."""
    from mpcc.compiler.verify import verify
    from tests import onnx_builders as ob

    for public in (False, True):
        prog, weights = compile_onnx(lenet_path, (1, 1, 28, 28), public_weights=public)
        notes, n = list(prog.notes), len(prog.instrs)
        ids = fuse_pool_relu(prog)
        assert len(prog.instrs) == n - 2 and len(ids) == n
        assert [i.attrs.get("relu_shift") for i in prog.instrs if i.op.name == "maxpool"] == [
            16,
            16,
        ]
        verify(prog, weights)
        assert prog.notes == notes and prog.public_weights is public
        assert fuse_pool_relu(prog) == {} and len(prog.instrs) == n - 2

    nodes = [
        ob.node("MaxPool", ["x"], ["p"], kernel_shape=[3, 3]),
        ob.node("Relu", ["p"], ["r"]),
        ob.node("MaxPool", ["x"], ["q"], kernel_shape=[1, 2]),
        ob.node("Relu", ["q"], ["s"]),
    ]
    m = ob.model(nodes, {"x": [1, 2, 6, 6]}, ["p", "r", "s"])
    prog, _ = compile_onnx(m)
    assert fuse_pool_relu(prog) == {}


def test_a_budget_left_over_buys_back_the_faster_protocols(lenet_path) -> None:
    """Whatever the budget, no comparison instruction could take a faster protocol within
    what the plan leaves of it."""
    net = Network.parse("10,1")
    for mb in (1.5, 2.15, 2.6, 3.5):
        prog, _ = compile_onnx(lenet_path, (1, 1, 28, 28), network=net, material_budget_mb=mb)
        total = estimate(prog).total.dealer + dealer_to_p0(prog)
        assert total <= mb * 1e6
        for ins in prog.instrs:
            if "cmp" not in ins.op.attrs:
                continue
            mine = ins.attrs.get("cmp", "tree")
            per = network._options(prog, ins, net)
            ins.attrs.pop("cmp")
            if mine != "tree":
                ins.attrs["cmp"] = mine
            s0, m0 = per[mine]
            assert not [k for k, (s, m) in per.items() if s < s0 and total + m - m0 <= mb * 1e6]


def test_a_fused_maxpool_on_the_tree_and_by_fss_matches_onnxruntime(lenet_path, digits_test):
    """The fused instruction's tournament path (the ReLU call after the tournament's), on
    the tree and by FSS, served as onnxruntime answers and priced as counted."""
    from mpcc.compiler.verify import verify

    X = digits_test[0][:2]
    ref = session(lenet_path).run(None, {"input": X.astype(np.float32)})[0]
    for cmp in ("tree", "fss"):
        prog, weights = compile_onnx(lenet_path, (1, 1, 28, 28), network="10,1")
        first = next(i for i in prog.instrs if i.op.name == "maxpool")
        assert first.attrs["relu_shift"] == 16
        first.attrs.pop("cmp")
        if cmp == "fss":
            first.attrs["cmp"] = "fss"
        verify(prog, weights)
        want = estimate(prog).total
        with LocalCluster(prog, weights) as cluster:
            for i in range(len(X)):
                y = cluster.predict(X[i : i + 1])
                assert cluster.stats.sent == (want.sent, want.sent)
                assert cluster.stats.rounds == want.rounds
                assert cluster.stats.dealer_bytes == want.dealer
                assert np.abs(y - ref[i : i + 1]).max() < 2e-3


def test_a_calibration_report_follows_the_fused_plan(lenet_path, digits_test) -> None:
    """With --calibrate and --network, the report's value ids are the plan's: the fused
    MaxPool's id holds both its max and its ReLU's output, the latter at the plan's scale."""
    import mpcc

    x = digits_test[0][:50]
    plan = mpcc.compile(lenet_path, input_shape=(1, 1, 28, 28), calibrate=x, network="10,1")
    prog, rep = plan.program, plan.calibration
    pools = [i.out for i in prog.instrs if i.op.name == "maxpool"]
    assert len(pools) == 2 and rep is not None
    for v in rep.values:
        assert v.vid < len(prog.values)
        if v.op != "maxpool":
            assert prog.value(v.vid).scale == v.scale, v
    for vid in pools:
        held = sorted(v.op for v in rep.values if v.vid == vid)
        assert held == ["maxpool", "relu"], held
    for name, v, _ in rep.outputs:
        assert (name, v.vid) in prog.outputs


def _pool_model(kernel: list[int], pads: list[int]):
    from tests import onnx_builders as ob

    pool = ob.node("MaxPool", ["x"], ["y"], kernel_shape=kernel, pads=pads, strides=[1, 2])
    return ob.model([pool], {"x": [1, 3, 9, 10]}, ["y"])


@pytest.mark.parametrize(
    ("kernel", "pads", "rounds", "budget"),
    [
        ([1, 3], [0, 1, 0, 1], 5, 0.1),
        ([3, 3], [1, 1, 1, 1], 10, 1.0),
        ([4, 4], [1, 2, 2, 1], 10, 1.0),
    ],
)
def test_all_pairs_takes_any_window_with_padding(kernel, pads, rounds, budget) -> None:
    """Within a material budget, a MaxPool with padding compares all pairs (a 3x3 or 4x4
    window in two levels of groups; the pads lose every comparison) and matches
    onnxruntime; without one, at 40 ms, each takes FSS's tournament (2 rounds a level) and
    matches it too."""
    from tests import onnx_builders as ob

    m = _pool_model(kernel, pads)
    x = ob.rand(1, 3, 9, 10, seed=4) * 50
    (ref,) = ob.run(m, {"x": x})
    for mb, cmp in ((budget, "pairs"), (None, "fss")):
        prog, weights = compile_onnx(m, network="40,1", material_budget_mb=mb)
        assert _cmps(prog) == [cmp]
        with LocalCluster(prog, weights) as cluster:
            y = cluster.predict(x)
            assert cluster.stats.rounds == estimate(prog).total.rounds
        assert np.abs(y - ref).max() < 1e-4
        if mb:
            assert estimate(prog).total.rounds == rounds


def test_all_pairs_is_refused_for_a_window_of_two() -> None:
    prog, _ = compile_onnx(_pool_model([1, 2], [0, 0, 0, 0]), network="40,1")
    assert _cmps(prog) != ["pairs"]
    (pool,) = prog.instrs[1:2]
    pool.attrs["cmp"] = "pairs"
    with pytest.raises(RuleError, match="windows of 3 or more elements, not 2"):
        pool.op.calls(Site(prog, pool))


def test_the_choice_survives_the_plan_file_and_shows_in_the_report(
    lenet_path, tmp_path, capsys
) -> None:
    out = tmp_path / "lenet.mpcc"
    args = ["compile", str(lenet_path), "--input-shape", "1x1x28x28", "-o", str(out)]
    assert cli_main([*args, "--network", "10,1"]) == 0
    text = capsys.readouterr().out
    assert "relu=16 cmp=pairs" in text and "cmp=fss" in text and "dealer to P0" in text
    prog, _ = planfile.load(out)
    assert _cmps(prog) == ["pairs", "pairs", "fss"]


@pytest.mark.parametrize("bad", ["10", "x,1", "10,0", "-1,1"])
def test_a_bad_network_is_a_clear_error(bad) -> None:
    with pytest.raises(MpccError, match="--network"):
        Network.parse(bad)


def test_a_wan_plan_is_served_with_p0_receiving_its_keys(
    lenet_path, digits_test, tmp_path, monkeypatch
):
    """Served over TLS by the three parties: the dealer sends P0 the FSS keys' common words
    with P1's bundle, and the answers match onnxruntime. The dealer tells both how far its
    dealing got after every call here (`PROGRESS_S` 0), and they take it as progress."""
    import mpcc.serving.dealer
    import mpcc.serving.sessionstate

    told: list[int] = []
    progress = mpcc.serving.sessionstate.PartySession.progress

    def counted(self) -> None:
        told.append(1)
        progress(self)

    monkeypatch.setattr(mpcc.serving.dealer, "PROGRESS_S", 0.0)
    monkeypatch.setattr(mpcc.serving.sessionstate.PartySession, "progress", counted)
    from mpcc.serving.client import Client
    from mpcc.serving.local import init_local
    from mpcc.serving.owner import deploy_program
    from tests.test_serving_party import Servers

    prog, weights = compile_onnx(lenet_path, (1, 1, 28, 28), network="10,1")
    X = digits_test[0][:3]
    ref = session(lenet_path).run(None, {"input": X.astype(np.float32)})[0]
    servers = Servers(init_local(tmp_path, timeout_s=5.0, stock=2))
    try:
        for role in ("p0", "p1", "dealer"):
            servers.start(role)
        deploy_program(prog, weights, servers.cfg)
        with Client(servers.cfg) as client:
            client.wait_ready(60)
            for i in range(len(X)):
                y = client.predict(X[i : i + 1])
                assert np.abs(y - ref[i : i + 1]).max() < 2e-3
                (req,) = client.stats.requests
                assert req.rounds == estimate(prog).total.rounds
    finally:
        servers.close()
    assert told, "the parties heard the dealer's progress"
