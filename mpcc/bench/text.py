"""The text report: the summary table, first queries, TLS bytes, the network projection
and the per-instruction table; and the number formats they share."""

from __future__ import annotations

import math
from typing import Any


def fmt_bytes(n: float) -> str:
    """Bytes with one decimal in GB, MB or KB (powers of ten)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def fmt_s(s: float | None) -> str:
    """Seconds with three significant digits in s, ms or us."""
    if s is None:
        return "-"
    for unit, size in (("s", 1.0), ("ms", 1e-3)):
        if abs(s) >= size:
            return f"{s / size:.3g} {unit}"
    return f"{s * 1e6:.3g} us"


def format_text(report: dict[str, Any]) -> str:
    """The human-readable report."""
    m = report["machine"]
    lines = [
        f"mpcc bench {report['name']} ({report['model']}): {report['setting']}",
        f"machine: {m['cpu']}, {m['usable_cores']} cores; Python {m['python']}, numpy "
        f"{m['numpy']}, numba {m['numba']}, onnxruntime {m['onnxruntime']}; {m['date']}"
        + (f", load {m['load_avg_1m']:.2f}" if m["load_avg_1m"] is not None else ""),
        "",
        f"{'batch':>5} {'online med':>10} {'p90':>9} {'offline/q':>9} {'dealer/q':>9} "
        f"{'sent/party':>10} {'dealer':>9} {'rounds':>6} {'plaintext':>9} {'ratio':>7}",
    ]
    for r in report["results"]:
        pt = r["plaintext_s"]
        ratio = f"{r['ratio']:.0f}x" if r["ratio"] else "-"
        lines.append(
            f"{r['batch']:>5} {fmt_s(r['online_s']['median']):>10} "
            f"{fmt_s(r['online_s']['p90']):>9} "
            f"{fmt_s(r['offline_s']['median']):>9} "
            f"{fmt_s(r['dealer_s']['median'] if r['dealer_s'] else None):>9} "
            f"{fmt_bytes(max(r['sent_bytes'])):>10} {fmt_bytes(r['dealer_bytes']):>9} "
            f"{r['rounds']:>6} {fmt_s(pt['median'] if pt else None):>9} "
            f"{ratio:>7}"
        )
    lines.append("")
    for r in report["results"]:
        if r["tls"] is not None:
            lines.append(_first_query_served(r))
            continue
        f = r["first_query"]
        what = (
            f"cold start (first query: numba loaded {f['numba_cache_loads']} kernel signatures "
            f"from its cache, compiled {f['numba_compiles']})"
            if f["cold"]
            else "first query of a new session (kernels already in memory)"
        )
        lines.append(
            f"batch {r['batch']}: {what}: {fmt_s(f['total_s'])} = offline "
            f"{fmt_s(f['offline_s'])} + online {fmt_s(f['online_s'])}, vs warm "
            f"{fmt_s(r['offline_s']['median'])} + {fmt_s(r['online_s']['median'])}"
            + (f"; compile {fmt_s(r['compile_s'])}" if r["compile_s"] is not None else "")
            + f"; session setup {fmt_s(r['setup_s'])}"
        )
    ok = all(r["matches_cost_model"] for r in report["results"])
    lines.append(
        "bytes, rounds and dealer bytes equal the compiler's cost model"
        if ok
        else "WARNING: measured traffic differs from the compiler's cost model"
    )
    lines += [f"note: {n}" for n in report["notes"]]
    if any(r["tls"] for r in report["results"]):
        lines += ["", *format_tls(report["results"])]
    if report["network"]:
        net = report["network"]
        lines += ["", f"on a {net['rtt_ms']:g} ms RTT, {net['gbps']:g} Gbit/s link: {net['note']}"]
        if report["mode"] == "threads":
            lines.append(
                "  (measured in process: no TLS, no processes, so the projection leaves out "
                "their cost per round; `--processes` measures the query over TLS)"
            )
        for r in report["results"]:
            p = r["projection"]
            lines.append(
                f"  batch {r['batch']}: {fmt_s(p['latency_s'])} at the client = "
                f"{fmt_s(p['compute_s'])} measured + ({r['rounds']} + 4) x "
                f"{net['rtt_ms'] / 2:g} ms + {fmt_bytes(max(r['sent_bytes']))} online "
                f"({fmt_s(p['transfer_s'])}), shares and answers "
                f"({fmt_s(p['upload_s'] + p['answer_s'])}) on the wire; the parties' online "
                f"phase {fmt_s(p['online_s'])}; dealer material {fmt_s(p['dealer_transfer_s'])}"
            )
    for r in report["results"]:
        if r["layers"]:
            lines += ["", *format_layers(r, report["network"] is not None)]
    return "\n".join(lines)


def _first_query_served(r: dict[str, Any]) -> str:
    f = r["first_query"]
    return (
        f"batch {r['batch']}: first query of a new session (the parties load their kernels): "
        f"{fmt_s(f['total_s'])} at the client, online {fmt_s(f['online_s'])}, vs warm "
        f"{fmt_s(r['e2e_s']['median'])}, online {fmt_s(r['online_s']['median'])}"
        + (f"; compile {fmt_s(r['compile_s'])}" if r["compile_s"] is not None else "")
        + f"; starting the processes, deploying and the session {fmt_s(r['setup_s'])}"
    )


def format_tls(results: list[dict[str, Any]]) -> list[str]:
    """Process mode: the latency's online/offline split and the bytes on the wire."""
    lines = [
        "per query, at the client: latency = online + the rest (sharing the input, sending "
        "shares and results over TLS, waiting at P0); offline = material made ahead by the "
        "dealer and the parties, off the latency",
    ]
    for r in results:
        t, lat, online = r["tls"], r["e2e_s"]["median"], r["online_s"]["median"]
        lines.append(
            f"  batch {r['batch']}: latency {fmt_s(lat)} (median; p90 {fmt_s(r['e2e_s']['p90'])}) "
            f"= online {fmt_s(online)} ({online / lat:.0%}) + {fmt_s(lat - online)} "
            f"(of it queued at P0 {fmt_s(t['queued_s']['median'])}); offline "
            f"{fmt_s(r['offline_s']['median'])} ahead"
        )
    lines.append(
        "bytes on the wire per query: the transport's payload count (as in-process) + mpcc "
        "framing and TLS 1.3 records"
    )
    for r in results:
        t = r["tls"]
        links = [
            ("P0 -> P1", r["sent_bytes"][0], t["wire_sent"][0]),
            ("P1 -> P0", r["sent_bytes"][1], t["wire_sent"][1]),
            ("dealer -> P1", r["dealer_bytes"], t["dealer_wire"]),
        ]
        lines.append(
            f"  batch {r['batch']}: "
            + "; ".join(
                f"{name} {fmt_bytes(p)} + {fmt_bytes(w - p)}"
                + (f" ({(w - p) / p:.1%})" if p else "")
                + f" = {fmt_bytes(w)}"
                for name, p, w in links
            )
        )
    hs = results[-1]["tls"]["handshake"]
    lines.append(
        "TLS 1.3 handshake with mutual authentication, once per connection (both directions): "
        + ", ".join(f"client-{role.upper()} {fmt_bytes(n)}" for role, n in hs.items())
    )
    return lines


