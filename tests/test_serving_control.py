"""The control plane on the party's event loop: open client links cost the party no thread.

Each client link used to hold three threads at a party (its handshake thread, which then ran
the link, the channel's reader, and the outbox's sender); now a greeted link is a task of
the party's control loop (`controlloop`, `controllink`). The clients here are plain blocking
TLS sockets, so the test process's thread count is the party's.
"""

from __future__ import annotations

import gc
import logging
import socket
import ssl
import threading
import time

import numpy as np
import pytest

from mpcc.errors import PartyError
from mpcc.serving.controlloop import ControlLoop
from mpcc.serving.frameparser import FrameParser
from mpcc.serving.listener import Listener
from mpcc.serving.local import init_local
from mpcc.serving.party import ComputeParty
from mpcc.serving.tls import TlsChannel
from mpcc.serving.tlscontext import client_context
from mpcc.serving.wire import Message, encode

CLIENTS = 40


def _send(s: ssl.SSLSocket, kind: str, meta: dict) -> None:
    s.sendall(b"".join(bytes(b) for b in encode(kind, meta, [])))


_LEFT: dict[int, list[Message]] = {}  # messages a read completed beyond the one asked for


def _recv(s: ssl.SSLSocket, parser: FrameParser) -> Message:
    left = _LEFT.setdefault(id(parser), [])
    while not left:
        data = s.recv(1 << 16)
        assert data, "the party closed the link"
        left += parser.feed(data)
    return left.pop(0)


def _client(cfg, ctx: ssl.SSLContext) -> tuple[ssl.SSLSocket, FrameParser]:
    """A greeted client link, thread-free on this side."""
    s = ctx.wrap_socket(socket.create_connection(cfg.address("p0"), timeout=10))
    parser = FrameParser(1 << 20)
    _LEFT.pop(id(parser), None)  # an id an earlier parser had
    _send(s, "hello", {"link": "client", "version": 1})
    assert _recv(s, parser).kind == "welcome"
    return s, parser


def _threads_settle(at_most: int, within: float = 5.0) -> int:
    """The thread count, once it is at most `at_most` (or after `within` s)."""
    end = time.monotonic() + within
    while threading.active_count() > at_most and time.monotonic() < end:
        time.sleep(0.05)
    return threading.active_count()


@pytest.fixture
def p0(tmp_path):
    cfg = init_local(tmp_path, max_connections=64, client_connections=64, timeout_s=5.0)
    party = ComputeParty(cfg, "p0")
    party.start()
    assert party.kernels_ready.wait(120)
    try:
        yield cfg, party
    finally:
        party.close()


def test_open_client_links_cost_the_party_no_thread(p0):
    cfg, party = p0
    ctx = client_context(cfg, "client")
    links = [_client(cfg, ctx)]  # the control loop and its first link are up
    base = _threads_settle(0, within=1.0)
    try:
        for _ in range(CLIENTS):
            links.append(_client(cfg, ctx))
        for s, _ in links:  # every link is served: each asks, each is answered
            _send(s, "info", {})
        for s, parser in links:
            assert _recv(s, parser).kind == "info"
        assert len(party._outboxes) == CLIENTS + 1
        # before: about three more threads per link (120 here)
        assert _threads_settle(base + 2) <= base + 2, threading.enumerate()
        gc.collect()  # nor a channel (and its read buffer) left behind by the move to the loop
        assert not [o for o in gc.get_objects() if isinstance(o, TlsChannel)]
    finally:
        for s, _ in links:
            s.close()
    end = time.monotonic() + 5
    while len(party._outboxes) and time.monotonic() < end:
        time.sleep(0.05)
    assert len(party._outboxes) == 0  # each task ended its link
    assert party.listener.connections_of("client") == 0  # and gave its slot back


def test_messages_sent_with_the_hello_survive_the_move_to_the_loop(p0):
    """What the channel read before the link moved (here, a request in the same write as the
    hello) is answered from the loop: the parser's state and the unread messages move too."""
    cfg, _ = p0
    s = client_context(cfg, "client").wrap_socket(
        socket.create_connection(cfg.address("p0"), timeout=10)
    )
    parser = FrameParser(1 << 20)
    _LEFT.pop(id(parser), None)
    hello = encode("hello", {"link": "client", "version": 1}, [])
    s.sendall(b"".join(bytes(b) for b in [*hello, *encode("info", {}, [])]))
    try:
        assert _recv(s, parser).kind == "welcome"
        assert _recv(s, parser).kind == "info"
    finally:
        s.close()


def test_a_link_handed_over_late_is_welcomed_at_once(p0, monkeypatch):
    """A party busy elsewhere (loading its kernels, under load) may take a while between a
    link's hello and its move to the loop. The channel must not start reading the socket
    meanwhile: its reader would sit in a wait for data the client sends only after the
    welcome, the move would wait for it, and past `ADOPT_WAIT_S` the link was closed with
    no reason given ("p0 did not accept the deploy link: the connection was closed", seen
    in CI right after a party started)."""
    from mpcc.serving import controllink

    cfg, party = p0
    monkeypatch.setattr(controllink, "ADOPT_WAIT_S", 0.3)
    admit = Listener._admit

    def slow_admit(self, ch, is_party):
        time.sleep(0.4)  # longer than the consumers' read lease
        return admit(self, ch, is_party)

    monkeypatch.setattr(Listener, "_admit", slow_admit)
    t0 = time.monotonic()
    s, parser = _client(cfg, client_context(cfg, "client"))
    try:
        assert time.monotonic() - t0 < 3.0  # (the old wait was 1-2 s, then a failure)
        _send(s, "info", {})
        assert _recv(s, parser).kind == "info"
    finally:
        s.close()


