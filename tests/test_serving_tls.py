"""TLS links, frames and cluster credentials (no party processes)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import ssl
import stat
import struct
import threading
import time

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mpcc.errors import MpccError, PartyError
from mpcc.runtime.transport import local_link
from mpcc.serving import config as cfgmod
from mpcc.serving.certs import ROLES, check_expiry, init_ca, issue, write_role
from mpcc.serving.frameparser import FrameParser
from mpcc.serving.links import dial, greet
from mpcc.serving.local import free_port
from mpcc.serving.tls import TlsChannel
from mpcc.serving.tlscontext import client_context, server_context
from mpcc.serving.tlsstream import LinkRefused
from mpcc.serving.wire import FRAME_HEAD, MAGIC, FrameError, decode_body, encode


def test_free_ports_lie_below_the_ephemeral_range_and_apart() -> None:
    """Outgoing connections take their ports from the ephemeral range, so a test server's
    port lies below it (one once went to a connection before its server listened)."""
    from mpcc.serving.local import LOW_PORT, _ephemeral_low

    taken: set[int] = set()
    for _ in range(20):
        port = free_port(taken=taken)
        assert LOW_PORT <= port < _ephemeral_low() and port not in taken
        taken.add(port)


def make_cluster(d, **validity) -> cfgmod.ClusterConfig:
    """A cluster on free loopback ports; `validity`: init_ca's `days` and `not_before`."""
    init_ca(d, "test", **validity)
    taken: set[int] = set()
    for _ in cfgmod.PARTIES:
        taken.add(free_port(taken=taken))
    addrs = {r: ("127.0.0.1", p) for r, p in zip(cfgmod.PARTIES, sorted(taken), strict=True)}
    (d / "cluster.toml").write_text(cfgmod.render("test", addrs))
    return cfgmod.load(d / "cluster.toml").with_serving(timeout_s=2.0, max_frame_mb=1.0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    return make_cluster(tmp_path_factory.mktemp("cluster"))


def test_credentials_and_config(cluster):
    d = cluster.path.parent
    for r in ROLES:
        assert stat.S_IMODE(os.stat(d / f"{r}.key").st_mode) == 0o600
        assert (d / f"{r}.crt").is_file()
    assert stat.S_IMODE(os.stat(d / "ca.key").st_mode) == 0o600
    assert cluster.address("p0")[0] == "127.0.0.1"
    assert cluster.credential("dealer")[0].name == "dealer.crt"
    assert cfgmod.parse_address("[::1]:80") == ("::1", 80)
    with pytest.raises(cfgmod.ConfigError):
        cfgmod.parse_address("nohost")


class Server:
    """A one-connection TLS server for `role` that greets with the given rules."""

    def __init__(self, cfg, role, allowed, delay_s=0.0):
        self.cfg, self.allowed, self.delay_s = cfg, allowed, delay_s
        self.sock = socket.create_server(cfg.address(role))
        self.ctx = server_context(cfg, role)
        self.role = role
        self.result: dict = {}
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        conn, _ = self.sock.accept()
        try:
            ch = TlsChannel(
                conn,
                self.ctx,
                server=True,
                name=self.role,
                timeout=2.0,
                max_frame_bytes=self.cfg.serving.max_frame_bytes,
            )
            greet(ch, self.allowed, 2.0)
            ch.send_msg("welcome")
            self.result["ch"] = ch
            msg = ch.recv_msg(2.0)
            self.result["msg"] = msg
            time.sleep(self.delay_s)
            ch.send(msg.arrays)  # echo as a data message
        except Exception as e:  # noqa: BLE001 - inspected by the test
            self.result["error"] = e

    def close(self):
        self.thread.join(timeout=5)
        self.sock.close()
        if "ch" in self.result:
            self.result["ch"].close()


def test_roundtrip_and_accounting(cluster):
    srv = Server(cluster, "p0", {"client": {"client"}})
    ch, _ = dial(cluster, client_context(cluster, "client"), "p0", me="client", link="client")
    assert ch.peer_role == "p0"
    x = np.arange(1000, dtype=np.uint64)
    y = np.ones((3, 4), dtype=np.float64)
    ch.send_msg("q", {"a": 1}, [x, y])
    back = ch.recv()
    srv.close()
    assert srv.result["msg"].meta == {"a": 1}
    assert np.array_equal(back[0], x) and np.array_equal(back[1], y)
    assert back[0].flags.writeable
    # payload is counted as in the in-process transport; the wire adds framing and TLS
    assert ch.traffic.bytes_received == x.nbytes + y.nbytes
    assert ch.wire.received > ch.traffic.bytes_received
    assert ch.wire.handshake > 0
    ch.close()


def test_payload_accounting_matches_the_in_process_link(cluster):
    srv = Server(cluster, "p0", {"peer": {"p1"}})
    ch, _ = dial(cluster, client_context(cluster, "p1"), "p0", me="p1", link="peer")
    arrays = [np.arange(12, dtype=np.uint64).reshape(3, 4), np.zeros(5, dtype=np.uint8)]
    ch.send(arrays)
    echoed = ch.recv()
    srv.close()
    l0, l1 = local_link("p1", "p0")
    l0.send(arrays)
    l1.send(l1.recv())
    assert [a.tolist() for a in l0.recv()] == [a.tolist() for a in echoed]
    assert ch.traffic == l0.traffic  # same payload bytes and messages as in process
    assert ch.wire.sent > ch.traffic.bytes_sent  # framing and TLS come on top
    ch.close()


@pytest.mark.parametrize("delay_s", [0.0, 0.05])
def test_a_round_answered_at_once_or_late_arrives_whole(cluster, delay_s):
    srv = Server(cluster, "p0", {"peer": {"p1"}}, delay_s=delay_s)
    ch, _ = dial(cluster, client_context(cluster, "p1"), "p0", me="p1", link="peer")
    x = np.arange(50_000, dtype=np.uint64)
    t0 = time.monotonic()
    ch.send([x])
    (back,) = ch.recv()
    srv.close()
    assert np.array_equal(back, x)
    assert time.monotonic() - t0 >= delay_s
    ch.close()


def test_a_detached_stream_still_says_close_notify(cluster):
    """`close_notify` hands back TLS's alert to send even though the peer has not closed
    yet (unwrap raises once it has written the alert)."""
    srv = Server(cluster, "p0", {"client": {"client"}})
    ch, _ = dial(cluster, client_context(cluster, "client"), "p0", me="client", link="client")
    ch.send_msg("q", {}, [np.arange(3, dtype=np.uint64)])
    ch.recv()
    link = ch.detach()
    assert len(link.stream.close_notify()) > 0
    with pytest.raises(PartyError, match="detached"):
        ch.send_msg("q")
    link.stream.close(notify=False)
    srv.close()


def test_wrong_role_is_refused(cluster):
    srv = Server(cluster, "p0", {"client": {"client"}})
    with pytest.raises(LinkRefused, match="role 'dealer' may not open a client link"):
        dial(cluster, client_context(cluster, "dealer"), "p0", me="dealer", link="client")
    srv.close()
    assert isinstance(srv.result["error"], LinkRefused)


def test_server_of_wrong_role_is_refused(cluster):
    # the client dials "p0" but finds a certificate for p1 at that address
    srv = Server(cluster, "p0", {"client": {"client"}})
    srv.ctx = server_context(cluster, "p1")
    with pytest.raises(LinkRefused, match="certificate is for 'p1'"):
        dial(cluster, client_context(cluster, "client"), "p0", me="client", link="client")
    srv.close()


def test_no_client_certificate_is_refused(cluster):
    srv = Server(cluster, "p0", {"client": {"client"}})
    with pytest.raises(PartyError, match="(?i)certificate"):
        dial(cluster, client_context(cluster, None), "p0", me="client", link="client")
    srv.close()
    assert "certificate" in str(srv.result["error"]).lower()


def test_other_ca_is_refused(cluster, tmp_path):
    init_ca(tmp_path, "other", roles=("client",))
    srv = Server(cluster, "p0", {"client": {"client"}})
    other = client_context(cluster, None, cert=tmp_path / "client.crt", key=tmp_path / "client.key")
    with pytest.raises(PartyError):
        dial(cluster, other, "p0", me="client", link="client")
    srv.close()
    assert "error" in srv.result


def test_tls13_only(cluster):
    ctx = client_context(cluster, "client")
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert server_context(cluster, "p0").verify_mode == ssl.CERT_REQUIRED


def test_oversized_frame_closes_the_link(cluster):
    srv = Server(cluster, "p0", {"client": {"client"}})
    ch, _ = dial(cluster, client_context(cluster, "client"), "p0", me="client", link="client")
    with pytest.raises(PartyError):  # 2 MiB > the 1 MiB limit: the server hangs up
        ch.send_msg("big", {}, [np.zeros(2**18, dtype=np.uint64)])
        ch.recv_msg(2.0)
    srv.close()
    assert "exceeds the limit" in str(srv.result["error"])
    ch.close()


def test_frame_parser_rejects_malformed():
    p = FrameParser(1 << 20)
    bufs = encode("k", {"x": [1, 2]}, [np.arange(5, dtype=np.uint64), np.zeros((2, 0), np.uint8)])
    raw = b"".join(bytes(b) for b in bufs)
    # byte by byte: one message at the end
    msgs = [m for i in range(len(raw)) for m in p.feed(raw[i : i + 1])]
    assert len(msgs) == 1 and msgs[0].meta == {"x": [1, 2]} and msgs[0].arrays[1].shape == (2, 0)
    with pytest.raises(FrameError, match="bad magic"):
        FrameParser(1 << 20).feed(b"XXXX" + bytes(8))
    with pytest.raises(FrameError, match="exceeds"):
        FrameParser(1 << 20).feed(FRAME_HEAD.pack(MAGIC, 1 << 30))
    body = bytearray(raw[FRAME_HEAD.size :])
    with pytest.raises(FrameError):
        decode_body(body + b"x")  # trailing bytes
    with pytest.raises(FrameError):
        decode_body(body[:-1])  # short
    bad = struct.pack("<I", 5) + b"nope!"
    with pytest.raises(FrameError, match="JSON"):
        decode_body(bytearray(bad))
    h = b'{"k":"a","m":{},"a":[["|O",[1]]]}'
    with pytest.raises(FrameError, match="array"):
        decode_body(bytearray(struct.pack("<I", len(h)) + h + bytes(8)))


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_deeply_nested_header_is_a_frame_error(depth):
    # json raises RecursionError on deep nesting; it must surface as a FrameError (which
    # closes the one link), not escape and kill the link's reader thread
    h = b'{"k":"a","m":' + b"[" * depth + b"]" * depth + b',"a":[]}'
    body = struct.pack("<I", len(h)) + h
    with pytest.raises(FrameError, match="JSON"):
        decode_body(bytearray(body))
    frame = FRAME_HEAD.pack(MAGIC, len(body)) + body
    with pytest.raises(FrameError, match="JSON"):
        FrameParser(1 << 22).feed(frame)


def test_handshake_has_a_deadline(cluster):
    # a server that accepts and then says nothing: the dialer gives up at its deadline
    with socket.create_server(cluster.address("p1")) as silent:
        t0 = time.monotonic()
        with pytest.raises(PartyError, match="did not finish within 0.5 s"):
            dial(cluster, client_context(cluster, "p0"), "p1", me="p0", link="peer", timeout=0.5)
        assert time.monotonic() - t0 < 1.5
        silent.accept()[0].close()


LONG_AGO = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)


