"""Helpers shared by the legalization rules (`mpcc.compiler.legalize` and its op families):
int lists, node names for errors, explicit pads, the spatial-shape check, extra outputs."""

from __future__ import annotations

from typing import Any

import numpy as np

from mpcc.compiler.graph import Graph
from mpcc.errors import ModelError


def ints(v: Any) -> tuple[int, ...]:
    return tuple(int(x) for x in np.asarray(v).reshape(-1))


def where(g: Graph, n: str) -> str:
    return f"node {n!r} (op {g.op(n)})"


def explicit_pads(
    attrs: dict, size: tuple[int, ...], k: tuple, s: tuple, d: tuple
) -> tuple[int, ...]:
    """Explicit (begins..., ends...) pads, resolving auto_pad as ONNX defines it."""
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return ints(attrs.get("pads", [0] * 2 * len(k)))
    if auto == "VALID":
        return (0,) * 2 * len(k)
    begins, ends = [], []
    for i, kk, ss, dd in zip(size, k, s, d, strict=True):
        total = max(0, (-(-i // ss) - 1) * ss + (kk - 1) * dd + 1 - i)
        small, big = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else big)
        ends.append(big if auto == "SAME_UPPER" else small)
    return (*begins, *ends)


def need_spatial(g: Graph, n: str) -> tuple[int, ...]:
    """The input's shape, [N, C] and 1-3 spatial axes (1-D, 2-D or 3-D)."""
    x = g.node(n)["inputs"][0]
    shape = g.shape(x)
    if not 3 <= len(shape) <= 5:
        raise ModelError(
            f"{where(g, n)}: only [N, C, *spatial] tensors with 1-3 spatial axes are "
            f"supported; input {x!r} has shape {shape}"
        )
    return shape


def only_first_output(g: Graph, n: str, unsupported: str) -> None:
    """Drop the outputs after the first one, which nothing may read."""
    outputs = g.node(n)["outputs"]
    if any(g.consumers(t) or t in g.outputs for t in outputs[1:] if t):
        raise ModelError(f"{where(g, n)}: {unsupported}")
    for t in outputs[1:]:
        g.shapes.pop(t, None)
    g.set_outputs(n, outputs[:1])
