"""Instruction semantics shared by the secure executor and the cleartext interpreter.

Every function here works on one party's share (or, in the cleartext interpreter, on the
whole value with `party=0`). Public constants are added by party 0 only, so the same code
is correct on shares and on plaintext. Non-linear compositions (LeakyReLU, Clip, MaxPool)
take the ReLU as a callable: the interpreter passes the exact plaintext one, the executor
the secure protocol, and both compose it identically.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import numpy as np

from mpcc.compiler.costmodel import maxpool_levels
from mpcc.compiler.ir import Instr, Program
from mpcc.compiler.poolshapes import avgpool_counts
from mpcc.runtime import kernels
from mpcc.runtime.fixedpoint import encode

ReluFn = Callable[[np.ndarray, int], np.ndarray]  # (x, shift) -> relu(x >> shift), same shape
Bilinear = Callable[[np.ndarray, np.ndarray], np.ndarray]

# MaxPool's padding. The tournament compares differences a - b, and the comparison needs
# |a - b| < 2^62, so a MaxPool input must satisfy |x| < 2^61 at its scale (at 2f = 32 bits:
# |v| < 2^29 in real terms). The pad is the bottom of that range: below every legal value,
# and pad - x stays in (-2^62, 0] for every legal x.
MAXPOOL_PAD = -(2**61)


def u64(v: int) -> np.uint64:
    """A Python int as a ring element."""
    return np.uint64(v % 2**64)


def add_public(x: np.ndarray, c: np.ndarray | int, party: int) -> np.ndarray:
    """x + c for a public c: only party 0 adds it."""
    if party != 0:
        return x
    c = u64(c) if isinstance(c, int) else c
    return x + c


def bilinear(prog: Program, ins: Instr, prepared: bool = False) -> Bilinear:
    """The ring bilinear map L(x, w) of a linear instruction.

    With `prepared`, the map takes its weight operand as `prepare_weight` lays it out: a
    weight used on every query is then rearranged once per session, not on every call."""
    if ins.op == "matmul":
        return kernels.dense_t if prepared and weight_transposed(prog, ins) else kernels.dense
    if ins.op == "conv2d":
        a = ins.attrs
        return partial(
            kernels.conv2d,
            strides=tuple(a["strides"]),
            pads=tuple(a["pads"]),
            dilations=tuple(a["dilations"]),
            groups=a["groups"],
        )
    if ins.op == "mul_w":
        return np.multiply
    raise ValueError(ins.op)


def weight_transposed(prog: Program, ins: Instr) -> bool:
    """Whether a prepared weight is laid out transposed: a matmul's over many rows (dot
    products over contiguous K); over a few rows (batch 1) streaming W's rows is faster."""
    if ins.op != "matmul":
        return False
    shape = prog.value(ins.args[0]).shape
    return math.prod(shape[:-1]) >= kernels.FEW_ROWS


def prepare_weight(prog: Program, ins: Instr, w: np.ndarray) -> np.ndarray:
    """A linear instruction's weight operand in the layout `bilinear(..., prepared=True)`
    reads: W (K, N) transposed to contiguous (N, K) where `weight_transposed`, else as is."""
    return kernels.transpose(w) if weight_transposed(prog, ins) else w


