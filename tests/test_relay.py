"""The WAN bed's delay relay (`mpcc.bench.relay`) on loopback, no namespaces needed: it holds
each chunk the one-way delay in each direction, keeps every byte in order under backpressure,
and passes each end of stream on."""

from __future__ import annotations

import hashlib
import socket
import threading
import time

import numpy as np

from mpcc.bench import relay


def _echo_server() -> tuple[socket.socket, tuple[str, int]]:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while True:
            try:
                conn, _ = ls.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return ls, ls.getsockname()


def _relay_to(upstream: tuple[str, int], delay_s: float, limit: int) -> tuple[str, int]:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    relay._DELAY[0] = delay_s
    threading.Thread(target=relay._serve, args=(ls, upstream, limit), daemon=True).start()
    return ls.getsockname()


def test_relay_delays_each_way_and_keeps_every_byte():
    echo, up = _echo_server()
    addr = _relay_to(up, 0.02, limit=1 << 20)
    try:
        with socket.create_connection(addr) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rtts = []
            for _ in range(5):
                t0 = time.perf_counter()
                s.sendall(b"ping")
                assert s.recv(16) == b"ping"
                rtts.append(time.perf_counter() - t0)
            assert min(rtts) >= 0.04  # 20 ms each way
            assert min(rtts) < 0.04 + 0.03, rtts  # not much more (the machine may be busy)
            # 24 MB through a 1 MB limit per direction: every byte, in order, then the end
            data = np.random.default_rng(0).integers(0, 256, 24 << 20, np.uint8).tobytes()
            got = hashlib.sha256()
            n = [0]

            def read() -> None:
                while chunk := s.recv(1 << 20):
                    got.update(chunk)
                    n[0] += len(chunk)

            reader = threading.Thread(target=read)
            reader.start()
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            reader.join(60)
            assert not reader.is_alive(), "the end of the stream did not come back"
            assert n[0] == len(data)
            assert got.digest() == hashlib.sha256(data).digest()
    finally:
        echo.close()
