"""Legalization: normalize an ONNX graph into the form the rewrites and lowering expect.

After `legalize` every node is one of the ops below, with all attributes present (defaults
filled, auto_pad resolved, negative axes normalized); int lists are tuples of ints.

- Conv [x, W, (B)] over 1-3 spatial axes: kernel_shape, strides, pads (begins, then ends:
  top, left, bottom, right in 2-D), dilations, group.
- ConvTranspose [x, W, (B)] over 1-3 spatial axes: kernel_shape, strides, pads (explicit),
  dilations, output_padding, group.
- MatMul [x, W, (B)]: W constant [K, N], or a stack [..., K, N] (x of rank >= 2, batch axes
  broadcast as numpy does); B constant [N].
- MatMulSS [a, b]: the product of two computed tensors (MatMul, or Gemm whose B is
  computed), both of rank >= 2, leading axes broadcast as numpy's matmul does.
- Add / Sub / Mul [a, b]: both computed, or a constant second operand (Add, Mul) broadcasting
  to the first one's shape; Sub keeps a constant only as its first operand.
- Neg; Relu; LeakyRelu (alpha); Clip (min, max floats, +-inf when absent); PRelu [x, slope].
- MaxPool (kernel_shape, strides, pads, dilations, ceil_mode); AveragePool and SumPool
  (kernel_shape, strides, pads, count_include_pad, ceil_mode; dilations only when dilated, an
  opset-19 attribute), all over 1-3 spatial axes; GlobalAveragePool; GlobalMaxPool
  (also from ReduceMean / ReduceMax over the spatial axes of a 4-D image; ReduceSum there
  becomes a SumPool).
- The smooth-function ops in the form `mpcc.compiler.legalize_smooth` gives them (Reduce* over
  any axes, Softmax/LogSoftmax over any axes, LayerNormalization, Exp, Sigmoid, ...); Div by a
  computed tensor.
- Reshape (shape: static, no -1 or 0), Transpose (perm), Concat (axis >= 0; inputs may be
  constants), Pad (pads in ONNX order over all axes, value; mode only when not constant:
  reflect, edge or wrap).
- Gather [x] (axis, indices: flat non-negative ints, ishape: their shape): a computed tensor
  at constant indices. Tile [x] (reps). Expand becomes Reshape + Tile; Split becomes Slices.
- Slice (starts, ends, axes, steps): axes >= 0 in increasing order; starts and ends are
  non-negative and clamped like Python's slice with those bounds, except that with a negative
  step `end == -1` means "through index 0".
- Resize (index: the source index along each axis, nearest mode; also from Upsample).
- Left for the rewrites (`mpcc.compiler.rewrites`) to remove: Identity; Dropout (inference
  mode, one output); BatchNormalization (epsilon; one output); a Softmax or LogSoftmax that
  produces the model's output (through Reshapes at most) is dropped unless kept.

LSTM and GRU are unrolled first (`mpcc.compiler.recurrent`) into the ops above and Sigmoid,
Tanh (and Relu).

No Gemm, Flatten, Squeeze, Unsqueeze or Div by a constant remains; a Concat's inputs are all
computed. What cannot be brought into this form raises ModelError.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from mpcc.compiler import legalize_smooth
from mpcc.compiler.blockers import ATTRIBUTE, Blocker, raise_if_any
from mpcc.compiler.embedding import legalize_embedding, legalize_id_compare, one_hot_inputs
from mpcc.compiler.graph import Graph
from mpcc.compiler.recurrent import expand_recurrent
from mpcc.errors import ModelError


def legalize(g: Graph, blockers: list[Blocker] | None = None) -> None:
    """Fill attribute defaults, resolve auto_pad, move constant inputs to attributes, rewrite
    Gemm, Flatten/Squeeze/Unsqueeze, Div by a constant and Sub of a constant, and refuse what
    the compiler does not support (training-mode Dropout, Pow 3, ...).

    Every node is tried; what fails raises one ModelError listing all of them, or with a
    `blockers` list is appended to it. Nodes already in `blockers` are left alone."""
    found: list[Blocker] = []
    skip = {b.node for b in blockers or []}
    expand_recurrent(g)
    one_hot_inputs(g)
    for n in g.topo_nodes():
        if n not in g.nx:  # removed by an earlier rule (an id comparison's Not and Cast)
            continue
        rule = _LEGALIZE.get(g.op(n))
        if rule is None or n in skip:
            continue
        op = g.op(n)
        try:
            rule(g, n)
        except ModelError as e:
            found.append(Blocker(ATTRIBUTE, op, n, str(e)))
    if blockers is None:
        raise_if_any(found)
    else:
        blockers.extend(found)


def _ints(v: Any) -> tuple[int, ...]:
    return tuple(int(x) for x in np.asarray(v).reshape(-1))


def _where(g: Graph, n: str) -> str:
    return f"node {n!r} (op {g.op(n)})"


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


def _need_spatial(g: Graph, n: str) -> tuple[int, ...]:
    """The input's shape, [N, C] and 1-3 spatial axes (1-D, 2-D or 3-D)."""
    x = g.node(n)["inputs"][0]
    shape = g.shape(x)
    if not 3 <= len(shape) <= 5:
        raise ModelError(
            f"{_where(g, n)}: only [N, C, *spatial] tensors with 1-3 spatial axes are "
            f"supported; input {x!r} has shape {shape}"
        )
    return shape


