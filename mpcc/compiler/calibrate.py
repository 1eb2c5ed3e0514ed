"""Precision from calibration data: run the float model on representative inputs, record the
range of every value the plan computes, and choose the fractional bits f from it.

A plan computes over Z_2^64 with two's-complement fixed point. Every secure comparison and
truncation is exact only while |x| < 2^62 in the ring (protocols.md §3), so a value the IR
carries at scale s must stay within |v| < 2^(62 - s) in real terms, and its scale grows with f
(a linear layer's output is at x.scale + f, up to 2f + SLACK_BITS). More fractional bits
resolve small values better and leave less room for large ones. Calibration measures both:

1. `measure` (in `calibrate_measure`) runs the graph the passes left (`Graph.to_onnx`, the
   very computation the plan lowers) in onnxruntime on the calibration inputs, every tensor
   exposed, and keeps each tensor's max |v| and RMS |v|. The original ONNX model runs beside
   it as the reference: a plan tensor with the same name and the same values as an ONNX
   tensor is that tensor; one the passes changed (a pool whose 1/k moved into the next
   layer's weights, a layer with a BatchNormalization folded in) is measured as the plan
   computes it; ONNX tensors the passes removed (folded BatchNormalization inputs, a dropped
   final Softmax) are listed.
2. `choose` lowers the graph at each f from MAX_FRAC_BITS down and maps every IR value to
   what it holds through the lowering's `Trace`: a node's output tensor, the same tensor at
   another scale (trunc, rescale, output), or, for a value internal to one node's lowering
   (PRelu's parts, a negation), a bound: the largest of the node's input and output tensors
   times its weights' and factors' largest magnitude. The chosen f is the largest at which
   every value keeps MARGIN_BITS of headroom below its ring bound (and every weight fits).

One f for the whole plan: the IR records a scale per value, but the lowering, the weight
encoding, the client's input encoding and several rules (leaky_relu's alpha, avgpool's
reciprocal) read the plan's single `frac_bits`, so per-layer scales would need the lowering
to carry a target scale per node; that is not sound in the current IR, and not done here.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from mpcc.compiler import ops
from mpcc.compiler.calibrate_measure import SAME, Calibration, Measured, measure
from mpcc.compiler.graph import Graph
from mpcc.compiler.ir import MAX_FRAC_BITS, MIN_FRAC_BITS, Program
from mpcc.compiler.lowering import Trace, lower
from mpcc.errors import ModelError

RING_BITS = 62  # every secure comparison and truncation needs |x| < 2^62 in the ring


# Headroom kept between the largest calibrated value and its ring bound: 16x. Calibration
# inputs are a sample; an input a little brighter or an outlier grows every layer's values,
# and MaxPool compares differences (up to twice a value). 4 bits absorb that for the models
# seen so far; a plan is refused only when the calibration data itself would overflow.
MARGIN_BITS = 4


# Below about 100 LSBs a value's rounding (±1 LSB per truncation, accumulated over the
# layers) is a percent of it: an output that small gives a noisy argmax.
MIN_OUTPUT_LSBS = 100.0


@dataclass(frozen=True)
class ValueRange:
    """One IR value of the chosen plan with its calibrated range."""

    vid: int
    tensor: str  # the graph tensor it holds ("" for a value internal to a node's lowering)
    node: str
    op: str
    scale: int
    max: float
    rms: float
    bound: bool  # True: max is a bound derived from the node's tensors, not measured

    def headroom(self) -> float:
        """Bits between the largest value and the ring bound 2^(62 - scale)."""
        return RING_BITS - self.scale - _log2(self.max)


@dataclass
class Report:
    """The calibration report of a plan: the f chosen, each value's headroom and resolution,
    and the warnings. `text()` formats it (`mpcc.compiler.precision`)."""

    frac_bits: int
    chosen: bool  # True: f chosen from the data; False: given by the caller, checked
    margin_bits: int
    samples: int
    values: list[ValueRange]
    weights: list[tuple[str, str, int, float, float]]  # (name, source, scale, max, rms)
    outputs: list[tuple[str, ValueRange, float | None]]  # (name, value, median top-2 gap)
    measured: Measured
    limit: str = ""  # why f is not higher
    unmapped: list[str] = field(default_factory=list)  # IR values with no calibrated range
    warnings: list[str] = field(default_factory=list)
    # The plan's own fixed-point outputs on calibration samples against the float graph's:
    # output -> (samples, max |diff|, rms diff, argmax agreement or None). See `check`.
    fixed_point: dict[str, tuple[int, float, float, float | None]] = field(default_factory=dict)

    def renumber(self, ids: dict[int, int]) -> None:
        """Follow the plan's values renumbered (`network.fuse_pool_relu`): each value takes its
        new id; a MaxPool fused with its ReLU holds two, its max and the ReLU's output."""
        self.values = [replace(v, vid=ids[v.vid]) for v in self.values]
        self.outputs = [(name, replace(v, vid=ids[v.vid]), gap) for name, v, gap in self.outputs]

    def lsbs(self, magnitude: float) -> float:
        """A magnitude in LSBs of the plan's resolution 2^-f."""
        return magnitude * 2.0**self.frac_bits

    def note(self) -> str:
        """One line for the plan's notes."""
        how = "chosen" if self.chosen else "checked"
        warned = f"; {len(self.warnings)} warning(s)" if self.warnings else ""
        return (
            f"f={self.frac_bits} {how} from calibration data ({self.samples} samples, "
            f"{self.margin_bits} bits of margin){warned}"
        )

    def text(self) -> str:
        from mpcc.compiler.precision import format_calibration

        return "\n".join(format_calibration(self))


