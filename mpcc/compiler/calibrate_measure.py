"""Measuring for calibration (`mpcc.compiler.calibrate`, step 1): run the graph the passes left
and the loaded ONNX model (the reference) in onnxruntime on the calibration inputs, every
tensor exposed, and keep each plan tensor's max |v| and RMS |v|."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from mpcc.compiler.graph import Graph
from mpcc.errors import ModelError

# Plan tensors count as the ONNX tensor of the same name if they agree to this, relative to
# the tensor's largest value: BatchNormalization folding changes float32 rounding only.
SAME = 1e-3

Calibration = np.ndarray | Mapping[str, np.ndarray]
# Graph ops that keep an ONNX tensor's name but not its value (a SumPool is k times the
# AveragePool it replaced): never measured on the ONNX model by name.
_RENAMED_VALUES = {"SumPool"}


@dataclass(frozen=True)
class Stats:
    """A tensor's range over the calibration inputs: max |v| and RMS |v|."""

    max: float
    rms: float


@dataclass
class Measured:
    """What `measure` saw: each plan tensor's range, where it came from, and the outputs."""

    samples: int
    tensors: dict[str, Stats]
    rewritten: list[str]  # plan tensors whose values differ from the ONNX tensor of that name
    folded: list[str]  # ONNX tensors the plan does not compute (folded, fused or dropped)
    outputs: dict[str, np.ndarray]  # each plan output, all samples (for the argmax margin)
    reference: dict[str, float]  # plan output -> max |plan - ONNX| where ONNX has it
    fallback: str = ""  # why the rewritten graph could not run (then: the ONNX model's tensors)


def measure(proto: onnx.ModelProto, g: Graph, data: Calibration) -> Measured:
    """Run the plan's graph `g` (after the passes) and the loaded ONNX model `proto` (the
    reference) in onnxruntime on the calibration inputs; record every plan tensor's range."""
    inputs = _inputs(g, data)
    n = len(next(iter(inputs.values())))
    batch = g.shapes[g.inputs[0]][0]
    plan_what, onnx_what = "the graph the plan is lowered from", "the ONNX model"
    onnx_model, onnx_names = _exposed(proto, None)
    onnx_sess = _session(onnx_model, onnx_what)
    onnx_types = _input_types(onnx_sess)
    fallback = ""
    try:
        plan_model, plan_names = _exposed(g.to_onnx(), set(g.shapes))
        plan_sess = _session(plan_model, plan_what)
        plan_types = _input_types(plan_sess)
    except Exception as e:  # a legal form onnxruntime does not take (e.g. mpcc attributes)
        # Measure on the ONNX model alone: the tensors the passes kept by name, except those
        # whose producer now computes something else under the same name.
        fallback = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        plan_sess, plan_types = None, {}
        plan_names = [
            t
            for t in onnx_names
            if t in g.shapes
            and (g.producer(t) is None or g.op(g.producer(t)) not in _RENAMED_VALUES)
        ]

    acc: dict[str, list[float]] = {t: [0.0, 0.0, 0] for t in plan_names}
    diff = {t: 0.0 for t in plan_names if t in onnx_names and plan_sess is not None}
    peak = dict.fromkeys(diff, 0.0)
    outs: dict[str, list[np.ndarray]] = {t: [] for t in g.outputs if t in acc}
    for start in range(0, n, batch):
        rows = np.arange(start, start + batch) % n  # the last chunk wraps round to the start
        feed = {t: a[rows] for t, a in inputs.items()}
        onnx_feed = {t: feed[t].astype(dt, copy=False) for t, dt in onnx_types.items()}
        ref = dict(zip(onnx_names, _run(onnx_sess, onnx_names, onnx_feed, onnx_what), strict=True))
        if plan_sess is None:
            got = {t: ref[t] for t in plan_names}
        else:
            plan_feed = {t: feed[t].astype(dt, copy=False) for t, dt in plan_types.items()}
            got = _run(plan_sess, plan_names, plan_feed, plan_what)
            got = dict(zip(plan_names, got, strict=True))
        for t, a in got.items():
            a = np.abs(np.asarray(a, dtype=np.float64))
            s = acc[t]
            s[0] = max(s[0], float(a.max(initial=0.0)))
            s[1] += float(np.square(a).sum())
            s[2] += a.size
            if not np.all(np.isfinite(a)):
                raise ModelError(f"calibration: tensor {t!r} is not finite on the inputs given")
        for t in diff:
            r = np.asarray(ref[t], dtype=np.float64)
            if r.shape == got[t].shape:
                diff[t] = max(diff[t], float(np.abs(got[t] - r).max(initial=0.0)))
                peak[t] = max(peak[t], float(np.abs(r).max(initial=0.0)))
            else:
                diff[t] = math.inf
        for t in outs:
            keep = len(rows) - max(0, start + batch - n)
            outs[t].append(np.asarray(got[t])[:keep])
    tensors = {t: Stats(s[0], math.sqrt(s[1] / max(s[2], 1))) for t, s in acc.items()}
    rewritten = [t for t in plan_names if diff.get(t, 0.0) > SAME * peak.get(t, 0.0)]
    rewritten += [t for t in plan_names if t not in onnx_names and t not in g.inputs]
    folded = [t for t in onnx_names if t not in g.shapes]
    return Measured(
        samples=n,
        tensors=tensors,
        rewritten=sorted(set(rewritten), key=plan_names.index),
        folded=folded,
        outputs={t: np.concatenate(v) for t, v in outs.items()},
        reference={t: diff[t] for t in g.outputs if t in diff},
        fallback=fallback,
    )