def test_expired_certificates_are_named(tmp_path):
    # every certificate, the CA's included, expired nine days ago: the dialer finds the
    # server's expired; the server only hears the dialer's alert
    cfg = make_cluster(tmp_path, days=1, not_before=LONG_AGO)
    srv = Server(cfg, "p0", {"client": {"client"}})
    with pytest.raises(PartyError) as err:
        dial(cfg, client_context(cfg, "client"), "p0", me="client", link="client")
    srv.close()
    assert "CERTIFICATE_VERIFY_FAILED: certificate has expired" in str(err.value)
    assert "run `mpcc cluster init` again and distribute the new files" in str(err.value)
    assert "the peer says this side's certificate or its CA has expired" in str(srv.result["error"])


def test_expired_client_certificate_is_named(tmp_path):
    # only the client's certificate expired: now the server finds it so, and the client
    # hears the server's alert
    cfg = make_cluster(tmp_path / "c")
    d = cfg.path.parent
    ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    write_role(d, "client", *issue("client", ca_key, ca_cert, "test", 1, LONG_AGO))
    srv = Server(cfg, "p0", {"client": {"client"}})
    with pytest.raises(PartyError, match="the peer says this side's certificate .* has expired"):
        dial(cfg, client_context(cfg, "client"), "p0", me="client", link="client")
    srv.close()
    assert "certificate has expired; run `mpcc cluster init`" in str(srv.result["error"])


