"""`mpcc cluster status`: each compute party's public `info`, asked one by one, and its
lines for a terminal (state, session, counters, latency and link bytes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mpcc.errors import MpccError
from mpcc.serving.certs import client_files
from mpcc.serving.client import PARTIES, party_info
from mpcc.serving.config import ClusterConfig
from mpcc.serving.config import load as load_config
from mpcc.serving.links import dial
from mpcc.serving.messages import PartyInfo
from mpcc.serving.tlscontext import client_context


def cluster_status(
    config: str | Path | ClusterConfig, identity: str | None = None
) -> dict[str, dict[str, Any] | str]:
    """Each compute party's public `info`, or why it could not be had (asked one by one, so
    a party that is down does not hide the other). `identity`: ask with the certificate
    `cluster add-client` issued to it (default: the shared client certificate)."""
    cfg = config if isinstance(config, ClusterConfig) else load_config(config)
    if identity is None:
        ctx = client_context(cfg, "client")
    else:
        cert, key = client_files(cfg, identity)
        ctx = client_context(cfg, None, str(cert), str(key))
    got: dict[str, dict[str, Any] | str] = {}
    for role in PARTIES:
        try:
            ch, _ = dial(cfg, ctx, role, me="client", link="client")
            try:
                ch.send_msg(PartyInfo.KIND)
                msg = ch.recv_msg(cfg.serving.timeout_s, expect=PartyInfo.KIND)
                got[role] = party_info(role, msg.meta)
            finally:
                ch.close("status read")
        except MpccError as e:
            got[role] = str(e)
    return got


def _ms(v: float | None) -> str:
    return "beyond the last bucket" if v is None else f"{v * 1e3:g} ms"


def format_metrics(m: dict[str, Any]) -> str:
    """One line of a party's counters (its `info`'s "metrics") for `mpcc cluster status`."""
    fails = m.get("failures", {})
    failed = sum(fails.values())
    causes = ", ".join(f"{c} {n}" for c, n in fails.items())
    g, lat, online = m.get("gauges", {}), m.get("latency_s", {}), m.get("online_s", {})
    mb = m.get("link_bytes", {})

    def n(key: str) -> int:
        return int(g.get(key, 0))

    links = ", ".join(
        f"{k} {v.get('sent', 0) / 1e6:.1f}/{v.get('received', 0) / 1e6:.1f} MB"
        for k, v in mb.items()
    )
    text = (
        f"{m.get('requests', 0)} requests, {m.get('answers', 0)} answers, {failed} failed"
        + (f" ({causes})" if causes else "")
        + f"; {m.get('queries', 0)} queries in {m.get('sessions', 0)} sessions"
        + f"; queued {n('queued_requests')}, in flight {n('inflight_requests')}"
        + f", to send {n('outbox_messages')}, client links {n('client_links')}"
        + f"; stock {n('stock_queries')} queries ({g.get('stock_bytes', 0) / 1e6:.1f} MB)"
    )
    if lat.get("count"):
        text += (
            f"; latency median <= {_ms(lat.get('p50_at_most'))}, p99 <= "
            f"{_ms(lat.get('p99_at_most'))}, online mean {online.get('mean', 0) * 1e3:.1f} ms"
        )
    return text + (f"; wire sent/received: {links}" if links else "")


def format_status(got: dict[str, dict[str, Any] | str]) -> tuple[str, bool]:
    """Lines for `mpcc cluster status`, and whether the cluster is serving (P0 and P1 in
    one live session)."""
    lines = []
    for role, m in got.items():
        if isinstance(m, str):
            lines.append(f"{role.upper()}: unreachable: {m}")
            continue
        if not m.get("deployed"):
            model = "no model deployed"
        else:
            model = (
                f"{m.get('name')} (plan {str(m.get('plan_hash'))[:12]}, input "
                f"{m.get('input_shape')}, batch {m.get('batch')})"
            )
        sid = m.get("session")
        session = f"session {sid[:8]}…" if sid else "no session"
        stock = f", stock {m['stock']}" if "stock" in m else ""
        line = f"{role.upper()}: {model}; {session}{stock}; {m.get('answered', 0)} answered"
        if m.get("last_error"):
            line += f"; last error: {m['last_error']}"
        lines.append(line)
        if isinstance(m.get("metrics"), dict):
            lines.append("    " + format_metrics(m["metrics"]))
    sids = {m.get("session") if isinstance(m, dict) else None for m in got.values()}
    serving = len(sids) == 1 and None not in sids
    lines.append("serving" if serving else "not serving")
    return "\n".join(lines), serving
