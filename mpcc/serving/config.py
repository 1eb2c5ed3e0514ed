"""The cluster configuration file, `cluster.toml`: addresses, credentials, serving limits.

Relative paths in the file are relative to the file's directory, so a directory holding the
file, `ca.crt` and one role's key and certificate can be copied to that role's machine.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mpcc.errors import MpccError

ROLES = ("p0", "p1", "dealer", "owner", "client")  # one certificate each
PARTIES = ("p0", "p1", "dealer")  # the roles that run servers
DEFAULT_DAYS = 365  # certificate validity
CONFIG_NAME = "cluster.toml"


class ConfigError(MpccError):
    """The cluster configuration is missing, malformed or incomplete."""


DAY_S = 86400.0
# [serving] key -> (least, greatest) value accepted; finite, so inf and NaN are refused
SERVING_RANGES: dict[str, tuple[float, float]] = {
    "timeout_s": (0.1, DAY_S),
    "setup_timeout_s": (0.1, DAY_S),
    "client_timeout_s": (0.1, DAY_S),
    "client_idle_s": (0.1, DAY_S),
    "handshake_timeout_s": (0.1, DAY_S),
    "max_frame_mb": (1 / 16, 4096.0),  # 64 KiB: room for a message's header, split or not
    "max_message_mb": (1 / 16, 2.0**20),
    "stock": (1, 1000),
    "stock_mb": (0.001, 2.0**20),  # below one query's material: one query ahead
    "batch_wait_ms": (0.001, 10_000.0),
    "lanes": (1, 64),
    "background_nice": (0, 19),
    "max_connections": (1, 100_000),
    "max_handshakes": (1, 100_000),
    "max_handshakes_per_source": (1, 100_000),
    "max_queue_mb": (1.0, 2.0**20),
    "client_connections": (1, 100_000),
    "client_queue": (1, 100_000),
    "client_rate": (0.1, 1e6),
    "client_burst": (1, 1_000_000),
    "client_queue_mb": (0.001, 2.0**20),
    "metrics_port": (0, 65534),
}


def _num(v: float) -> str:
    return str(int(v)) if v == int(v) else str(v)


@dataclass(frozen=True)
class Serving:
    """Limits and timing of the serving loop (the `[serving]` table)."""

    timeout_s: float = 5.0  # silence on a link during a query or start-up step: a fault
    setup_timeout_s: float = 60.0  # a session start-up (weights opened), its first material
    client_timeout_s: float = 30.0  # a client's wait for one answer, queueing included
    client_idle_s: float = 60.0  # a client link with nothing asked and nothing owed is closed
    max_frame_mb: float = 256.0  # largest frame a peer may send (larger messages are split)
    stock: int = 4  # queries of preprocessing kept ready ahead (per compute party)
    stock_mb: float = 1024.0  # memory that stock may hold at a compute party (>= one query)
    batch_wait_ms: float = 2.0  # how long P0 waits to fill a batch with queued requests
    lanes: int = 1  # queries a session runs at once, each over its own P0-P1 link (a WAN: 4+)
    background_nice: int = 10  # niceness added to the threads that make material; 0: none
    max_connections: int = 64  # concurrent client links a party accepts
    handshake_timeout_s: float = 5.0  # a new connection's TLS handshake and hello, in all
    max_handshakes: int = 16  # connections in their handshake (not yet authenticated) at once
    max_handshakes_per_source: int = 4  # ... from one address (not a party's host)
    max_message_mb: float = 4096.0  # largest message split over frames, from another party
    max_queue_mb: float = 1024.0  # memory the clients' waiting requests may take at a party
    # per client identity (a certificate's subject; the shared client certificate is one):
    client_connections: int = 32  # links it may hold at a party
    client_queue: int = 128  # requests it may have waiting at a party
    client_rate: float = 1000.0  # messages a second it may send, on average (token bucket)
    client_burst: int = 1000  # ... and at once, after a quiet spell (the bucket's size)
    client_queue_mb: float = 256.0  # its waiting requests and unsent answers, in memory
    metrics_port: int = 0  # Prometheus text on 127.0.0.1: P0 at this port, P1 the next; 0 off

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            whole = f.type in (int, "int")
            if isinstance(v, bool) or not isinstance(v, int if whole else (int, float)):
                kind = "a whole number" if whole else "a number"
                raise ConfigError(f"[serving] {f.name} must be {kind}, not {v!r}")
            lo, hi = SERVING_RANGES[f.name]
            if not lo <= v <= hi:  # also false for NaN
                raise ConfigError(
                    f"[serving] {f.name} must be from {_num(lo)} to {_num(hi)}, not {v!r}"
                )

    @property
    def max_frame_bytes(self) -> int:
        return int(self.max_frame_mb * 2**20)

    @property
    def max_message_bytes(self) -> int:
        return max(int(self.max_message_mb * 2**20), self.max_frame_bytes)


@dataclass(frozen=True)
class ClusterConfig:
    """A parsed `cluster.toml`; paths are absolute."""

    path: Path
    name: str
    ca: Path
    addresses: dict[str, tuple[str, int]]
    credentials: dict[str, tuple[Path, Path]]  # role -> (certificate, private key)
    state_dir: Path
    serving: Serving = field(default_factory=Serving)
    crl: Path = Path("revoked.crl")  # the revocation list (`mpcc cluster revoke`); absolute

    def address(self, role: str) -> tuple[str, int]:
        try:
            return self.addresses[role]
        except KeyError:
            raise ConfigError(f"{self.path}: no address for {role}") from None

    def credential(self, role: str) -> tuple[Path, Path]:
        """(certificate, key) of a role; both files must exist on this machine."""
        if role not in self.credentials:
            raise ConfigError(f"{self.path}: no credentials for role {role!r}")
        cert, key = self.credentials[role]
        for p in (cert, key):
            if not p.is_file():
                raise ConfigError(f"the {role} credentials are not on this machine: no {p}")
        return cert, key

    def role_state_dir(self, role: str) -> Path:
        return self.state_dir / role

    def with_serving(self, **changes: Any) -> ClusterConfig:
        """A copy with some `[serving]` values changed (tests, command-line overrides)."""
        return replace(self, serving=replace(self.serving, **changes))


def parse_address(text: str) -> tuple[str, int]:
    """'HOST:PORT' or '[IPv6]:PORT' -> (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"address {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def format_address(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _table(raw: dict[str, Any], name: str, path: Path, required: bool = False) -> dict[str, Any]:
    """The TOML table `[name]` of the file (empty if absent and not required)."""
    if name not in raw and not required:
        return {}
    t = raw.get(name)
    if not isinstance(t, dict):
        raise ConfigError(
            f"{path}: no [{name}] table" + ("" if t is None else f" ({name} = {t!r})")
        )
    return t


def load(path: str | Path) -> ClusterConfig:
    """Read and check a `cluster.toml` (or the one inside a directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_NAME
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no cluster configuration at {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    base = path.resolve().parent
    try:
        cluster = _table(raw, "cluster", path, required=True)
        parties = _table(raw, "parties", path, required=True)
        addresses = {}
        for r in PARTIES:
            if not isinstance(parties.get(r), str):
                raise ConfigError(f'{path}: [parties] needs {r} = "HOST:PORT"')
            addresses[r] = parse_address(parties[r])
        creds = {}
        for r, c in _table(raw, "credentials", path).items():
            if not (
                isinstance(c, dict) and all(isinstance(c.get(k), str) for k in ("cert", "key"))
            ):
                raise ConfigError(
                    f'{path}: [credentials.{r}] needs cert = "FILE.crt" and key = "FILE.key", '
                    f"not {c!r}"
                )
            creds[r] = (base / c["cert"], base / c["key"])
        table = _table(raw, "serving", path)
        extra = set(table) - set(Serving.__dataclass_fields__)
        if extra:
            raise ConfigError(f"{path}: unknown [serving] keys: {', '.join(sorted(extra))}")
        try:
            serving = Serving(**table)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        return ClusterConfig(
            path=path.resolve(),
            name=str(cluster["name"]),
            ca=base / cluster.get("ca", "ca.crt"),
            addresses=addresses,
            credentials=creds,
            state_dir=base / cluster.get("state_dir", "state"),
            serving=serving,
            crl=base / cluster.get("crl", "revoked.crl"),
        )
    except (KeyError, TypeError) as e:
        raise ConfigError(f"{path}: missing or malformed entry {e}") from None


def _q(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string for these values


def render(
    name: str,
    addresses: dict[str, tuple[str, int]],
    roles: tuple[str, ...] = ROLES,
    serving: Serving | None = None,
) -> str:
    """The text of a `cluster.toml` (written by hand: the standard library reads TOML only)."""
    s = serving or Serving()
    lines = [
        "# mpcc cluster configuration, written by `mpcc cluster init`.",
        "# A machine needs this file, ca.crt and the .key/.crt of its own role only.",
        "# Relative paths are relative to this file.",
        "",
        "[cluster]",
        f"name = {_q(name)}",
        'ca = "ca.crt"',
        'state_dir = "state"   # each party keeps its deployed model under state/<role>',
        'crl = "revoked.crl"   # revoked client certificates (`mpcc cluster revoke`), if any',
        "",
        "[parties]",
        *(f"{r} = {_q(format_address(addresses[r]))}" for r in PARTIES),
        "",
    ]
    for r in roles:
        lines += [f"[credentials.{r}]", f'cert = "{r}.crt"', f'key = "{r}.key"', ""]
    lines += ["[serving]"]
    for k in Serving.__dataclass_fields__:
        lines.append(f"{k} = {getattr(s, k)!r}")
    return "\n".join(lines) + "\n"
