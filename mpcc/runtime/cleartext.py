"""The cleartext interpreter: runs a Program in plaintext Z_2^64 fixed-point arithmetic.

Same encoding, same kernels, same compositions as the secure executor, with no randomness
and exact truncation: floor(x / 2^shift), where the secure truncation gives floor + u with
u in {0, 1} (it may be 1 LSB higher, never lower). It separates lowering bugs from protocol
bugs, and predicts the secure result's error before anything runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from mpcc.compiler.batching import row_mixing, rows_independent
from mpcc.compiler.calls import power_levels
from mpcc.compiler.ir import Instr, Program
from mpcc.errors import InputError
from mpcc.inputs import ONEHOT, as_samples, input_shape, one_hot, pad_rows
from mpcc.runtime import kernels
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

    def matmul(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return kernels.batched_matmul(x, y)

    def square(self, x: np.ndarray) -> np.ndarray:
        return x * x

    def truncate(self, x: np.ndarray, shift: int) -> np.ndarray:
        return arith_shift(x, shift)

    def relu(self, x: np.ndarray, shift: int) -> np.ndarray:
        return plain_relu(x, shift)

    def ge_zero(self, x: np.ndarray) -> np.ndarray:
        return (x.view(np.int64) >= 0).astype(np.uint64)

    def max_pairs(self, x: np.ndarray, relu: int | None) -> np.ndarray:
        m = x.view(np.int64).max(axis=0).view(np.uint64)
        return m if relu is None else plain_relu(m, relu)

    def powers(self, x: np.ndarray, shift: int, scale: int, exponents: list[int]) -> np.ndarray:
        pw = {1: arith_shift(x, shift)}
        for level in power_levels(tuple(exponents)):
            for e, hi, lo in level:
                pw[e] = arith_shift(pw[hi] * pw[lo], scale)
        return np.stack([pw[e] for e in exponents], axis=-1)


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


Samples = np.ndarray | Mapping[str, np.ndarray]


def _input_instr(prog: Program, k: int | str = 0) -> Instr:
    """The `input` instruction of input k (its index, or its name)."""
    vid = dict(prog.inputs)[k] if isinstance(k, str) else prog.inputs[k][1]
    return next(ins for ins in prog.instrs if ins.out == vid)


def sample_shape(prog: Program, k: int | str = 0) -> tuple[int, ...]:
    """The shape of one batch of input k as the client gives it (token ids for a one-hot
    input: without the depth axis)."""
    ins = _input_instr(prog, k)
    return input_shape(prog.value(ins.out).shape, ins.attrs.get("encoding"))


def takes_ids(prog: Program, k: int | str = 0) -> bool:
    """Whether input k takes integer ids (one-hot encoded by the client)."""
    return _input_instr(prog, k).attrs.get("encoding") == ONEHOT


def encode_input(prog: Program, x: np.ndarray, k: int | str = 0) -> np.ndarray:
    """One batch of input k as the ring elements the client shares: reals at f fractional
    bits, or ids one-hot over the input's depth (0/1 at scale 0)."""
    ins = _input_instr(prog, k)
    if ins.attrs.get("encoding") == ONEHOT:
        return one_hot(x, ins.attrs["depth"], ins.attrs["name"])
    return encode(x, prog.frac_bits)


def check_inputs(prog: Program, x: Samples) -> dict[str, np.ndarray]:
    """The samples of every input of the plan, by name: an array for a one-input plan, or a
    mapping from input name to array (any plan). Refuses missing, unknown or misshapen
    inputs, and no samples at all."""
    names = [n for n, _ in prog.inputs]
    listed = ", ".join(repr(n) for n in names)
    if not isinstance(x, Mapping):
        if len(names) != 1:
            raise InputError(
                f"this plan has {len(names)} inputs ({listed}): give a dict of arrays by input name"
            )
        x = {names[0]: x}
    unknown = sorted(set(x) - set(names))
    missing = [n for n in names if n not in x]
    if unknown or missing:
        what = f"no input named {unknown[0]!r}" if unknown else f"input {missing[0]!r} is missing"
        raise InputError(f"{what}; the plan's inputs are {listed}")
    return {
        n: as_samples(x[n], sample_shape(prog, n), allow_empty=False, ids=takes_ids(prog, n))
        for n, _ in prog.inputs
    }


def in_batches(
    prog: Program,
    xs: dict[str, np.ndarray],
    fn: Callable[[dict[str, np.ndarray]], np.ndarray],
) -> np.ndarray:
    """Apply a one-batch function (inputs by name -> output) to any number of samples,
    padding the last batch. Inputs of exactly the plan's shapes are one batch whatever
    their leading dims; otherwise every input is cut along its first (batch) axis."""
    shapes = {n: sample_shape(prog, n) for n, _ in prog.inputs}
    if all(xs[n].shape == shapes[n] for n in shapes):
        return fn(xs)  # exactly one batch: the output may have any layout
    if len({s[0] for s in shapes.values()}) > 1:
        exact = ", ".join(f"{n!r} {list(s)}" for n, s in shapes.items())
        raise InputError(
            f"this plan's inputs do not share a batch dim, so it runs on exactly one batch: "
            f"give each input its exact shape ({exact})"
        )
    counts = {n: len(v) for n, v in xs.items()}
    if len(set(counts.values())) > 1:
        raise InputError(f"the inputs have different numbers of samples: {counts}")
    b = next(iter(shapes.values()))[0]
    n = next(iter(counts.values()))
    if n % b and not rows_independent(prog):
        raise InputError(
            f"this plan mixes samples across its batch axis ({row_mixing(prog)}), so padding "
            f"would change the answers: give a multiple of {b} samples, not {n}"
        )
    outs = []
    for i in range(0, n, b):
        chunk = {k: pad_rows(v[i : i + b], b) for k, v in xs.items()}
        y = fn(chunk)
        if y.shape[0] != b:
            raise InputError(
                f"the plan's output has shape {list(y.shape)}, which does not keep the batch "
                f"({b}) first; give exactly {b} samples at a time"
            )
        outs.append(y[: min(b, n - i)])
    return np.concatenate(outs)


def run_decoded(
    prog: Program, enc_w: dict[str, np.ndarray], xs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Every output of one batch, decoded, from the inputs by name and the encoded weights."""
    raw = run_encoded(prog, enc_w, {k: encode_input(prog, v, k) for k, v in xs.items()})
    return {name: decode(raw[name], prog.value(vid).scale) for name, vid in prog.outputs}


def predict(prog: Program, weights: dict[str, np.ndarray], x: Samples) -> np.ndarray:
    """Cleartext fixed-point prediction for any number of samples (first output, decoded).

    `x` is an array for a one-input plan, or a dict of arrays by input name."""
    xs = check_inputs(prog, x)
    enc_w = encode_weights(prog, weights)
    out_name = prog.outputs[0][0]
    return in_batches(prog, xs, lambda chunk: run_decoded(prog, enc_w, chunk)[out_name])
