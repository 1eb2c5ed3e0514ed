"""The deployment subcommands, through a small local argparse as `mpcc` would wire them."""

from __future__ import annotations

import argparse
import os
import stat

import numpy as np
import pytest

from mpcc.cli import main  # runs these commands, errors as messages (status 2)
from mpcc.errors import MpccError
from mpcc.serving import config as cfgmod
from mpcc.serving.commands import add_commands


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mpcc")
    add_commands(p.add_subparsers(dest="command", required=True))
    return p.parse_args(argv)


def test_commands_are_registered(tmp_path):
    for argv in (
        ["cluster", "init", str(tmp_path), "--p0", "a:1", "--p1", "b:2", "--dealer", "c:3"],
        ["cluster", "status", "--config", "c.toml", "--wait", "5"],
        ["party", "--config", "c.toml", "--role", "p0", "--num-requests", "3"],
        ["deploy", "m.mpcc", "--config", "c.toml"],
        ["predict", "--config", "c.toml", "--input", "x.npy", "--argmax"],
    ):
        assert callable(parse(argv).fn)
    with pytest.raises(SystemExit):
        parse(["party", "--config", "c.toml", "--role", "owner"])


def test_cluster_init(tmp_path, capsys):
    d = tmp_path / "c"
    args = ["cluster", "init", str(d), "--p0", "10.0.0.1:7401", "--p1", "10.0.0.2:7401"]
    args += ["--dealer", "[::1]:7402"]
    assert main(args) == 0
    cfg = cfgmod.load(d / "cluster.toml")
    assert cfg.address("p0") == ("10.0.0.1", 7401) and cfg.address("dealer") == ("::1", 7402)
    assert cfg.serving == cfgmod.Serving()
    for role in ("p0", "p1", "dealer", "owner", "client"):
        cert, key = cfg.credential(role)
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
        assert b"BEGIN CERTIFICATE" in cert.read_bytes()
    assert main(args) == 2  # an existing cluster is not overwritten by accident
    assert "exists" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    with pytest.raises(cfgmod.ConfigError, match="unknown \\[serving\\] keys"):
        (d / "bad.toml").write_text((d / "cluster.toml").read_text() + "typo = 1\n")
        cfgmod.load(d / "bad.toml")


def test_deploy_and_predict_commands(tmp_path, zoo_model, digits_test, capsys):
    from mpcc.compiler import planfile
    from mpcc.compiler.pipeline import compile_onnx
    from mpcc.serving.dealer import DealerParty
    from mpcc.serving.local import init_local
    from mpcc.serving.party import ComputeParty
    from mpcc.zoo.reference import run_logits

    onnx_model = zoo_model("mlp")
    prog, weights = compile_onnx(onnx_model, (1, 1, 28, 28))
    planfile.save(tmp_path / "m.mpcc", prog, weights)
    planfile.save(tmp_path / "public.mpcc", prog, None)
    cfg = init_local(tmp_path / "c", timeout_s=3.0)
    parties = [ComputeParty(cfg, "p0"), ComputeParty(cfg, "p1"), DealerParty(cfg)]
    try:
        for p in parties:
            p.start()
        conf = str(cfg.path)
        assert main(["cluster", "status", "--config", conf]) == 1
        assert capsys.readouterr().out.count("no model deployed") == 2
        assert main(["deploy", str(tmp_path / "public.mpcc"), "--config", conf]) == 2
        assert "holds no weights" in capsys.readouterr().err
        assert main(["deploy", str(tmp_path / "m.mpcc"), "--config", conf]) == 0
        capsys.readouterr()
        assert main(["cluster", "status", "--config", conf, "--wait", "30"]) == 0
        status = capsys.readouterr().out
        assert status.count(f"plan {planfile.plan_hash(prog)[:12]}") == 2, status
        assert status.rstrip().endswith("serving") and "stock" in status
        X = np.asarray(digits_test[0][:3])
        np.save(tmp_path / "x.npy", X)
        out = str(tmp_path / "y.npy")
        assert main(["predict", "--config", conf, "--input", str(tmp_path / "x.npy")]) == 0
        assert "online" in capsys.readouterr().out
        assert main(["predict", "--config", conf, "--input", str(tmp_path / "x.npy"), "-q",
                     "--output", out]) == 0  # fmt: skip
        assert np.abs(np.load(out) - run_logits(onnx_model, X, batch=1)).max() < 1e-2
        assert main(["predict", "--config", conf, "--input", str(tmp_path / "nope.npy")]) == 2
        parties.pop(1).close()  # P1 goes down: the status says so and P0 still answers
        assert main(["cluster", "status", "--config", conf]) == 1
        status = capsys.readouterr().out
        assert "P1: unreachable" in status and "P0: mlp" in status, status
    finally:
        for p in parties:
            p.close()
    with pytest.raises(MpccError, match="no cluster configuration"):
        cfgmod.load(tmp_path / "missing.toml")
