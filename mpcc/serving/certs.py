"""A cluster's certificate authority and one key and certificate per role.

Each certificate names its role in a subjectAltName URI, ``urn:mpcc:role:<role>``; every TLS
link pins the peer's role to the one expected for that link (see `mpcc.serving.tls`).
Keys are EC P-256, written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mpcc.serving.config import DEFAULT_DAYS, ROLES, ClusterConfig, ConfigError

__all__ = [
    "DEFAULT_DAYS",
    "ROLES",
    "Revocations",
    "add_client",
    "check_expiry",
    "identity_from_peercert",
    "init_ca",
    "issue",
    "make_ca",
    "revoke",
    "role_from_peercert",
]

ROLE_URI = "urn:mpcc:role:"
MAX_DAYS = 36500  # certificate validity: 1 to 100 years' worth of days
WARN_DAYS = 30  # a party warns at start when its certificate or the CA expires this soon
RENEW_HINT = "run `mpcc cluster init` again and distribute the new files"

log = logging.getLogger(__name__)


def role_uri(role: str) -> str:
    return ROLE_URI + role


def role_from_peercert(cert: dict | None) -> str | None:
    """The role named by a peer certificate as returned by `SSLObject.getpeercert()`."""
    if not cert:
        return None
    roles = [
        v[len(ROLE_URI) :]
        for k, v in cert.get("subjectAltName", ())
        if k == "URI" and v.startswith(ROLE_URI)
    ]
    return roles[0] if len(roles) == 1 else None


def write_private(path: Path, data: bytes | Callable[[BinaryIO], object]) -> None:
    """Write a file readable by its owner only (mode 0600), atomically: `data`, or what the
    callable `data(file)` writes (streamed: no copy of the whole file in memory)."""
    tmp = path.with_name(path.name + f".tmp{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())  # on disk before it takes the name: a crash leaves old or new
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename or removal in `directory` durable (a no-op where directories cannot be
    opened, e.g. on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str, cluster: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"mpcc cluster {cluster}"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def check_days(days: int) -> None:
    """A ConfigError unless `days` is a sane certificate validity (1 to MAX_DAYS)."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise ConfigError(
            f"certificates must be valid for 1 to {MAX_DAYS} days (--days), not {days!r}"
        )


def _start(not_before: dt.datetime | None) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5) if not_before is None else not_before


def make_ca(
    cluster: str, days: int = DEFAULT_DAYS, not_before: dt.datetime | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh self-signed CA for one cluster, valid from `not_before` (default: now)."""
    check_days(days)
    key = ec.generate_private_key(ec.SECP256R1())
    start = _start(not_before)
    name = _name("mpcc cluster CA", cluster)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(
    role: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    cluster: str,
    days: int = DEFAULT_DAYS,
    not_before: dt.datetime | None = None,
    name: str | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key and a CA-signed certificate for one role (usable as TLS client and server).

    `name`: the identity in the subject (common name "mpcc <name>"; default: the role)."""
    check_days(days)
    key = ec.generate_private_key(ec.SECP256R1())
    start = _start(not_before)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"mpcc {name or role}", cluster))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(role_uri(role))]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def write_role(directory: Path, role: str, key, cert: x509.Certificate) -> tuple[Path, Path]:
    """Write `<role>.key` (0600) and `<role>.crt` into `directory`."""
    key_path, cert_path = directory / f"{role}.key", directory / f"{role}.crt"
    write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def init_ca(
    directory: Path,
    cluster: str,
    roles: tuple[str, ...] = ROLES,
    days: int = DEFAULT_DAYS,
    not_before: dt.datetime | None = None,
) -> dict[str, tuple[Path, Path]]:
    """Write `ca.crt`, `ca.key` (0600) and a key+certificate per role; returns role -> paths.

    `not_before` back-dates the certificates (tests: an expired cluster)."""
    check_days(days)
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = make_ca(cluster, days, not_before)
    write_private(directory / "ca.key", _key_pem(ca_key))
    (directory / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return {
        r: write_role(directory, r, *issue(r, ca_key, ca_cert, cluster, days, not_before))
        for r in roles
    }


def check_expiry(
    cfg: ClusterConfig, role: str, warn_days: int = WARN_DAYS, now: dt.datetime | None = None
) -> None:
    """At a party's start: a ConfigError if its certificate or the CA has expired, a logged
    warning if either expires within `warn_days`."""
    now = dt.datetime.now(dt.UTC) if now is None else now
    cert_path, _ = cfg.credential(role)
    for what, path in ((f"the {role} certificate", cert_path), ("the cluster CA", cfg.ca)):
        try:
            certs = x509.load_pem_x509_certificates(path.read_bytes())
        except OSError as e:
            raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None
        except ValueError:
            raise ConfigError(f"{path} is not a PEM certificate ({what})") from None
        end = min(c.not_valid_after_utc for c in certs)
        left = end - now
        if left <= dt.timedelta(0):
            raise ConfigError(f"{what} {path} expired on {end:%Y-%m-%d %H:%M} UTC; {RENEW_HINT}")
        if left < dt.timedelta(days=warn_days):
            when = f"{end:%Y-%m-%d %H:%M} UTC"
            log.warning(
                "%s %s expires on %s, in %d days; %s", what, path, when, left.days, RENEW_HINT
            )


# -- client identities and revocation -------------------------------------------------------
CLIENTS_DIR = "clients"  # `cluster add-client NAME` writes clients/NAME.crt and NAME.key
CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SHARED_CLIENT = "client"  # the identity of the cluster's shared client certificate


def identity_from_peercert(cert: dict | None) -> str | None:
    """The identity a peer certificate names: its subject's common name without the "mpcc "
    prefix (so "client" for the cluster's shared client certificate)."""
    for rdn in (cert or {}).get("subject", ()):
        for k, v in rdn:
            if k == "commonName" and isinstance(v, str) and v.startswith("mpcc "):
                return v[len("mpcc ") :]
    return None


def serial_from_peercert(cert: dict | None) -> int | None:
    """The serial number of a peer certificate as returned by `SSLObject.getpeercert()`."""
    try:
        return int((cert or {})["serialNumber"], 16)
    except (KeyError, TypeError, ValueError):
        return None


def check_client_name(name: str) -> None:
    if not isinstance(name, str) or not CLIENT_NAME.match(name) or name in ROLES:
        raise ConfigError(
            f"a client name is 1 to 64 letters, digits, '_', '.' or '-' (starting with a letter "
            f"or digit) and not one of {', '.join(ROLES)}; not {name!r}"
        )


def client_files(cfg: ClusterConfig, name: str) -> tuple[Path, Path]:
    """(certificate, key) of a client identity: the shared one, or one `add_client` issued."""
    if name == SHARED_CLIENT and SHARED_CLIENT in cfg.credentials:
        return cfg.credentials[SHARED_CLIENT]
    check_client_name(name)
    d = cfg.path.parent / CLIENTS_DIR
    return d / f"{name}.crt", d / f"{name}.key"


def _load_ca(cfg: ClusterConfig) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The cluster CA's key and certificate (the key is kept offline: where it is, these
    commands run)."""
    key_path = cfg.ca.with_suffix(".key")
    try:
        cert = x509.load_pem_x509_certificate(cfg.ca.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    except OSError as e:
        raise ConfigError(
            f"issuing or revoking certificates needs the cluster CA ({cfg.ca} and {key_path}): "
            f"{e.strerror or e}"
        ) from None
    except ValueError as e:
        raise ConfigError(f"cannot read the cluster CA {cfg.ca}: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path} is not the cluster's EC CA key")
    return key, cert


def add_client(
    cfg: ClusterConfig, name: str, days: int = DEFAULT_DAYS, force: bool = False
) -> tuple[Path, Path]:
    """Issue a client certificate of its own to `name` (role client, subject "mpcc <name>"):
    parties apply their per-client limits to it, and `revoke` can lock it out alone.
    Writes clients/<name>.crt and .key (0600) next to cluster.toml; returns their paths."""
    check_client_name(name)
    check_days(days)
    cert_path, key_path = client_files(cfg, name)
    if cert_path.exists() and not force:
        raise ConfigError(f"client {name!r} exists ({cert_path}); use --force to issue it anew")
    ca_key, ca_cert = _load_ca(cfg)
    key, cert = issue(SHARED_CLIENT, ca_key, ca_cert, cfg.name, days, name=name)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _read_crl(path: Path, ca_cert: x509.Certificate) -> x509.CertificateRevocationList | None:
    """The CRL at `path` (None if there is none), checked against the cluster CA."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError:
        raise ConfigError(f"{path} is not a PEM certificate revocation list") from None
    pub = ca_cert.public_key()
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(pub):  # type: ignore[arg-type]
        raise ConfigError(f"{path} is not signed by this cluster's CA")
    return crl