def _conv(g: Graph, n: str) -> None:
    d, a = g.node(n), g.node(n)["attrs"]
    shape = _need_spatial(g, n)
    ones = (1,) * (len(shape) - 2)
    w = g.const(d["inputs"][1])
    k = _ints(a.get("kernel_shape", w.shape[2:]))
    strides, dil = _ints(a.get("strides", ones)), _ints(a.get("dilations", ones))
    pads = _pads(a, shape[2:], k, strides, dil)
    d["attrs"] = {
        "kernel_shape": k,
        "strides": strides,
        "pads": pads,
        "dilations": dil,
        "group": int(a.get("group", 1)),
    }
    g.set_inputs(n, [t for t in d["inputs"] if t])


def _conv_transpose(g: Graph, n: str) -> None:
    """ConvTranspose: explicit pads (from auto_pad or output_shape as ONNX defines them: the
    odd unit of a total padding goes to the end for SAME_UPPER, else to the start),
    output_padding, dilations, group."""
    d, a = g.node(n), g.node(n)["attrs"]
    shape = _need_spatial(g, n)
    rank = len(shape) - 2
    ones = (1,) * rank
    w = g.const(d["inputs"][1])
    k = _ints(a.get("kernel_shape", w.shape[2:]))
    strides, dil = _ints(a.get("strides", ones)), _ints(a.get("dilations", ones))
    extra = _ints(a.get("output_padding", (0,) * rank))
    auto = a.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if "output_shape" in a or auto in ("SAME_UPPER", "SAME_LOWER"):
        want = _ints(a["output_shape"])[-rank:] if "output_shape" in a else None
        if want is None:
            want = tuple(i * st for i, st in zip(shape[2:], strides, strict=True))
        total = [
            st * (i - 1) + e + (kk - 1) * dd + 1 - o
            for i, st, e, kk, dd, o in zip(shape[2:], strides, extra, k, dil, want, strict=True)
        ]
        if min(total) < 0:
            raise ModelError(f"{_where(g, n)}: output_shape {list(want)} needs negative pads")
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        pads = (*small, *big) if auto == "SAME_UPPER" else (*big, *small)
    elif auto == "VALID":
        pads = (0,) * 2 * rank
    else:
        pads = _ints(a.get("pads", (0,) * 2 * rank))
    d["attrs"] = {
        "kernel_shape": k,
        "strides": strides,
        "pads": pads,
        "dilations": dil,
        "output_padding": extra,
        "group": int(a.get("group", 1)),
    }
    g.set_inputs(n, [t for t in d["inputs"] if t])


def _pool(g: Graph, n: str) -> None:
    d, a, op = g.node(n), g.node(n)["attrs"], g.op(n)
    shape = _need_spatial(g, n)
    _only_first_output(g, n, "the Indices output is not supported")
    ones = (1,) * (len(shape) - 2)
    k = _ints(a["kernel_shape"])
    strides, dil = _ints(a.get("strides", ones)), _ints(a.get("dilations", ones))
    attrs: dict[str, Any] = {"kernel_shape": k, "strides": strides}
    attrs["pads"] = _pads(a, shape[2:], k, strides, dil)
    if op == "MaxPool" or dil != ones:  # AveragePool has dilations from opset 19
        attrs["dilations"] = dil
    if op != "MaxPool":
        attrs["count_include_pad"] = int(a.get("count_include_pad", 0))
    attrs["ceil_mode"] = int(a.get("ceil_mode", 0))
    d["attrs"] = attrs


