"""Handshake admission (issue 14): a limit per source address on connections in their
handshake, and slots reserved for connections from the parties' own hosts, so that sockets
that open a TCP connection and say nothing delay neither the parties' links nor other hosts.

Before: 16 slots for everyone, with connections queueing in the accept backlog behind them;
a TCP-only attacker could delay a party's link close to its dial timeout. The parties here
are on 127.0.0.1; "other hosts" connect from other loopback addresses (127.0.0.x)."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

from mpcc.errors import PartyError
from mpcc.serving.links import dial
from mpcc.serving.listener import Listener
from mpcc.serving.local import init_local
from mpcc.serving.tls import TlsChannel
from mpcc.serving.tlscontext import client_context
from tests.test_serving_limits import _closed_by_server, _wait_closed

DEADLINE_S = 1.0  # handshake deadline: a full pool drops its oldest after half of it


@pytest.fixture
def listener(tmp_path):
    cfg = init_local(
        tmp_path,
        timeout_s=5.0,
        handshake_timeout_s=DEADLINE_S,
        max_handshakes=4,
        max_handshakes_per_source=2,
    )
    stop = threading.Event()

    def hold(ch: TlsChannel, hello) -> None:
        ch.send_msg("welcome", {"role": "p0"})
        try:
            while not stop.is_set():
                msg = ch.poll(0.1)
                if msg is not None:
                    ch.send_msg("echo", msg.meta)
        except PartyError:
            pass
        finally:
            ch.close("done")

    handlers = {"client": ({"client"}, hold), "peer": ({"p1"}, hold), "deploy": ({"owner"}, hold)}
    ls = Listener(cfg, "p0", handlers, logging.getLogger("mpcc.serving.test-p0"))
    ls.start()
    try:
        yield cfg, ls
    finally:
        stop.set()
        ls.close()


def _from(cfg, host: str) -> socket.socket:
    return socket.create_connection(cfg.address("p0"), timeout=5, source_address=(host, 0))


def test_one_source_holds_at_most_its_share_of_the_slots(listener, caplog):
    cfg, ls = listener
    caplog.set_level(logging.WARNING)
    socks = [_from(cfg, "127.0.0.9") for _ in range(8)]
    try:
        time.sleep(0.3)
        closed = [s for s in socks if _closed_by_server(s)]
        assert len(closed) == 6  # closed at once: the source has 2 in their handshake
        assert ls.slots.held("127.0.0.9") == 2
        assert "max_handshakes_per_source" in caplog.text
        other = _from(cfg, "127.0.0.10")  # another host still gets a slot at once
        time.sleep(0.3)
        assert not _closed_by_server(other)
        assert ls.slots.held("127.0.0.10") == 1
        other.close()
    finally:
        for s in socks:
            s.close()


def test_party_links_get_through_at_once_while_other_hosts_flood_the_slots(listener):
    cfg, ls = listener
    # 20 hosts x 2 silent sockets: the shared pool (4 slots) is full with 36 waiting, which
    # before took ~40 x 0.5 s / 4 = 5 s to drain: a party link dialling behind them waited
    # for that, up to its 5 s dial timeout
    flood = [_from(cfg, f"127.0.0.{10 + i}") for i in range(20) for _ in range(2)]
    try:
        time.sleep(0.3)
        for role, link in (("p1", "peer"), ("client", "client")):  # from a party's host
            t0 = time.monotonic()
            ch, _ = dial(cfg, client_context(cfg, role), "p0", me=role, link=link)
            ch.send_msg("ping", {"n": 1})
            assert ch.recv_msg(5.0).meta == {"n": 1}
            ch.close()
            assert time.monotonic() - t0 < 1.5, role  # a handshake's time, no queueing
        # and the flood itself is dropped in turn, oldest first, at the deadline at most
        took = _wait_closed(flood[0], DEADLINE_S + 3)
        assert took < DEADLINE_S + 1.5
    finally:
        for s in flood:
            s.close()


def test_client_headers_are_capped_lower_than_party_headers(listener):
    # a client's header holds a few fields; a party's may hold a whole public plan
    from mpcc.serving.wire import CLIENT_HEADER_MAX

    cfg, _ = listener
    big = {"x": "y" * (CLIENT_HEADER_MAX + 100)}
    peer, _ = dial(cfg, client_context(cfg, "p1"), "p0", me="p1", link="peer")
    peer.send_msg("ping", big)
    assert peer.recv_msg(5.0).meta == big
    peer.close()
    client, _ = dial(cfg, client_context(cfg, "client"), "p0", me="client", link="client")
    client.send_msg("ping", big)
    with pytest.raises(PartyError, match="closed"):
        client.recv_msg(5.0)
