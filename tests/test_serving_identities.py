"""Client identities (issue 14): a certificate per client, revocation without a restart, and
limits per identity -- connections, waiting requests, bytes, message rate -- with batches
filled round-robin between identities.

Before: every client shared one certificate and limits were per connection, so one client
could hold every slot or fill the queue by opening more links."""

from __future__ import annotations

import secrets
import time

import numpy as np
import pytest

from mpcc.cli import main
from mpcc.errors import MpccError
from mpcc.serving.admission import TokenBucket, fair_order, mark_served
from mpcc.serving.certs import add_client, client_files, revoke
from mpcc.serving.client import Client
from mpcc.serving.config import ConfigError
from mpcc.serving.links import dial
from mpcc.serving.local import init_local
from mpcc.serving.party import ComputeParty, Request
from mpcc.serving.status import cluster_status
from mpcc.serving.tlscontext import client_context
from mpcc.serving.tlsstream import LinkRefused
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


def _dial(cfg, name: str):
    cert, key = client_files(cfg, name)
    ctx = client_context(cfg, None, str(cert), str(key))
    return dial(cfg, ctx, "p0", me="client", link="client", timeout=10)[0]


def _wait_closed(ch, limit: float) -> None:
    deadline = time.monotonic() + limit
    while ch.closed is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ch.closed is not None, f"the link stayed open for {limit} s"


# -- units ------------------------------------------------------------------------------------
def test_token_bucket_paces_to_its_rate():
    now = [0.0]
    b = TokenBucket(rate=10, burst=3, clock=lambda: now[0])
    assert [b.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]  # the burst
    assert b.reserve() == pytest.approx(0.1)  # then one every 1/rate s, queued in turn
    assert b.reserve() == pytest.approx(0.2)
    now[0] = 10.0  # a quiet spell refills it, to the burst only
    assert [b.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.reserve() > 0


def test_fair_order_is_round_robin_between_identities():
    reqs = [("a", i) for i in range(4)] + [("b", 0), ("c", 0), ("c", 1)]
    served: dict = {}
    order = fair_order(reqs, lambda r: r[0], served)
    assert order == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("c", 1), ("a", 2), ("a", 3)]
    mark_served({"a"}, served)  # a was served last: it goes last now
    assert fair_order(reqs, lambda r: r[0], served)[:3] == [("b", 0), ("c", 0), ("a", 0)]


def test_p0_fills_a_batch_round_robin_between_identities(tmp_path):
    cfg = init_local(tmp_path)
    p0 = ComputeParty(cfg, "p0")  # not started: its queue only
    share = np.zeros((1, 4), np.uint64)
    flood = [Request(f"{i:016x}", 1, share, None, 0.0, who="flood") for i in range(30)]
    one = Request("f" * 16, 1, share, None, 0.0, who="alice")
    p0._queue.extend([*flood, one])
    with p0._req:
        ready = p0._ready_requests()
        assert [r.who for r in ready[:2]] == ["flood", "alice"]  # not 31st behind the flood
        p0._dequeue(ready[:1])  # a batch of one took flood's
        assert p0._ready_requests()[0] is one  # so alice goes first next


# -- certificates ----------------------------------------------------------------------------
def test_add_client_and_revoke_commands(tmp_path, capsys):
    cfg = init_local(tmp_path)
    assert main(["cluster", "add-client", "alice", "--config", str(cfg.path)]) == 0
    cert, key = client_files(cfg, "alice")
    assert cert.is_file() and key.stat().st_mode & 0o777 == 0o600
    assert "--client alice" in capsys.readouterr().out
    assert main(["cluster", "add-client", "alice", "--config", str(cfg.path)]) == 2  # exists
    assert "exists" in capsys.readouterr().err
    for bad in ("p0", "../x", "", "a" * 65):
        with pytest.raises(ConfigError, match="client name"):
            add_client(cfg, bad)
    assert main(["cluster", "revoke", "alice", "--config", str(cfg.path)]) == 0
    assert cfg.crl.is_file()
    assert main(["cluster", "revoke", "nobody", "--config", str(cfg.path)]) == 2
    with pytest.raises(MpccError, match="no certificate and key of client 'nobody'"):
        Client(cfg, identity="nobody")
    (tmp_path / "ca.key").unlink()  # kept offline: issuing needs it
    with pytest.raises(ConfigError, match="needs the cluster CA"):
        add_client(cfg, "bob")