def _gemm_ss(g: Graph, n: str) -> None:
    """Gemm with a computed B: alpha * A' @ B' (+ beta * C) as [Transpose], MatMulSS, [Mul],
    [Add], all but the product local."""
    d, a = g.node(n), g.node(n)["attrs"]
    ins = [*d["inputs"], ""]
    out = d["outputs"][0]
    operands = []
    for t, flag in ((ins[0], "transA"), (ins[1], "transB")):
        if g.is_const(t):
            raise ModelError(f"{_where(g, n)}: a constant A with a computed B is not supported")
        if a.get(flag, 0):
            tt = g.new_tensor(f"{t}_T", g.shape(t)[::-1])
            g.add_node("Transpose", [t], [tt], {"perm": (1, 0)}, name=f"{n}_{flag}")
            t = tt
        operands.append(t)
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    c = ins[2] if ins[2] and beta != 0.0 else None
    tail: list[tuple[str, str]] = []  # (op, constant) applied after the product, in order
    if alpha != 1.0:
        tail.append(("Mul", g.add_const(np.float32(alpha), f"{n}_alpha")))
    if c is not None:
        full = np.broadcast_to(beta * g.const(c), g.shape(out)).copy()
        tail.append(("Add", g.add_const(full, f"{n}_C")))
    d["op"], d["attrs"] = "MatMulSS", {}
    g.set_inputs(n, operands)
    prev = n
    for i, (op, k) in enumerate(tail):
        mid = g.new_tensor(f"{out}_{i}", g.shape(out))
        g.set_outputs(prev, [mid])
        prev = g.add_node(op, [mid, k], [out], name=f"{n}_{op.lower()}")
        _binary(g, prev)


def _matmul_ss(g: Graph, n: str) -> None:
    """MatMul of two computed tensors: MatMulSS, if both have two axes or more."""
    d = g.node(n)
    for t in d["inputs"]:
        if len(g.shape(t)) < 2:
            raise ModelError(
                f"{_where(g, n)}: a product of two computed tensors needs both of rank >= 2; "
                f"{t!r} has shape {list(g.shape(t))}"
            )
    d["op"], d["attrs"] = "MatMulSS", {}


def _gemm(g: Graph, n: str) -> None:
    d, a = g.node(n), g.node(n)["attrs"]
    if g.is_const(d["inputs"][0]) and not g.is_const(d["inputs"][1]):
        return _gemm_constant_first(g, n)
    if not g.is_const(d["inputs"][1]):
        return _gemm_ss(g, n)
    x, b = d["inputs"][:2]
    c = d["inputs"][2] if len(d["inputs"]) > 2 and d["inputs"][2] else None
    out = d["outputs"][0]
    w = g.const(b).T if a.get("transB", 0) else g.const(b)
    if float(a.get("alpha", 1.0)) != 1.0:
        w = float(a["alpha"]) * w
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


def _gemm_constant_first(g: Graph, n: str) -> None:
    """Gemm(A, x) with a constant A: MatMul(alpha A', x') legalized as a constant-first MatMul,
    plus beta C (broadcast to the output) as an Add."""
    d, a = g.node(n), g.node(n)["attrs"]
    c_t, x = d["inputs"][:2]
    c = d["inputs"][2] if len(d["inputs"]) > 2 and d["inputs"][2] else None
    out = d["outputs"][0]
    w = g.const(c_t).T if a.get("transA", 0) else g.const(c_t)
    w = float(a.get("alpha", 1.0)) * w
    if a.get("transB", 0):
        x = _swap_last(g, x, f"{n}_transpose")
    d["op"], d["attrs"] = "MatMul", {}
    g.set_inputs(n, [g.add_const(w, f"{n}_W"), x])
    if c is not None:
        mid = g.new_tensor(f"{out}_mm", g.shape(out))
        g.set_outputs(n, [mid])
        full = np.broadcast_to(float(a.get("beta", 1.0)) * g.const(c), g.shape(out)).copy()
        g.add_node("Add", [mid, g.add_const(full, f"{n}_C")], [out], name=f"{n}_add")
    _matmul(g, n)


