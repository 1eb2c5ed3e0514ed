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
from mpcc.serving.local import init_local
from tests.concurrent_clients import close_all


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
        ["predict", "--config", "c.toml", "--input", "x.npy", "--client", "alice"],
        ["cluster", "add-client", "alice", "--config", "c.toml", "--days", "30"],
        ["cluster", "revoke", "alice", "--config", "c.toml"],
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
    for days in ("0", "-5"):  # already expired, or not even a valid certificate
        assert main([*args[:2], str(tmp_path / f"d{days}"), *args[3:], "--days", days]) == 2
        err = capsys.readouterr().err
        assert f"1 to 36500 days (--days), not {days}" in err, err
        assert not (tmp_path / f"d{days}").exists()


def test_party_refuses_expired_credentials(tmp_path, capsys):
    import datetime as dt

    from mpcc.serving.certs import init_ca

    cfg = init_local(tmp_path)
    init_ca(tmp_path, "local", days=1, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    assert main(["party", "--config", str(cfg.path), "--role", "p1"]) == 2
    err = capsys.readouterr().err
    assert "mpcc: error: " in err and "p1 certificate" in err and "expired on" in err, err
    assert "run `mpcc cluster init` again" in err


def test_deploy_and_predict_commands(tmp_path, zoo_model, digits_test, capsys):
    from mpcc.compiler import planfile
    from mpcc.compiler.pipeline import compile_onnx
    from mpcc.serving.dealer import DealerParty
    from mpcc.serving.owner import DeployError, deploy_program
    from mpcc.serving.party import ComputeParty
    from mpcc.zoo.reference import run_logits

    onnx_model = zoo_model("mlp")
    prog, weights = compile_onnx(onnx_model, (1, 1, 28, 28))
    planfile.save(tmp_path / "m.mpcc", prog, weights)
    planfile.save(tmp_path / "public.mpcc", prog, None)
    open_prog, open_weights = compile_onnx(onnx_model, (1, 1, 28, 28), public_weights=True)
    planfile.save(tmp_path / "open.mpcc", open_prog, open_weights)
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
        # public weights would reach P0 and P1 in plaintext: only when asked for explicitly
        assert main(["deploy", str(tmp_path / "open.mpcc"), "--config", conf]) == 2
        err = capsys.readouterr().err
        assert "open.mpcc was compiled with --public-weights" in err, err
        assert "plaintext weights to P0 and P1" in err and "--allow-public-weights" in err
        with pytest.raises(DeployError, match="--public-weights"):
            deploy_program(open_prog, open_weights, cfg)
        assert main(["cluster", "status", "--config", conf]) == 1  # nothing was sent
        assert capsys.readouterr().out.count("no model deployed") == 2
        open_args = ["deploy", str(tmp_path / "open.mpcc"), "--config", conf]
        assert main([*open_args, "--allow-public-weights"]) == 0
        capsys.readouterr()
        assert main(["cluster", "status", "--config", conf, "--wait", "30"]) == 0
        assert capsys.readouterr().out.count(f"plan {planfile.plan_hash(open_prog)[:12]}") == 2
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
        close_all(parties)
    with pytest.raises(MpccError, match="no cluster configuration"):
        cfgmod.load(tmp_path / "missing.toml")


def test_predict_timeout_must_be_in_range(tmp_path, capsys):
    for t in ("inf", "nan", "0"):
        argv = ["predict", "--config", "c.toml", "--input", "x.npy", "--timeout", t]
        assert main(argv) == 2
        assert f"--timeout must be from 0.1 to 86400 s, not {t}" in capsys.readouterr().err


def test_party_cpus_are_checked():
    from mpcc.errors import InputError
    from mpcc.serving.commands import parse_cpus, pin_to_cpus

    assert parse_cpus("0") == {0}
    assert parse_cpus("2-3,6") == {2, 3, 6}
    for bad in ("x", "3-1", "-1", "", "0-999999999"):
        with pytest.raises(InputError, match="--cpus"):
            parse_cpus(bad)
    with pytest.raises(InputError, match=r"CPU\(s\) 4096 not available here \(CPUs 0"):
        pin_to_cpus("4096")
