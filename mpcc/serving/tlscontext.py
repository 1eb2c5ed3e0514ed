"""TLS contexts for the cluster's links, and SSL errors in words.

Both ends load the cluster CA and their role's key and certificate and require the peer's
certificate (`CERT_REQUIRED` on both sides); host names are not checked: the role the
certificate names is the identity, checked against the role expected for the link.
"""

from __future__ import annotations

import ssl

from mpcc.errors import MpccError
from mpcc.serving.config import ClusterConfig


def _context(cfg: ClusterConfig, server: bool, cert=None, key=None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # the peer's role, not its host name, is checked
    ctx.verify_mode = ssl.CERT_REQUIRED
    if server:
        ctx.num_tickets = 0  # no session resumption: every link authenticates afresh
    try:
        ctx.load_verify_locations(cafile=str(cfg.ca))
        if cert is not None:
            ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        raise MpccError(f"cannot load TLS credentials ({e})") from None
    return ctx


def server_context(cfg: ClusterConfig, role: str) -> ssl.SSLContext:
    """Context for a party's listening socket: TLS 1.3 only, client certificate required."""
    return _context(cfg, True, *cfg.credential(role))


def client_context(
    cfg: ClusterConfig, role: str | None, cert: str | None = None, key: str | None = None
) -> ssl.SSLContext:
    """Context for dialing a party as `role` (or with explicit cert/key; None: no certificate)."""
    if cert is None and role is not None:
        cert, key = cfg.credential(role)
    return _context(cfg, False, cert, key)


# TLS alerts about certificates: what the peer found wrong with this side's certificate chain
_ALERTS = {
    "CERTIFICATE_EXPIRED": "the peer says this side's certificate or its CA has expired",
    "UNKNOWN_CA": "the peer does not trust this side's CA (is it another cluster's?)",
    "BAD_CERTIFICATE": "the peer rejected this side's certificate",
    "CERTIFICATE_UNKNOWN": "the peer could not verify this side's certificate",
    "UNSUPPORTED_CERTIFICATE": "the peer cannot use this side's certificate",
    "CERTIFICATE_REQUIRED": "the peer requires a certificate and this side sent none",
}
_EXPIRED_HINT = "run `mpcc cluster init` again and distribute the new files"
_X509_EXPIRED, _X509_NOT_YET_VALID = 10, 9  # OpenSSL's X509_V_ERR_CERT_HAS_EXPIRED and _NOT_YET


def ssl_reason(e: ssl.SSLError) -> str:
    """An SSL error in words: OpenSSL's reason, what it means, and for expiry what to do."""
    reason = getattr(e, "reason", None) or str(e)
    detail = getattr(e, "verify_message", None)  # SSLCertVerificationError: why verify failed
    code = getattr(e, "verify_code", None)
    if detail:
        text = f"{reason}: {detail}"
        if code == _X509_EXPIRED or "expired" in detail:
            return f"{text}; {_EXPIRED_HINT}"
        if code == _X509_NOT_YET_VALID:
            return f"{text}; check the clocks of both machines"
        return text
    _, alert, name = reason.partition("_ALERT_")
    if alert and name in _ALERTS:
        text = f"{_ALERTS[name]} ({reason})"
        return f"{text}; {_EXPIRED_HINT}" if name == "CERTIFICATE_EXPIRED" else text
    return reason
