"""The IR's ops, each declared once with its rules (`mpcc.compiler.ops.base`).

    from mpcc.compiler import ops
    prog.emit(ops.relu, (x.id,), shift=16)

`ops.REGISTRY` maps names to ops (plan files name them); `ops.ALL` lists them in order.
"""

from mpcc.compiler.ops.arith import (
    add,
    add_const,
    add_w,
    dot_const,
    matmul_ss,
    mul,
    mul_const,
    mul_public,
    powers,
    relabel,
    rescale,
    square,
    sub,
    trunc,
)
from mpcc.compiler.ops.base import REGISTRY, Op, RuleError, Site, Type, lookup
from mpcc.compiler.ops.compare import clip, ge_zero, leaky_relu, relu
from mpcc.compiler.ops.io import input, output
from mpcc.compiler.ops.linear import conv, conv_transpose, matmul, mul_w
from mpcc.compiler.ops.movement import concat, gather, pad, reshape, resize, slice, tile, transpose
from mpcc.compiler.ops.pool import avgpool, maxpool, maxpool_levels, sumpool
from mpcc.compiler.ops.reduce import reduce_sum

ALL: tuple[Op, ...] = (
    input,
    output,
    matmul,
    conv,
    conv_transpose,
    mul_w,
    add_w,
    add,
    sub,
    mul,
    matmul_ss,
    mul_public,
    rescale,
    trunc,
    relu,
    leaky_relu,
    clip,
    maxpool,
    avgpool,
    sumpool,
    reshape,
    transpose,
    concat,
    slice,
    pad,
    resize,
    gather,
    tile,
    add_const,
    mul_const,
    relabel,
    dot_const,
    reduce_sum,
    square,
    ge_zero,
    powers,
)
assert set(ALL) == set(REGISTRY.values()), "every declared op is listed in ALL"

conv2d = conv  # `conv`'s Python name before it took 1-D and 3-D inputs

__all__ = [
    "ALL",
    "REGISTRY",
    "Op",
    "RuleError",
    "Site",
    "Type",
    "lookup",
    "maxpool_levels",
    *(op.name for op in ALL),
]
