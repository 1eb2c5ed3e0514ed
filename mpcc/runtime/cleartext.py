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
from mpcc.compiler.ir import Instr, Program
from mpcc.errors import InputError
from mpcc.inputs import as_samples, map_batches
from mpcc.runtime.fixedpoint import arith_shift, decode, encode
from mpcc.runtime.owner import encode_weight
from mpcc.runtime.rules import RULES, Backend, check_shape


def plain_relu(x: np.ndarray, shift: int) -> np.ndarray:
    """max(floor(x / 2^shift), 0) on plaintext ring elements (the exact ReLU)."""
    y = arith_shift(x, shift)
    return np.where(y.view(np.int64) > 0, y, np.uint64(0))


def encode_weights(prog: Program, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each weight encoded at the scale its instruction needs."""
    return {n: encode_weight(prog, n, weights[n]) for n in prog.weights}


class Cleartext(Backend):
    """The op rules' plaintext backend: the whole value, exact ring arithmetic."""

    party = 0

    def __init__(
        self, prog: Program, weights: dict[str, np.ndarray], inputs: dict[str, np.ndarray]
    ) -> None:
        self.prog, self._w, self._inputs = prog, weights, inputs

    def input(self, ins: Instr) -> np.ndarray:
        return self._inputs[ins.attrs["name"]]

    def weight(self, name: str) -> np.ndarray:
        return self._w[name]

    def linear(self, ins: Instr, x: np.ndarray) -> np.ndarray:
        return RULES[ins.op].bilinear(self.prog, ins, False)(x, self._w[ins.weights[0]])

    def multiply(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return x * y

    def square(self, x: np.ndarray) -> np.ndarray:
        return x * x

    def truncate(self, x: np.ndarray, shift: int) -> np.ndarray:
        return arith_shift(x, shift)

    def relu(self, x: np.ndarray, shift: int) -> np.ndarray:
        return plain_relu(x, shift)

    def ge_zero(self, x: np.ndarray) -> np.ndarray:
        return (x.view(np.int64) >= 0).astype(np.uint64)


def run_encoded(
    prog: Program, weights: dict[str, np.ndarray], inputs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Run one batch on encoded inputs and weights; returns the raw (encoded) outputs."""
    backend = Cleartext(prog, weights, inputs)
    env: dict[int, np.ndarray] = {}
    for i, ins in enumerate(prog.instrs):
        env[ins.out] = RULES[ins.op].eval(backend, ins, [env[a] for a in ins.args])
        check_shape(prog, i, env[ins.out])
    return {name: env[v] for name, v in prog.outputs}


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