def ranges(
    prog: Program, weights: dict[str, np.ndarray], trace: Trace, measured: Measured
) -> list[ValueRange]:
    """Every IR value of `prog` with the calibrated range of what it holds (see the module
    docstring for how values map to tensors)."""
    holds = {vid: t for t, vid in trace.values.items()}
    by_out = {ins.out: ins for ins in prog.instrs}
    node_tensors: dict[str, list[str]] = {}  # node -> its output tensors
    for t, vid in trace.values.items():
        node_tensors.setdefault(trace.nodes.get(vid, ""), []).append(t)
    out: list[ValueRange] = []
    for v in prog.values:
        ins = by_out[v.id]
        node = trace.nodes.get(v.id, "")
        t = holds.get(v.id)
        if t is None and ins.op in (ops.trunc, ops.rescale, ops.output) and ins.args:
            t = holds.get(ins.args[0])
            if t is not None:
                holds[v.id] = t
        if t is not None and t in measured.tensors:
            s = measured.tensors[t]
            out.append(ValueRange(v.id, t, node, ins.op.name, v.scale, s.max, s.rms, False))
            continue
        # Internal to one node's lowering: bounded by its operands and the node's outputs,
        # times the largest weight or public factor it applies.
        near = [holds.get(a) for a in ins.args] + node_tensors.get(node, [])
        stats = [measured.tensors[t] for t in near if t in measured.tensors]
        if not stats:
            continue
        gain = max(1.0, abs(float(ins.attrs.get("factor", 1.0))))
        for w in ins.weights:
            gain *= max(1.0, float(np.abs(weights[w]).max(initial=0.0)))
        top = max(s.max for s in stats) * gain
        rms = max(s.rms for s in stats) * gain
        out.append(ValueRange(v.id, "", node, ins.op.name, v.scale, top, rms, True))
    return out