def test_a_link_that_cannot_move_to_the_loop_is_told_why(p0, monkeypatch):
    """A greeted link the party fails to take is told why, not just closed."""
    from mpcc.serving.controllink import ControlLink
    from mpcc.serving.links import dial

    cfg, _ = p0

    def fail(ch, control):
        raise PartyError("the loop is gone")

    monkeypatch.setattr(ControlLink, "adopt", staticmethod(fail))
    with pytest.raises(PartyError, match="could not take the link: the loop is gone"):
        dial(cfg, client_context(cfg, "client"), "p0", me="client", link="client")


def test_a_client_that_does_not_read_is_cut_off_while_others_are_served(p0):
    cfg, party = p0
    ctx = client_context(cfg, "client")
    flooder, _ = _client(cfg, ctx)
    info = b"".join(bytes(b) for b in encode("info", {}, [])) * 1000

    def flood() -> None:  # asks for `info` as fast as it can, reads nothing
        try:
            for _ in range(100):
                flooder.sendall(info)
        except OSError:
            pass

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    try:
        other, parser = _client(cfg, ctx)
        for _ in range(5):  # another client is answered at once meanwhile
            t0 = time.monotonic()
            _send(other, "info", {})
            assert _recv(other, parser).kind == "info"
            assert time.monotonic() - t0 < 1.0
            time.sleep(0.2)
        end = time.monotonic() + 10  # the flooder's link is closed: its answers pile up
        while len(party._outboxes) > 1 and time.monotonic() < end:
            time.sleep(0.05)
        assert len(party._outboxes) == 1
        other.close()
    finally:
        flooder.close()
        t.join(5)


def test_a_send_that_makes_no_progress_closes_the_link(tmp_path):
    """A coroutine handler's link (here a bare listener's): a peer that stops reading stalls
    the sends; after `timeout` s without progress the link closes and frees its slot."""
    cfg = init_local(tmp_path, timeout_s=5.0)
    got: dict = {}
    done = threading.Event()

    async def blast(link, hello) -> None:
        await link.send_msg("welcome", {"role": "p0"})
        link.timeout = 0.5
        try:
            while True:
                await link.send_msg("blob", {}, [np.zeros(1 << 20, np.uint8)])
        except PartyError:
            got["why"] = link.closed
        finally:
            done.set()

    log = logging.getLogger("mpcc.serving.test-p0")
    control = ControlLoop("test", log)
    ls = Listener(cfg, "p0", {"client": ({"client"}, blast)}, log, control)
    ls.start()
    try:
        s, _ = _client(cfg, client_context(cfg, "client"))  # then reads nothing
        try:
            t0 = time.monotonic()
            assert done.wait(10)
            assert got["why"] == "send stalled"
            assert time.monotonic() - t0 < 5
            assert ls.connections_of("client") == 0
        finally:
            s.close()
    finally:
        ls.close()
        control.close()


def test_a_link_greeted_after_the_loop_stopped_is_closed_and_frees_its_slot(tmp_path):
    """A party stopping: a client greeted just after its control loop closed is closed at
    once (its handler never runs), not left open with its connection slot until exit."""
    cfg = init_local(tmp_path, timeout_s=5.0)
    ran = threading.Event()

    async def serve(link, hello) -> None:
        ran.set()

    log = logging.getLogger("mpcc.serving.test-p0")
    control = ControlLoop("test", log)
    ls = Listener(cfg, "p0", {"client": ({"client"}, serve)}, log, control)
    ls.start()
    control.close()
    try:
        s = client_context(cfg, "client").wrap_socket(
            socket.create_connection(cfg.address("p0"), timeout=10)
        )
        try:
            s.settimeout(3.0)
            _send(s, "hello", {"link": "client", "version": 1})
            t0 = time.monotonic()
            try:
                while s.recv(1 << 16):
                    pass
            except (ssl.SSLError, OSError):
                pass  # the party closed the link, with or without TLS's close_notify
            assert time.monotonic() - t0 < 2.5, "the link stayed open"
        finally:
            s.close()
        deadline = time.monotonic() + 2
        while ls.connections_of("client") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ls.connections_of("client") == 0
        assert not ran.is_set()
    finally:
        ls.close()


def test_a_coroutine_spawned_on_a_closed_loop_is_dropped_unrun():
    control = ControlLoop("test", logging.getLogger("mpcc.serving.test"))
    control.close()
    ran, dropped = [], []

    async def body() -> None:
        ran.append(1)

    coro = body()
    control.spawn(coro, on_drop=lambda: dropped.append(1))
    assert dropped == [1] and not ran
    assert coro.cr_frame is None  # closed: no "never awaited" warning later