def format_layers(r: dict[str, Any], projected: bool = False) -> list[str]:
    """The per-instruction table of one batch result."""
    lay = r["layers"]
    total = sum(row["time_s"][0] for row in lay["instrs"]) or 1.0
    head = (
        f"  {'#':>3} {'op':<10} {'shape':<16} {'ms':>7} {'%':>4} {'cpu':>7} {'queued':>7} "
        f"{'recv':>7} "
        f"{'rounds':>7} {'sent/party':>19} {'dealer':>9} {'MACs':>11} {'GMAC/s':>6}"
    )
    lines = [
        f"batch {r['batch']}, per instruction (P0's clock, median of {r['repeat']} queries; "
        "cpu = on a core, queued = runnable but not running, recv = inside receive; "
        "rounds and bytes measured/predicted)",
        head + (f" {'projected':>9}" if projected else ""),
    ]
    for row in lay["instrs"]:
        p = row["predicted"]
        t = row["time_s"][0]
        rate = f"{row['gmacs_per_s']:.2f}" if "gmacs_per_s" in row else "-"
        mark = "" if (row["rounds"], max(row["sent"])) == (p["rounds"], p["sent"]) else " !"
        sent = f"{fmt_bytes(max(row['sent']))}/{fmt_bytes(p['sent'])}" if p["sent"] else "-"
        line = (
            f"  {row['index']:>3} {row['op']:<10} {'x'.join(map(str, row['shape'])):<16} "
            f"{t * 1e3:>7.3f} {100 * t / total:>4.0f} {row['cpu_s'][0] * 1e3:>7.3f} "
            f"{row['runnable_s'][0] * 1e3:>7.3f} {row['wait_s'][0] * 1e3:>7.3f} "
            f"{row['rounds']:>3}/{p['rounds']:<3} {sent:>19} "
            f"{fmt_bytes(p['dealer']) if p['dealer'] else '-':>9} "
            f"{p['macs'] or '-':>11} "
            f"{rate:>6}"
        )
        if projected:
            line += f" {fmt_s(row['projected_s']):>9}"
        lines.append(line + mark)
    lines.append(
        f"  of {fmt_s(r['online_s']['median'])} online (medians): instruction loop "
        f"{fmt_s(lay['loop_s'])}, closing the query {fmt_s(lay['closing_s'])}, "
        f"LocalCluster's thread hand-off {fmt_s(lay['handoff_s'])}"
    )
    run = lay["run"]

    def pair(key: str) -> str:
        return " / ".join(fmt_s(v) if math.isfinite(v) else "?" for v in run[key])

    lines.append(
        f"  P0 / P1 per query: {pair('wall_s')} = on a core {pair('cpu_s')} + runnable, not "
        f"running {pair('runnable_s')} + asleep (on the peer or the GIL) {pair('asleep_s')}; "
        f"inside receive {pair('in_receive_s')}"
    )
    return lines