def revoke(cfg: ClusterConfig, name: str) -> int:
    """Add the certificate of client `name` to the cluster's revocation list (`cfg.crl`, a
    CRL signed by the CA); returns its serial number. Parties that have the new file refuse
    the certificate at the next connection and close its open links."""
    cert_path, _ = client_files(cfg, name)
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except OSError:
        raise ConfigError(f"no certificate of client {name!r} ({cert_path})") from None
    ca_key, ca_cert = _load_ca(cfg)
    old = _read_crl(cfg.crl, ca_cert)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(max(ca_cert.not_valid_after_utc, now + dt.timedelta(days=1)))
    )
    serials = {r.serial_number for r in old} if old is not None else set()
    for r in old or ():
        builder = builder.add_revoked_certificate(r)
    if cert.serial_number not in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now)
            .build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    pem = crl.public_bytes(serialization.Encoding.PEM)
    write_private(cfg.crl, pem)
    os.chmod(cfg.crl, 0o644)  # public: every party reads it
    return cert.serial_number


class Revocations:
    """The cluster's revocation list (`cfg.crl`, a CRL signed by the cluster CA), read again
    whenever its file changes: a party checks each new link's certificate against it and
    its open client links now and then, so `mpcc cluster revoke` takes effect without a
    restart. No file: nothing is revoked. A file that does not verify is logged and the
    list read before it is kept."""

    def __init__(self, cfg: ClusterConfig, logger: logging.Logger | None = None) -> None:
        self.path, self.ca = cfg.crl, cfg.ca
        self.log = logger or log
        self._serials: frozenset[int] = frozenset()
        self._stamp: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        """Read the list again if its file changed (a stat otherwise)."""
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        with self._lock:
            if stamp == self._stamp:
                return
            self._stamp = stamp
            if stamp is None:
                self._serials = frozenset()
                return
            try:
                ca = x509.load_pem_x509_certificate(self.ca.read_bytes())
                crl = _read_crl(self.path, ca)
            except (OSError, ValueError, ConfigError) as e:
                self.log.error("ignoring the new revocation list %s: %s", self.path, e)
                return
            self._serials = frozenset(r.serial_number for r in crl or ())
            self.log.info("revocation list %s: %d certificates", self.path, len(self._serials))

    def revoked(self, serial: int | None) -> bool:
        """Whether a certificate of this serial number is revoked (the list is re-read
        first if its file changed)."""
        self.refresh()
        return serial is not None and serial in self._serials
