"""Opening a link: `dial` connects to a party, checks the role its certificate names and
says hello with the link's kind; `greet` is the party's side, which checks the hello's kind
and protocol version against the peer's pinned role."""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

from mpcc.errors import PartyError
from mpcc.serving.config import ClusterConfig, format_address
from mpcc.serving.messages import Hello, MalformedMessage, Refused, Welcome
from mpcc.serving.tls import TlsChannel
from mpcc.serving.tlsstream import LinkRefused

PROTOCOL_VERSION = 1


# -- link establishment ---------------------------------------------------------------------
def dial(
    cfg: ClusterConfig,
    ctx: ssl.SSLContext,
    target: str,
    *,
    me: str,
    link: str,
    sid: str | None = None,
    lane: int = 0,
    timeout: float | None = None,
) -> tuple[TlsChannel, dict[str, Any]]:
    """Connect to party `target`, check its certificate's role, open a `link` (a peer link
    names its session, `sid`, and which of its lanes it carries).

    Connecting and the TLS handshake must end within the timeout (the serving `timeout_s`
    by default); so must the answer to the hello. Returns the channel and the meta of the
    peer's welcome; raises PartyError or LinkRefused.
    """
    addr = cfg.address(target)
    t = cfg.serving.timeout_s if timeout is None else timeout
    deadline = time.monotonic() + t
    where = f"{target} at {format_address(addr)}"
    try:
        sock = socket.create_connection(addr, timeout=t)
    except OSError as e:
        raise PartyError(f"cannot reach {where}: {e.strerror or e}") from None
    ch = TlsChannel(
        sock,
        ctx,
        server=False,
        name=me,
        timeout=t,
        max_frame_bytes=cfg.serving.max_frame_bytes,
        max_message_bytes=cfg.serving.max_message_bytes,  # the peer is a party (checked below)
        label=target.upper() if target != "dealer" else "dealer",
        deadline=deadline,
    )
    if ch.peer_role != target:
        ch.close("wrong peer role")
        raise LinkRefused(f"expected {where}, but its certificate is for {ch.peer_role!r}")
    try:
        Hello(link, PROTOCOL_VERSION, sid, lane or None).send(ch)
        msg = ch.recv_msg(t)
    except PartyError as e:
        ch.close(str(e))
        raise PartyError(f"{target} did not accept the {link} link: {_strip(e, ch)}") from None
    if msg.kind not in (Refused.KIND, Welcome.KIND):
        ch.close("bad welcome")
        raise PartyError(f"{target} answered the hello with {msg.kind!r}")
    try:
        answer = (Refused if msg.kind == Refused.KIND else Welcome).parse(msg.meta)
    except MalformedMessage as e:
        ch.close("bad welcome")
        raise PartyError(f"{target} answered the hello badly: {e}") from None
    if isinstance(answer, Refused):
        ch.close("refused")
        raise LinkRefused(f"{target} refused the {link} link: {answer.msg}")
    return ch, msg.meta


def _strip(e: Exception, ch: TlsChannel) -> str:
    s = str(e)
    return s[len(ch.peer) + 2 :] if s.startswith(ch.peer + ": ") else s


def greet(ch: TlsChannel, allowed: dict[str, set[str]], timeout: float) -> Hello:
    """Server side: read the hello and check the link kind against the peer's pinned role.

    `allowed` maps link kinds to the certificate roles that may open them. On success the
    hello is returned (the caller sends the welcome); otherwise the peer is told why, the
    channel closed and LinkRefused raised.
    """
    msg = ch.recv_msg(timeout, expect=Hello.KIND)
    try:
        hello = Hello.parse(msg.meta)
        why = None
        if hello.version != PROTOCOL_VERSION:
            why = f"protocol version {hello.version!r} is not {PROTOCOL_VERSION}"
        elif hello.link not in allowed:
            why = f"no {hello.link!r} links here"
        elif ch.peer_role not in allowed[hello.link]:
            why = f"a certificate of role {ch.peer_role!r} may not open a {hello.link} link"
    except MalformedMessage as e:
        why = str(e)
    if why is not None:
        try:
            Refused(why).send(ch)
        except PartyError:
            pass
        ch.close(why)
        raise LinkRefused(f"refused {ch.peer}: {why}")
    return hello