def test_party_start_checks_certificate_expiry(tmp_path, caplog):
    expired = make_cluster(tmp_path / "old", days=1, not_before=LONG_AGO)
    with pytest.raises(cfgmod.ConfigError, match="p0 certificate .* expired on .*cluster init"):
        check_expiry(expired, "p0")
    soon = make_cluster(tmp_path / "soon", days=20)
    with caplog.at_level(logging.WARNING, logger="mpcc.serving.certs"):
        check_expiry(soon, "dealer")
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and "dealer certificate" in warned[0] and "CA" in warned[1], warned
    assert all("in 19 days" in w and "cluster init" in w for w in warned)
    caplog.clear()
    check_expiry(make_cluster(tmp_path / "fresh", days=31), "p1")
    assert not caplog.records
    with pytest.raises(MpccError, match="1 to 36500 days"):
        init_ca(tmp_path / "none", "test", days=0)


def test_an_array_spec_of_the_wrong_type_is_a_frame_error():
    # found by hypothesis (test_serving_properties): a dtype given as a list raised TypeError
    # (unhashable), past the FrameError handling
    h = json.dumps({"k": "x", "m": {}, "a": [[["<u8"], [1]]]}).encode()
    with pytest.raises(FrameError, match="describes an array badly"):
        decode_body(bytearray(struct.pack("<I", len(h)) + h + bytes(8)))
