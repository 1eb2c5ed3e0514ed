"""Three party processes on 127.0.0.1, for tests, benchmarks and trying things out.

with ProcessCluster(tmp_dir) as pc:        # cluster init on free loopback ports
    pc.start_all()
    deploy_program(prog, weights, pc.cfg)
    with Client(pc.cfg) as c: ...
# every process started here is killed on exit

with serve_locally(plan) as client:   # all of the above in a temporary directory
    y = client.predict(x)

On Linux the party processes are killed when the process that started them dies, and
`mpcc.cli.main` turns SIGTERM into an exit that runs the `with` blocks' clean-up.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mpcc.errors import MpccError
from mpcc.serving import config as cfgmod
from mpcc.serving.certs import init_ca

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _prctl() -> Any:
    """libc's prctl on Linux, else None (looked up here: a forked child must not load it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has the child killed when its parent dies (Linux; else None)."""
    prctl, parent = _prctl(), os.getpid()
    if prctl is None:
        return None

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


LOW_PORT = 10_000  # free_port's ports are at least this


def _ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections (Linux's default: 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1", taken: set[int] | None = None) -> int:
    """A port that nothing holds on `host` now, below the kernel's ephemeral range: a port
    there (as bind(0) gives) may go to another program's outgoing connection before the
    server that was given it listens, which failed a test run once (EADDRINUSE)."""
    top = _ephemeral_low()
    for _ in range(200):
        port = LOW_PORT + secrets.randbelow(max(1, top - LOW_PORT))
        if taken and port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # the range below is full: let the kernel choose
        s.bind((host, 0))
        return s.getsockname()[1]


def init_local(directory: Path, **serving: Any) -> cfgmod.ClusterConfig:
    """`cluster init` on free 127.0.0.1 ports, with optional `[serving]` values."""
    init_ca(directory, "local")
    taken: set[int] = set()
    addrs = {}
    for r in cfgmod.PARTIES:
        addrs[r] = ("127.0.0.1", free_port(taken=taken))
        taken.add(addrs[r][1])
    text = cfgmod.render("local", addrs, serving=cfgmod.Serving(**serving))
    (directory / cfgmod.CONFIG_NAME).write_text(text)
    return cfgmod.load(directory / cfgmod.CONFIG_NAME)


class ProcessCluster:
    """Starts, kills and restarts `python -m mpcc party` processes.

    On Linux each is killed when the thread that started it ends (PR_SET_PDEATHSIG): start
    them from a thread that outlives them, such as the main thread."""

    def __init__(self, directory: Path, cpus: dict[str, str] | None = None, **serving: Any) -> None:
        """`cpus` pins roles to CPUs (`mpcc party --cpus`), e.g. {"p0": "0", "p1": "1"}."""
        self.dir = Path(directory)
        self.cpus = dict(cpus or {})
        self.cfg = init_local(self.dir, **serving)
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = self.dir / "logs"
        self.logs.mkdir(exist_ok=True)
        self._log_from: dict[str, int] = {}

    def __enter__(self) -> ProcessCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill_all()

    def start(self, role: str, *extra: str) -> subprocess.Popen:
        if role in self.procs and self.procs[role].poll() is None:
            raise MpccError(f"{role} is already running")
        log = open(self.logs / f"{role}.log", "ab")  # noqa: SIM115 - owned by the process
        self._log_from[role] = log.tell()  # this run's lines start here
        root = str(Path(__file__).resolve().parents[2])  # so `-m mpcc` finds this mpcc
        path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path)
        cmd = [sys.executable, "-m", "mpcc", "party", "--config", str(self.cfg.path)]
        if role in self.cpus:
            cmd += ["--cpus", self.cpus[role]]
        self.procs[role] = subprocess.Popen(
            [*cmd, "--role", role, *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=die_with_parent(),
        )
        log.close()
        return self.procs[role]

    def start_all(self) -> None:
        for role in cfgmod.PARTIES:
            self.start(role)
        self.wait_listening()

    def wait_listening(self, timeout: float = 60.0) -> None:
        """Until every running party accepts TCP connections and has loaded its kernels:
        loading them takes the interpreter for a few seconds, so on a loaded machine a
        party that has just started may not finish a TLS handshake in time before."""
        deadline = time.monotonic() + timeout
        for role, p in self.procs.items():
            while True:
                if p.poll() is not None:
                    raise MpccError(f"{role} exited with {p.returncode}: {self.log(role)[-2000:]}")
                try:
                    socket.create_connection(self.cfg.address(role), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise MpccError(f"{role} is not listening after {timeout:g} s") from None
                    time.sleep(0.05)
        for role, p in self.procs.items():
            while p.poll() is None and time.monotonic() < deadline:
                with open(self.logs / f"{role}.log", "rb") as f:
                    f.seek(self._log_from.get(role, 0))
                    text = f.read()
                if b"kernels ready" in text or b"kernel warm-up failed" in text:
                    break
                time.sleep(0.1)

    def kill(self, role: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs.get(role)
        if p is not None and p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def kill_all(self) -> None:
        for role in list(self.procs):
            self.kill(role)

    def alive(self, role: str) -> bool:
        p = self.procs.get(role)
        return p is not None and p.poll() is None

    def log(self, role: str) -> str:
        path = self.logs / f"{role}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextmanager
def serve_locally(
    plan: Any,
    weights: dict[str, Any] | None = None,
    cpus: dict[str, str] | None = None,
    **serving: Any,
) -> Iterator[Any]:
    """Three party processes on 127.0.0.1 serving `plan` (a Plan, a plan file, or a Program
    and its `weights`), and a `Client` of them with a live session; everything is stopped
    and removed on exit. `cpus` pins roles to CPUs (see `ProcessCluster`)."""
    from mpcc.compiler.plan import as_plan
    from mpcc.serving.client import Client
    from mpcc.serving.owner import deploy_program

    prog, weights = as_plan(plan, weights)
    with (
        tempfile.TemporaryDirectory(prefix="mpcc-local-") as tmp,
        ProcessCluster(Path(tmp), cpus, **serving) as pc,
    ):
        pc.start_all()
        deploy_program(prog, weights, pc.cfg, allow_public_weights=True)  # all on this machine
        with Client(pc.cfg) as client:
            client.wait_ready()
            yield client
