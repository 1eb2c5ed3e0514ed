"""Rules for the comparison-based ops, composed over the backend's ReLU (the exact plaintext
one in the cleartext interpreter, the secure protocol in a party): ReLU, LeakyReLU, Clip."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mpcc.compiler import ops
from mpcc.compiler.ir import Instr
from mpcc.runtime.fixedpoint import encode
from mpcc.runtime.rules.base import Backend, add_public, register, u64

ReluFn = Callable[[np.ndarray, int], np.ndarray]  # (x, shift) -> relu(x >> shift), same shape


def _enc(v: float, scale: int) -> int:
    return int(encode(v, scale).view(np.int64))


def leaky_relu(x: np.ndarray, alpha: float, frac_bits: int, relu: ReluFn) -> np.ndarray:
    """alpha*x + (1-alpha)*relu(x), with alpha encoded at frac_bits (output scale + f)."""
    a = _enc(alpha, frac_bits)
    r = relu(x, 0)
    return x * u64(a) + r * u64(2**frac_bits - a)


def clip(
    x: np.ndarray,
    lo: float | None,
    hi: float | None,
    in_scale: int,
    shift: int,
    party: int,
    relu: ReluFn,
) -> np.ndarray:
    """min(max(x, lo), hi) = lo + relu(x - lo) - relu(x - hi), truncating `shift` bits."""
    out_scale = in_scale - shift
    if lo is not None and hi is not None:
        both = np.stack(
            [add_public(x, -_enc(lo, in_scale), party), add_public(x, -_enc(hi, in_scale), party)]
        )
        r = relu(both, shift)
        return add_public(r[0] - r[1], _enc(lo, out_scale), party)
    if lo is not None:
        return add_public(
            relu(add_public(x, -_enc(lo, in_scale), party), shift), _enc(lo, out_scale), party
        )
    # min(x, hi) = hi - relu(hi - x)
    r = relu(add_public(-x, _enc(hi, in_scale), party), shift)
    return add_public(-r, _enc(hi, out_scale), party)


def _leaky(b: Backend, ins: Instr, args: list[np.ndarray]) -> np.ndarray:
    return leaky_relu(args[0], ins.attrs["alpha"], b.prog.frac_bits, b.relu)


def _clip(b: Backend, ins: Instr, args: list[np.ndarray]) -> np.ndarray:
    a = ins.attrs
    scale = b.prog.value(ins.args[0]).scale
    return clip(args[0], a.get("lo"), a.get("hi"), scale, a["shift"], b.party, b.relu)


register(ops.relu, lambda b, ins, args: b.relu(args[0], ins.attrs["shift"]))
register(ops.ge_zero, lambda b, ins, args: b.ge_zero(args[0]))
register(ops.leaky_relu, _leaky)
register(ops.clip, _clip)
