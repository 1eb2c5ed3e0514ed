"""Legalization of the linear layers: Conv and ConvTranspose (explicit pads), Gemm and MatMul
(to MatMul x @ W with a constant W, or MatMulSS of two computed tensors)."""

from __future__ import annotations

import numpy as np

from mpcc.compiler.graph import Graph
from mpcc.compiler.legalize_common import explicit_pads, ints, need_spatial, where
from mpcc.compiler.legalize_elementwise import binary
from mpcc.errors import ModelError


def _conv(g: Graph, n: str) -> None:
    d, a = g.node(n), g.node(n)["attrs"]
    shape = need_spatial(g, n)
    ones = (1,) * (len(shape) - 2)
    w = g.const(d["inputs"][1])
    k = ints(a.get("kernel_shape", w.shape[2:]))
    strides, dil = ints(a.get("strides", ones)), ints(a.get("dilations", ones))
    pads = explicit_pads(a, shape[2:], k, strides, dil)
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
    shape = need_spatial(g, n)
    rank = len(shape) - 2
    ones = (1,) * rank
    w = g.const(d["inputs"][1])
    k = ints(a.get("kernel_shape", w.shape[2:]))
    strides, dil = ints(a.get("strides", ones)), ints(a.get("dilations", ones))
    extra = ints(a.get("output_padding", (0,) * rank))
    auto = a.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if "output_shape" in a or auto in ("SAME_UPPER", "SAME_LOWER"):
        want = ints(a["output_shape"])[-rank:] if "output_shape" in a else None
        if want is None:
            want = tuple(i * st for i, st in zip(shape[2:], strides, strict=True))
        total = [
            st * (i - 1) + e + (kk - 1) * dd + 1 - o
            for i, st, e, kk, dd, o in zip(shape[2:], strides, extra, k, dil, want, strict=True)
        ]
        if min(total) < 0:
            raise ModelError(f"{where(g, n)}: output_shape {list(want)} needs negative pads")
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        pads = (*small, *big) if auto == "SAME_UPPER" else (*big, *small)
    elif auto == "VALID":
        pads = (0,) * 2 * rank
    else:
        pads = ints(a.get("pads", (0,) * 2 * rank))
    d["attrs"] = {
        "kernel_shape": k,
        "strides": strides,
        "pads": pads,
        "dilations": dil,
        "output_padding": extra,
        "group": int(a.get("group", 1)),
    }
    g.set_inputs(n, [t for t in d["inputs"] if t])


def _gemm_ss(g: Graph, n: str) -> None:
    """Gemm with a computed B: alpha * A' @ B' (+ beta * C) as [Transpose], MatMulSS, [Mul],
    [Add], all but the product local."""
    d, a = g.node(n), g.node(n)["attrs"]
    ins = [*d["inputs"], ""]
    out = d["outputs"][0]
    operands = []
    for t, flag in ((ins[0], "transA"), (ins[1], "transB")):
        if g.is_const(t):
            raise ModelError(f"{where(g, n)}: a constant A with a computed B is not supported")
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
        binary(g, prev)


def _matmul_ss(g: Graph, n: str) -> None:
    """MatMul of two computed tensors: MatMulSS, if both have two axes or more."""
    d = g.node(n)
    for t in d["inputs"]:
        if len(g.shape(t)) < 2:
            raise ModelError(
                f"{where(g, n)}: a product of two computed tensors needs both of rank >= 2; "
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


RULES = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
}
