"""Fuse the decomposed forms that exporters emit back into one smooth op (before
legalization, on the exporter's own ops), so each is lowered by `mpcc.compiler.approx` at
the cost and error bound of the fused op:

- LayerNormalization: ReduceMean, Sub, Pow 2, ReduceMean, Add eps, Sqrt, Div (older torch
  and TF exporters); a following Mul by a constant and Add of a constant stay as they are
  (each a local or one-multiply op).
- GELU, erf form: x * 0.5 * (1 + Erf(x / sqrt 2)) in any association of the products
  (Div by sqrt 2 or Mul by 1/sqrt 2).
- GELU, tanh form: 0.5 x (1 + Tanh(sqrt(2/pi) (x + 0.044715 x^3))), x^3 as Pow 3 or Mul.
- SiLU: x * Sigmoid(x) (an mpcc op, "Silu").
- L2 normalisation: x / ReduceL2(x) over one axis (keepdims), through a Clip(min) or Max
  with a small constant and an Expand back to x's shape: LpNormalization (p = 2).

Each fusion checks that the intermediate tensors have no other reader; where a near-match
is turned down, the reason is noted in `g.notes`.
"""

from __future__ import annotations

import math

import numpy as np

from mpcc.compiler.graph import Graph


def _scalar(g: Graph, t: str) -> float | None:
    """The value of a constant holding one number (any shape), else None."""
    if not g.is_const(t):
        return None
    v = np.unique(np.asarray(g.const(t), dtype=np.float64))
    return float(v[0]) if v.size == 1 else None


def _near(v: float | None, want: float, rel: float = 1e-3) -> bool:
    return v is not None and abs(v - want) <= rel * abs(want)


def _single(g: Graph, t: str) -> str | None:
    """The only reader of t (None if several, none, or t is a graph output)."""
    return g.only_consumer(t)


def _other(g: Graph, n: str, t: str) -> str | None:
    """The input of binary node n that is not t (None if n does not read t once)."""
    ins = g.node(n)["inputs"]
    if len(ins) != 2 or ins.count(t) != 1:
        return None
    return ins[1] if ins[0] == t else ins[0]


def _replace(
    g: Graph, chain: list[str], op: str, inputs: list[str], attrs: dict, out: str, name: str
) -> str:
    """Remove the nodes of `chain` and compute `out` by one new node."""
    for n in chain:
        for t in g.node(n)["outputs"]:
            if t != out:
                g.shapes.pop(t, None)
        g.remove_node(n)
    return g.add_node(op, inputs, [out], attrs, name=name)


def _scaled_by(g: Graph, t: str, want: float) -> tuple[str, str] | None:
    """(x, node) if t = Mul(x, c) or Div(x, 1/c) with c ~ want and a computed x."""
    p = g.producer(t)
    if p is None or g.op(p) not in ("Mul", "Div"):
        return None
    a, b = g.node(p)["inputs"]
    if g.op(p) == "Mul":
        if g.is_const(a):
            a, b = b, a
        c = _scalar(g, b)
    else:
        d = _scalar(g, b)
        c = None if not d else 1.0 / d
    if g.is_const(a) or not _near(c, want):
        return None
    return a, p


def _half_product(g: Graph, x: str, s: str) -> tuple[list[str], str] | None:
    """The nodes computing 0.5 * x * s from s (any association), and the result tensor."""
    m1 = _single(g, s)
    if m1 is None or g.op(m1) != "Mul":
        return None
    o = _other(g, m1, s)
    if o is None:
        return None
    if o == x:  # (x * s) * 0.5
        m2 = _single(g, g.node(m1)["outputs"][0])
        if m2 is None or g.op(m2) != "Mul":
            return None
        if not _near(_scalar(g, _other(g, m2, g.node(m1)["outputs"][0]) or ""), 0.5):
            return None
        return [m1, m2], g.node(m2)["outputs"][0]
    if _near(_scalar(g, o), 0.5):  # (s * 0.5) * x
        m2 = _single(g, g.node(m1)["outputs"][0])
        if m2 is None or g.op(m2) != "Mul" or _other(g, m2, g.node(m1)["outputs"][0]) != x:
            return None
        return [m1, m2], g.node(m2)["outputs"][0]
    hx = _scaled_by(g, o, 0.5)  # (x * 0.5) * s
    if hx is None or hx[0] != x or _single(g, o) != m1:
        return None
    return [hx[1], m1], g.node(m1)["outputs"][0]


