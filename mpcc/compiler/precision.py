"""The precision part of the compile report: what a plan's f can hold and resolve, and, with
calibration data, each value's headroom and resolution (`mpcc.compiler.calibrate`)."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from mpcc.compiler import ops
from mpcc.compiler.calibrate import MIN_OUTPUT_LSBS, RING_BITS
from mpcc.compiler.ir import MAX_FRAC_BITS, MIN_FRAC_BITS, Program

if TYPE_CHECKING:
    from mpcc.compiler.calibrate import Report


def format_assumptions(prog: Program) -> list[str]:
    """What the plan's f assumes, without calibration: the range each scale can hold and the
    resolution outputs need."""
    f = prog.frac_bits
    lsb = 2.0**-f
    calibrated = any("from calibration data" in n for n in prog.notes)
    lines = [
        f"precision at f={f} (calibrated when compiled: see the note; the ranges it holds)"
        if calibrated
        else f"precision at f={f} (assumed, not measured: --calibrate x.npy checks it on real "
        "inputs and chooses f)",
        f"  resolution 2^-{f} = {lsb:.3g}; an output needs a typical magnitude of "
        f"{MIN_OUTPUT_LSBS:.0f} LSBs = {MIN_OUTPUT_LSBS * lsb:.3g} for a stable argmax",
    ]
    ops_at: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for ins in prog.instrs:
        if ins.op is not ops.output:
            ops_at[prog.values[ins.out].scale][ins.op.name] += 1
    for s in sorted(ops_at):
        bits = RING_BITS - s
        what = ", ".join(f"{n} x{c}" if c > 1 else n for n, c in ops_at[s].items())
        lines.append(f"  @{s}: |v| < 2^{bits} = {2.0**bits:.3g} for {_clip(what, 70)}")
    return lines


def format_calibration(rep: Report) -> list[str]:
    """The calibration report: f and why, one line per value (headroom, resolution), the
    weights, the outputs, what could not be mapped, and the warnings."""
    f = rep.frac_bits
    if rep.chosen:
        how = (
            f"chosen from {rep.samples} calibration samples: the largest f in "
            f"[{MIN_FRAC_BITS}, {MAX_FRAC_BITS}] leaving {rep.margin_bits} bits of headroom "
            f"for every value ({rep.limit})"
        )
    else:
        how = f"given, checked on {rep.samples} calibration samples"
    lines = [
        f"precision at f={f}, {how}",
        f"  resolution 2^-{f} = {2.0**-f:.3g} (1 LSB); a value at scale s holds |v| < "
        f"2^({RING_BITS}-s); headroom: bits between max |v| and that bound; resolution: rms |v| "
        "in LSBs",
        f"  {'value':<6}{'op':<11}{'holds':<41}{'scale':>5} {'max|v|':>9} {'rms|v|':>9} "
        f"{'headroom':>9} {'resolution':>12}",
    ]
    for v in rep.values:
        holds = v.tensor if v.tensor else f"(inside {v.node}: bound)"
        lines.append(
            f"  %{v.vid:<5}{v.op:<11}{_clip(holds, 40):<41}{'@' + str(v.scale):>5} "
            f"{v.max:>9.3g} {v.rms:>9.3g} {_bits(v.headroom()):>9} {rep.lsbs(v.rms):>12.3g}"
        )
    if rep.weights:
        big = max(rep.weights, key=lambda w: w[3])
        small = min(rep.weights, key=lambda w: w[4] if w[4] > 0 else float("inf"))
        lines.append(
            f"  weights: {len(rep.weights)} tensors; largest |w| {big[3]:.3g} ({big[0]}, "
            f"{_clip(big[1], 30)}); smallest rms {small[4]:.3g} = {rep.lsbs(small[4]):.3g} LSBs "
            f"({small[0]}, {_clip(small[1], 30)})"
        )
    m = rep.measured
    for name, v, gap in rep.outputs:
        ref = m.reference.get(name)
        gap_s = (
            f", median top-2 gap {gap:.3g} = {rep.lsbs(gap):.3g} LSBs" if gap is not None else ""
        )
        ref_s = f"; the float plan graph matches ONNX to {ref:.2g}" if ref is not None else ""
        lines.append(
            f"  output {name!r}: rms {v.rms:.3g} = {rep.lsbs(v.rms):.3g} LSBs{gap_s}{ref_s}"
        )
    for name, (n, top, rms, agree) in rep.fixed_point.items():
        agree_s = "" if agree is None else f", argmax agrees on {agree:.1%}"
        lines.append(
            f"  fixed point (this plan's arithmetic, cleartext, on {n} calibration samples): "
            f"output {name!r} max |error| {top:.3g}, rms {rms:.3g}{agree_s}"
        )
    if m.fallback:
        lines.append(
            "  the graph the plan is lowered from does not run in onnxruntime ("
            + _clip(m.fallback, 120)
            + "): ranges come from the ONNX model's tensors the passes kept by name; the other "
            "values are bounds or not checked"
        )
    if m.rewritten:
        lines.append(
            "  measured as the plan computes them (the passes changed these tensors): "
            + _names(m.rewritten)
        )
    if m.folded:
        lines.append(
            "  ONNX tensors with no value in the plan (folded, fused or dropped by the passes): "
            + _names(m.folded)
        )
    bound = sum(v.bound for v in rep.values)
    if bound:
        lines.append(
            f"  {bound} value(s) internal to a node's lowering: max |v| is estimated from the "
            "node's tensors and factors, not measured (a bound for simple lowerings such as "
            "PRelu; for a smooth-function approximation only an estimate: the fixed-point "
            "line is the measurement)"
        )
    if rep.unmapped:
        lines.append(
            f"  {len(rep.unmapped)} value(s) with no calibrated range (not checked): "
            + ", ".join(rep.unmapped[:8])
            + (" ..." if len(rep.unmapped) > 8 else "")
        )
    lines += [f"  warning: {w}" for w in rep.warnings]
    return lines


def precision_json(prog: Program, rep: Report | None) -> dict[str, Any]:
    """The precision section as JSON data."""
    if rep is None:
        return {
            "frac_bits": prog.frac_bits,
            "calibrated": False,
            "scales": {
                str(s): 2.0 ** (RING_BITS - s) for s in sorted({v.scale for v in prog.values})
            },
        }
    return {
        "frac_bits": rep.frac_bits,
        "calibrated": True,
        "chosen": rep.chosen,
        "margin_bits": rep.margin_bits,
        "samples": rep.samples,
        "values": [
            dict(
                id=v.vid,
                op=v.op,
                tensor=v.tensor,
                node=v.node,
                scale=v.scale,
                max=v.max,
                rms=v.rms,
                bound=v.bound,
                headroom_bits=v.headroom(),
                rms_lsbs=rep.lsbs(v.rms),
            )
            for v in rep.values
        ],
        "outputs": [
            dict(name=n, rms=v.rms, rms_lsbs=rep.lsbs(v.rms), median_top2_gap=gap)
            for n, v, gap in rep.outputs
        ],
        "fixed_point": {
            n: dict(samples=k, max_error=top, rms_error=rms, argmax_agreement=agree)
            for n, (k, top, rms, agree) in rep.fixed_point.items()
        },
        "rewritten": rep.measured.rewritten,
        "folded": rep.measured.folded,
        "fallback": rep.measured.fallback,
        "unmapped": rep.unmapped,
        "warnings": rep.warnings,
    }


def _bits(b: float) -> str:
    return "inf" if b == float("inf") else f"{b:.1f} b"


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else "..." + s[-(n - 3) :]


def _names(ts: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(t) for t in ts[:limit])
    return shown + (f" and {len(ts) - limit} more" if len(ts) > limit else "")