def test_identities_connection_limit_and_revocation_without_restart(tmp_path):
    cfg = init_local(tmp_path, timeout_s=5.0, client_connections=1, max_connections=8)
    for name in ("alice", "bob", "carol"):
        add_client(cfg, name)
    s = Servers(cfg)
    try:
        p0 = s.start("p0")
        alice = _dial(cfg, "alice")
        with pytest.raises(LinkRefused, match="client alice has 1 connections"):
            _dial(cfg, "alice")  # its one connection is taken ...
        bob, shared = _dial(cfg, "bob"), _dial(cfg, "client")  # ... not anyone else's
        assert p0.listener.connections_of("alice") == 1
        bob.send_msg("info")
        assert bob.recv_msg(10, expect="info").meta["role"] == "p0"

        revoke(cfg, "alice")  # the party re-reads the list: no restart
        _wait_closed(alice, 10)  # its open link is closed ...
        with pytest.raises(LinkRefused, match="certificate of alice was revoked"):
            _dial(cfg, "alice")  # ... and it cannot come back
        for ch in (bob, shared):  # the others are untouched
            ch.send_msg("info")
            assert ch.recv_msg(10, expect="info").kind == "info"
        revoke(cfg, "client")  # the shared certificate is one identity too
        _wait_closed(shared, 10)
        bob.send_msg("info")
        assert bob.recv_msg(10, expect="info").kind == "info"
        bob.close()
        assert "client was revoked" in cluster_status(cfg)["p0"]  # `cluster status` ...
        assert cluster_status(cfg, "carol")["p0"]["role"] == "p0"  # ... --client carol
    finally:
        s.close()


def test_a_revocation_list_not_signed_by_the_ca_is_ignored(tmp_path, caplog):
    cfg = init_local(tmp_path, timeout_s=5.0)
    add_client(cfg, "alice")
    other = init_local(tmp_path / "other")
    add_client(other, "alice")
    revoke(other, "alice")  # another cluster's CA signed this one
    cfg.crl.write_bytes(other.crl.read_bytes())
    s = Servers(cfg)
    try:
        s.start("p0")
        ch = _dial(cfg, "alice")  # not locked out by a list the CA did not sign
        ch.close()
        assert "not signed by this cluster's CA" in caplog.text
    finally:
        s.close()


def test_message_rate_is_paced_per_identity(tmp_path):
    cfg = init_local(tmp_path, timeout_s=5.0, client_rate=4.0, client_burst=2)
    add_client(cfg, "bob")
    s = Servers(cfg)
    try:
        s.start("p0")
        a1, a2, bob = _dial(cfg, "client"), _dial(cfg, "client"), _dial(cfg, "bob")
        t0 = time.monotonic()
        for _ in range(6):  # 12 from one identity over two links: 2 at once, then 4 a second
            a1.send_msg("info")
            a2.send_msg("info")
        bob.send_msg("info")  # another identity is not held up by it
        assert bob.recv_msg(10, expect="info").kind == "info"
        assert time.monotonic() - t0 < 1.5
        for ch in (a1, a2):
            for _ in range(6):
                ch.recv_msg(10, expect="info")
        assert time.monotonic() - t0 > 2.2  # (12 - 2) / 4 s, less scheduling slack
        for ch in (a1, a2, bob):
            ch.close()
    finally:
        s.close()


