"""The correctness reference: run an ONNX model in onnxruntime, in plain float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

__all__ = ["run_onnxruntime"]


def run_onnxruntime(
    model: str | Path | onnx.ModelProto, x: np.ndarray, batch: int | None = None
) -> np.ndarray:
    """Run ``model`` on ``x`` with onnxruntime (CPU, one thread); return its first output.

    With ``batch``, ``x`` is fed in chunks of ``batch`` rows. A model whose batch dimension is
    fixed is always fed chunks of exactly that size (the last one zero-padded, then trimmed).
    The result is float64, rows in the order of ``x``.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    out_name = sess.get_outputs()[0].name

    x = np.asarray(x, dtype=np.float32)
    fixed = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) else None
    if fixed is not None:
        batch = fixed
    elif batch is None or batch <= 0:
        batch = max(len(x), 1)

    outs = []
    for i in range(0, len(x), batch):
        chunk = x[i : i + batch]
        n = len(chunk)
        if fixed is not None and n < fixed:
            pad = np.zeros((fixed - n, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        outs.append(np.asarray(sess.run([out_name], {inp.name: chunk})[0])[:n])
    if not outs:
        raise ValueError("run_onnxruntime needs at least one input row")
    return np.concatenate(outs).astype(np.float64)