def _inputs(g: Graph, data: Calibration) -> dict[str, np.ndarray]:
    """The calibration arrays by plan input, each [N, *sample shape] (float32)."""
    if not isinstance(data, Mapping):
        if len(g.inputs) != 1:
            raise ModelError(
                f"calibration data: the model has {len(g.inputs)} inputs "
                f"({', '.join(g.inputs)}); give one array per input (a dict or an .npz file)"
            )
        data = {g.inputs[0]: data}
    missing = [t for t in g.inputs if t not in data]
    if missing:
        raise ModelError(
            f"calibration data has no array for input(s) {', '.join(map(repr, missing))} "
            f"(it has {', '.join(map(repr, data))})"
        )
    out, n = {}, None
    for t in g.inputs:
        a = np.asarray(data[t])
        want = g.shapes[t]
        if a.shape[1:] != want[1:]:
            if a.shape == want[1:]:  # one sample without its batch dim
                a = a[None]
            else:
                raise ModelError(
                    f"calibration data for input {t!r} has shape {list(a.shape)}; expected "
                    f"[N, {', '.join(map(str, want[1:]))}] (the plan's input is {list(want)})"
                )
        if len(a) == 0:
            raise ModelError(f"calibration data for input {t!r} holds no samples")
        if n is not None and len(a) != n:
            raise ModelError("calibration arrays of different inputs hold different sample counts")
        n = len(a)
        kind = a.dtype.kind
        if kind not in "fiub":
            raise ModelError(f"calibration data for input {t!r} is {a.dtype}, not numeric")
        out[t] = a
        if kind == "f" and not np.all(np.isfinite(a)):
            raise ModelError(f"calibration data for input {t!r} holds NaN or infinite values")
    return out


def _exposed(model: onnx.ModelProto, keep: set[str] | None) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of `model` returning every float tensor a node computes (those in `keep`, if
    given) besides its outputs; and the names of the tensors it returns, in order."""
    m = onnx.ModelProto.FromString(model.SerializeToString())
    gr = m.graph
    types = {vi.name: vi for vi in [*gr.input, *gr.value_info, *gr.output]}
    have = [o.name for o in gr.output]
    produced = [t for n in gr.node for t in n.output if t]
    for t in [i.name for i in gr.input] + produced:
        if t in have or (keep is not None and t not in keep) or t not in types:
            continue
        tt = types[t].type.tensor_type
        if tt.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
            continue
        gr.output.append(helper.make_tensor_value_info(t, tt.elem_type, None))
        have.append(t)
    floats = {
        o.name
        for o in gr.output
        if types.get(o.name, o).type.tensor_type.elem_type
        in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)
    }
    return m, [t for t in have if t in floats and (keep is None or t in keep)]


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


def _input_types(sess) -> dict[str, type]:
    """The numpy type each input of an onnxruntime session takes."""
    return {i.name: _ORT_TYPES.get(i.type, np.float32) for i in sess.get_inputs()}


def _session(model: onnx.ModelProto, what: str):
    """An onnxruntime session (CPU, one thread); a model it cannot load is a ModelError."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(
            model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # onnxruntime's errors share no public base class
        raise ModelError(f"calibration: onnxruntime cannot load {what}: {e}") from e
    return sess


def _run(sess, names: list[str], feed: dict[str, np.ndarray], what: str) -> list[np.ndarray]:
    try:
        return sess.run(names, feed)
    except Exception as e:
        raise ModelError(f"calibration: onnxruntime cannot run {what}: {e}") from e
