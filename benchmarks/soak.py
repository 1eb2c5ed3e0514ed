"""Soak: LeNet served by three party processes under steady load, faults and abuse.

For `--duration` seconds (default 600), `--clients` clients (default 16) each send one digit
at a time, continuously. Every `--restart-every` seconds (default 120) P1 is killed with
SIGKILL and started again at once. Meanwhile three clients with certificates of their own
misbehave: one floods `info` requests and reads a little every 0.2 s, one sends real
requests and reads its answers a few hundred bytes a second, one sends malformed frames
(oversized, not JSON, nested 5,000 deep, a request before the hello, bytes that are not TLS).

Every answer is checked against the cleartext interpreter (`mpcc.runtime.cleartext.predict`
with the deployed plan's weights): a logit off by more than `--tolerance` is a wrong answer.
The report gives wrong answers (must be 0); failed requests, grouped by their error message;
the time from each kill until a request sent after it is answered (must be <= 10 s); each
party's RSS growth from /proc/PID/status (per P1 incarnation; must be <= 10%); throughput;
what the abusers met. Writes `benchmarks/results/soak.json` and `soak.md`.

Run: `.venv/bin/python benchmarks/soak.py [--duration 600] [--clients 16] [--restart-every 120]`.
A 60-second run is part of the default tests (tests/test_soak_bench.py).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import secrets
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpcc.errors import MpccError  # noqa: E402
from mpcc.serving.certs import add_client, client_files  # noqa: E402
from mpcc.serving.client import Client  # noqa: E402
from mpcc.serving.links import PROTOCOL_VERSION  # noqa: E402
from mpcc.serving.local import ProcessCluster  # noqa: E402
from mpcc.serving.tlscontext import client_context  # noqa: E402
from mpcc.serving.wire import FRAME_HEAD, MAGIC, META_HEAD, encode  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ROLES = ("p0", "p1", "dealer")
ABUSERS = ("flood_info", "slow_reader", "malformed")
LIMITS = {"wrong": 0, "recovery_s": 10.0, "rss_growth": 0.10}


@dataclass
class Outcome:
    """One legitimate request: when it was sent and answered, and how it ended."""

    client: int
    t0: float
    t1: float
    status: str  # ok | wrong | failed
    error: str = ""
    session: str = ""


@dataclass
class Report:
    duration_s: float
    clients: int
    restart_every_s: float
    answers: int = 0
    wrong: int = 0
    wrong_examples: list[str] = field(default_factory=list)
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # error message -> count
    unexpected: list[str] = field(default_factory=list)  # non-MpccError exceptions: bugs
    throughput_qps: float = 0.0
    throughput_between_restarts_qps: float = 0.0
    latency_median_ms: float = 0.0
    latency_p99_ms: float = 0.0
    restarts: list[dict[str, float | None]] = field(default_factory=list)
    sessions: int = 0
    rss: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    abusers: dict[str, dict[str, Any]] = field(default_factory=dict)
    tracebacks: dict[str, int] = field(default_factory=dict)

    @property
    def max_recovery_s(self) -> float:
        rec = [r["recovery_s"] for r in self.restarts]
        return float("inf") if None in rec else max(rec, default=0.0)

    @property
    def max_rss_growth(self) -> float:
        return max((x["growth"] for v in self.rss.values() for x in v), default=0.0)

    def problems(self) -> list[str]:
        """What broke the benchmark's limits, each in a sentence (empty: all held)."""
        out = []
        if self.wrong:
            out.append(f"{self.wrong} wrong answers, e.g. {self.wrong_examples[:3]}")
        if self.unexpected:
            out.append(f"errors that are not MpccError (bugs): {self.unexpected[:3]}")
        for r in self.restarts:
            if r["recovery_s"] is None:
                out.append(f"no answer after the kill at {r['killed_s']:.0f} s before the next")
        if not self.answers:
            out.append("no request was answered")
        if any(self.tracebacks.values()):
            out.append(f"tracebacks in the party logs: {self.tracebacks}")
        return out