def _matmul(g: Graph, n: str) -> None:
    """MatMul of a secret and a constant of any rank, either side, to x @ W with W constant
    [..., K, N]: a 1-D operand becomes a matrix (and its axis is dropped after), and C @ x is
    (x^T C^T)^T over the last two axes (the transposes are local)."""
    d = g.node(n)
    a, b = d["inputs"]
    out = d["outputs"][0]
    if not (g.is_const(a) or g.is_const(b)):
        return _matmul_ss(g, n)
    ranks = [g.const(t).ndim if g.is_const(t) else len(g.shape(t)) for t in (a, b)]
    if 1 in ranks:  # numpy: a 1-D first operand is a row, a 1-D second one a column
        a = _as_matrix(g, n, a, (1, -1)) if ranks[0] == 1 else a
        b = _as_matrix(g, n, b, (-1, 1)) if ranks[1] == 1 else b
        mid = g.new_tensor(f"{out}_2d", _matmul_shape(g, a, b))
        g.set_inputs(n, [a, b])
        g.set_outputs(n, [mid])
        g.add_node("Reshape", [mid], [out], {"shape": g.shape(out)}, name=f"{n}_reshape")
        out = mid
    if g.is_const(a):  # C @ x = (x^T C^T)^T over the last two axes
        c, x = g.const(a), b
        xt = _swap_last(g, x, f"{n}_transpose_in")
        ct = g.add_const(np.swapaxes(c, -1, -2).copy(), f"{n}_W")
        yt = g.new_tensor(f"{out}_T", _matmul_shape(g, xt, ct))
        g.set_inputs(n, [xt, ct])
        g.set_outputs(n, [yt])
        r = len(g.shape(yt))
        perm = (*range(r - 2), r - 1, r - 2)
        g.add_node("Transpose", [yt], [out], {"perm": perm}, name=f"{n}_transpose_out")
        a, b = xt, ct
    wv = g.const(b)
    if wv.ndim > 2 and all(s == 1 for s in wv.shape[:-2]) and len(g.shape(a)) >= wv.ndim:
        g.set_inputs(n, [a, g.add_const(wv.reshape(wv.shape[-2:]), f"{n}_W")])


def _as_matrix(g: Graph, n: str, t: str, shape: tuple[int, int]) -> str:
    """A 1-D operand as a row (1, -1) or a column (-1, 1): a constant reshaped, or a Reshape."""
    if g.is_const(t):
        return g.add_const(g.const(t).reshape(shape), f"{n}_{t}_2d")
    k = g.shape(t)[0]
    full = tuple(k if s == -1 else s for s in shape)
    m = g.new_tensor(f"{t}_2d", full)
    g.add_node("Reshape", [t], [m], {"shape": full}, name=f"{n}_{t}_2d")
    return m


def _swap_last(g: Graph, x: str, name: str) -> str:
    """A Transpose of the secret x's last two axes."""
    r = len(g.shape(x))
    perm = (*range(r - 2), r - 1, r - 2)
    xt = g.new_tensor(f"{x}_T", [g.shape(x)[i] for i in perm])
    g.add_node("Transpose", [x], [xt], {"perm": perm}, name=name)
    return xt


def _matmul_shape(g: Graph, a: str, b: str) -> tuple[int, ...]:
    """numpy's matmul shape of two operands of rank >= 2 (a constant or a tensor each)."""
    sa, sb = (g.const(t).shape if g.is_const(t) else tuple(g.shape(t)) for t in (a, b))
    batch = np.broadcast_shapes(tuple(sa[:-2]), tuple(sb[:-2]))
    return (*batch, sa[-2], sb[-1])


def _binary(g: Graph, n: str) -> None:
    d, op = g.node(n), g.op(n)
    x, y = d["inputs"]
    out = d["outputs"][0]
    if op in ("Add", "Mul") and g.is_const(x):
        x, y = y, x
    if op == "Div" and not g.is_const(y):
        if g.is_const(x):  # c / y = reciprocal(y) * c
            r = g.new_tensor(f"{y}_recip", g.shape(y))
            g.add_node("Reciprocal", [y], [r], {}, name=f"{n}_recip")
            d["op"] = "Mul"
            g.set_inputs(n, [r, x])
            _binary(g, n)
        return  # division by a secret (mpcc.compiler.approx.recip.divide)
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
    if g.is_const(y) and not g.is_const(x) and g.shape(x) == g.shape(out):
        c = g.const(y)
        if (op == "Mul" and (c == 1).all()) or (op == "Add" and (c == 0).all()):
            d["op"] = "Identity"  # e.g. a mask of ones fixed by --fix-input; removed later
            g.set_inputs(n, [x])


