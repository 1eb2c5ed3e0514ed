"""Rules for the bilinear ops (matmul, conv, conv_transpose, mul_w): the ring map each
evaluates, how its weight operand is laid out once per session, and the bias added after it."""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from mpcc.compiler import ops
from mpcc.compiler.ir import Instr, Program
from mpcc.runtime import kernels
from mpcc.runtime.rules.base import RULES, Backend, Bilinear, register


def weight_transposed(prog: Program, ins: Instr) -> bool:
    """Whether a prepared weight is laid out transposed: a matmul's over many rows (dot
    products over contiguous K); over a few rows (batch 1) streaming W's rows is faster."""
    if ins.op is not ops.matmul or len(prog.weights[ins.weights[0]].shape) != 2:
        return False
    shape = prog.value(ins.args[0]).shape
    return math.prod(shape[:-1]) >= kernels.FEW_ROWS


def prepare_weight(prog: Program, ins: Instr, w: np.ndarray) -> np.ndarray:
    """A linear instruction's weight operand in the layout its prepared map reads: W (K, N)
    transposed to contiguous (N, K) where `weight_transposed`, else as is."""
    return kernels.transpose(w) if weight_transposed(prog, ins) else w


def layout(prog: Program, ins: Instr) -> tuple[str, bool]:
    """The key of a prepared weight operand: (weight, transposed)."""
    return ins.weights[0], weight_transposed(prog, ins)


def prepared_maps(prog: Program) -> dict[int, Bilinear]:
    """Each linear instruction's map over its prepared weight operand, by index: made once
    per session, not on every query."""
    return {
        i: RULES[ins.op].bilinear(prog, ins, True)
        for i, ins in enumerate(prog.instrs)
        if RULES[ins.op].bilinear is not None
    }


def _matmul_map(prog: Program, ins: Instr, prepared: bool = False) -> Bilinear:
    if len(prog.weights[ins.weights[0]].shape) > 2:
        return kernels.batched_matmul
    return kernels.dense_t if prepared and weight_transposed(prog, ins) else kernels.dense


def _conv_map(prog: Program, ins: Instr, prepared: bool = False) -> Bilinear:
    a = ins.attrs
    return partial(
        kernels.conv,
        strides=tuple(a["strides"]),
        pads=tuple(a["pads"]),
        dilations=tuple(a["dilations"]),
        groups=a["groups"],
    )


def _conv_transpose_map(prog: Program, ins: Instr, prepared: bool = False) -> Bilinear:
    a = ins.attrs
    return partial(
        kernels.conv_transpose,
        strides=tuple(a["strides"]),
        pads=tuple(a["pads"]),
        dilations=tuple(a["dilations"]),
        output_padding=tuple(a["output_padding"]),
        groups=a["groups"],
    )


def _mul_w_map(prog: Program, ins: Instr, prepared: bool = False) -> Bilinear:
    return np.multiply


def _with_bias(b: Backend, ins: Instr, args: list[np.ndarray]) -> np.ndarray:
    """L(x, W) plus the bias (the second weight), if any: a conv bias [O] broadcast over
    [N, O, H, W], other biases broadcast as they are."""
    z = b.linear(ins, args[0])
    if len(ins.weights) < 2:
        return z
    bias = b.weight(ins.weights[1])
    if ins.op in (ops.conv, ops.conv_transpose):
        bias = bias.reshape((1, -1) + (1,) * (z.ndim - 2))
    return z + bias


register(ops.matmul, _with_bias, _matmul_map)
register(ops.conv, _with_bias, _conv_map)
register(ops.conv_transpose, _with_bias, _conv_transpose_map)
register(ops.mul_w, _with_bias, _mul_w_map)