def normalise(msg: str) -> str:
    """An error message with ids, addresses and numbers blanked, to group alike ones."""
    msg = re.sub(r"[0-9a-f]{8,}", "<id>", msg)
    msg = re.sub(r"\d+\.\d+\.\d+\.\d+:\d+", "<addr>", msg)
    return re.sub(r"\d+(\.\d+)?", "<n>", msg)


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# -- the abusers: raw TLS sockets, so they can read as slowly (or write as badly) as they like --
class RawLink:
    """A client link on a bare TLS socket (no reader thread): the test controls every byte."""

    def __init__(self, pc: ProcessCluster, name: str, role: str, hello: bool = True) -> None:
        cert, key = client_files(pc.cfg, name)
        ctx = client_context(pc.cfg, None, str(cert), str(key))
        raw = socket.create_connection(pc.cfg.address(role), timeout=5)
        self.sock = ctx.wrap_socket(raw)
        if hello:
            self.send("hello", {"link": "client", "version": PROTOCOL_VERSION})

    def send(self, kind: str, meta: dict[str, Any], arrays: list[np.ndarray] = ()) -> None:
        self.sock.sendall(b"".join(bytes(b) for b in encode(kind, meta, list(arrays))))

    def read(self, n: int, timeout: float) -> bytes:
        """Up to n bytes; b"" when the party closed the link. Raises TimeoutError."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(n)
        except (ssl.SSLError, ConnectionError):
            return b""

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def flooder(pc: ProcessCluster, stop: threading.Event, out: dict[str, Any]) -> None:
    """Sends `info` as fast as it can, reading 64 KiB every 0.2 s; reconnects when cut off."""
    out.update(sent=0, links=0, closed_by_party=0, read_bytes=0)
    while not stop.is_set():
        try:
            link = RawLink(pc, "flood", "p0")
        except (OSError, ssl.SSLError):
            stop.wait(0.5)
            continue
        out["links"] += 1
        link.sock.setblocking(False)
        last_read = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    link.send("info", {})
                    out["sent"] += 1
                except (BlockingIOError, ssl.SSLWantWriteError):
                    stop.wait(0.01)
                if time.monotonic() - last_read > 0.2:
                    last_read = time.monotonic()
                    try:
                        got = link.read(65536, 0.05)
                    except TimeoutError:
                        continue
                    if not got:
                        out["closed_by_party"] += 1
                        break
                    out["read_bytes"] += len(got)
        except (OSError, ssl.SSLError):
            out["closed_by_party"] += 1
        link.close()
        stop.wait(0.5)


def slow_reader(
    pc: ProcessCluster, plan: str, x: np.ndarray, stop: threading.Event, out: dict
) -> None:
    """Sends real requests to P0 and P1 twice a second; reads 256 bytes a second of each."""
    from mpcc.runtime.fixedpoint import encode as fx
    from mpcc.runtime.prg import share

    out.update(sent=0, links=0, closed_by_party=0, read_bytes=0)
    while not stop.is_set():
        try:
            links = {r: RawLink(pc, "slow", r) for r in ("p0", "p1")}
        except (OSError, ssl.SSLError):
            stop.wait(0.5)
            continue
        out["links"] += 1
        try:
            while not stop.is_set():
                for _ in range(2):
                    s0, s1 = share(fx(x, 16))
                    meta = {"rid": secrets.token_hex(16), "rows": 1, "plan": plan}
                    links["p0"].send("request", meta, [s0])
                    links["p1"].send("request", meta, [s1])
                    out["sent"] += 1
                for link in links.values():
                    try:
                        got = link.read(256, 0.05)
                    except TimeoutError:
                        continue
                    if not got:
                        raise ConnectionError
                    out["read_bytes"] += len(got)
                stop.wait(1.0)
        except (OSError, ssl.SSLError):
            out["closed_by_party"] += 1
        for link in links.values():
            link.close()
        stop.wait(0.5)


def _frame(body: bytes) -> bytes:
    return FRAME_HEAD.pack(MAGIC, len(body)) + body


MALFORMED = {
    "claims a terabyte": FRAME_HEAD.pack(MAGIC, 1 << 40),
    "not JSON": _frame(b"\x05\x00\x00\x00nope!"),
    "JSON nested 5000 deep": _frame(META_HEAD.pack(10000) + b"[" * 5000 + b"]" * 5000),
    "wrong magic": b"XXXX" + b"\x00" * 8,
    "header longer than the frame": _frame(META_HEAD.pack(1 << 30) + b"{}"),
}


def _closed_within(link: RawLink, seconds: float) -> bool:
    """Whether the party closes the link within `seconds` (what it sends first is read)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            if not link.read(4096, min(left, 1.0)):
                return True
        except TimeoutError:
            pass
    return False