def _one_plus(g: Graph, t: str) -> str | None:
    """The node computing 1 + t (t's only reader), if any."""
    a = _single(g, t)
    if a is None or g.op(a) != "Add" or not _near(_scalar(g, _other(g, a, t) or ""), 1.0):
        return None
    return a


def fuse_gelu_erf(g: Graph) -> None:
    for e in g.nodes_by_op("Erf"):
        if e not in g.nx:
            continue
        sx = _scaled_by(g, g.node(e)["inputs"][0], 1.0 / math.sqrt(2.0))
        if sx is None:
            continue
        x, scale_node = sx
        a = _one_plus(g, g.node(e)["outputs"][0])
        if a is None or _single(g, g.node(scale_node)["outputs"][0]) != e:
            continue
        prod = _half_product(g, x, g.node(a)["outputs"][0])
        if prod is None:
            g.notes.append(f"kept Erf {e!r} apart: not in the form x * 0.5 * (1 + erf(x/sqrt2))")
            continue
        chain, out = prod
        name = _replace(g, [scale_node, e, a, *chain], "Gelu", [x], {}, out, f"{e}_gelu")
        g.notes.append(f"fused the erf form of GELU into {name!r}")


def _cube_term(g: Graph, t: str) -> tuple[str, list[str]] | None:
    """(x, nodes) if t = x + 0.044715 * x^3 with x^3 as Pow(x, 3) or x * x * x."""
    p = g.producer(t)
    if p is None or g.op(p) != "Add":
        return None
    for x, c in (g.node(p)["inputs"], g.node(p)["inputs"][::-1]):
        sc = _scaled_by(g, c, 0.044715)
        if sc is None or _single(g, c) != p:
            continue
        cube, m = sc
        q = g.producer(cube)
        if q is None or _single(g, cube) != m:
            continue
        if (
            g.op(q) == "Pow"
            and g.node(q)["inputs"][0] == x
            and _near(_scalar(g, g.node(q)["inputs"][1]), 3.0)
        ):
            return x, [q, m, p]
        if g.op(q) == "Mul":
            a, b = g.node(q)["inputs"]
            sq = b if a == x else a if b == x else None
            r = g.producer(sq) if sq else None
            if r and g.op(r) == "Mul" and g.node(r)["inputs"] == [x, x] and _single(g, sq) == q:
                return x, [r, q, m, p]
    return None


def fuse_gelu_tanh(g: Graph) -> None:
    k = math.sqrt(2.0 / math.pi)
    for th in g.nodes_by_op("Tanh"):
        if th not in g.nx:
            continue
        inner = _scaled_by(g, g.node(th)["inputs"][0], k)
        if inner is None or _single(g, g.node(inner[1])["outputs"][0]) != th:
            continue
        cube = _cube_term(g, inner[0])
        if cube is None or _single(g, inner[0]) != inner[1]:
            continue
        x, nodes = cube
        a = _one_plus(g, g.node(th)["outputs"][0])
        prod = None if a is None else _half_product(g, x, g.node(a)["outputs"][0])
        if prod is None:
            g.notes.append(f"kept Tanh {th!r} apart: not in GELU's tanh form")
            continue
        chain, out = prod
        name = _replace(
            g,
            [*nodes, inner[1], th, a, *chain],
            "Gelu",
            [x],
            {"approximate": "tanh"},
            out,
            f"{th}_gelu",
        )
        g.notes.append(f"fused the tanh form of GELU into {name!r}")


def fuse_silu(g: Graph) -> None:
    for s in g.nodes_by_op("Sigmoid"):
        if s not in g.nx:
            continue
        x, y = g.node(s)["inputs"][0], g.node(s)["outputs"][0]
        m = _single(g, y)
        if m is None or g.op(m) != "Mul" or _other(g, m, y) != x:
            continue
        out = g.node(m)["outputs"][0]
        name = _replace(g, [s, m], "Silu", [x], {}, out, f"{s}_silu")
        g.notes.append(f"fused x * Sigmoid(x) into SiLU {name!r}")


def _reduce_axes(g: Graph, n: str) -> tuple[int, ...]:
    from mpcc.compiler.legalize_smooth import reduce_axes

    return reduce_axes(g, n)[0]