def add_bias(ins: Instr, z: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    """z plus the linear instruction's bias (its second weight), if it has one: a conv bias
    [O] broadcast over [N, O, H, W], other biases broadcast as they are."""
    if len(ins.weights) < 2:
        return z
    bias = weights[ins.weights[1]]
    if ins.op == "conv2d":
        bias = bias.reshape((1, -1) + (1,) * (z.ndim - 2))
    return z + bias


def leaky_relu(x: np.ndarray, alpha: float, frac_bits: int, relu: ReluFn) -> np.ndarray:
    """alpha*x + (1-alpha)*relu(x), with alpha encoded at frac_bits (output scale + f)."""
    a = int(encode(alpha, frac_bits).view(np.int64))
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

    def enc(v: float, s: int) -> int:
        return int(encode(v, s).view(np.int64))

    if lo is not None and hi is not None:
        both = np.stack(
            [add_public(x, -enc(lo, in_scale), party), add_public(x, -enc(hi, in_scale), party)]
        )
        r = relu(both, shift)
        return add_public(r[0] - r[1], enc(lo, out_scale), party)
    if lo is not None:
        return add_public(
            relu(add_public(x, -enc(lo, in_scale), party), shift), enc(lo, out_scale), party
        )
    # min(x, hi) = hi - relu(hi - x)
    r = relu(add_public(-x, enc(hi, in_scale), party), shift)
    return add_public(-r, enc(hi, out_scale), party)


def comparison(
    ins: Instr, x: np.ndarray, prog: Program, party: int, relu: ReluFn
) -> np.ndarray | None:
    """The instructions built on ReLU, composed over `relu` (the plaintext one or the secure
    protocol); None for any other instruction."""
    a = ins.attrs
    if ins.op == "relu":
        return relu(x, a["shift"])
    if ins.op == "leaky_relu":
        return leaky_relu(x, a["alpha"], prog.frac_bits, relu)
    if ins.op == "clip":
        scale = prog.value(ins.args[0]).scale
        return clip(x, a["lo"], a["hi"], scale, a["shift"], party, relu)
    if ins.op == "maxpool":
        return maxpool(x, a, party, relu)
    return None


def maxpool(x: np.ndarray, attrs: dict, party: int, relu: ReluFn) -> np.ndarray:
    """Max over windows by a tournament: max(a, b) = b + relu(a - b), a level at a time.

    Exact for inputs with |x| < 2^61 (as signed ring elements); padded positions hold
    `MAXPOOL_PAD`, which loses every comparison with such an input."""
    win = kernels.pool_windows(
        x,
        tuple(attrs["kernel"]),
        tuple(attrs["strides"]),
        tuple(attrs["pads"]),
        tuple(attrs["dilations"]),
        bool(attrs["ceil_mode"]),
        MAXPOOL_PAD % 2**64 if party == 0 else 0,
    )
    cand = [win[..., j] for j in range(win.shape[-1])]
    for pairs in maxpool_levels(len(cand)):
        a = np.stack(cand[0 : 2 * pairs : 2])
        b = np.stack(cand[1 : 2 * pairs : 2])
        m = b + relu(a - b, 0)
        cand = list(m) + cand[2 * pairs :]
    return cand[0]


def sumpool(x: np.ndarray, attrs: dict) -> np.ndarray:
    return kernels.sum_pool(
        x,
        tuple(attrs["kernel"]),
        tuple(attrs["strides"]),
        tuple(attrs["pads"]),
        bool(attrs["ceil_mode"]),
    )


def avgpool(x: np.ndarray, attrs: dict) -> np.ndarray:
    """Window sums; in mode 'mul' times round(2^recip_bits / count) per position."""
    s = sumpool(x, attrs)
    if attrs["mode"] == "shift":
        return s
    div = avgpool_counts(x.shape[2:], attrs)
    recip = np.rint(2.0 ** attrs["recip_bits"] / div).astype(np.int64).view(np.uint64)
    return s * recip


def slice_(x: np.ndarray, attrs: dict) -> np.ndarray:
    idx = [slice(None)] * x.ndim
    for st, en, ax, sp in zip(
        attrs["starts"], attrs["ends"], attrs["axes"], attrs["steps"], strict=True
    ):
        idx[ax] = slice(st, en if en >= 0 else None, sp)
    return x[tuple(idx)]


def pad(x: np.ndarray, attrs: dict, scale: int, party: int) -> np.ndarray:
    r = x.ndim
    widths = [(attrs["pads"][i], attrs["pads"][i + r]) for i in range(r)]
    value = int(encode(attrs["value"], scale).view(np.int64)) if party == 0 else 0
    return np.pad(x, widths, constant_values=u64(value))


def movement(ins: Instr, args: list[np.ndarray], prog: Program, party: int) -> np.ndarray:
    """Data-movement instructions: identical on shares and on plaintext."""
    a = ins.attrs
    x = args[0]
    if ins.op == "reshape":
        return x.reshape(a["shape"])
    if ins.op == "transpose":
        return np.ascontiguousarray(x.transpose(a["perm"]))
    if ins.op == "concat":
        return np.concatenate(args, axis=a["axis"])
    if ins.op == "slice":
        return np.ascontiguousarray(slice_(x, a))
    if ins.op == "pad":
        return pad(x, a, prog.value(ins.out).scale, party)
    raise ValueError(ins.op)


MOVEMENT_OPS = ("reshape", "transpose", "concat", "slice", "pad")


def local(ins: Instr, args: list[np.ndarray], prog: Program, party: int) -> np.ndarray | None:
    """Evaluate a local (non-interactive, weight-free) instruction; None if it is not one."""
    a = ins.attrs
    if ins.op in MOVEMENT_OPS:
        return movement(ins, args, prog, party)
    if ins.op == "add":
        return args[0] + args[1]
    if ins.op == "sub":
        return args[0] - args[1]
    if ins.op == "mul_public":
        return args[0] * u64(a["factor"])
    if ins.op == "sumpool":
        return sumpool(args[0], a)
    if ins.op == "avgpool":
        return avgpool(args[0], a)
    return None
