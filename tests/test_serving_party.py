"""Party servers in this process (threads, real TLS on 127.0.0.1): batching, start-up checks,
deployments kept on disk, request limits. The separate-process tests are in test_serving_e2e."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mpcc.errors import MpccError, PartyError
from mpcc.serving.client import Client
from mpcc.serving.dealer import DealerParty
from mpcc.serving.local import init_local
from mpcc.serving.owner import deploy_program
from mpcc.serving.party import ComputeParty
from mpcc.serving.state import load as load_state
from mpcc.serving.tls import client_context, dial


@pytest.fixture(scope="module")
def mlp(zoo_model):
    from mpcc.compiler.pipeline import compile_onnx

    return compile_onnx(zoo_model("mlp"), (4, 1, 28, 28))  # a batch of 4 per query


class Servers:
    def __init__(self, cfg):
        self.cfg = cfg
        self.parties = {}

    def start(self, role: str, **kw):
        cls = DealerParty if role == "dealer" else ComputeParty
        self.parties[role] = cls(self.cfg, role, **kw)
        self.parties[role].start()
        return self.parties[role]

    def stop(self, role: str):
        self.parties.pop(role).close()

    def close(self):
        for role in list(self.parties):
            self.stop(role)


@pytest.fixture
def servers(tmp_path):
    cfg = init_local(tmp_path, timeout_s=3.0, stock=2, batch_wait_ms=30.0)
    s = Servers(cfg)
    try:
        for role in ("p0", "p1", "dealer"):
            s.start(role)
        yield s
    finally:
        s.close()


def cleartext(prog, weights, x):
    from mpcc.runtime.cleartext import predict

    return predict(prog, weights, x)


def test_concurrent_requests_share_a_batch(servers, mlp, digits_test):
    prog, weights = mlp
    deploy_program(prog, weights, servers.cfg)
    X = np.asarray(digits_test[0][:12])
    with Client(servers.cfg) as c:
        c.wait_ready(30)
    results, errors = {}, []

    def one(k: int) -> None:
        try:
            with Client(servers.cfg) as c:
                results[k] = (c.predict(X[k * 2 : k * 2 + 2]), c.stats)  # 2 rows < batch 4
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    ref = cleartext(prog, weights, X)
    shared = 0
    for k, (y, stats) in results.items():
        assert np.abs(y - ref[k * 2 : k * 2 + 2]).max() < 1e-3
        shared += max(r.batch_requests for r in stats.requests) > 1
    assert shared > 0  # at least one query carried two clients' requests


def test_predict_any_number_of_samples(servers, mlp, digits_test):
    prog, weights = mlp
    deploy_program(prog, weights, servers.cfg)
    X = np.asarray(digits_test[0][:7])
    with Client(servers.cfg) as c:
        c.wait_ready(30)
        y = c.predict(X)
        assert len(c.stats.requests) == 2  # 4 + 3 rows
        one = c.predict(X[0])  # a single sample without its batch axis
    ref = cleartext(prog, weights, X)
    assert np.abs(y - ref).max() < 1e-3
    assert np.abs(one - ref[:1]).max() < 1e-3


def _deploy_to(cfg, role: str, prog, weights) -> None:
    """Deploy to one party only (as a broken deployment would): its shares are a fresh split."""
    import secrets

    from mpcc.compiler import planfile
    from mpcc.runtime.owner import share_weights

    shares = share_weights(prog, weights)[int(role[1])]
    ch, _ = dial(cfg, client_context(cfg, "owner"), role, me="owner", link="deploy")
    head = {"plan": planfile.to_public(prog), "plan_hash": planfile.plan_hash(prog)}
    ch.send_msg("deploy", {**head, "deploy_id": secrets.token_hex(16), "weights": sorted(shares)})
    for n in sorted(shares):
        ch.send_msg("share", {"name": n}, [shares[n]])
    ch.send_msg("commit")
    ch.recv_msg(10, expect="deployed")
    ch.close()


def test_mismatched_deployments_stop_start_up(servers, mlp, digits_test):
    prog, weights = mlp
    deploy_program(prog, weights, servers.cfg)
    _deploy_to(servers.cfg, "p1", prog, weights)  # same plan, shares of another deployment
    with Client(servers.cfg) as c:
        with pytest.raises(PartyError, match="not ready"):
            c.wait_ready(2)
    err = servers.parties["dealer"].last_error or ""
    assert "disagree on the deployment" in err and "P1" in err
    deploy_program(prog, weights, servers.cfg)  # a complete deployment repairs it
    with Client(servers.cfg) as c:
        c.wait_ready(30)
        y = c.predict(digits_test[0][:4])
    assert np.abs(y - cleartext(prog, weights, digits_test[0][:4])).max() < 1e-3


def test_deployment_survives_restart_without_plaintext(servers, mlp, digits_test):
    prog, weights = mlp
    deploy_program(prog, weights, servers.cfg)
    with Client(servers.cfg) as c:
        first = c.wait_ready(30)
    servers.stop("p1")
    servers.start("p1")
    with Client(servers.cfg) as c:
        second = c.wait_ready(30)
        y = c.predict(digits_test[0][:4])
    assert second != first
    assert np.abs(y - cleartext(prog, weights, digits_test[0][:4])).max() < 1e-3
    s0 = load_state(servers.cfg.role_state_dir("p0")).shares
    s1 = load_state(servers.cfg.role_state_dir("p1")).shares
    assert load_state(servers.cfg.role_state_dir("dealer")).shares is None
    from mpcc.runtime.cleartext import encode_weights

    enc = encode_weights(prog, weights)
    for n in enc:  # each party's share alone is not the weight; together they are
        assert not np.array_equal(s0[n], enc[n]) and not np.array_equal(s1[n], enc[n])
        assert np.array_equal(s0[n] + s1[n], enc[n])


def test_requests_without_a_model_are_refused(servers):
    with Client(servers.cfg, timeout=3) as c:
        with pytest.raises(MpccError, match="no model is deployed"):
            c.predict(np.zeros((1, 1, 28, 28)))


def test_party_stops_after_num_requests(servers, mlp, digits_test):
    prog, weights = mlp
    deploy_program(prog, weights, servers.cfg)
    servers.stop("p0")
    p0 = servers.start("p0", num_requests=2)
    with Client(servers.cfg) as c:
        c.wait_ready(30)
        c.predict(digits_test[0][:8])  # two queries
    assert p0.stop_event.wait(5)


def test_no_dealer_gives_a_clear_error_in_time(servers, mlp, digits_test):
    import time

    prog, weights = mlp
    deploy_program(prog, weights, servers.cfg)
    with Client(servers.cfg) as c:
        c.wait_ready(30)
    servers.stop("dealer")  # its links close: P0 and P1 end the session
    with Client(servers.cfg, timeout=10) as c:
        t0 = time.monotonic()
        with pytest.raises(PartyError, match="no session"):
            c.predict(digits_test[0][:4])
        assert time.monotonic() - t0 < servers.cfg.serving.timeout_s + 1.5
    servers.start("dealer")  # the dealer comes back: a new session, service resumes
    with Client(servers.cfg) as c:
        c.wait_ready(30)
        y = c.predict(digits_test[0][:4])
    assert np.abs(y - cleartext(prog, weights, digits_test[0][:4])).max() < 1e-3
