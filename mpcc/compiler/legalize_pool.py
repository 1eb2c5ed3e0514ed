"""Legalization of pooling: MaxPool and AveragePool (explicit pads, defaults filled), and
ReduceMean/Max/Sum over the spatial axes of an image as a global pool."""

from __future__ import annotations

from typing import Any

from mpcc.compiler import legalize_smooth
from mpcc.compiler.graph import Graph
from mpcc.compiler.legalize_common import explicit_pads, ints, need_spatial, only_first_output


def _pool(g: Graph, n: str) -> None:
    d, a, op = g.node(n), g.node(n)["attrs"], g.op(n)
    shape = need_spatial(g, n)
    only_first_output(g, n, "the Indices output is not supported")
    ones = (1,) * (len(shape) - 2)
    k = ints(a["kernel_shape"])
    strides, dil = ints(a.get("strides", ones)), ints(a.get("dilations", ones))
    attrs: dict[str, Any] = {"kernel_shape": k, "strides": strides}
    attrs["pads"] = explicit_pads(a, shape[2:], k, strides, dil)
    if op == "MaxPool" or dil != ones:  # AveragePool has dilations from opset 19
        attrs["dilations"] = dil
    if op != "MaxPool":
        attrs["count_include_pad"] = int(a.get("count_include_pad", 0))
    attrs["ceil_mode"] = int(a.get("ceil_mode", 0))
    d["attrs"] = attrs


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


RULES = {
    "MaxPool": _pool,
    "AveragePool": _pool,
    "ReduceMean": _reduce,
    "ReduceMax": _reduce,
    "ReduceSum": _reduce,
}
