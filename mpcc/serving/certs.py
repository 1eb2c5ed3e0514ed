"""A cluster's certificate authority and one key and certificate per role.

Each certificate names its role in a subjectAltName URI, ``urn:mpcc:role:<role>``; every TLS
link pins the peer's role to the one expected for that link (see `mpcc.serving.tls`).
Keys are EC P-256, written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
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
    "check_expiry",
    "init_ca",
    "issue",
    "make_ca",
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
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


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
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key and a CA-signed certificate for one role (usable as TLS client and server)."""
    check_days(days)
    key = ec.generate_private_key(ec.SECP256R1())
    start = _start(not_before)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"mpcc {role}", cluster))
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