def garbler(pc: ProcessCluster, stop: threading.Event, out: dict[str, Any]) -> None:
    """Each 0.2 s, one malformed frame (or bytes that are not TLS at all) to P0 or P1; the
    party must close the link within its timeout."""
    out.update(sent=0, closed_by_party=0, unreachable=0, left_open=[])
    cases = [*MALFORMED.items(), ("request before the hello", None), ("not TLS", None)]
    k = 0
    while not stop.is_set():
        what, data = cases[k % len(cases)]
        role = ("p0", "p1")[k // len(cases) % 2]
        k += 1
        try:
            if what == "not TLS":
                with socket.create_connection(pc.cfg.address(role), timeout=5) as s:
                    s.sendall(os.urandom(64))
                    s.settimeout(pc.cfg.serving.handshake_timeout_s + 2)
                    s.recv(1024)  # refusal or close
                out["sent"] += 1
                out["closed_by_party"] += 1
                stop.wait(0.2)
                continue
            link = RawLink(pc, "garbage", role, hello=what != "request before the hello")
            if data is None:
                link.send("request", {"rid": "x", "rows": 1}, [np.zeros(3, np.uint64)])
            else:
                link.read(4096, 5)  # the welcome
                link.sock.sendall(data)
            out["sent"] += 1
            if _closed_within(link, pc.cfg.serving.timeout_s + 3):
                out["closed_by_party"] += 1
            else:
                out["left_open"].append(f"{what} to {role}")
            link.close()
        except TimeoutError:
            out["left_open"].append(f"{what} to {role}")
        except ConnectionRefusedError:
            out["unreachable"] += 1  # P1 is down for its restart
        except (OSError, ssl.SSLError):
            out["closed_by_party"] += 1  # closed while we wrote: also a refusal
        stop.wait(0.2)


def _abusers(pc: ProcessCluster, plan: str, x: np.ndarray, stop, conn, which) -> None:
    """The three abusers, in a process of their own (so their busy loops do not take the
    clients' interpreter); sends what each met through `conn` once `stop` is set."""
    out: dict[str, dict[str, Any]] = {n: {} for n in ("flood_info", "slow_reader", "malformed")}
    flag = threading.Event()
    threads = [
        threading.Thread(target=flooder, args=(pc, flag, out["flood_info"])),
        threading.Thread(target=slow_reader, args=(pc, plan, x, flag, out["slow_reader"])),
        threading.Thread(target=garbler, args=(pc, flag, out["malformed"])),
    ]
    threads = [t for t, n in zip(threads, out, strict=True) if n in which]
    for t in threads:
        t.daemon = True
        t.start()
    stop.wait()
    flag.set()
    for t in threads:
        t.join(15)
    if out["malformed"].get("left_open"):
        out["malformed"]["left_open"] = out["malformed"]["left_open"][:10]
    conn.send(out)


# -- the run --------------------------------------------------------------------------------
def run(
    duration: float = 600.0,
    clients: int = 16,
    restart_every: float = 120.0,
    tolerance: float = 1e-2,
    timeout_s: float = 3.0,
    client_timeout_s: float = 10.0,
    directory: Path | None = None,
    log=print,
    abusers_on: tuple[str, ...] = ABUSERS,
) -> Report:
    """Run the soak and return its report (see the module docstring)."""
    from mpcc.compiler.pipeline import compile_onnx
    from mpcc.runtime.cleartext import predict as cleartext_predict
    from mpcc.serving.owner import deploy_program
    from mpcc.zoo import models
    from mpcc.zoo.digits import load_digits_28

    prog, weights = compile_onnx(models.build("lenet"), (1, 1, 28, 28))
    X = np.ascontiguousarray(load_digits_28("test")[0][:64])
    ref = cleartext_predict(prog, weights, X)  # what every answer must agree with
    rep = Report(duration, clients, restart_every)
    tmp = None
    if directory is None:
        tmp = tempfile.TemporaryDirectory(prefix="mpcc-soak-")
        directory = Path(tmp.name)
    pc = ProcessCluster(Path(directory), timeout_s=timeout_s, stock=3)
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    stop, abuse_stop = threading.Event(), threading.Event()
    rss: dict[str, list[tuple[float, int, int]]] = {r: [] for r in ROLES}
    abusers = None
    try:
        for name in ("flood", "slow", "garbage"):
            add_client(pc.cfg, name)
        pc.start_all()
        deploy_program(prog, weights, pc.cfg)
        with Client(pc.cfg) as c:
            c.wait_ready(120)
            plan = c.info()["p0"]["plan_hash"]
        log(f"cluster ready in {directory}; {clients} clients for {duration:g} s")
        start = threading.Barrier(clients + 1, timeout=300)

        def legit(k: int) -> None:
            c = Client(pc.cfg, timeout=client_timeout_s, window=1)
            try:
                c.predict(X[k % len(X)])  # connect and warm up outside the clock
            except MpccError:
                pass
            start.wait()
            i = k
            while not stop.is_set():
                j = i % len(X)
                i += clients
                t0 = time.monotonic()
                try:
                    y = c.predict(X[j])
                    t1, err = time.monotonic(), float(np.abs(y[0] - ref[j]).max())
                    wrong = err > tolerance or y.shape != (1, *ref.shape[1:])
                    sess = c.stats.requests[-1].session
                    o = Outcome(k, t0, t1, "wrong" if wrong else "ok", f"sample {j}: {err}", sess)
                except MpccError as e:
                    o = Outcome(k, t0, time.monotonic(), "failed", str(e))
                except Exception as e:  # noqa: BLE001 - anything else is a bug: reported
                    o = Outcome(k, t0, time.monotonic(), "unexpected", repr(e))
                with lock:
                    outcomes.append(o)
                if o.status in ("failed", "unexpected"):
                    stop.wait(0.2)
            c.close()

        def sample_rss() -> None:
            while not abuse_stop.is_set():
                now = time.monotonic()
                for role in ROLES:
                    p = pc.procs.get(role)
                    kb = rss_kb(p.pid) if p is not None and p.poll() is None else None
                    if kb is not None:
                        rss[role].append((now, p.pid, kb))
                abuse_stop.wait(1.0)

        threads = [threading.Thread(target=legit, args=(k,), daemon=True) for k in range(clients)]
        ctx = multiprocessing.get_context("fork")  # the abusers get a GIL of their own
        abuse_stop_p, (recv_end, send_end) = ctx.Event(), ctx.Pipe(duplex=False)
        abusers = ctx.Process(
            target=_abusers, args=(pc, plan, X[:1], abuse_stop_p, send_end, abusers_on), daemon=True
        )
        abusers.start()
        rss_thread = threading.Thread(target=sample_rss, daemon=True)
        for t in [*threads, rss_thread]:
            t.start()
        start.wait()
        t_start = time.monotonic()
        kills: list[float] = []
        ups: list[float | None] = []
        while True:  # P1 is killed and restarted from this (the main) thread
            nxt = t_start + restart_every * (len(kills) + 1)
            end = t_start + duration
            if nxt >= end:
                time.sleep(max(0.0, end - time.monotonic()))
                break
            time.sleep(max(0.0, nxt - time.monotonic()))
            kills.append(time.monotonic())
            pc.kill("p1", signal.SIGKILL)
            pc.start("p1")
            try:  # how much of the recovery is the process's own start (kernels loaded)
                pc.wait_listening(timeout=restart_every / 2)
                ups.append(time.monotonic() - kills[-1])
            except MpccError:
                ups.append(None)
            log(f"{kills[-1] - t_start:6.1f} s: P1 killed (SIGKILL) and started again")
        stop.set()
        for t in threads:
            t.join(client_timeout_s + 10)
        t_end = time.monotonic()
        abuse_stop.set()
        abuse_stop_p.set()
        rss_thread.join(5)
        if recv_end.poll(30):
            rep.abusers = recv_end.recv()
        abusers.join(5)
        _summarise(rep, outcomes, kills, ups, t_start, t_end, rss)
        for role in ROLES:
            rep.tracebacks[role] = pc.log(role).count("Traceback")
    finally:
        stop.set()
        abuse_stop.set()
        if abusers is not None and abusers.is_alive():
            abusers.kill()
        pc.kill_all()
        if tmp is not None:
            tmp.cleanup()
    return rep


def _summarise(rep: Report, outcomes, kills, ups, t_start, t_end, rss) -> None:
    timed = [o for o in outcomes if o.t0 >= t_start]
    ok = [o for o in timed if o.status == "ok"]
    rep.answers = len(ok)
    rep.wrong = sum(o.status == "wrong" for o in timed)
    rep.wrong_examples = [o.error for o in timed if o.status == "wrong"][:10]
    rep.unexpected = [o.error for o in timed if o.status == "unexpected"][:10]
    fails = [o for o in timed if o.status == "failed"]
    rep.failed = len(fails)
    rep.failures = dict(Counter(normalise(o.error) for o in fails).most_common())
    wall = t_end - t_start
    rep.throughput_qps = len(ok) / wall
    lat = [o.t1 - o.t0 for o in ok]
    if lat:
        rep.latency_median_ms = float(np.median(lat) * 1e3)
        rep.latency_p99_ms = float(np.percentile(lat, 99) * 1e3)
    rep.sessions = len({o.session for o in ok})
    bounds = [t_start, *kills, t_end]
    down = 0.0
    for i, k in enumerate(kills):
        after = [o.t1 for o in ok if o.t0 >= k and o.t1 < bounds[i + 2]]
        rec = min(after) - k if after else None
        down += rec if rec is not None else bounds[i + 2] - k
        failed = sum(1 for o in fails if k <= o.t1 < bounds[i + 2])
        rep.restarts.append(
            {
                "killed_s": round(k - t_start, 1),
                "p1_up_s": ups[i],
                "recovery_s": rec,
                "failed_requests_after": failed,
            }
        )
    if wall > down:
        rep.throughput_between_restarts_qps = len(ok) / (wall - down)
    # RSS per process (each P1 incarnation on its own), from a baseline taken once it serves
    # and its preprocessing stock is built (warm-up: 10 s after it first answered, or after
    # the start of the clock) to its last sample
    settle = min(10.0, rep.restart_every_s / 4)
    for role, samples in rss.items():
        rep.rss[role] = []
        for pid in dict.fromkeys(p for _, p, _ in samples):
            mine = [(t, kb) for t, p, kb in samples if p == pid]
            born = max(t_start, mine[0][0])
            served = min((o.t1 for o in ok if o.t0 >= born), default=None)
            base = [kb for t, kb in mine if served is not None and t >= served + settle]
            if len(base) < 2:
                continue  # did not serve long enough to say
            rep.rss[role].append(
                {
                    "pid": pid,
                    "from_s": round(served + settle - t_start, 1),
                    "to_s": round(mine[-1][0] - t_start, 1),
                    "start_mb": round(base[0] / 1024, 1),
                    "end_mb": round(base[-1] / 1024, 1),
                    "peak_mb": round(max(base) / 1024, 1),
                    "growth": round((base[-1] - base[0]) / base[0], 4),
                    # a leak keeps growing; an allocator's high-water mark levels off
                    "growth_second_half": round(
                        (base[-1] - base[len(base) // 2]) / base[len(base) // 2], 4
                    ),
                }
            )


def _secs(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f} s"


def markdown(rep: Report) -> str:
    lines = [
        f"Soak: LeNet, {rep.clients} clients, {rep.duration_s:g} s, P1 killed (SIGKILL) and "
        f"restarted every {rep.restart_every_s:g} s; abusers: `info` flood, slow reader, "
        "malformed frames.",
        "",
        "| measure | value | limit |",
        "|---|---|---|",
        f"| answers checked against the cleartext interpreter | {rep.answers} | |",
        f"| wrong answers | {rep.wrong} | {LIMITS['wrong']} |",
        f"| failed requests (clear errors) | {rep.failed} | |",
        f"| throughput | {rep.throughput_qps:.1f} queries/s "
        f"({rep.throughput_between_restarts_qps:.1f} while serving) | |",
        f"| latency median / p99 | {rep.latency_median_ms:.0f} / {rep.latency_p99_ms:.0f} ms | |",
        f"| sessions | {rep.sessions} | |",
        "| recovery after each kill | "
        + ", ".join(_secs(r["recovery_s"]) for r in rep.restarts)
        + f" | {LIMITS['recovery_s']:g} s |",
        "| of which P1's process start (kernels loaded) | "
        + ", ".join(_secs(r["p1_up_s"]) for r in rep.restarts)
        + " | |",
        f"| RSS growth (largest) | {rep.max_rss_growth:.1%} | {LIMITS['rss_growth']:.0%} |",
        "",
        "Failed requests by error:",
        "",
    ]
    lines += [f"- {n} × {msg}" for msg, n in rep.failures.items()] or ["- none"]
    lines += ["", "RSS (MB, from once the party serves to its last sample):", ""]
    for role, rows in rep.rss.items():
        for r in rows:
            lines.append(
                f"- {role} pid {r['pid']} ({r['from_s']:g}–{r['to_s']:g} s): {r['start_mb']} → "
                f"{r['end_mb']} (peak {r['peak_mb']}), {r['growth']:+.1%} "
                f"({r['growth_second_half']:+.1%} in its second half)"
            )
    lines += ["", "Abusers:", ""]
    lines += [f"- {n}: {json.dumps(d)}" for n, d in rep.abusers.items()]
    probs = rep.problems()
    lines += ["", "Problems: " + ("; ".join(probs) if probs else "none")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--restart-every", type=float, default=120.0, help="seconds between kills")
    ap.add_argument("--tolerance", type=float, default=1e-2, help="largest logit error")
    ap.add_argument("--out", type=Path, default=RESULTS, help="directory for soak.json/.md")
    ap.add_argument("--without", nargs="*", default=[], choices=ABUSERS, help="abusers left out")
    a = ap.parse_args(argv)
    on = tuple(n for n in ABUSERS if n not in a.without)
    rep = run(a.duration, a.clients, a.restart_every, a.tolerance, abusers_on=on)
    text = markdown(rep)
    print(text)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "soak.md").write_text(text)
    (a.out / "soak.json").write_text(json.dumps(asdict(rep), indent=1) + "\n")
    bad = rep.problems()
    if rep.max_recovery_s > LIMITS["recovery_s"]:
        bad.append(f"recovery {rep.max_recovery_s:.1f} s")
    if rep.max_rss_growth > LIMITS["rss_growth"]:
        bad.append(f"RSS growth {rep.max_rss_growth:.1%}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