def _batchnorm(g: Graph, n: str) -> None:
    d, a = g.node(n), g.node(n)["attrs"]
    if a.get("training_mode", 0):
        raise ModelError(f"{_where(g, n)}: training mode is not supported")
    _only_first_output(g, n, "the running mean/variance outputs are not supported")
    d["attrs"] = {"epsilon": float(a.get("epsilon", 1e-5))}


_GLOBAL_POOL = {
    "ReduceMean": "GlobalAveragePool",
    "ReduceMax": "GlobalMaxPool",
    "ReduceSum": "SumPool",
}


def _reduce(g: Graph, n: str) -> None:
    """ReduceMean/Max/Sum over all the spatial axes -> GlobalAveragePool/GlobalMaxPool/SumPool
    (channels-last [N, H, W, C] reduced over (1, 2) is transposed to NCHW first: local); over
    any other axes, the general form of `legalize_smooth.reduce_general`."""
    d, op = g.node(n), g.op(n)
    x, out = d["inputs"][0], d["outputs"][0]
    shape = g.shape(x)
    rank = len(shape)
    axes, _, noop = legalize_smooth.reduce_axes(g, n)
    spatial = rank == 4 and axes in ((1, 2), (2, 3))
    if noop or not spatial or (op == "ReduceSum" and rank != 4):
        legalize_smooth.reduce_general(g, n)
        return
    if rank == 4 and axes == (1, 2):  # channels-last
        nchw = g.new_tensor(f"{x}_nchw", (shape[0], shape[3], shape[1], shape[2]))
        g.add_node("Transpose", [x], [nchw], {"perm": (0, 3, 1, 2)}, name=f"{n}_to_nchw")
        x, shape, axes = nchw, g.shape(nchw), (2, 3)
    pooled = (*shape[:2], *(1,) * (rank - 2))
    d["op"] = _GLOBAL_POOL[op]
    d["attrs"] = {}
    if op == "ReduceSum":
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
    # ONNX's Clip is min(max(x, lo), hi): with lo > hi every element is hi.
    d["attrs"] = {"min": min(lo, hi), "max": hi}
    g.set_inputs(n, ins[:1])


def _prelu(g: Graph, n: str) -> None:
    """The slope broadcast (ONNX's unidirectional broadcast: trailing axes aligned) to the
    input's full shape, so that it multiplies elementwise."""
    x, slope = g.node(n)["inputs"][:2]
    shape, s = g.shape(x), g.const(slope)
    try:
        full = np.broadcast_to(s, shape)
    except ValueError:
        hint = ""
        if s.ndim == 1 and len(shape) > 2 and s.shape[0] == shape[1]:
            per_channel = (s.shape[0],) + (1,) * (len(shape) - 2)
            hint = f"; for a per-channel slope give it shape {per_channel}"
        raise ModelError(
            f"{_where(g, n)}: the slope of shape {tuple(s.shape)} does not broadcast to the "
            f"input's shape {tuple(shape)} (ONNX aligns the trailing axes){hint}"
        ) from None
    if full.shape != s.shape:
        g.set_inputs(n, [x, g.add_const(full.copy(), f"{n}_slope")])


_FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _cast(g: Graph, n: str) -> None:
    """A Cast between float types is a no-op on fixed-point values (becomes Identity)."""
    d = g.node(n)
    to = int(d["attrs"].get("to", 0))
    if to not in _FLOAT_TYPES:
        name = (
            onnx.TensorProto.DataType.Name(to) if to in onnx.TensorProto.DataType.values() else to
        )
        raise ModelError(
            f"{_where(g, n)}: a Cast of a computed tensor to {name} is not supported (only "
            "Casts to FLOAT16, BFLOAT16, FLOAT or DOUBLE, and Casts of constants, which fold)"
        )
    d["op"], d["attrs"] = "Identity", {}


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


PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _pad(g: Graph, n: str) -> None:
    d = g.node(n)
    mode = d["attrs"].get("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode not in PAD_MODES:
        raise ModelError(
            f"{_where(g, n)}: padding mode {mode!r} is not supported "
            f"(supported: {', '.join(PAD_MODES)})"
        )
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
    shape = g.shape(ins[0])
    if mode == "reflect" and any(max(pads[i], pads[i + rank]) >= shape[i] for i in range(rank)):
        raise ModelError(
            f"{_where(g, n)}: reflect pads {list(pads)} must be smaller than the axes they pad "
            f"({list(shape)})"
        )
    d["attrs"] = {"pads": pads, "value": value}
    if mode != "constant":
        d["attrs"]["mode"] = mode
    g.set_inputs(n, ins[:1])


def _str(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _source(
    x: np.ndarray, scale: float, n_in: int, n_out: int, transform: str
) -> np.ndarray | None:
    """ONNX Resize's coordinate transform: the input coordinate of output positions x."""
    if transform == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if transform == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if n_out > 1 else np.zeros_like(x)
    if transform == "asymmetric":
        return x / scale
    if transform == "align_corners":
        return x * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros_like(x)
    if transform == "half_pixel_symmetric":
        adjust = n_out / (scale * n_in)
        return n_in / 2 * (1 - adjust) + (x + 0.5) / scale - 0.5
    return None


_NEAREST = {
    "round_prefer_floor": lambda v: np.where(v - np.floor(v) == 0.5, np.floor(v), np.round(v)),
    "round_prefer_ceil": lambda v: np.where(v - np.floor(v) == 0.5, np.ceil(v), np.round(v)),
    "floor": np.floor,
    "ceil": np.ceil,
}


def _resize(g: Graph, n: str) -> None:
    """Resize / Upsample in nearest mode -> Resize with the source index along each axis
    (attribute `index`), from the scales or sizes, the coordinate transform and the nearest
    mode, as ONNX defines them. Upsample is Resize with asymmetric coordinates and floor."""
    d, a = g.node(n), g.node(n)["attrs"]
    x, out = d["inputs"][0], d["outputs"][0]
    shape_in, shape_out = g.shape(x), g.shape(out)
    rank = len(shape_in)
    mode = _str(a.get("mode", "nearest"))
    if mode != "nearest":
        raise ModelError(f"{_where(g, n)}: only mode 'nearest' is supported, not {mode!r}")
    ins = [*d["inputs"], "", "", ""]
    if g.op(n) == "Upsample":
        transform, rounding = "asymmetric", "floor"
        scales = a.get("scales") or (g.const(ins[1]) if ins[1] else None)
    else:
        transform = _str(a.get("coordinate_transformation_mode", "half_pixel"))
        rounding = _str(a.get("nearest_mode", "round_prefer_floor"))
        # opset 10: (X, scales); 11+: (X, roi, scales, sizes)
        scales_t = ins[1] if g.opset < 11 else ins[2]
        scales = g.const(scales_t) if scales_t and g.const(scales_t).size else None
        if _str(a.get("keep_aspect_ratio_policy", "stretch")) != "stretch":
            raise ModelError(f"{_where(g, n)}: only keep_aspect_ratio_policy 'stretch'")
    if transform not in ("half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners",
                         "half_pixel_symmetric") or rounding not in _NEAREST:  # fmt: skip
        raise ModelError(
            f"{_where(g, n)}: coordinate_transformation_mode {transform!r} with nearest_mode "
            f"{rounding!r} is not supported"
        )
    if scales is not None:
        scales = [float(v) for v in np.asarray(scales, dtype=np.float64).reshape(-1)]
        axes = _ints(a["axes"]) if "axes" in a else tuple(range(rank))
        full = [1.0] * rank
        for ax, v in zip(axes, scales, strict=True):
            full[ax % rank] = v
    else:
        full = [o / i for o, i in zip(shape_out, shape_in, strict=True)]
    index = []
    for n_in, n_out, sc in zip(shape_in, shape_out, full, strict=True):
        pos = np.arange(n_out, dtype=np.float64)
        src = _source(pos, sc, n_in, n_out, transform)
        picks = np.clip(_NEAREST[rounding](src), 0, n_in - 1).astype(np.int64)
        index.append(tuple(int(v) for v in picks))
    d["op"], d["attrs"] = "Resize", {"index": tuple(index)}
    g.set_inputs(n, [x])


def _gather(g: Graph, n: str) -> None:
    """Gather of a computed tensor at constant indices (negative ones normalized), or of a
    constant table by the client's integer ids (`_embedding`)."""
    d = g.node(n)
    x, idx = d["inputs"]
    if g.is_const(x) and not g.is_const(idx):
        return legalize_embedding(g, n)
    if g.is_const(x) or not g.is_const(idx):
        raise ModelError(
            f"{_where(g, n)}: only a computed tensor gathered at constant indices is supported "
            f"here ({x!r} is {'constant' if g.is_const(x) else 'computed'}, indices {idx!r} "
            f"are {'constant' if g.is_const(idx) else 'computed'})"
        )
    shape = g.shape(x)
    axis = int(d["attrs"].get("axis", 0)) % len(shape)
    iv = np.asarray(g.const(idx), dtype=np.int64)
    if ((iv < -shape[axis]) | (iv >= shape[axis])).any():
        raise ModelError(f"{_where(g, n)}: an index is out of range for axis {axis} ({shape})")
    iv = np.where(iv < 0, iv + shape[axis], iv)
    d["attrs"] = {"axis": axis, "indices": _ints(iv), "ishape": tuple(iv.shape)}
    g.set_inputs(n, [x])


def _split(g: Graph, n: str) -> None:
    """Split into one Slice per output (each local)."""
    d, a = g.node(n), g.node(n)["attrs"]
    x, outs = d["inputs"][0], list(d["outputs"])
    rank = len(g.shape(x))
    axis = int(a.get("axis", 0)) % rank
    name = n
    g.remove_node(n)
    start = 0
    for i, t in enumerate(outs):
        size = g.shape(t)[axis]
        if not t:
            start += size
            continue
        attrs = {"starts": (start,), "ends": (start + size,), "axes": (axis,), "steps": (1,)}
        g.add_node("Slice", [x], [t], attrs, name=f"{name}_{i}")
        start += size


def _tile(g: Graph, n: str) -> None:
    d = g.node(n)
    d["attrs"] = {"reps": _ints(g.const(d["inputs"][1]))}
    g.set_inputs(n, d["inputs"][:1])


def _expand(g: Graph, n: str) -> None:
    """Expand (numpy broadcasting to a constant shape) as Reshape to the output's rank, then
    Tile along the axes of size 1 that grow."""
    d = g.node(n)
    x, out = d["inputs"][0], d["outputs"][0]
    shape, target = g.shape(x), g.shape(out)
    full = (1,) * (len(target) - len(shape)) + tuple(shape)
    if full != tuple(shape):
        mid = g.new_tensor(f"{x}_rank{len(target)}", full)
        g.add_node("Reshape", [x], [mid], {"shape": full}, name=f"{n}_reshape")
        x = mid
    d["op"], d["attrs"] = "Tile", {"reps": tuple(t // s for s, t in zip(full, target, strict=True))}
    g.set_inputs(n, [x])


def _dropout(g: Graph, n: str) -> None:
    d = g.node(n)
    if len(d["inputs"]) > 2 and d["inputs"][2] and g.const(d["inputs"][2]).any():
        raise ModelError(f"{_where(g, n)}: training mode is not supported")
    _only_first_output(g, n, "the mask output is not supported")


_TRAILING = ("Reshape", "Identity", "Dropout", "Flatten", "Squeeze", "Unsqueeze")


def is_final(g: Graph, n: str) -> bool:
    """Whether node n's output is the model's output (through Reshape-like nodes at most)."""
    t = g.node(n)["outputs"][0]
    while t not in g.outputs or g.consumers(t):
        c = g.only_consumer(t)
        if c is None or g.op(c) not in _TRAILING:
            return False
        t = g.node(c)["outputs"][0]
    return True


def _only_first_output(g: Graph, n: str, unsupported: str) -> None:
    """Drop the outputs after the first one, which nothing may read."""
    outputs = g.node(n)["outputs"]
    if any(g.consumers(t) or t in g.outputs for t in outputs[1:] if t):
        raise ModelError(f"{_where(g, n)}: {unsupported}")
    for t in outputs[1:]:
        g.shapes.pop(t, None)
    g.set_outputs(n, outputs[:1])


_LEGALIZE: dict[str, Callable[[Graph, str], None]] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
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
    "Cast": _cast,
    "Flatten": _to_reshape,
    "Squeeze": _to_reshape,
    "Unsqueeze": _to_reshape,
    "Reshape": _to_reshape,
    "Transpose": _transpose,
    "Concat": _concat,
    "Slice": _slice,
    "Pad": _pad,
    "Resize": _resize,
    "Upsample": _resize,
    "Gather": _gather,
    "Split": _split,
    "Equal": legalize_id_compare,
    "Tile": _tile,
    "Expand": _expand,
    "Dropout": _dropout,
    **legalize_smooth.RULES,
}