def fuse_layernorm(g: Graph) -> None:
    for div in g.nodes_by_op("Div"):
        if div not in g.nx:
            continue
        d, s = g.node(div)["inputs"]
        sub, sq = g.producer(d), g.producer(s)
        if sub is None or sq is None or g.op(sub) != "Sub" or g.op(sq) != "Sqrt":
            continue
        x, mean = g.node(sub)["inputs"]
        rm1 = g.producer(mean)
        add = g.producer(g.node(sq)["inputs"][0])
        if rm1 is None or g.op(rm1) != "ReduceMean" or g.node(rm1)["inputs"][0] != x:
            continue
        if add is None or g.op(add) != "Add":
            continue
        v, eps_t = g.node(add)["inputs"]
        if g.is_const(v):
            v, eps_t = eps_t, v
        eps = _scalar(g, eps_t)
        rm2 = g.producer(v)
        if eps is None or rm2 is None or g.op(rm2) != "ReduceMean":
            continue
        pw = g.producer(g.node(rm2)["inputs"][0])
        if pw is None:
            continue
        ins = g.node(pw)["inputs"]
        d2 = ins[0]  # the deviation squared: d itself, or the same Sub again (dynamo)
        twin = g.producer(d2)
        same = d2 == d or (
            twin is not None and g.op(twin) == "Sub" and g.node(twin)["inputs"] == [x, mean]
        )
        squares = (g.op(pw) == "Pow" and _near(_scalar(g, ins[1]), 2.0)) or (
            g.op(pw) == "Mul" and ins == [d2, d2]
        )
        if not (same and squares):
            continue
        ax = _reduce_axes(g, rm1)
        rank = len(g.shape(x))
        chain = [rm1, sub, pw, rm2, add, sq, div]
        inner = [mean, d, g.node(pw)["outputs"][0], v, g.node(add)["outputs"][0], s]
        if d2 != d:
            chain.insert(1, twin)
            inner.append(d2)
        readers_ok = all(t not in g.outputs and set(g.consumers(t)) <= set(chain) for t in inner)
        keep = all(g.node(r)["attrs"].get("keepdims", 1) for r in (rm1, rm2))
        if ax != _reduce_axes(g, rm2) or ax != tuple(range(ax[0], rank)) or not keep:
            g.notes.append(f"kept {div!r} apart from LayerNormalization: the means' axes differ")
            continue
        if not readers_ok:
            g.notes.append(f"kept {div!r} apart from LayerNormalization: a step is read elsewhere")
            continue
        out = g.node(div)["outputs"][0]
        name = _replace(
            g,
            chain,
            "LayerNormalization",
            [x],
            {"axis": ax[0], "epsilon": eps},
            out,
            f"{div}_layernorm",
        )
        g.notes.append(f"fused a decomposed layer norm into {name!r}")


def fuse_l2_normalize(g: Graph) -> None:
    for div in g.nodes_by_op("Div"):
        if div not in g.nx:
            continue
        x, t = g.node(div)["inputs"]
        chain = [div]
        p = g.producer(t)
        while p is not None and g.op(p) in ("Expand", "Clip", "Max") and _single(g, t) in chain:
            if g.op(p) == "Clip":
                lo = g.node(p)["inputs"][1] if len(g.node(p)["inputs"]) > 1 else ""
                lo_v = _scalar(g, lo) if lo else g.node(p)["attrs"].get("min")
                if (
                    lo_v is None
                    or lo_v > 1e-3
                    or len(g.node(p)["inputs"]) > 2
                    and g.node(p)["inputs"][2]
                ):
                    break
            if g.op(p) == "Max":
                ins = g.node(p)["inputs"]
                c = next((i for i in ins if g.is_const(i)), None)
                if len(ins) != 2 or c is None or (_scalar(g, c) or 1.0) > 1e-3:
                    break
            chain.append(p)
            t = next(i for i in g.node(p)["inputs"] if not g.is_const(i))
            p = g.producer(t)
        if p is None or g.op(p) != "ReduceL2" or g.node(p)["inputs"][0] != x:
            continue
        if _single(g, t) not in chain:
            continue
        ax = _reduce_axes(g, p)
        if len(ax) != 1 or not g.node(p)["attrs"].get("keepdims", 1):
            continue
        chain.append(p)
        out = g.node(div)["outputs"][0]
        name = _replace(g, chain, "LpNormalization", [x], {"axis": ax[0], "p": 2}, out, f"{div}_l2")
        g.notes.append(f"fused x / ReduceL2(x) into L2 normalisation {name!r}")


FUSIONS = (fuse_layernorm, fuse_gelu_erf, fuse_gelu_tanh, fuse_silu, fuse_l2_normalize)


def fuse_all(g: Graph) -> None:
    """Run every fusion (before legalization)."""
    for fuse in FUSIONS:
        fuse(g)
