"""Serving limits: the handshake deadline, connection pools, and messages split into frames.

A listener with short limits (1 s to finish the TLS handshake and hello, 4 connections in
their handshake, 2 clients) stands up to idle and dribbling sockets; messages larger than
a frame travel as several frames, and a frame over the limit is still refused.
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import ssl
import threading
import time

import numpy as np
import pytest

from mpcc.errors import PartyError
from mpcc.serving.client import Client
from mpcc.serving.config import ConfigError
from mpcc.serving.config import load as load_config
from mpcc.serving.controlloop import ControlLoop
from mpcc.serving.frameparser import FrameParser
from mpcc.serving.links import dial, greet
from mpcc.serving.listener import Listener
from mpcc.serving.local import init_local
from mpcc.serving.owner import deploy_program
from mpcc.serving.party import Outbox
from mpcc.serving.tls import TlsChannel
from mpcc.serving.tlscontext import client_context, server_context
from mpcc.serving.tlsstream import LinkRefused
from mpcc.serving.wire import (
    FRAME_HEAD,
    MAGIC,
    META_HEAD,
    FrameError,
    encode,
    encode_message,
)
from tests.concurrent_clients import close_all

DEADLINE_S = 1.0


# -- the handshake deadline and the connection pools ------------------------------------------
@pytest.fixture
def listener(tmp_path):
    cfg = init_local(
        tmp_path,
        timeout_s=5.0,  # per-step silence: longer than the deadline, so the deadline is what acts
        handshake_timeout_s=DEADLINE_S,
        max_handshakes=4,
        max_connections=2,
    )
    stop = threading.Event()

    def hold(ch: TlsChannel, hello) -> None:  # welcome, then echo until the test ends
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
        yield cfg
    finally:
        stop.set()
        ls.close()


def _connect(cfg) -> socket.socket:
    return socket.create_connection(cfg.address("p0"), timeout=5)


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has hung up (without blocking)."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(4096) == b""
    except OSError:
        return True


def _wait_closed(sock: socket.socket, limit: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if _closed_by_server(sock):
            return time.monotonic() - t0
        time.sleep(0.02)
    raise AssertionError(f"the server kept the connection for {limit} s")


def _client_hello(cfg) -> bytes:
    obj = client_context(cfg, "client").wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO())
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def _dribble(sock: socket.socket, data: bytes, every: float, stop: threading.Event) -> None:
    for b in data:
        if stop.wait(every):
            return
        try:
            sock.send(bytes([b]))
        except OSError:
            return


def test_silent_socket_is_dropped_at_the_deadline(listener, caplog):
    caplog.set_level(logging.WARNING)
    with _connect(listener) as s:
        took = _wait_closed(s, DEADLINE_S + 3)
    assert DEADLINE_S - 0.2 < took < DEADLINE_S + 1.5
    assert "did not finish within" in caplog.text


def test_dribbling_handshake_is_dropped_at_the_deadline(listener):
    stop = threading.Event()
    with _connect(listener) as s:
        t0 = time.monotonic()
        hello = _client_hello(listener)  # a real ClientHello, sent a byte at a time
        t = threading.Thread(target=_dribble, args=(s, hello, 0.2, stop), daemon=True)
        t.start()
        try:
            took = _wait_closed(s, DEADLINE_S + 3)
        finally:
            stop.set()
    assert took < DEADLINE_S + 1.5 and time.monotonic() - t0 < DEADLINE_S + 1.5


def test_dribbling_hello_is_dropped_at_the_deadline(listener, caplog):
    caplog.set_level(logging.WARNING)
    ctx = client_context(listener, "client")
    raw = _connect(listener)
    t0 = time.monotonic()
    with ctx.wrap_socket(raw) as s:  # a complete TLS handshake, then the hello frame, slowly
        frame = b"".join(bytes(b) for b in encode("hello", {"link": "client", "version": 1}, []))
        for b in frame:
            try:
                s.send(bytes([b]))
                s.settimeout(0.2)
                if s.recv(1) == b"":
                    break
            except TimeoutError:
                continue
            except (OSError, ssl.SSLError):
                break
        took = time.monotonic() - t0
    assert took < DEADLINE_S + 1.5
    assert "no hello within" in caplog.text


def test_links_get_through_while_slow_sockets_hold_the_handshake_slots(listener):
    stop = threading.Event()
    idle = [_connect(listener) for _ in range(8)]  # twice the handshake slots
    dribblers = [_connect(listener) for _ in range(2)]
    hello = _client_hello(listener)
    threads = [
        threading.Thread(target=_dribble, args=(s, hello, 0.3, stop), daemon=True)
        for s in dribblers
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)
        for role, link in (("client", "client"), ("p1", "peer"), ("owner", "deploy")):
            t0 = time.monotonic()
            ch, _ = dial(listener, client_context(listener, role), "p0", me=role, link=link)
            ch.send_msg("ping", {"n": 1})
            assert ch.recv_msg(5.0).meta == {"n": 1}
            ch.close()
            assert time.monotonic() - t0 < DEADLINE_S + 1.5, role
    finally:
        stop.set()
        for s in idle + dribblers:
            s.close()


def test_clients_cannot_take_the_party_slots(listener):
    ctx = client_context(listener, "client")
    held = [dial(listener, ctx, "p0", me="client", link="client")[0] for _ in range(2)]
    with pytest.raises(LinkRefused, match="too many client connections"):
        dial(listener, ctx, "p0", me="client", link="client")
    peer, _ = dial(listener, client_context(listener, "p1"), "p0", me="p1", link="peer")
    peer.send_msg("ping", {"n": 2})
    assert peer.recv_msg(5.0).meta == {"n": 2}
    held.pop().close()  # a client leaves: its slot is free once the server sees the close
    deadline = time.monotonic() + 3
    while True:
        try:
            held.append(dial(listener, ctx, "p0", me="client", link="client")[0])
            break
        except LinkRefused:
            assert time.monotonic() < deadline, "the client slot was not released"
            time.sleep(0.05)
    for ch in [*held, peer]:
        ch.close()


def test_config_keys(tmp_path):
    cfg = init_local(
        tmp_path, handshake_timeout_s=2.5, max_handshakes=3, max_frame_mb=1.0, max_message_mb=8.0
    )
    again = load_config(cfg.path)
    assert again.serving.handshake_timeout_s == 2.5 and again.serving.max_handshakes == 3
    assert again.serving.max_message_bytes == 8 << 20
    assert again.with_serving(max_message_mb=0.5).serving.max_message_bytes == 1 << 20


@pytest.mark.parametrize(
    ("key", "value", "range_"),
    [
        ("timeout_s", "inf", "0.1 to 86400"),
        ("timeout_s", "nan", "0.1 to 86400"),
        ("timeout_s", "0.01", "0.1 to 86400"),
        ("client_timeout_s", "1e6", "0.1 to 86400"),
        ("handshake_timeout_s", "-inf", "0.1 to 86400"),
        ("setup_timeout_s", "0", "0.1 to 86400"),
        ("max_frame_mb", "0.001", "0.0625 to 4096"),
        ("max_message_mb", "inf", "0.0625 to 1048576"),
        ("batch_wait_ms", "1e9", "0.001 to 10000"),
        ("stock", "0", "1 to 1000"),
        ("background_nice", "20", "0 to 19"),
        ("background_nice", "-1", "0 to 19"),
        ("max_connections", "10000000", "1 to 100000"),
    ],
)
def test_serving_values_out_of_range_are_refused(tmp_path, key, value, range_):
    cfg = init_local(tmp_path)
    text = cfg.path.read_text()
    line = next(x for x in text.splitlines() if x.startswith(f"{key} = "))
    (tmp_path / "bad.toml").write_text(text.replace(line, f"{key} = {value}"))
    with pytest.raises(ConfigError, match=rf"bad.toml: \[serving\] {key} must be from {range_}"):
        load_config(tmp_path / "bad.toml")


def test_malformed_tables_are_named(tmp_path):
    cfg = init_local(tmp_path)
    text = cfg.path.read_text()
    p0 = next(x for x in text.splitlines() if x.startswith('p0 = "127.0.0.1:'))
    for old, new, why in (
        ('[credentials.p0]\ncert = "p0.crt"\nkey = "p0.key"', '[credentials]\np0 = "x"',
         r'\[credentials.p0\] needs cert = "FILE.crt" and key = "FILE.key", not \'x\''),
        ('cert = "p1.crt"', 'cert = 3', r"\[credentials.p1\] needs cert"),
        (p0, "p0 = 7401", r'\[parties\] needs p0 = "HOST:PORT"'),
        ("[serving]", "[other]", r"no \[serving\] table \(serving = 1\)"),
    ):  # fmt: skip
        assert old in text, old
        bad = text.replace(old, new, 1)
        (tmp_path / "bad.toml").write_text(("serving = 1\n" if new == "[other]" else "") + bad)
        with pytest.raises(ConfigError, match=why):
            load_config(tmp_path / "bad.toml")


# -- messages larger than a frame ---------------------------------------------------------
def _frames(raw: bytes) -> list[int]:
    sizes, off = [], 0
    while off < len(raw):
        magic, n = FRAME_HEAD.unpack_from(raw, off)
        assert magic == MAGIC
        sizes.append(n)
        off += FRAME_HEAD.size + n
    return sizes


def test_large_messages_are_split_into_frames_within_the_limit():
    limit = 5000
    arrays = [
        np.arange(3000, dtype=np.uint64),  # one array larger than a frame
        np.ones(7, np.uint8),
        np.zeros((0, 3), np.uint64),
        np.arange(900, dtype=np.float64).reshape(30, 30),
    ]
    bufs, n = encode_message("bundle", {"q": 3}, arrays, limit)
    raw = b"".join(bytes(b) for b in bufs)
    sizes = _frames(raw)
    assert n == len(sizes) > 2 and max(sizes) <= limit
    p = FrameParser(limit, 1 << 20)
    msgs = [m for i in range(0, len(raw), 777) for m in p.feed(raw[i : i + 777])]
    assert len(msgs) == 1 and p.frames == n
    assert msgs[0].kind == "bundle" and msgs[0].meta == {"q": 3}
    for got, want in zip(msgs[0].arrays, arrays, strict=True):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert msgs[0].arrays[0].flags.writeable
    small, n1 = encode_message("data", {}, [np.ones(10, np.uint64)], limit)  # fits: one frame
    assert n1 == 1 and _frames(b"".join(bytes(b) for b in small)) == [frame_len(small)]
    with pytest.raises(ValueError, match="exceeds the frame limit"):
        encode_message("deploy", {"plan": "x" * limit}, [np.ones(limit, np.uint8)], limit)


def frame_len(bufs) -> int:
    return sum(len(b) if isinstance(b, bytes) else b.nbytes for b in bufs) - FRAME_HEAD.size


def _split(limit=5000):
    bufs, _ = encode_message("x", {}, [np.arange(2000, dtype=np.uint64)], limit)
    raw = b"".join(bytes(b) for b in bufs)
    frames, off = [], 0
    while off < len(raw):
        _, n = FRAME_HEAD.unpack_from(raw, off)
        frames.append(raw[off : off + FRAME_HEAD.size + n])
        off += FRAME_HEAD.size + n
    return frames


def _raw_frame(header: bytes, data: bytes = b"") -> bytes:
    body = META_HEAD.pack(len(header)) + header + data
    return FRAME_HEAD.pack(MAGIC, len(body)) + body


def test_split_messages_are_checked():
    head, *rest = _split()
    ok = FrameParser(5000, 1 << 20)
    assert len([m for f in [head, *rest] for m in ok.feed(f)]) == 1
    with pytest.raises(FrameError, match="exceeds the limit"):  # the total, checked at the head
        FrameParser(5000, 8000).feed(head)
    with pytest.raises(FrameError, match="without a message head"):
        FrameParser(5000, 1 << 20).feed(rest[0])
    with pytest.raises(FrameError, match="out of order"):
        FrameParser(5000, 1 << 20).feed(head + rest[1])
    with pytest.raises(FrameError, match="began before"):
        FrameParser(5000, 1 << 20).feed(head + rest[0] + head)
    with pytest.raises(FrameError, match="longer than its head"):
        p = FrameParser(5000, 1 << 20)
        p.feed(head)
        for i in range(1, len(rest) + 1):  # 4 x 4900 bytes where 16000 were declared
            p.feed(_raw_frame(b'{"c":%d}' % i, bytes(4900)))
    with pytest.raises(FrameError, match="shorter than its head"):
        p = FrameParser(5000, 1 << 20)
        p.feed(head)
        for i in range(1, len(rest) + 1):
            p.feed(_raw_frame(b'{"c":%d}' % i, bytes(8)))
    for n in (b"1", b"99", b"true", b"2.5"):  # 16 bytes in 2 to 17 frames, or it is malformed
        with pytest.raises(FrameError, match="bad number of frames"):
            FrameParser(5000, 1 << 20).feed(
                _raw_frame(b'{"k":"x","m":{},"a":[["<u8",[2]]],"n":%s}' % n)
            )
    with pytest.raises(FrameError, match="carries array bytes"):
        FrameParser(5000, 1 << 20).feed(
            _raw_frame(b'{"k":"x","m":{},"a":[["<u8",[2000]]],"n":5}', bytes(8))
        )
    with pytest.raises(FrameError, match="exceeds the limit"):  # each frame still bounded
        FrameParser(4000, 1 << 20).feed(head + rest[0])


def _stream() -> tuple[bytes, list[tuple[str, dict, list[np.ndarray]]], int]:
    """Several messages on one stream, of every shape the parser handles: one frame with a
    known header (twice), with meta, with a header longer than the parser stages; split
    over frames, also with a long header. Returns the bytes, the messages and the frames."""
    long_meta = {"plan": "x" * (FrameParser.HEADER_MAX + 100)}
    msgs = [
        ("data", {}, [np.arange(5, dtype=np.uint64)]),
        ("data", {}, [np.arange(5, 10, dtype=np.uint64)]),
        ("k", {"q": 1}, [np.ones(3, np.uint8), np.arange(4.0), np.zeros((2, 0), np.float32)]),
        ("big", long_meta, [np.arange(300, dtype=np.int64)]),
        ("split", {}, [np.arange(3000, dtype=np.uint64), np.ones(7, np.uint8)]),
        ("bigsplit", long_meta, [np.arange(40_000, dtype=np.uint64)]),
        ("data", {}, [np.arange(5, dtype=np.uint64)]),
    ]
    raw, frames = b"", 0
    for kind, meta, arrays in msgs:
        limit = 5000 if kind == "split" else 40_000
        bufs, n = encode_message(kind, meta, arrays, limit)
        raw += b"".join(bytes(b) for b in bufs)
        frames += n
    return raw, msgs, frames


def _cuts(n: int, seed: int):
    """Cut points of n bytes, in pieces of 1 byte to a few TLS records."""
    rng = np.random.default_rng(seed)
    off = 0
    while off < n:
        step = int(rng.choice([1, 1, 2, 3, 11, 16, 500, 4099, 16384, 40_000]))
        yield off, min(n, off + step)
        off += step


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frame_parser_reassembles_a_stream_however_it_is_cut(seed):
    raw, want, frames = _stream()
    p = FrameParser(1 << 20, 1 << 20)
    got = [m for a, b in _cuts(len(raw), seed) for m in p.feed(raw[a:b])]
    assert len(got) == len(want) and p.frames == frames
    for m in got:  # each message owns its arrays: a later one wrote into none of them
        for x in m.arrays:
            assert x.flags.writeable
            x += 1
    for m, (kind, meta, arrays) in zip(got, want, strict=True):
        assert m.kind == kind and m.meta == meta
        for x, y in zip(m.arrays, arrays, strict=True):
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y + 1)


@pytest.fixture
def tls_pair(tmp_path):
    """A server channel with a 64 KiB frame limit, and a client dialed to it."""
    cfg = init_local(tmp_path, timeout_s=3.0, max_frame_mb=1 / 16, max_message_mb=4.0)
    lsock = socket.create_server(cfg.address("p0"))
    got: dict = {}

    def serve():
        conn, _ = lsock.accept()
        ch = TlsChannel(
            conn,
            server_context(cfg, "p0"),
            server=True,
            name="p0",
            timeout=3.0,
            max_frame_bytes=cfg.serving.max_frame_bytes,
            max_message_bytes=cfg.serving.max_message_bytes,
        )
        greet(ch, {"peer": {"p1"}}, 3.0)
        ch.send_msg("welcome")
        got["ch"] = ch

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    ch, _ = dial(cfg, client_context(cfg, "p1"), "p0", me="p1", link="peer")
    t.join(5)
    try:
        yield ch, got["ch"]
    finally:
        ch.close()
        got["ch"].close()
        lsock.close()


def test_tls_link_carries_messages_larger_than_a_frame(tls_pair):
    a, b = tls_pair
    big = [np.arange(200_000, dtype=np.uint64), np.ones(100, np.uint8)]  # 1.6 MB > 64 KiB
    frames0 = a.wire.frames_sent
    for _ in range(2):  # both ends send at once, more than the socket buffers hold
        threading.Thread(target=b.send, args=([x + 1 for x in big],), daemon=True).start()
        a.send(big)
        back, mine = a.recv(), b.recv()
        assert all(np.array_equal(x, y) for x, y in zip(mine, big, strict=True))
        assert np.array_equal(back[0], big[0] + 1)
    assert a.wire.frames_sent - frames0 >= 2 * 25
    # payload is counted per message, as in the in-process transport
    assert a.traffic.bytes_sent == 2 * sum(x.nbytes for x in big) and a.traffic.messages_sent == 2
    assert a.wire.sent > a.traffic.bytes_sent


def test_unread_messages_are_held_back_by_tcp_not_queued(tls_pair):
    """A peer that sends far faster than its messages are taken (an `info` flood) fills the
    receiver's inbox only to INBOX_MAX (plus one read's worth): then TCP holds it back.
    Nothing is lost: a consumer that reads on gets every message, in order."""
    from mpcc.serving.tlsstream import CHUNK

    a, b = tls_pair
    n, pad = 30_000, "x" * 1000  # 30 MB: more than the socket buffers hold
    sent = []

    def flood():
        for i in range(n):
            a.send_msg("info", {"i": i, "pad": pad})
            sent.append(i)

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    time.sleep(1.5)  # the receiver takes nothing meanwhile; its background reader reads
    per_read = CHUNK // 1000
    assert len(b._inbox) <= 256 + per_read, len(b._inbox)  # INBOX_MAX + one read
    assert len(sent) < n  # the sender is held back (its socket buffers are full)
    got = [b.recv_msg(3.0).meta["i"] for _ in range(n)]
    t.join(5)
    assert got == list(range(n))


def test_tls_link_refuses_an_oversized_frame_or_message(tls_pair):
    a, b = tls_pair
    a._send_raw(FRAME_HEAD.pack(MAGIC, (1 << 16) + 1))  # a frame over the limit
    with pytest.raises(PartyError, match="exceeds the limit"):
        b.recv_msg(3.0)
    assert "exceeds the limit" in b.closed


def test_tls_link_refuses_a_split_message_over_the_message_limit(tls_pair):
    a, b = tls_pair
    with pytest.raises(PartyError):
        a.send_msg("data", {}, [np.zeros(5 << 20, np.uint8)])  # 5 MiB > 4 MiB
        a.recv_msg(3.0)
    with pytest.raises(PartyError, match="message of 5242880 bytes exceeds the limit"):
        b.recv_msg(3.0)


def test_tls_link_reassembles_frames_cut_across_records(tls_pair):
    """Frames cut anywhere, even a byte per TLS record, arrive whole; wire bytes add up."""
    a, b = tls_pair
    raw, want, frames = _stream()
    b.limit_frames(1 << 16, 1 << 20)
    s0, r0, f0 = a.wire.sent, b.wire.received, b.wire.frames_received
    with a._tls.send_lock:
        for i, j in _cuts(len(raw), 3):
            a._tls.write(raw[i:j])  # one or more TLS records each
    got = [b.recv_msg(3.0) for _ in want]
    for m, (kind, meta, arrays) in zip(got, want, strict=True):
        assert m.kind == kind and m.meta == meta
        assert all(np.array_equal(x, y) for x, y in zip(m.arrays, arrays, strict=True))
    assert b.wire.frames_received - f0 == frames
    assert sum(m.wire_bytes for m in got) == b.wire.received - r0 == a.wire.sent - s0


# -- a cluster whose frames are smaller than its bundles and weights ------------------------------
@pytest.fixture(scope="module")
def mlp(zoo_model):
    from mpcc.compiler.pipeline import compile_onnx

    return compile_onnx(zoo_model("mlp"), (4, 1, 28, 28))


def test_serving_with_frames_smaller_than_bundles_and_weights(tmp_path, mlp, digits_test):
    from mpcc.runtime.cleartext import predict as cleartext_predict
    from mpcc.runtime.cluster import LocalCluster
    from mpcc.serving.dealer import DealerParty
    from mpcc.serving.party import ComputeParty

    prog, weights = mlp
    # 115 KB: below the dealer's bundle (126 KB) but above each of its arrays (110 KB at
    # most), and well below the largest weight (3.1 MB), which is cut into pieces
    cfg = init_local(tmp_path, timeout_s=3.0, stock=2, max_frame_mb=0.11)
    limit = cfg.serving.max_frame_bytes
    parties = [
        (DealerParty if r == "dealer" else ComputeParty)(cfg, r) for r in ("p0", "p1", "dealer")
    ]
    for p in parties:
        p.start()
    try:
        deploy_program(prog, weights, cfg)
        X = digits_test[0][:8]
        with Client(cfg) as c:
            c.wait_ready(30)
            y = c.predict(X)
            r = c.stats.requests[-1]
        ref = cleartext_predict(prog, weights, X)
        assert np.array_equal(y.argmax(1), ref.argmax(1))
        with LocalCluster(prog, weights) as lc:
            lc.predict(X[:4])
            local = lc.stats
        assert r.dealer_bytes == local.dealer_bytes > limit  # the bundle took several frames
        assert r.sent == local.sent and r.rounds == local.rounds
        # an owner (whose messages may be split) still may not send a frame over the limit
        ch, _ = dial(cfg, client_context(cfg, "owner"), "p0", me="owner", link="deploy")
        ch._send_raw(FRAME_HEAD.pack(MAGIC, limit + 1))
        with pytest.raises(PartyError, match="closed"):
            ch.recv_msg(3.0)
        ch.close()
        with Client(cfg) as c:  # and the party keeps serving
            assert np.array_equal(c.predict(X[:4]).argmax(1), ref[:4].argmax(1))
    finally:
        close_all(parties)


def test_the_settings_table_in_the_guide_matches_the_defaults():
    """docs/deployment.md lists every [serving] key with its default."""
    import re
    from dataclasses import fields
    from pathlib import Path

    from mpcc.serving.config import Serving

    doc = (Path(__file__).resolve().parents[1] / "docs" / "deployment.md").read_text()
    for f in fields(Serving):
        row = re.search(rf"^\| `{f.name}` \| ([^|]+) \|", doc, re.MULTILINE)
        assert row, f"docs/deployment.md has no row for [serving] {f.name}"
        assert float(row.group(1)) == getattr(Serving(), f.name), f.name


class _StuckLink:
    """A client link whose sends wait until released (a client that does not read)."""

    peer = "client"

    def __init__(self, control: ControlLoop) -> None:
        self.control = control
        self.release = threading.Event()
        self.closed: str | None = None
        self.sent = 0

    async def send_msgs(self, msgs) -> None:
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        self.sent += len(msgs)

    def close(self, reason: str = "") -> None:
        self.closed = reason


@pytest.fixture
def control():
    loop = ControlLoop("test", logging.getLogger("test"))
    yield loop
    loop.close()


def test_outbox_is_bounded_and_closes_a_link_that_does_not_read(control):
    # issue 14: `info` posted far faster than it is read grew the queue without bound
    link = _StuckLink(control)
    box = Outbox(link, logging.getLogger("test"), max_messages=8, max_bytes=1 << 20)
    for _ in range(8):
        box.post("info", {"x": 1})
    assert link.closed is None and box.waiting[0] == 8
    box.post("info", {"x": 1})  # the ninth: over the bound
    assert link.closed == "the client does not read its answers"
    assert box.waiting[0] == 8  # the refused message was not queued
    link.release.set()
    box.close(5)
    assert box.waiting == (0, 0)


def test_outbox_bounds_bytes_too(control):
    link = _StuckLink(control)
    box = Outbox(link, logging.getLogger("test"), max_messages=100, max_bytes=10_000)
    box.post("answer", {}, [np.zeros(1000, np.uint64)])  # 8 KB: fits
    assert link.closed is None
    box.post("answer", {}, [np.zeros(1000, np.uint64)])  # 16 KB: over
    assert link.closed is not None
    link.release.set()
    box.close(5)


def test_an_answer_posted_after_the_outbox_closed_gives_its_bytes_back(control):
    """A client that disconnects just as its answer is posted: the answer is dropped, and
    what it held of the client identity's bound is released (else, race by race, the
    identity's `client_queue_mb` would fill up for good)."""
    from mpcc.serving.admission import Identity

    who = Identity("c", rate=1e6, burst=1000, max_bytes=1 << 20)
    link = _StuckLink(control)
    link.release.set()
    box = Outbox(link, logging.getLogger("test"), account=who)
    box.close(5)  # the sender has stopped
    box.post("answer", {}, [np.zeros(1000, np.uint64)])
    deadline = time.monotonic() + 5
    while box.waiting != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert box.waiting == (0, 0)
    assert who.hold_answer(1 << 20)  # all of the identity's bound is free again