# -- waiting requests and bytes, per identity ---------------------------------------------------
@pytest.fixture
def limited(tmp_path):
    """A cluster with clients alice and bob and the given [serving] values. P1 holds a
    request until P0 announces it, so requests sent to P1 alone stay waiting there."""
    started = []

    def start(**serving) -> Servers:
        serving = {"client_timeout_s": 60, **serving}
        cfg = init_local(tmp_path, timeout_s=5.0, stock=1, **serving)
        for name in ("alice", "bob"):
            add_client(cfg, name)
        s = Servers(cfg)
        started.append(s)
        for role in ("p0", "p1", "dealer"):
            s.start(role)
        return s

    try:
        yield start
    finally:
        for s in started:
            s.close()


def _flood_p1(client: Client, n: int, rows: int = 1) -> list[str]:
    """Send `n` requests to P1 only; the failures they got, by message."""
    p1 = client._connect()["p1"]
    share = np.zeros((rows, 1, 28, 28), np.uint64)
    plan = client._interface()["plan_hash"]
    for _ in range(n):
        p1.send_msg("request", {"rid": secrets.token_hex(16), "rows": rows, "plan": plan}, [share])
    failed = []
    try:
        while True:
            _, msg = client._next(1.5)
            if msg.kind == "failed":
                failed.append(msg.meta["msg"])
    except MpccError:
        return failed


def test_waiting_requests_are_limited_per_identity(limited, mlp, ort_logits):
    s = limited(client_queue=3)
    s.deploy(*mlp)
    X, ref = ort_logits
    with Client(s.cfg, identity="alice") as a1, Client(s.cfg, identity="alice") as a2:
        # two links of one identity share its limit: 2 + 2 > client_queue = 3
        assert _flood_p1(a1, 2) == []
        failed = _flood_p1(a2, 2)
        assert len(failed) == 1 and "client alice has 3 requests waiting" in failed[0]
        with Client(s.cfg, identity="bob") as bob:  # another identity is served
            check(bob.predict(X[:4]), ref[:4])


def test_bytes_waiting_are_limited_per_identity(limited, mlp):
    s = limited(client_queue_mb=0.015)
    s.deploy(*mlp)
    with Client(s.cfg, identity="alice") as a:
        # a 4-row share is 25 KB: over client_queue_mb (15 KB) alone; 6 KB 1-row ones fit twice
        failed = _flood_p1(a, 1, rows=4)
        assert len(failed) == 1 and "client alice has more than 0.015 MB waiting" in failed[0]
        failed = _flood_p1(a, 3)
        assert len(failed) == 1 and "MB waiting" in failed[0]


def test_p1_expires_requests_p0_never_announces(limited, mlp):
    """A request sent to P1 alone is never announced by P0; P1 fails it after the request
    timeout (client_timeout_s) with a clear error, which frees its place in the identity's
    limit. Without the expiry such requests wait at P1 for ever and, once client_queue is
    full, every further request of the identity is refused."""
    s = limited(client_queue=2, client_timeout_s=1.0)
    s.deploy(*mlp)
    share = np.zeros((1, 1, 28, 28), np.uint64)
    with Client(s.cfg, identity="alice") as a:
        p1, plan = a._connect()["p1"], a._interface()["plan_hash"]
        for _ in range(2):  # the second round fits only if the first freed its places
            t0 = time.monotonic()
            for _ in range(2):
                meta = {"rid": secrets.token_hex(16), "rows": 1, "plan": plan}
                p1.send_msg("request", meta, [share])
            failed = []
            while len(failed) < 2:
                _, msg = a._next(10)
                failed.append((msg.kind, msg.meta.get("msg"), time.monotonic() - t0))
            for kind, why, after in failed:
                assert (kind, why) == ("failed", "P1: P0 did not schedule this request in time")
                assert after >= 1.0  # not before the request timeout
            assert not s.parties["p1"]._pending