def choose(
    g: Graph,
    measured: Measured,
    frac_bits: int | None = None,
    public_weights: bool = False,
    margin_bits: int = MARGIN_BITS,
) -> Report:
    """Pick f (or check the given one) for graph `g` from its calibrated ranges.

    The chosen f is the largest in [MIN_FRAC_BITS, MAX_FRAC_BITS] at which every value keeps
    `margin_bits` of headroom; if none does, MIN_FRAC_BITS with a warning. Raises ModelError
    naming the value and node when a calibrated value overflows its ring bound at the f used.
    """
    candidates = (
        [frac_bits] if frac_bits is not None else range(MAX_FRAC_BITS, MIN_FRAC_BITS - 1, -1)
    )
    tried: list[tuple[int, str]] = []
    for f in candidates:
        trace = Trace()
        prog, weights = lower(g, f, public_weights, trace)
        vals = ranges(prog, weights, trace, measured)
        wts = _weights(prog, weights)
        worst = min(vals, key=ValueRange.headroom)
        wworst = min(wts, key=_weight_headroom, default=None)
        short = _describe(worst) if worst.headroom() < margin_bits else ""
        if not short and wworst is not None and _weight_headroom(wworst) < margin_bits:
            short = _describe_weight(wworst)
        if not short or f == candidates[-1]:
            break
        tried.append((f, short))
    at = "the smallest f the IR allows" if frac_bits is None else "the f given"
    if worst.headroom() <= 0:
        raise ModelError(
            f"calibration: {_describe(worst)} would overflow the ring at f={f} ({at}): at "
            f"scale {worst.scale} a value must hold |v| < 2^{RING_BITS - worst.scale}. Scale "
            "the model's inputs or weights down, or check the calibration data"
        )
    if wworst is not None and _weight_headroom(wworst) <= 0:
        raise ModelError(
            f"calibration: {_describe_weight(wworst)} does not fit the ring at f={f} ({at}): "
            f"at scale {wworst[2]} a weight must hold |w| < 2^{RING_BITS - wworst[2]}"
        )
    rep = Report(
        frac_bits=f,
        chosen=frac_bits is None,
        margin_bits=margin_bits,
        samples=measured.samples,
        values=[v for v in vals if v.vid not in {vid for _, vid in prog.outputs}],
        unmapped=_unmapped(prog, vals, trace),
        weights=wts,
        outputs=[],
        measured=measured,
    )
    if frac_bits is None:
        rep.limit = (
            f"f={f + 1} would leave less than {margin_bits} bits above {tried[-1][1]}"
            if f < MAX_FRAC_BITS and tried
            else f"f={MAX_FRAC_BITS} is the most the IR allows"
        )
    if worst.headroom() < margin_bits:
        rep.warnings.append(
            f"{_describe(worst)} keeps only {worst.headroom():.1f} bits of headroom at f={f} "
            f"(margin {margin_bits}): inputs larger than the calibration data may overflow"
        )
    by_id = {v.vid: v for v in vals}
    for name, vid in prog.outputs:
        v = by_id.get(vid)
        if v is None:
            continue
        gap = _top2_gap(measured.outputs.get(name))
        rep.outputs.append((name, v, gap))
        lsb = rep.lsbs(v.rms)
        if lsb < MIN_OUTPUT_LSBS:
            rep.warnings.append(
                f"output {name!r}: typical magnitude {v.rms:.3g} is {lsb:.3g} LSBs at f={f} "
                f"(below {MIN_OUTPUT_LSBS:.0f}): rounding (about 1 LSB per layer) is over a "
                "percent of it, so its argmax can become noise (an untrained model, or outputs "
                "that need scaling up)"
            )
        elif gap is not None and rep.lsbs(gap) < MIN_OUTPUT_LSBS:
            rep.warnings.append(
                f"output {name!r}: the median gap between the two largest entries, {gap:.3g}, "
                f"is {rep.lsbs(gap):.3g} LSBs at f={f} (below {MIN_OUTPUT_LSBS:.0f}): the "
                "secure argmax often differs from the float model's"
            )
    for name, err in measured.reference.items():
        top = measured.tensors[name].max if name in measured.tensors else 0.0
        if err > SAME * top:
            rep.warnings.append(
                f"output {name!r}: the graph the plan is lowered from differs from the ONNX "
                f"model by up to {err:.3g} on the calibration data (a rewrite changed it)"
            )
    for msg in rep.warnings:
        warnings.warn(msg, CalibrationWarning, stacklevel=3)
    return rep


