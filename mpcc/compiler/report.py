"""The compile report: the IR with each instruction's cost, and the totals per query."""

from __future__ import annotations

from typing import Any

from mpcc.compiler.batching import row_mixing
from mpcc.compiler.costmodel import CostReport, dealer_to_p0, estimate
from mpcc.compiler.ir import Program
from mpcc.compiler.planfile import plan_hash, to_public
from mpcc.compiler.precision import format_assumptions, format_calibration, precision_json


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B" if n else "-"


def _batching(prog: Program) -> str:
    why = row_mixing(prog)
    if why is None and prog.batch == 1:
        return "one sample per query (a larger batch in --input-shape lets clients share one)"
    if why is None:
        return f"rows independent: up to {prog.batch} samples of several clients share a query"
    return f"one client per query, {prog.batch} samples a request (rows mix at {why})"


def _dealer_lines(prog: Program, to_p1: int) -> list[str]:
    p0 = dealer_to_p0(prog)
    if not p0:
        return [f"  dealer to P1           {_bytes(to_p1)}  ({to_p1} B; P0 expands a seed)"]
    return [
        f"  dealer to P1           {_bytes(to_p1)}  ({to_p1} B)",
        f"  dealer to P0           {_bytes(p0)}  ({p0} B: FSS keys' common words)",
    ]


def format_report(prog: Program, report: CostReport | None = None, calibration: Any = None) -> str:
    """A human-readable plan: header, notes, one line per instruction, totals, and the
    precision (what f assumes, or the calibration report if given)."""
    report = report or estimate(prog)
    head = (
        f"plan {prog.name}  ring=2^64 f={prog.frac_bits}  batch={prog.batch}  "
        f"weights={'public' if prog.public_weights else 'secret'}  "
        f"sha256={plan_hash(prog)[:16]}"
    )
    lines = [head, f"  serving: {_batching(prog)}"]
    lines += [f"  note: {n}" for n in prog.notes]
    lines.append(f"  {'instruction':<84} {'rounds':>6} {'sent/party':>11} {'dealer':>10}")
    body = prog.text().splitlines()[1:]
    for text, c in zip(body, report.per_instr, strict=True):
        lines.append(f"{text:<98} {c.rounds or '-':>6} {_bytes(c.sent):>11} {_bytes(c.dealer):>10}")
    t, s = report.total, report.setup
    lines += [
        "totals per query:",
        f"  online rounds          {t.rounds}",
        f"  sent by each party     {_bytes(t.sent)}  ({t.sent} B)",
        *_dealer_lines(prog, t.dealer),
        f"  multiply-adds / party  {t.macs:,}",
        f"  client -> each party   {_bytes(report.client_sent)}",
        f"  each party -> client   {_bytes(report.client_received)}",
        f"once per session: opening masked weights, {_bytes(s.setup)} sent by each party",
    ]
    if calibration is not None:
        lines += format_calibration(calibration)
    else:
        lines += format_assumptions(prog)
    return "\n".join(lines)


def report_json(
    prog: Program, report: CostReport | None = None, calibration: Any = None
) -> dict[str, Any]:
    """The same report as JSON data (with the full public plan)."""
    report = report or estimate(prog)
    return {
        "name": prog.name,
        "sha256": plan_hash(prog),
        "batch": prog.batch,
        "notes": prog.notes,
        "rows_mixed_by": row_mixing(prog),
        "instructions": [
            dict(i, cost=c.asdict())
            for i, c in zip(to_public(prog)["instrs"], report.per_instr, strict=True)
        ],
        "values": to_public(prog)["values"],
        "precision": precision_json(prog, calibration),
        **report.asdict(),
        "dealer_to_p0": dealer_to_p0(prog),
    }
