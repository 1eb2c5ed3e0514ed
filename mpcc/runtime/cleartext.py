"""The cleartext interpreter: runs a Program in plaintext Z_2^64 fixed-point arithmetic.

Same encoding, same kernels, same compositions as the secure executor, with no randomness
and exact truncation: floor(x / 2^shift), where the secure truncation gives floor + u with
u in {0, 1} (it may be 1 LSB higher, never lower). It separates lowering bugs from protocol
bugs, and predicts the secure result's error before anything runs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mpcc.compiler.batching import row_mixing, rows_independent
from mpcc.compiler.ir import Program
from mpcc.errors import InputError, ModelError
from mpcc.inputs import as_samples, map_batches
from mpcc.runtime import localops
from mpcc.runtime.fixedpoint import arith_shift, decode, encode


def plain_relu(x: np.ndarray, shift: int) -> np.ndarray:
    y = arith_shift(x, shift)
    return np.where(y.view(np.int64) > 0, y, np.uint64(0))


def encode_weights(prog: Program, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each weight encoded at the scale its instruction needs."""
    out = {}
    for n, spec in prog.weights.items():
        try:
            out[n] = encode(weights[n], spec.scale)
        except InputError as e:
            src = f" (from {spec.source!r})" if spec.source else ""
            raise ModelError(f"weight {n}{src} cannot be encoded: {e}") from None
    return out


def run_encoded(
    prog: Program, weights: dict[str, np.ndarray], inputs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Run one batch on encoded inputs and weights; returns the raw (encoded) outputs."""
    env: dict[int, np.ndarray] = {}
    for ins in prog.instrs:
        args = [env[a] for a in ins.args]
        out = localops.local(ins, args, prog, party=0)
        if out is None:
            out = _nonlocal(prog, ins, args, weights, inputs)
        env[ins.out] = out
    return {name: env[v] for name, v in prog.outputs}


def _nonlocal(prog, ins, args, weights, inputs) -> np.ndarray:
    a = ins.attrs
    x = args[0] if args else None
    if ins.op in ("input", "output"):
        return inputs[a["name"]] if ins.op == "input" else x
    if ins.op in ("matmul", "conv2d", "mul_w"):
        z = localops.bilinear(prog, ins)(x, weights[ins.weights[0]])
        return localops.add_bias(ins, z, weights)
    if ins.op == "add_w":
        return x + weights[ins.weights[0]]
    if ins.op == "mul":
        return args[0] * args[1]
    if ins.op == "trunc":
        return arith_shift(x, a["shift"])
    out = localops.comparison(ins, x, prog, 0, plain_relu)
    if out is not None:
        return out
    raise AssertionError(f"no cleartext semantics for {ins.op}")


def in_batches(prog: Program, x: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply a one-batch function to any number of samples, padding the last batch."""
    shape = prog.value(prog.inputs[0][1]).shape
    x = as_samples(x, shape)
    b = shape[0]
    if len(x) == b:
        return fn(x)  # exactly one batch: the output may have any layout
    if len(x) % b and not rows_independent(prog):
        raise InputError(
            f"this plan mixes samples across its batch axis ({row_mixing(prog)}), so padding "
            f"would change the answers: give a multiple of {b} samples, not {len(x)}"
        )

    def one(chunk: np.ndarray) -> np.ndarray:
        y = fn(chunk)
        if y.shape[0] != b:
            raise InputError(
                f"the plan's output has shape {list(y.shape)}, which does not keep the batch "
                f"({b}) first; give exactly {b} samples at a time"
            )
        return y

    return map_batches(x, b, one)


def check_samples(prog: Program, x: np.ndarray) -> np.ndarray:
    """`x` as the plan's samples [n, ...], refusing a wrong shape or no samples at all."""
    return as_samples(x, prog.value(prog.inputs[0][1]).shape, allow_empty=False)


def predict(prog: Program, weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Cleartext fixed-point prediction for any number of samples (first output, decoded)."""
    if len(prog.inputs) != 1:
        raise InputError("this model has several inputs; use run_encoded")
    x = check_samples(prog, x)
    enc_w = encode_weights(prog, weights)
    (in_name, _), (_, out_vid) = prog.inputs[0], prog.outputs[0]
    out_name, out_scale = prog.outputs[0][0], prog.value(out_vid).scale

    def one(chunk: np.ndarray) -> np.ndarray:
        raw = run_encoded(prog, enc_w, {in_name: encode(chunk, prog.frac_bits)})[out_name]
        return decode(raw, out_scale)

    return in_batches(prog, x, one)
