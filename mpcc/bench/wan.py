"""A WAN on this machine: the parties and the client in their own network namespaces, each
link shaped for bandwidth and delayed by a relay (test and benchmark tooling; needs root).

    with WanBed(tmp_dir, rtt_ms=10, gbps=1) as bed:
        bed.start_parties()
        with bed.inside("client"):                     # this thread's sockets: the client's
            deploy_program(prog, weights, bed.view("client"))
            with Client(bed.view("client")) as c:
                c.wait_ready()
                y = c.predict(x)
    # every process the bed started is killed and every namespace (with its links) deleted

Topology: a hub namespace holds one veth pair to each role's namespace (p0, p1, dealer and
client), the hub side 10.77.<i>.1/24, the role's side 10.77.<i>.2/24, and `tc ... tbf` on
both ends of each pair sets the bandwidth. This kernel has no `netem`, so the delay comes
from a relay process in the hub (`mpcc.bench.relay`): for every (source role, party) pair
it listens on the hub's address on the source's link and forwards each connection to the
party, holding every chunk RTT/2 in each direction (order kept; a bounded buffer gives
backpressure). A role reaches another only through that relay: each role's own view of
`cluster.toml` (`cluster-<role>.toml` beside the certificates) names its own listening
address and the relay's addresses for the others. So every connection crosses exactly one
relay: one one-way delay of RTT/2 each way, as on a WAN.

Names carry this process's id and a random tag, so runs in parallel do not collide;
`close` (also on failure and on SIGTERM through the `with` block) deletes what the bed
made, and a new bed first deletes the namespaces of beds whose process is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mpcc.errors import MpccError
from mpcc.serving import config as cfgmod
from mpcc.serving.certs import init_ca
from mpcc.serving.local import die_with_parent

ROLES = ("p0", "p1", "dealer", "client")
PARTY_PORT = 7000  # each party listens on it in its own namespace
RELAY_PORT = 7100  # + the index of the destination party, on the hub's side of each link
PREFIX = "mpccwan"  # namespace names: mpccwan<pid>x<tag>-<role>
CLONE_NEWNET = 0x40000000
CHUNK = 1 << 16
RELAY_NICE = -10  # the relay's priority (root may raise it)


class BedError(MpccError):
    """The test bed cannot be built here (not root, no `ip netns`, ...)."""


def unavailable() -> str | None:
    """Why a bed cannot be built on this machine, or None if it can."""
    if not sys.platform.startswith("linux"):
        return "the WAN test bed needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the WAN test bed needs root (ip netns, veth, tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the WAN test bed needs `{tool}` (iproute2)"
    probe = f"{PREFIX}{os.getpid()}xprobe{secrets.token_hex(2)}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode:
        return f"`ip netns add` fails here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _run(*cmd: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise BedError(f"`{' '.join(cmd)}` failed: {r.stderr.strip() or r.returncode}")


def _namespaces() -> list[str]:
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def remove_stale() -> list[str]:
    """Delete the namespaces of beds whose process has died (e.g. killed with SIGKILL)."""
    gone = []
    for ns in _namespaces():
        if not ns.startswith(PREFIX):
            continue
        pid = ns[len(PREFIX) :].partition("x")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            gone.append(ns)
    return gone


_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


class WanBed:
    """Network namespaces, shaped links and delay relays for p0, p1, the dealer and a client.

    `rtt_ms`: round-trip time between any two roles (each relay holds data RTT/2 each way);
    `gbps`: each role's link rate (tbf, both directions); `serving`: `[serving]` values of
    the cluster configuration."""

    def __init__(self, directory: str | Path, rtt_ms: float, gbps: float, **serving: Any) -> None:
        if rtt_ms < 0 or gbps <= 0:
            raise BedError("the bed wants RTT >= 0 ms and a bandwidth > 0 Gbit/s")
        self.dir = Path(directory)
        self.rtt_ms, self.gbps = rtt_ms, gbps
        self.serving = serving
        self.tag = f"{PREFIX}{os.getpid()}x{secrets.token_hex(3)}"
        self.ns = {r: f"{self.tag}-{r}" for r in (*ROLES, "hub")}
        self.made: list[str] = []  # namespaces created, deleted on close
        self.procs: dict[str, subprocess.Popen] = {}
        self.relay: subprocess.Popen | None = None
        self.logs = self.dir / "logs"
        self._views: dict[str, cfgmod.ClusterConfig] = {}

    # -- addresses ----------------------------------------------------------------------------
    @staticmethod
    def role_ip(role: str) -> str:
        return f"10.77.{ROLES.index(role) + 1}.2"

    @staticmethod
    def hub_ip(role: str) -> str:
        return f"10.77.{ROLES.index(role) + 1}.1"

    def addresses(self, role: str) -> dict[str, tuple[str, int]]:
        """The parties' addresses as `role` sees them: its own listening address, and the
        relay on its link for each other party."""
        return {
            p: (
                (self.role_ip(p), PARTY_PORT)
                if p == role
                else (self.hub_ip(role), RELAY_PORT + cfgmod.PARTIES.index(p))
            )
            for p in cfgmod.PARTIES
        }

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> WanBed:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Build the namespaces and links, start the relay, write the configuration views."""
        why = unavailable()
        if why:
            raise BedError(why)
        remove_stale()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        hub = self.ns["hub"]
        for ns in self.ns.values():
            _run("ip", "netns", "add", ns)
            self.made.append(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        rate = f"{self.gbps * 1e9:.0f}bit"
        # tbf's bucket: at least 1 ms of traffic and a few 64 KiB GSO packets
        burst = max(256 * 1024, int(self.gbps * 1e9 / 8 / 1000))
        for i, role in enumerate(ROLES, 1):
            ns, here, there = self.ns[role], f"h{i}", "eth0"
            _run(
                "ip",
                "link",
                "add",
                here,
                "netns",
                hub,
                "type",
                "veth",
                "peer",
                "name",
                there,
                "netns",
                ns,
            )
            for n, dev, ip in ((hub, here, self.hub_ip(role)), (ns, there, self.role_ip(role))):
                _run("ip", "-n", n, "addr", "add", f"{ip}/24", "dev", dev)
                _run("ip", "-n", n, "link", "set", dev, "up")
                _run(
                    "tc",
                    "-n",
                    n,
                    "qdisc",
                    "add",
                    "dev",
                    dev,
                    "root",
                    "tbf",
                    "rate",
                    rate,
                    "burst",
                    str(burst),
                    "latency",
                    "100ms",
                )
        self._start_relay()
        init_ca(self.dir, "wan")
        for role in ROLES:
            path = self.dir / f"cluster-{role}.toml"
            text = cfgmod.render(
                f"wan-{role}", self.addresses(role), serving=cfgmod.Serving(**self.serving)
            )
            path.write_text(text)
            self._views[role] = cfgmod.load(path)

    def _start_relay(self) -> None:
        routes = []
        for src in ROLES:
            for p in cfgmod.PARTIES:
                if p != src:
                    listen = f"{self.hub_ip(src)}:{RELAY_PORT + cfgmod.PARTIES.index(p)}"
                    routes.append(f"{listen}={self.role_ip(p)}:{PARTY_PORT}")
        # room for what the link carries in one one-way delay, and some
        limit = max(8 << 20, int(4 * self.gbps * 1e9 / 8 * self.rtt_ms / 2e3))
        cmd = [
            "ip",
            "netns",
            "exec",
            self.ns["hub"],
            sys.executable,
            "-m",
            "mpcc.bench.relay",
            "--delay-ms",
            repr(self.rtt_ms / 2),
            "--limit",
            str(limit),
            *routes,
        ]
        log = open(self.logs / "relay.log", "ab")  # noqa: SIM115 - owned by the process
        self.relay = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=_env(),
            preexec_fn=_relay_preexec(die_with_parent()),
        )
        log.close()
        line = self.relay.stdout.readline()
        if line.strip() != b"ready":
            self.relay.kill()
            raise BedError(f"the relay did not start: {self.log('relay')[-2000:]}")

    def set_rtt(self, rtt_ms: float) -> None:
        """Change the relay's delay to RTT/2 each way (for data arriving from now on: change
        it between queries). The bandwidth stays as built."""
        if rtt_ms < 0:
            raise BedError("the RTT must be >= 0 ms")
        self.relay.stdin.write(f"delay {rtt_ms / 2!r}\n".encode())
        self.relay.stdin.flush()
        if self.relay.stdout.readline().strip() != b"ok":
            raise BedError(f"the relay did not take the delay: {self.log('relay')[-2000:]}")
        self.rtt_ms = rtt_ms

    def close(self) -> None:
        """Kill every process the bed started and delete its namespaces (and so its links)."""
        for role in list(self.procs):
            self.kill(role)
        if self.relay is not None and self.relay.poll() is None:
            self.relay.kill()
            self.relay.wait()
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made = []

    # -- roles --------------------------------------------------------------------------------
    def view(self, role: str) -> cfgmod.ClusterConfig:
        """The cluster configuration as `role` sees it (the others through the relays)."""
        return self._views[role]

    @contextlib.contextmanager
    def inside(self, role: str) -> Iterator[None]:
        """Run this thread in `role`'s namespace: the sockets it makes meanwhile are the
        role's (threads started meanwhile stay there)."""
        with (
            open("/proc/thread-self/ns/net") as home,
            open(f"/var/run/netns/{self.ns[role]}") as there,
        ):
            _setns(there.fileno())
            try:
                yield
            finally:
                _setns(home.fileno())

    def start_parties(self, timeout: float = 60.0) -> None:
        """`python -m mpcc party` for p0, p1 and the dealer, each in its namespace with its
        view of the configuration; returns once each accepts connections."""
        for role in cfgmod.PARTIES:
            self.start_party(role)
        self.wait_listening(timeout)

    def start_party(self, role: str) -> subprocess.Popen:
        cfg = self.view(role)
        log = open(self.logs / f"{role}.log", "ab")  # noqa: SIM115 - owned by the process
        cmd = [
            "ip",
            "netns",
            "exec",
            self.ns[role],
            sys.executable,
            "-m",
            "mpcc",
            "party",
            "--config",
            str(cfg.path),
            "--role",
            role,
        ]
        self.procs[role] = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(), preexec_fn=die_with_parent()
        )
        log.close()
        return self.procs[role]

    def wait_listening(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for role, p in self.procs.items():
            addr = (self.role_ip(role), PARTY_PORT)
            while True:
                if p.poll() is not None:
                    raise MpccError(f"{role} exited with {p.returncode}: {self.log(role)[-2000:]}")
                try:
                    with self.inside(role):
                        socket.create_connection(addr, timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise MpccError(f"{role} is not listening after {timeout:g} s") from None
                    time.sleep(0.05)

    def kill(self, role: str) -> None:
        p = self.procs.get(role)
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()

    def log(self, role: str) -> str:
        path = self.logs / f"{role}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _relay_preexec(then: Any) -> Any:
    """The relay is the network: it runs ahead of the (possibly niced) harness and parties,
    or a loaded machine would stretch its delays."""

    def preexec() -> None:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, RELAY_NICE)
        if then is not None:
            then()

    return preexec


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])  # so `-m mpcc` finds this mpcc
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path)
