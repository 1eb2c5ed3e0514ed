"""Graph passes: each a small function `(g: Graph) -> None`, and `run_all` in order.

After `run_all` every node is one of the ops below, with all attributes present (defaults
filled, auto_pad resolved, negative axes normalized); int lists are tuples of ints.

- Conv [x, W, (B)]: kernel_shape, strides, pads (top, left, bottom, right), dilations, group.
- MatMul [x, W, (B)]: W constant [K, N], B constant [N].
- Add / Sub / Mul [a, b]: both computed, or a constant second operand (Add, Mul) broadcasting
  to the first one's shape; Sub keeps a constant only as its first operand.
- Neg; Relu; LeakyRelu (alpha); Clip (min, max floats, +-inf when absent); PRelu [x, slope].
- MaxPool (kernel_shape, strides, pads, dilations, ceil_mode); AveragePool and SumPool
  (kernel_shape, strides, pads, count_include_pad, ceil_mode); GlobalAveragePool; GlobalMaxPool
  (also from ReduceMean / ReduceMax; ReduceSum becomes a SumPool).
- Reshape (shape: static, no -1 or 0), Transpose (perm), Concat (axis >= 0; inputs may be
  constants), Pad (pads in ONNX order over all axes, value; mode constant).
- Slice (starts, ends, axes, steps): axes >= 0 in increasing order; starts and ends are
  non-negative and clamped like Python's slice with those bounds, except that with a negative
  step `end == -1` means "through index 0".

No Identity, Dropout, BatchNormalization, Softmax, LogSoftmax, Gemm, Div, Flatten, Squeeze,
Unsqueeze, ReduceMean, ReduceMax or ReduceSum remains; a Concat's inputs are all computed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mpcc.compiler.graph import Graph
from mpcc.errors import ModelError

AFFINE = ("Conv", "MatMul")


def _ints(v: Any) -> tuple[int, ...]:
    return tuple(int(x) for x in np.asarray(v).reshape(-1))


def _where(g: Graph, n: str) -> str:
    return f"node {n!r} (op {g.op(n)})"


# ---- 1. normalize -----------------------------------------------------------------------


def normalize(g: Graph) -> None:
    """Fill attribute defaults, resolve auto_pad, move constant inputs to attributes, and
    rewrite Gemm, Flatten/Squeeze/Unsqueeze, Div by a constant and Sub of a constant."""
    for n in g.topo_nodes():
        rewrite = _NORMALIZE.get(g.op(n))
        if rewrite is not None:
            rewrite(g, n)


def _pads(attrs: dict, size: tuple[int, ...], k: tuple, s: tuple, d: tuple) -> tuple[int, ...]:
    """Explicit (begins..., ends...) pads, resolving auto_pad as ONNX defines it."""
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return _ints(attrs.get("pads", [0] * 2 * len(k)))
    if auto == "VALID":
        return (0,) * 2 * len(k)
    begins, ends = [], []
    for i, kk, ss, dd in zip(size, k, s, d, strict=True):
        total = max(0, (-(-i // ss) - 1) * ss + (kk - 1) * dd + 1 - i)
        small, big = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else big)
        ends.append(big if auto == "SAME_UPPER" else small)
    return (*begins, *ends)


def _need_2d(g: Graph, n: str) -> tuple[int, ...]:
    x = g.node(n)["inputs"][0]
    shape = g.shape(x)
    if len(shape) != 4:
        raise ModelError(
            f"{_where(g, n)}: only 2-D NCHW tensors are supported; input {x!r} has shape {shape}"
        )
    return shape


def _conv(g: Graph, n: str) -> None:
    d, a = g.node(n), g.node(n)["attrs"]
    shape = _need_2d(g, n)
    w = g.const(d["inputs"][1])
    k = _ints(a.get("kernel_shape", w.shape[2:]))
    strides, dil = _ints(a.get("strides", (1, 1))), _ints(a.get("dilations", (1, 1)))
    pads = _pads(a, shape[2:], k, strides, dil)
    d["attrs"] = {
        "kernel_shape": k,
        "strides": strides,
        "pads": pads,
        "dilations": dil,
        "group": int(a.get("group", 1)),
    }
    g.set_inputs(n, [t for t in d["inputs"] if t])


def _pool(g: Graph, n: str) -> None:
    d, a, op = g.node(n), g.node(n)["attrs"], g.op(n)
    shape = _need_2d(g, n)
    if len(d["outputs"]) > 1:
        if any(g.consumers(t) or t in g.outputs for t in d["outputs"][1:]):
            raise ModelError(f"{_where(g, n)}: the Indices output is not supported")
        g.set_outputs(n, d["outputs"][:1])
    k = _ints(a["kernel_shape"])
    strides, dil = _ints(a.get("strides", (1, 1))), _ints(a.get("dilations", (1, 1)))
    attrs: dict[str, Any] = {"kernel_shape": k, "strides": strides}
    attrs["pads"] = _pads(a, shape[2:], k, strides, dil)
    if op == "MaxPool":
        attrs["dilations"] = dil
    elif dil != (1, 1):
        raise ModelError(f"{_where(g, n)}: dilated average pooling is not supported")
    else:
        attrs["count_include_pad"] = int(a.get("count_include_pad", 0))
    attrs["ceil_mode"] = int(a.get("ceil_mode", 0))
    d["attrs"] = attrs


def _gemm(g: Graph, n: str) -> None:
    d, a = g.node(n), g.node(n)["attrs"]
    x, b = d["inputs"][:2]
    c = d["inputs"][2] if len(d["inputs"]) > 2 and d["inputs"][2] else None
    out = d["outputs"][0]
    w = g.const(b).T if a.get("transB", 0) else g.const(b)
    w = float(a.get("alpha", 1.0)) * w
    if a.get("transA", 0):
        xt = g.new_tensor(f"{x}_T", g.shape(x)[::-1])
        g.add_node("Transpose", [x], [xt], {"perm": (1, 0)}, name=f"{n}_transpose")
        x = xt
    inputs, extra = [x, g.add_const(w, f"{n}_W")], None
    if c is not None:
        m_, n_ = g.shape(out)
        full = np.broadcast_to(float(a.get("beta", 1.0)) * g.const(c), (m_, n_))
        if (full == full[:1]).all():
            inputs.append(g.add_const(full[0].copy(), f"{n}_B"))
        else:
            extra = g.add_const(full.copy(), f"{n}_C")
    d["op"], d["attrs"] = "MatMul", {}
    g.set_inputs(n, inputs)
    if extra is not None:
        mid = g.new_tensor(f"{out}_mm", g.shape(out))
        g.set_outputs(n, [mid])
        g.add_node("Add", [mid, extra], [out], name=f"{n}_add")


def _matmul(g: Graph, n: str) -> None:
    d = g.node(n)
    x, w = d["inputs"]
    out = d["outputs"][0]
    if g.is_const(x):  # C @ x = (x^T C^T)^T over the last two axes
        c, x = g.const(x), w
        r = len(g.shape(x))
        if c.ndim != 2 or r < 2:
            raise ModelError(f"{_where(g, n)}: a constant first operand must be 2-D")
        perm = (*range(r - 2), r - 1, r - 2)
        xt = g.new_tensor(f"{x}_T", [g.shape(x)[i] for i in perm])
        g.add_node("Transpose", [x], [xt], {"perm": perm}, name=f"{n}_transpose_in")
        yt = g.new_tensor(f"{out}_T", [g.shape(out)[i] for i in perm])
        g.set_inputs(n, [xt, g.add_const(c.T, f"{n}_W")])
        g.set_outputs(n, [yt])
        g.add_node("Transpose", [yt], [out], {"perm": perm}, name=f"{n}_transpose_out")
        return
    wv = g.const(w)
    if wv.ndim > 2 and all(s == 1 for s in wv.shape[:-2]) and len(g.shape(x)) >= wv.ndim:
        wv = wv.reshape(wv.shape[-2:])
    if wv.ndim == 1:  # x @ w = reshape(x @ w[:, None])
        mid = g.new_tensor(f"{out}_mm", (*g.shape(out), 1))
        g.set_inputs(n, [x, g.add_const(wv[:, None], f"{n}_W")])
        g.set_outputs(n, [mid])
        g.add_node("Reshape", [mid], [out], {"shape": g.shape(out)}, name=f"{n}_reshape")
    elif wv.ndim == 2:
        if wv is not g.const(w):
            g.set_inputs(n, [x, g.add_const(wv, f"{n}_W")])
    else:
        raise ModelError(f"{_where(g, n)}: the constant operand must be 2-D, not {wv.shape}")


def _binary(g: Graph, n: str) -> None:
    d, op = g.node(n), g.op(n)
    x, y = d["inputs"]
    out = d["outputs"][0]
    if op in ("Add", "Mul") and g.is_const(x):
        x, y = y, x
    if op == "Div":
        c = g.const(y)
        if (c == 0).any():
            raise ModelError(f"{_where(g, n)}: division by a constant containing zeros")
        op, y = "Mul", g.add_const(1.0 / c, f"{n}_recip")
    elif op == "Sub" and g.is_const(y):
        op, y = "Add", g.add_const(-g.const(y), f"{n}_neg")
    secret = y if g.is_const(x) else x
    if (g.is_const(x) or g.is_const(y)) and g.shape(secret) != g.shape(out):
        raise ModelError(
            f"{_where(g, n)}: the constant operand broadcasts {secret!r} from {g.shape(secret)} "
            f"to {g.shape(out)}; only constants that keep the tensor's shape are supported"
        )
    d["op"], d["attrs"] = op, {}
    g.set_inputs(n, [x, y])


def _batchnorm(g: Graph, n: str) -> None:
    d, a = g.node(n), g.node(n)["attrs"]
    if a.get("training_mode", 0):
        raise ModelError(f"{_where(g, n)}: training mode is not supported")
    if any(g.consumers(t) or t in g.outputs for t in d["outputs"][1:]):
        raise ModelError(f"{_where(g, n)}: the running mean/variance outputs are not supported")
    g.set_outputs(n, d["outputs"][:1])
    d["attrs"] = {"epsilon": float(a.get("epsilon", 1e-5))}


_GLOBAL_POOL = {
    "ReduceMean": "GlobalAveragePool",
    "ReduceMax": "GlobalMaxPool",
    "ReduceSum": "SumPool",
}


def _reduce(g: Graph, n: str) -> None:
    """ReduceMean/Max/Sum over all the spatial axes -> GlobalAveragePool/GlobalMaxPool/SumPool.

    Channels-last [N, H, W, C] reduced over (1, 2) is transposed to NCHW first (local).
    """
    d, a, op = g.node(n), g.node(n)["attrs"], g.op(n)
    x, out = d["inputs"][0], d["outputs"][0]
    shape = g.shape(x)
    rank = len(shape)
    if len(d["inputs"]) > 1 and d["inputs"][1]:
        axes = _ints(g.const(d["inputs"][1]))
    else:
        axes = _ints(a.get("axes", []))
    axes = tuple(sorted(ax % rank for ax in axes)) or tuple(range(rank))
    if rank == 4 and axes == (1, 2):  # channels-last
        nchw = g.new_tensor(f"{x}_nchw", (shape[0], shape[3], shape[1], shape[2]))
        g.add_node("Transpose", [x], [nchw], {"perm": (0, 3, 1, 2)}, name=f"{n}_to_nchw")
        x, shape, axes = nchw, g.shape(nchw), (2, 3)
    if rank < 3 or axes != tuple(range(2, rank)):
        raise ModelError(
            f"{_where(g, n)}: only a reduction over all the spatial axes (2..{rank - 1}) is "
            f"supported (or over 1, 2 of a channels-last image), not over axes {axes}"
        )
    pooled = (*shape[:2], *(1,) * (rank - 2))
    d["op"] = _GLOBAL_POOL[op]
    d["attrs"] = {}
    if op == "ReduceSum":
        if rank != 4:
            raise ModelError(f"{_where(g, n)}: ReduceSum needs a 4-D tensor")
        d["attrs"] = {
            "kernel_shape": tuple(shape[2:]),
            "strides": (1, 1),
            "pads": (0, 0, 0, 0),
            "count_include_pad": 1,
            "ceil_mode": 0,
        }
    g.set_inputs(n, [x])
    if g.shape(out) != pooled:
        mid = g.new_tensor(f"{out}_pooled", pooled)
        g.set_outputs(n, [mid])
        g.add_node("Reshape", [mid], [out], {"shape": g.shape(out)}, name=f"{n}_reshape")


def _leaky_relu(g: Graph, n: str) -> None:
    g.node(n)["attrs"] = {"alpha": float(g.node(n)["attrs"].get("alpha", 0.01))}


def _clip(g: Graph, n: str) -> None:
    d = g.node(n)
    ins = [*d["inputs"], "", ""]
    lo = float(g.const(ins[1])) if ins[1] else -np.inf
    hi = float(g.const(ins[2])) if ins[2] else np.inf
    d["attrs"] = {"min": lo, "max": hi}
    g.set_inputs(n, ins[:1])


def _prelu(g: Graph, n: str) -> None:
    x = g.node(n)["inputs"][0]
    if g.shape(x) != g.shape(g.node(n)["outputs"][0]):
        raise ModelError(f"{_where(g, n)}: the slope must broadcast to the input's shape")


def _to_reshape(g: Graph, n: str) -> None:
    d = g.node(n)
    d["op"], d["attrs"] = "Reshape", {"shape": g.shape(d["outputs"][0])}
    g.set_inputs(n, d["inputs"][:1])


def _transpose(g: Graph, n: str) -> None:
    d = g.node(n)
    rank = len(g.shape(d["inputs"][0]))
    d["attrs"] = {"perm": _ints(d["attrs"].get("perm", range(rank - 1, -1, -1)))}


def _concat(g: Graph, n: str) -> None:
    """Normalize the axis; a Concat mixing computed and constant tensors becomes the sum of the
    computed ones, each zero-padded into place, plus a constant holding the rest (all local)."""
    d = g.node(n)
    out = d["outputs"][0]
    shape = g.shape(out)
    axis = int(d["attrs"]["axis"]) % len(shape)
    d["attrs"] = {"axis": axis}
    ins = d["inputs"]
    if all(g.is_const(t) for t in ins) or not any(g.is_const(t) for t in ins):
        return
    rank = len(shape)
    consts = np.zeros(shape)
    parts: list[str] = []
    offset = 0
    for t in ins:
        size = g.const(t).shape[axis] if g.is_const(t) else g.shape(t)[axis]
        if g.is_const(t):
            where = [slice(None)] * rank
            where[axis] = slice(offset, offset + size)
            consts[tuple(where)] = g.const(t)
        else:
            pads = [0] * 2 * rank
            pads[axis], pads[axis + rank] = offset, shape[axis] - offset - size
            part = g.new_tensor(f"{out}_part{len(parts)}", shape)
            g.add_node(
                "Pad", [t], [part], {"pads": tuple(pads), "value": 0.0}, name=f"{n}_pad{len(parts)}"
            )
            parts.append(part)
        offset += size
    total = parts[0]
    for i, part in enumerate(parts[1:]):
        s = g.new_tensor(f"{out}_sum{i}", shape)
        g.add_node("Add", [total, part], [s], {}, name=f"{n}_sum{i}")
        total = s
    d["op"], d["attrs"] = "Add", {}
    g.set_inputs(n, [total, g.add_const(consts, f"{n}_consts")])


def _slice(g: Graph, n: str) -> None:
    d = g.node(n)
    ins = [*d["inputs"], "", ""]
    shape = g.shape(ins[0])
    starts, ends = _ints(g.const(ins[1])), _ints(g.const(ins[2]))
    axes = _ints(g.const(ins[3])) if ins[3] else tuple(range(len(starts)))
    steps = _ints(g.const(ins[4])) if ins[4] else (1,) * len(starts)
    rows = []
    for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
        ax %= len(shape)
        dim = shape[ax]
        if st == 0:
            raise ModelError(f"{_where(g, n)}: a slice step of 0")
        s, e = s + dim if s < 0 else s, e + dim if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), dim), min(max(e, 0), dim)
        else:
            s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
        rows.append((ax, s, e, st))
    rows.sort()
    d["attrs"] = {
        "starts": tuple(r[1] for r in rows),
        "ends": tuple(r[2] for r in rows),
        "axes": tuple(r[0] for r in rows),
        "steps": tuple(r[3] for r in rows),
    }
    g.set_inputs(n, ins[:1])


def _pad(g: Graph, n: str) -> None:
    d = g.node(n)
    mode = d["attrs"].get("mode", "constant")
    if mode != "constant":
        raise ModelError(f"{_where(g, n)}: only constant padding is supported, not {mode!r}")
    ins = [*d["inputs"], "", ""]
    rank = len(g.shape(ins[0]))
    pads = _ints(g.const(ins[1]))
    value = float(g.const(ins[2]).reshape(-1)[0]) if ins[2] and g.const(ins[2]).size else 0.0
    if ins[3]:
        axes = [a % rank for a in _ints(g.const(ins[3]))]
        full = [0] * 2 * rank
        for i, a in enumerate(axes):
            full[a], full[a + rank] = pads[i], pads[i + len(axes)]
        pads = tuple(full)
    if min(pads) < 0:
        raise ModelError(f"{_where(g, n)}: negative pads (cropping) are not supported")
    d["attrs"] = {"pads": pads, "value": value}
    g.set_inputs(n, ins[:1])


_NORMALIZE: dict[str, Callable[[Graph, str], None]] = {
    "Conv": _conv,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": _binary,
    "Sub": _binary,
    "Mul": _binary,
    "Div": _binary,
    "BatchNormalization": _batchnorm,
    "ReduceMean": _reduce,
    "ReduceMax": _reduce,
    "ReduceSum": _reduce,
    "LeakyRelu": _leaky_relu,
    "Clip": _clip,
    "PRelu": _prelu,
    "Flatten": _to_reshape,
    "Squeeze": _to_reshape,
    "Unsqueeze": _to_reshape,
    "Reshape": _to_reshape,
    "Transpose": _transpose,
    "Concat": _concat,
    "Slice": _slice,
    "Pad": _pad,
}


# ---- 2. Identity and Dropout ------------------------------------------------------------


def remove_identity(g: Graph) -> None:
    """Remove Identity and (inference-mode) Dropout nodes."""
    for n in g.nodes_by_op("Identity", "Dropout"):
        d = g.node(n)
        if any(g.consumers(t) or t in g.outputs for t in d["outputs"][1:] if t):
            raise ModelError(f"{_where(g, n)}: the mask output is not supported")
        if g.op(n) == "Dropout" and len(d["inputs"]) > 2 and d["inputs"][2]:
            if g.const(d["inputs"][2]).any():
                raise ModelError(f"{_where(g, n)}: training mode is not supported")
        for t in d["outputs"][1:]:
            g.shapes.pop(t, None)
        g.set_outputs(n, d["outputs"][:1])
        g.bypass(n)


def merge_reshapes(g: Graph) -> None:
    """Merge chains of Reshapes into one and drop Reshapes that keep the shape."""
    for n in g.nodes_by_op("Reshape"):
        (x,), (y,) = g.node(n)["inputs"], g.node(n)["outputs"]
        p = g.producer(x)
        if p is not None and g.op(p) == "Reshape" and g.only_consumer(x) == n:
            g.set_inputs(n, g.node(p)["inputs"])
            g.remove_node(p)
            g.shapes.pop(x)
            x = g.node(n)["inputs"][0]
        if g.shape(x) == g.shape(y):
            g.bypass(n)


# ---- 3. final Softmax -------------------------------------------------------------------

_TRAILING = ("Reshape", "Identity", "Dropout", "Flatten", "Squeeze", "Unsqueeze")


def drop_final_softmax(g: Graph) -> None:
    """Drop a Softmax/LogSoftmax producing a graph output, so the plan returns logits."""
    for n in g.nodes_by_op("Softmax", "LogSoftmax"):
        t = g.node(n)["outputs"][0]
        while t not in g.outputs or g.consumers(t):
            c = g.only_consumer(t)
            if c is None or g.op(c) not in _TRAILING:
                feeds = ", ".join(repr(c) for c in g.consumers(t))
                raise ModelError(
                    f"{_where(g, n)} is not the model's last op (it feeds {feeds}): "
                    f"{g.op(n)} is only supported as the final op, where it is dropped"
                )
            t = g.node(c)["outputs"][0]
        g.notes.append(
            f"dropped final {g.op(n)} {n!r}: the plan returns logits (argmax is unchanged)"
        )
        g.bypass(n)


# ---- 4. BatchNormalization --------------------------------------------------------------


def _scale_shift_after(g: Graph, p: str, s: np.ndarray, b: np.ndarray | None) -> None:
    """Make Conv/MatMul `p` compute s * p(x) + b, with per-output-channel s and b."""
    d = g.node(p)
    x, w = d["inputs"][:2]
    wv = g.const(w)
    bias = g.const(d["inputs"][2]) if len(d["inputs"]) > 2 else np.zeros(s.shape)
    wv = wv * (s.reshape(-1, 1, 1, 1) if g.op(p) == "Conv" else s.reshape(1, -1))
    bias = bias * s + (0.0 if b is None else b)
    inputs = [x, g.add_const(wv, f"{p}_W")]
    if len(d["inputs"]) > 2 or b is not None:
        inputs.append(g.add_const(bias, f"{p}_B"))
    g.set_inputs(p, inputs)


def _absorb_output(g: Graph, p: str, n: str) -> None:
    """Remove node `n` (reading p's output) and let `p` write n's output instead."""
    x, y = g.node(p)["outputs"][0], g.node(n)["outputs"][0]
    g.remove_node(n)
    g.set_outputs(p, [y])
    g.shapes.pop(x, None)


def fold_batchnorm(g: Graph) -> None:
    """Fold BatchNormalization into the Conv/MatMul before it, else turn it into Mul + Add."""
    for n in g.nodes_by_op("BatchNormalization"):
        d = g.node(n)
        x, scale, bias, mean, var = d["inputs"]
        s = g.const(scale) / np.sqrt(g.const(var) + d["attrs"]["epsilon"])
        b = g.const(bias) - g.const(mean) * s
        p = g.producer(x)
        if (
            p is not None
            and g.only_consumer(x) == n
            and (g.op(p) == "Conv" or (g.op(p) == "MatMul" and len(g.shape(x)) == 2))
        ):
            _scale_shift_after(g, p, s, b)
            _absorb_output(g, p, n)
            g.notes.append(f"folded BatchNormalization {n!r} into {g.op(p)} {p!r}")
            continue
        y = d["outputs"][0]
        cs = (-1,) + (1,) * (len(g.shape(x)) - 2)
        mid = g.new_tensor(f"{y}_scaled", g.shape(y))
        g.remove_node(n)
        mul = g.add_node("Mul", [x, g.add_const(s.reshape(cs), f"{n}_scale")], [mid], None, n)
        add = g.add_node("Add", [mid, g.add_const(b.reshape(cs), f"{n}_shift")], [y], None, n)
        g.notes.append(f"turned BatchNormalization {n!r} into Mul {mul!r} and Add {add!r}")


# ---- 5. constants into affine ops -------------------------------------------------------


def _channel(c: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """c as a vector along `axis` of a tensor of `shape`, if it is constant along the rest."""
    full = c.reshape((1,) * (len(shape) - c.ndim) + c.shape)
    if any(s != 1 for i, s in enumerate(full.shape) if i != axis):
        return None
    return np.broadcast_to(full.reshape(-1), (shape[axis],)).copy()


def _per_input(g: Graph, p: str, v: np.ndarray) -> np.ndarray:
    """The per-input-channel vector v laid out like the weights of Conv/MatMul `p`."""
    w = g.const(g.node(p)["inputs"][1])
    if g.op(p) == "MatMul":
        return v[:, None]
    groups = g.node(p)["attrs"]["group"]
    cin_g, cout_g = w.shape[1], w.shape[0] // groups
    return v.reshape(groups, cin_g)[np.arange(w.shape[0]) // cout_g][:, :, None, None]


def _fold_after(g: Graph, n: str) -> bool:
    x, c = g.node(n)["inputs"]
    p = g.producer(x)
    if p is None or g.only_consumer(x) != n:
        return False
    layout = None  # a Transpose between the affine op and n (channels-last models)
    if g.op(p) == "Transpose":
        t = g.node(p)["inputs"][0]
        q = g.producer(t)
        if q is None or g.op(q) not in AFFINE or g.only_consumer(t) != p:
            return False
        layout, p = p, q
    if g.op(p) not in AFFINE:
        return False
    shape = g.shape(x)
    axis = 1 if g.op(p) == "Conv" else len(shape) - 1
    if layout is not None:
        axis = list(g.node(layout)["attrs"]["perm"]).index(axis)
    v = _channel(g.const(c), shape, axis)
    if v is None:
        return False
    if g.op(n) == "Add":
        _scale_shift_after(g, p, np.ones_like(v), v)
        what = "bias"
    else:
        _scale_shift_after(g, p, v, None)
        what = "weights and bias" if len(g.node(p)["inputs"]) > 2 else "weights"
    op = g.op(n)
    _absorb_output(g, p if layout is None else layout, n)
    g.notes.append(f"folded {op} {n!r} into the {what} of the {g.op(p)} {p!r} before it")
    return True


def _fold_before(g: Graph, n: str) -> bool:
    (x, c), y = g.node(n)["inputs"], g.node(n)["outputs"][0]
    q = g.only_consumer(y)
    if q is None or g.op(q) not in AFFINE or g.node(q)["inputs"][0] != y:
        return False
    shape = g.shape(y)
    v = _channel(g.const(c), shape, 1 if g.op(q) == "Conv" else len(shape) - 1)
    if v is None:
        return False
    d = g.node(q)
    w = g.const(d["inputs"][1])
    per_in = _per_input(g, q, v)
    if g.op(n) == "Mul":
        inputs = [x, g.add_const(w * per_in, f"{q}_W"), *d["inputs"][2:]]
        what = "weights"
    else:
        if g.op(q) == "Conv" and any(d["attrs"]["pads"]):
            return False  # zero padding would see x + c, not x, at the borders
        if g.op(q) == "Conv":
            shift = (w * per_in).sum(axis=(1, 2, 3))
        else:
            shift = v @ w
        bias = g.const(d["inputs"][2]) if len(d["inputs"]) > 2 else 0.0
        inputs = [x, d["inputs"][1], g.add_const(bias + shift, f"{q}_B")]
        what = "bias"
    op = g.op(n)
    g.remove_node(n)
    g.set_inputs(q, inputs)
    g.shapes.pop(y, None)
    g.notes.append(f"folded {op} {n!r} into the {what} of the {g.op(q)} {q!r} after it")
    return True


def fold_affine_constants(g: Graph) -> None:
    """Fold Add/Mul by constants into the Conv/MatMul before or after them, where exact."""
    changed = True
    while changed:
        changed = False
        for n in g.nodes_by_op("Add", "Mul"):
            if n in g.nx and g.is_const(g.node(n)["inputs"][1]):
                if _fold_after(g, n) or _fold_before(g, n):
                    changed = True


# ---- 6. ReLU after MaxPool --------------------------------------------------------------


def _monotone(g: Graph, n: str) -> bool:
    op = g.op(n)
    return op in ("Relu", "Clip") or (op == "LeakyRelu" and g.node(n)["attrs"]["alpha"] >= 0)


def swap_relu_maxpool(g: Graph) -> None:
    """Rewrite Relu -> MaxPool as MaxPool -> Relu (they commute; ReLU then sees fewer values).

    Also applies to LeakyRelu (alpha >= 0) and Clip: any non-decreasing function commutes
    with max.
    """
    for n in g.nodes_by_op("Relu", "LeakyRelu", "Clip"):
        (x,), (y,) = g.node(n)["inputs"], g.node(n)["outputs"]
        m = g.only_consumer(y)
        if m is None or g.op(m) != "MaxPool" or not _monotone(g, n):
            continue
        z = g.node(m)["outputs"][0]
        mid = g.new_tensor(f"{z}_pooled", g.shape(z))
        g.set_inputs(m, [x])
        g.set_outputs(m, [mid])
        g.set_inputs(n, [mid])
        g.set_outputs(n, [z])
        g.shapes.pop(y)
        ratio = np.prod(g.shape(x)) / np.prod(g.shape(z))
        g.notes.append(
            f"moved {g.op(n)} {n!r} after MaxPool {m!r} (they commute; "
            f"it now runs on {ratio:.3g}x fewer elements)"
        )


# ---- 7. AveragePool divisor -------------------------------------------------------------

# Ops f with f(x / k) = f(x) / k for k > 0, through which a divisor can travel.
_SCALE_COMMUTING = (
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


def _uniform_divisor(g: Graph, n: str) -> bool:
    a = g.node(n)["attrs"]
    if any(a["pads"]) and not a["count_include_pad"]:
        return False
    if not a["ceil_mode"]:
        return True
    size = g.shape(g.node(n)["inputs"][0])[2:]
    rank = len(size)
    return all(
        (size[i] + a["pads"][i] + a["pads"][i + rank] - a["kernel_shape"][i]) % a["strides"][i] == 0
        for i in range(rank)
    )


def _next_affine(g: Graph, t: str) -> str | None:
    """The Conv/MatMul reached from `t` through single-consumer, scale-commuting ops."""
    while (c := g.only_consumer(t)) is not None:
        d = g.node(c)
        if g.op(c) in AFFINE:
            return c if d["inputs"][0] == t and t not in d["inputs"][1:] else None
        commutes = g.op(c) in _SCALE_COMMUTING or (g.op(c) == "Pad" and d["attrs"]["value"] == 0)
        if not commutes or d["inputs"].count(t) != 1:
            return None
        t = d["outputs"][0]
    return None


def fold_avgpool(g: Graph) -> None:
    """Turn AveragePool into SumPool and scale the next Conv/MatMul's weights by 1/k.

    Only when the divisor k is the same for every window, is not a power of two (those are
    free in fixed point), and the path to the Conv/MatMul commutes with scaling.
    """
    for n in g.nodes_by_op("AveragePool"):
        k = int(np.prod(g.node(n)["attrs"]["kernel_shape"]))
        if k & (k - 1) == 0 or not _uniform_divisor(g, n):
            continue
        q = _next_affine(g, g.node(n)["outputs"][0])
        if q is None:
            continue
        d = g.node(q)
        w = d["inputs"][1]
        g.set_inputs(q, [d["inputs"][0], g.add_const(g.const(w) / k, f"{q}_W"), *d["inputs"][2:]])
        g.node(n)["op"] = "SumPool"
        g.notes.append(
            f"folded the 1/{k} of AveragePool {n!r} into the weights of {g.op(q)} {q!r} "
            "(it is now a SumPool)"
        )


PASSES: tuple[Callable[[Graph], None], ...] = (
    normalize,
    remove_identity,
    merge_reshapes,
    drop_final_softmax,
    fold_batchnorm,
    fold_affine_constants,
    swap_relu_maxpool,
    fold_avgpool,
)


def run_all(g: Graph) -> Graph:
    """Run every pass in order; return the same (now normalized) graph."""
    for p in PASSES:
        p(g)
    g.prune()
    return g