def check(rep: Report, name: str, fixed: np.ndarray) -> None:
    """Compare the plan's fixed-point output `name` on the first calibration samples (from
    the cleartext interpreter, which runs the plan's ring arithmetic; the caller runs it: the
    compiler does not import the runtime) with the float graph's, and warn if the argmax
    changes on more than 0.5% of them or the error passes a percent of the output's size."""
    ref = rep.measured.outputs.get(name)
    fixed = np.asarray(fixed, dtype=np.float64)
    if ref is None or fixed.shape != ref[: len(fixed)].shape:
        return
    ref = ref[: len(fixed)].astype(np.float64)
    diff = np.abs(fixed - ref)
    rms_diff = float(np.sqrt(np.mean(np.square(diff))))
    agree = None
    if ref.ndim == 2 and ref.shape[1] > 1:
        agree = float(np.mean(fixed.argmax(1) == ref.argmax(1)))
    rep.fixed_point[name] = (len(fixed), float(diff.max(initial=0.0)), rms_diff, agree)
    size = float(np.sqrt(np.mean(np.square(ref)))) if ref.size else 0.0
    found = []
    if agree is not None and agree < 0.995:
        found.append(
            f"output {name!r}: at f={rep.frac_bits} the plan's fixed-point argmax differs from "
            f"the float model's on {1 - agree:.1%} of {len(fixed)} calibration samples"
        )
    elif rms_diff > 0.01 * size:
        found.append(
            f"output {name!r}: at f={rep.frac_bits} the plan's fixed-point error (rms "
            f"{rms_diff:.3g}) is {rms_diff / size:.1%} of the output's size on {len(fixed)} "
            "calibration samples"
        )
    rep.warnings += found
    for msg in found:
        warnings.warn(msg, CalibrationWarning, stacklevel=3)


class CalibrationWarning(UserWarning):
    """The calibrated plan works, but a value is too close to the ring bound or too small."""


def calibrate(
    proto: onnx.ModelProto,
    g: Graph,
    data: Calibration,
    frac_bits: int | None = None,
    public_weights: bool = False,
    margin_bits: int = MARGIN_BITS,
) -> Report:
    """`measure` then `choose`: the calibration report, its `frac_bits` the f to compile at."""
    return choose(g, measure(proto, g, data), frac_bits, public_weights, margin_bits)


def _weights(
    prog: Program, weights: dict[str, np.ndarray]
) -> list[tuple[str, str, int, float, float]]:
    out = []
    for name, spec in prog.weights.items():
        a = np.abs(np.asarray(weights[name], dtype=np.float64))
        rms = float(np.sqrt(np.mean(np.square(a)))) if a.size else 0.0
        out.append((name, spec.source, spec.scale, float(a.max(initial=0.0)), rms))
    return out


def _top2_gap(y: np.ndarray | None) -> float | None:
    """The median over samples of the gap between an output's two largest entries."""
    if y is None or y.ndim < 2 or y.shape[-1] < 2:
        return None
    flat = y.reshape(len(y), -1) if y.ndim == 2 else y.reshape(-1, y.shape[-1])
    top = np.sort(flat, axis=-1)[:, -2:]
    return float(np.median(top[:, 1] - top[:, 0]))


def _unmapped(prog: Program, vals: list[ValueRange], trace: Trace) -> list[str]:
    """The IR values `ranges` found no tensor or bound for, as `%id (op, node)`."""
    seen = {v.vid for v in vals}
    return [
        f"%{ins.out} ({ins.op.name}, node {trace.nodes.get(ins.out, '?')!r})"
        for ins in prog.instrs
        if ins.out not in seen
    ]


def _weight_headroom(w: tuple[str, str, int, float, float]) -> float:
    return RING_BITS - w[2] - _log2(w[3])


def _describe_weight(w: tuple[str, str, int, float, float]) -> str:
    return f"weight {w[0]} (ONNX {w[1]!r}, max |w| {w[3]:.3g} at scale {w[2]})"


def _describe(v: ValueRange) -> str:
    what = f"tensor {v.tensor!r}" if v.tensor else f"a value inside node {v.node!r} (bound)"
    return f"%{v.vid} ({v.op}, {what}, node {v.node!r}, max |v| {v.max:.3g} at scale {v.scale})"


def _log2(x: float) -> float:
    return math.log2(x) if x > 0 else -math.inf
