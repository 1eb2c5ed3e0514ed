"""Two-phase, crash-safe deploys (issue 14): every party stages the new deployment and switches
to it only once all three have it, so a failure half-way leaves each party serving the
previous one; writes are fsynced, and what a crash leaves over is removed at start.

Before: the owner deployed to P0, then P1, then the dealer, each replacing its file at once,
so a failure at the dealer left P0 and P1 on a deployment the dealer did not have."""

from __future__ import annotations

import os
import stat
import time

import numpy as np
import pytest

from mpcc.errors import PartyError
from mpcc.serving import state
from mpcc.serving.client import Client
from mpcc.serving.owner import DeployError, deploy_program
from mpcc.serving.party import ComputeParty
from tests.test_serving_party import Servers, check


@pytest.fixture(scope="module")
def mlp(zoo_model):
    from mpcc.compiler.pipeline import compile_onnx

    return compile_onnx(zoo_model("mlp"), (4, 1, 28, 28))


@pytest.fixture(scope="module")
def ort_logits(zoo_model, digits_test):
    from mpcc.zoo.reference import run_logits

    X = np.asarray(digits_test[0][:4])
    return X, run_logits(zoo_model("mlp"), X)


@pytest.fixture
def servers(tmp_path):
    from mpcc.serving.local import init_local

    s = Servers(init_local(tmp_path, timeout_s=5.0, stock=1))
    try:
        for role in ("p0", "p1", "dealer"):
            s.start(role)
        yield s
    finally:
        s.close()


def _staged(cfg) -> list[str]:
    return [
        p.name for role in ("p0", "p1", "dealer") for p in cfg.role_state_dir(role).glob("staged-*")
    ]


def test_a_deploy_that_fails_half_way_leaves_the_previous_one_serving(
    servers, mlp, ort_logits, zoo_model, monkeypatch
):
    from mpcc.compiler.pipeline import compile_onnx

    prog, weights = mlp
    X, ref = ort_logits
    first = deploy_program(prog, weights, servers.cfg)
    with Client(servers.cfg) as c:
        c.wait_ready(60)
        old_plan = c._interface()["plan_hash"]

    def refuse(ch, t):  # the dealer, last, fails after P0 and P1 have staged theirs
        raise PartyError("disk full")

    monkeypatch.setattr(servers.parties["dealer"], "_receive_deployment", refuse)
    other = compile_onnx(zoo_model("mlp"), (4, 1, 28, 28), frac_bits=12)
    with pytest.raises(DeployError, match="failed at dealer.*disk full.*no party switched"):
        deploy_program(*other, servers.cfg)
    for role in ("p0", "p1", "dealer"):  # the previous deployment, on disk and in memory
        assert state.load(servers.cfg.role_state_dir(role)).deploy_id == first
        assert servers.parties[role].deployment.deploy_id == first
    deadline = time.monotonic() + 10
    while _staged(servers.cfg) and time.monotonic() < deadline:  # the abort reaches them
        time.sleep(0.05)
    assert _staged(servers.cfg) == []
    with Client(servers.cfg) as c:  # and still serving it
        c.wait_ready(60)
        assert c._interface()["plan_hash"] == old_plan
        check(c.predict(X), ref)


def test_a_successful_deploy_switches_all_three(servers, mlp):
    prog, weights = mlp
    first = deploy_program(prog, weights, servers.cfg)
    second = deploy_program(prog, weights, servers.cfg)
    assert first != second
    for role in ("p0", "p1", "dealer"):
        assert servers.parties[role].deployment.deploy_id == second
        assert state.load(servers.cfg.role_state_dir(role)).deploy_id == second
    assert _staged(servers.cfg) == []


def test_leftovers_of_a_crash_are_removed_at_start(tmp_path, mlp):
    from mpcc.serving.local import init_local
    from mpcc.serving.state import Deployment

    cfg = init_local(tmp_path)
    prog, _ = mlp
    from mpcc.compiler import planfile

    dep = Deployment.build(
        planfile.to_public(prog), planfile.plan_hash(prog), "ab" * 16, None
    )  # the dealer's kind: the public plan only
    d = cfg.role_state_dir("dealer")
    state.save(d, dep)
    (d / "deployment.npz.tmp1a2b3c4d").write_bytes(b"half a file")  # a crash mid-write
    state.stage(d, Deployment.build(dep.public, dep.plan_hash, "cd" * 16, None))  # mid-deploy
    assert len(list(d.iterdir())) == 3
    from mpcc.serving.dealer import DealerParty

    party = DealerParty(cfg, "dealer")  # not started: cleaning is part of loading
    assert [p.name for p in d.iterdir()] == ["deployment.npz"]
    assert party.deployment.deploy_id == "ab" * 16


def test_deployment_writes_are_fsynced(tmp_path, mlp, monkeypatch):
    from mpcc.compiler import planfile
    from mpcc.serving.state import Deployment

    synced: list[str] = []
    real = os.fsync

    def fsync(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    prog, _ = mlp
    dep = Deployment.build(planfile.to_public(prog), planfile.plan_hash(prog), "ab" * 16, None)
    state.stage(tmp_path, dep)
    assert synced == ["file", "dir"]  # the data, then its name
    state.activate(tmp_path, dep.deploy_id)
    assert synced == ["file", "dir", "dir"]  # the rename
    assert [p.name for p in tmp_path.iterdir()] == ["deployment.npz"]


def test_compute_party_cleans_at_start_too(tmp_path):
    from mpcc.serving.local import init_local

    cfg = init_local(tmp_path)
    d = cfg.role_state_dir("p0")
    d.mkdir(parents=True)
    (d / "staged-0123456789abcdef.npz").write_bytes(b"x")
    (d / "staged-0123456789abcdef.npz.tmp00ff00ff").write_bytes(b"x")
    ComputeParty(cfg, "p0")
    assert list(d.iterdir()) == []
