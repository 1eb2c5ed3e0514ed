"""The delay relay of the WAN test bed (`mpcc.bench.wan.WanBed`): a process in the hub
namespace that forwards TCP connections and holds every chunk a one-way delay in each
direction (this kernel has no `netem`).

    python -m mpcc.bench.relay --delay-ms 5 HUB:PORT=PARTY:PORT ...

For each route it listens on the hub's address and forwards each connection to the party,
one thread per direction: a reader stamps each chunk with its due time and queues it (it
stops reading while `--limit` bytes wait: backpressure), a writer sends whatever is due, in
order. Threads and `time.sleep`, not asyncio: the event loop's epoll waits are rounded up
to whole milliseconds, which would add up to 1 ms to a 5 ms one-way delay. It prints
`ready` once listening, then takes `delay MS` on stdin (answering `ok`) for data arriving
from then on; the end of stdin (the bed is gone) stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading
import time
from collections import deque

from mpcc.serving import config as cfgmod

CHUNK = 1 << 16
_DELAY = [0.0]  # the one-way delay in seconds (the bed may change it between runs)


class _Pipe:
    """One direction of a relayed connection: chunks leave the one-way delay after they
    arrived, in order; the reader stops reading while `limit` bytes wait (backpressure)."""

    def __init__(self, src: socket.socket, dst: socket.socket, limit: int) -> None:
        self.src, self.dst, self.limit = src, dst, limit
        self.queue: deque[tuple[float, bytes]] = deque()
        self.queued = 0
        self.cv = threading.Condition()
        self.done = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.src.recv(CHUNK)
            except OSError:
                data = b""
            with self.cv:
                while self.queued > self.limit:
                    self.cv.wait()
                self.queue.append((time.monotonic() + _DELAY[0], data))
                self.queued += len(data)
                self.cv.notify_all()
            if not data:
                return

    def _write(self) -> None:
        try:
            while True:
                with self.cv:
                    while not self.queue:
                        self.cv.wait()
                    due, data = self.queue[0]
                left = due - time.monotonic()
                if left > 0:
                    time.sleep(left)
                with self.cv:  # everything due by now goes out in one call
                    now, out, eof = time.monotonic(), [], False
                    while self.queue and self.queue[0][0] <= now:
                        _, d = self.queue.popleft()
                        if not d:
                            eof = True
                            break
                        out.append(d)
                    n = sum(map(len, out))
                if out:
                    self.dst.sendall(b"".join(out))
                with self.cv:
                    self.queued -= n
                    self.cv.notify_all()
                if eof:
                    self.dst.shutdown(socket.SHUT_WR)
                    return
        except OSError:
            for s in (self.src, self.dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        finally:
            self.done.set()


def _relay_one(conn: socket.socket, upstream: tuple[str, int], limit: int) -> None:
    try:
        up = socket.create_connection(upstream, timeout=10)
    except OSError:
        conn.close()
        return
    for s in (conn, up):
        s.settimeout(None)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pipes = [_Pipe(conn, up, limit), _Pipe(up, conn, limit)]
    for p in pipes:
        p.start()
    for p in pipes:
        p.done.wait()
    conn.close()
    up.close()


def _serve(listener: socket.socket, upstream: tuple[str, int], limit: int) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_relay_one, args=(conn, upstream, limit), daemon=True).start()


def relay_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mpcc.bench.relay")
    ap.add_argument("--delay-ms", type=float, required=True, help="one-way delay added")
    ap.add_argument("--limit", type=int, default=8 << 20, help="bytes held per direction")
    ap.add_argument("routes", nargs="+", help="LISTEN_HOST:PORT=UPSTREAM_HOST:PORT")
    args = ap.parse_args(argv)
    _DELAY[0] = args.delay_ms / 1e3
    threads = []
    for route in args.routes:
        listen, _, upstream = route.partition("=")
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(cfgmod.parse_address(listen))
        ls.listen(64)
        t = threading.Thread(
            target=_serve,
            args=(ls, cfgmod.parse_address(upstream), args.limit),
            daemon=True,
        )
        threads.append(t)
    for t in threads:
        t.start()
    print("ready", flush=True)
    for line in sys.stdin:  # commands from the bed; its end (the bed is gone) stops us
        cmd, _, arg = line.partition(" ")
        if cmd == "delay":
            _DELAY[0] = float(arg) / 1e3
            print("ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(relay_main())
