"""The rewrites that fold into a Conv or MatMul (`mpcc.compiler.rewriter` rules, like
`mpcc.compiler.rewrites`): a BatchNormalization, constant scales and shifts on either side,
and an AveragePool's divisor move into its weights and bias where they can, so that they cost
nothing securely (a BatchNormalization that cannot becomes a Mul and an Add). Where a check
turns down a match, the reason is noted in `g.notes`.
"""

from __future__ import annotations

import numpy as np

from mpcc.compiler.graph import Graph
from mpcc.compiler.rewriter import ANY, CONST, Node, Op, Rule, Through, apply

AFFINE = "Conv|MatMul"
# Ops whose output channels a per-channel scale and shift can fold into (ConvTranspose only
# after it: a constant added before it is not a bias at the borders).
AFFINE_OUT = "Conv|ConvTranspose|MatMul"


# ---- BatchNormalization --------------------------------------------------------------------


def _scale_shift_after(g: Graph, affine: Node, s: np.ndarray, b: np.ndarray | None) -> None:
    """Make Conv/MatMul `affine` compute s * affine(x) + b, with per-output-channel s and b."""
    x, w = affine.inputs[:2]
    wv = g.const(w)
    if affine.op == "ConvTranspose":  # W (C, O/groups, *K): output channel j of group i
        groups, (c, og) = affine.attrs["group"], wv.shape[:2]
        per = s.reshape(groups, 1, og, *(1,) * (wv.ndim - 2))
        wv = (wv.reshape(groups, c // groups, *wv.shape[1:]) * per).reshape(wv.shape)
    elif affine.op == "Conv":
        wv = wv * s.reshape((-1,) + (1,) * (wv.ndim - 1))
    else:
        wv = wv * s.reshape(1, -1)
    bias = g.const(affine.inputs[2]) if len(affine.inputs) > 2 else np.zeros(s.shape)
    bias = bias * s + (0.0 if b is None else b)
    inputs = [x, g.add_const(wv, f"{affine.name}_W")]
    if len(affine.inputs) > 2 or b is not None:
        inputs.append(g.add_const(bias, f"{affine.name}_B"))
    g.set_inputs(affine.name, inputs)


def _absorb_output(g: Graph, p: str, n: str) -> None:
    """Remove node `n` (reading p's output) and let `p` write n's output instead."""
    x, y = g.node(p)["outputs"][0], g.node(n)["outputs"][0]
    g.remove_node(n)
    g.set_outputs(p, [y])
    g.shapes.pop(x, None)


def _bn_scale_shift(g: Graph, bn: Node) -> tuple[np.ndarray, np.ndarray]:
    """(s, b) with BatchNormalization `bn` computing s * x + b along axis 1."""
    _, scale, bias, mean, var = bn.inputs
    s = g.const(scale) / np.sqrt(g.const(var) + bn.attrs["epsilon"])
    return s, g.const(bias) - g.const(mean) * s


def _bn_on_output_channels(g: Graph, affine: Node, bn: Node) -> str | None:
    rank = len(g.shape(bn.x))
    if affine.op == "MatMul" and rank != 2:
        return (
            f"kept BatchNormalization {bn.name!r} apart from MatMul {affine.name!r}: it "
            f"normalizes axis 1 of a {rank}-D tensor, not the output features"
        )
    return None


def _fold_bn(g: Graph, affine: Node, bn: Node) -> str:
    _scale_shift_after(g, affine, *_bn_scale_shift(g, bn))
    _absorb_output(g, affine.name, bn.name)
    return f"folded BatchNormalization {bn.name!r} into {affine.op} {affine.name!r}"


def _bn_as_mul_add(g: Graph, bn: Node) -> str:
    s, b = _bn_scale_shift(g, bn)
    cs = (-1,) + (1,) * (len(g.shape(bn.x)) - 2)
    mid = g.new_tensor(f"{bn.y}_scaled", g.shape(bn.y))
    g.remove_node(bn.name)
    scale = g.add_const(s.reshape(cs), f"{bn.name}_scale")
    mul = g.add_node("Mul", [bn.x, scale], [mid], None, bn.name)
    shift = g.add_const(b.reshape(cs), f"{bn.name}_shift")
    add = g.add_node("Add", [mid, shift], [bn.y], None, bn.name)
    return f"turned BatchNormalization {bn.name!r} into Mul {mul!r} and Add {add!r}"


FOLD_BATCHNORM = Rule(
    Op("BatchNormalization", Op(AFFINE_OUT, name="affine"), name="bn"),
    check=_bn_on_output_channels,
    rewrite=_fold_bn,
)
BATCHNORM_AS_MUL_ADD = Rule(Op("BatchNormalization", name="bn"), rewrite=_bn_as_mul_add)


def fold_batchnorm(g: Graph) -> None:
    """Fold BatchNormalization into the Conv/MatMul before it, else turn it into Mul + Add."""
    apply(g, FOLD_BATCHNORM, BATCHNORM_AS_MUL_ADD)


# ---- constants into Conv / MatMul ----------------------------------------------------------


def _channel(c: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """c as a vector along `axis` of a tensor of `shape`, if it is constant along the rest."""
    full = c.reshape((1,) * (len(shape) - c.ndim) + c.shape)
    if any(s != 1 for i, s in enumerate(full.shape) if i != axis):
        return None
    return np.broadcast_to(full.reshape(-1), (shape[axis],)).copy()


def _channel_axis(affine: Node, shape: tuple[int, ...]) -> int:
    return 1 if affine.op in ("Conv", "ConvTranspose") else len(shape) - 1


def _after_vector(g: Graph, n: Node, affine: Node, layout: Node | None) -> np.ndarray | None:
    """The constant of Add/Mul `n` per output channel of `affine`, if it is one."""
    shape = g.shape(n.x)
    axis = _channel_axis(affine, shape)
    if layout is not None:  # a Transpose in between (channels-last models)
        axis = list(layout.attrs["perm"]).index(axis)
    return _channel(g.const(n.inputs[1]), shape, axis)


def _check_after(g: Graph, n: Node, affine: Node, layout: Node | None = None) -> str | None:
    if _after_vector(g, n, affine, layout) is None:
        return (
            f"kept {n.op} {n.name!r} after {affine.op} {affine.name!r}: its constant is not "
            "one value per output channel"
        )
    return None


def _fold_after(g: Graph, n: Node, affine: Node, layout: Node | None = None) -> str:
    v = _after_vector(g, n, affine, layout)
    assert v is not None  # the check accepted
    if n.op == "Add":
        _scale_shift_after(g, affine, np.ones_like(v), v)
        what = "bias"
    else:
        _scale_shift_after(g, affine, v, None)
        what = "weights and bias" if len(affine.inputs) > 2 else "weights"
    _absorb_output(g, (layout or affine).name, n.name)
    return f"folded {n.op} {n.name!r} into the {what} of the {affine.op} {affine.name!r} before it"


def _before_vector(g: Graph, n: Node, affine: Node) -> np.ndarray | None:
    """The constant of Add/Mul `n` per input channel of `affine`, if it is one."""
    shape = g.shape(n.y)
    return _channel(g.const(n.inputs[1]), shape, _channel_axis(affine, shape))


def _check_before(g: Graph, n: Node, affine: Node) -> str | None:
    kept = f"kept {n.op} {n.name!r} before {affine.op} {affine.name!r}"
    if _before_vector(g, n, affine) is None:
        return f"{kept}: its constant is not one value per input channel"
    if n.op == "Add" and affine.op == "Conv" and any(affine.attrs["pads"]):
        return f"{kept}: the Conv pads with zeros, and those borders would miss the constant"
    if n.op == "Add" and affine.op == "MatMul" and g.const(affine.inputs[1]).ndim > 2:
        return f"{kept}: the MatMul's weight is a stack of matrices, each its own bias"
    return None


def _per_input(g: Graph, affine: Node, v: np.ndarray) -> np.ndarray:
    """The per-input-channel vector v laid out like the weights of Conv/MatMul `affine`."""
    if affine.op == "MatMul":
        return v[:, None]
    w = g.const(affine.inputs[1])
    groups = affine.attrs["group"]
    cin_g, cout_g = w.shape[1], w.shape[0] // groups
    per_in = v.reshape(groups, cin_g)[np.arange(w.shape[0]) // cout_g]
    return per_in.reshape(per_in.shape + (1,) * (w.ndim - 2))


def _fold_before(g: Graph, n: Node, affine: Node) -> str:
    v = _before_vector(g, n, affine)
    assert v is not None  # the check accepted
    w = g.const(affine.inputs[1])
    per_in = _per_input(g, affine, v)
    if n.op == "Mul":
        inputs = [n.x, g.add_const(w * per_in, f"{affine.name}_W"), *affine.inputs[2:]]
        what = "weights"
    else:
        shift = (w * per_in).sum(axis=tuple(range(1, w.ndim))) if affine.op == "Conv" else v @ w
        bias = g.const(affine.inputs[2]) if len(affine.inputs) > 2 else 0.0
        inputs = [n.x, affine.inputs[1], g.add_const(bias + shift, f"{affine.name}_B")]
        what = "bias"
    g.remove_node(n.name)
    g.set_inputs(affine.name, inputs)
    g.shapes.pop(n.y, None)
    return f"folded {n.op} {n.name!r} into the {what} of the {affine.op} {affine.name!r} after it"


FOLD_AFTER = Rule(
    Op("Add|Mul", Op(AFFINE_OUT, name="affine"), CONST, name="n"),
    check=_check_after,
    rewrite=_fold_after,
)
FOLD_AFTER_LAYOUT = Rule(
    Op("Add|Mul", Op("Transpose", Op(AFFINE_OUT, name="affine"), name="layout"), CONST, name="n"),
    check=_check_after,
    rewrite=_fold_after,
)
FOLD_BEFORE = Rule(
    Op(AFFINE, Op("Add|Mul", ANY, CONST, name="n"), name="affine"),
    check=_check_before,
    rewrite=_fold_before,
)


def fold_affine_constants(g: Graph) -> None:
    """Fold Add/Mul by constants into the Conv/MatMul before or after them, where exact."""
    apply(g, FOLD_AFTER, FOLD_AFTER_LAYOUT, FOLD_BEFORE)


# ---- AveragePool divisor -------------------------------------------------------------------

# Ops f with f(x / k) = f(x) / k for k > 0, through which a divisor can travel.
_SCALE_FREE = (
    "Relu",
    "LeakyRelu",
    "PRelu",
    "MaxPool",
    "AveragePool",
    "SumPool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Reshape",
    "Transpose",
    "Slice",
    "Mul",
    "Neg",
)


def _scale_free(g: Graph, n: Node) -> bool:
    return n.op in _SCALE_FREE or (n.op == "Pad" and n.attrs["value"] == 0)


def _divisor(pool: Node) -> int:
    return int(np.prod(pool.attrs["kernel_shape"]))


def _costly_divisor(g: Graph, pool: Node) -> bool:
    """Whether the divisor is not a power of two (those are free in fixed point)."""
    k = _divisor(pool)
    return k & (k - 1) != 0


def _spans(attrs: dict) -> list[int]:
    """Each axis's window extent, dilation included."""
    dil = attrs.get("dilations") or (1,) * len(attrs["kernel_shape"])
    return [(k - 1) * d + 1 for k, d in zip(attrs["kernel_shape"], dil, strict=True)]


def _uniform_divisor(g: Graph, pool: Node, affine: Node) -> str | None:
    a = pool.attrs
    size = g.shape(pool.x)[2:]
    rank = len(size)
    if any(a["pads"]) and not a["count_include_pad"]:
        why = "windows over its padding, which it does not count, divide by less"
    elif a["ceil_mode"] and any(
        (size[i] + a["pads"][i] + a["pads"][i + rank] - span) % a["strides"][i]
        for i, span in enumerate(_spans(a))
    ):
        why = "the partial windows of its ceil_mode divide by less"
    else:
        return None
    return (
        f"kept the 1/{_divisor(pool)} of AveragePool {pool.name!r} out of {affine.op} "
        f"{affine.name!r}: {why}"
    )


def _fold_avgpool(g: Graph, pool: Node, affine: Node) -> str:
    k = _divisor(pool)
    w = g.add_const(g.const(affine.inputs[1]) / k, f"{affine.name}_W")
    g.set_inputs(affine.name, [affine.x, w, *affine.inputs[2:]])
    g.node(pool.name)["op"] = "SumPool"
    return (
        f"folded the 1/{k} of AveragePool {pool.name!r} into the weights of {affine.op} "
        f"{affine.name!r} (it is now a SumPool)"
    )


FOLD_AVGPOOL = Rule(
    Op(
        AFFINE,
        Through(_scale_free, Op("AveragePool", name="pool", where=_costly_divisor)),
        name="affine",
    ),
    check=_uniform_divisor,
    rewrite=_fold_avgpool,
)


def fold_avgpool(g: Graph) -> None:
    """Turn AveragePool into SumPool and scale the next Conv/MatMul's weights by 1/k.

    Only when the divisor k is the same for every window, is not a power of two (those are
    free in fixed point), and the path to the Conv/MatMul commutes with scaling.
    """
    apply(g, FOLD_AVGPOOL)
