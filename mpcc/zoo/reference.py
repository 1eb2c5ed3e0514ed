"""The correctness reference: run an ONNX model in onnxruntime, in plain float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from mpcc.inputs import map_batches

__all__ = ["run_logits", "run_onnxruntime", "session", "without_final_softmax"]


def session(model: str | Path | onnx.ModelProto):
    """An onnxruntime session for ``model`` on the CPU with one thread (intra- and inter-op),
    warnings silenced: the plaintext floor the benchmarks and the tests compare with."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


def run_onnxruntime(
    model: str | Path | onnx.ModelProto, x: np.ndarray, batch: int | None = None
) -> np.ndarray:
    """Run ``model`` on ``x`` with onnxruntime (CPU, one thread); return its first output.

    With ``batch``, ``x`` is fed in chunks of ``batch`` rows. A model whose batch dimension is
    fixed is always fed chunks of exactly that size (the last one zero-padded, then trimmed).
    The result is float64, rows in the order of ``x``.
    """
    sess = session(model)
    inp = sess.get_inputs()[0]
    out_name = sess.get_outputs()[0].name

    x = np.asarray(x, dtype=np.float32)
    if len(x) == 0:
        raise ValueError("run_onnxruntime needs at least one input row")
    fixed = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) else None
    if fixed is not None:
        batch = fixed
    elif batch is None or batch <= 0:
        batch = len(x)

    def one(chunk: np.ndarray) -> np.ndarray:
        return np.asarray(sess.run([out_name], {inp.name: chunk})[0])

    return map_batches(x, batch, one, pad=fixed is not None).astype(np.float64)


def without_final_softmax(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """The model with a final Softmax/LogSoftmax removed, so onnxruntime returns the logits
    the secure plan returns (the compiler drops that softmax; argmax is unchanged)."""
    m = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    m = onnx.ModelProto.FromString(m.SerializeToString())
    out = m.graph.output[0]
    last = next((n for n in m.graph.node if out.name in n.output), None)
    if last is None or last.op_type not in ("Softmax", "LogSoftmax"):
        return m
    src = last.input[0]
    m.graph.node.remove(last)
    for n in m.graph.node:
        n.input[:] = [out.name if t == src else t for t in n.input]
        n.output[:] = [out.name if t == src else t for t in n.output]
    return m


def run_logits(
    model: str | Path | onnx.ModelProto, x: np.ndarray, batch: int | None = None
) -> np.ndarray:
    """onnxruntime's logits: like run_onnxruntime, with a final softmax removed first."""
    return run_onnxruntime(without_final_softmax(model), x, batch)
