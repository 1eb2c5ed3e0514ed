"""ONNX model in, secure plan out: load, fix shapes, build the graph, run passes, lower,
verify."""

from __future__ import annotations

from pathlib import Path

import onnx

from mpcc.compiler import passes
from mpcc.compiler.graph import Graph
from mpcc.compiler.ir import MAX_FRAC_BITS, MIN_FRAC_BITS
from mpcc.compiler.lowering import lower
from mpcc.compiler.plan import Plan
from mpcc.compiler.verify import verify
from mpcc.errors import ModelError
from mpcc.frontends import onnx as onnx_frontend

DEFAULT_FRAC_BITS = 16


def compile_onnx(
    model: str | Path | onnx.ModelProto,
    input_shapes: dict | tuple | None = None,
    frac_bits: int = DEFAULT_FRAC_BITS,
    public_weights: bool = False,
    name: str | None = None,
    keep_softmax: bool = False,
) -> Plan:
    """Compile an ONNX model to a Plan: the Program and its (plaintext, owner-side) weights.

    A final Softmax/LogSoftmax is dropped (the plan returns logits, argmax unchanged) unless
    `keep_softmax`, which computes it securely."""
    if not MIN_FRAC_BITS <= frac_bits <= MAX_FRAC_BITS:
        raise ModelError(
            f"frac_bits must be between {MIN_FRAC_BITS} and {MAX_FRAC_BITS}, got {frac_bits}"
        )
    proto = onnx_frontend.load(model, input_shapes)
    g = Graph.from_onnx(proto)
    if name:
        g.name = name
    elif isinstance(model, str | Path):
        g.name = Path(model).stem
    g = passes.run_all(g, keep_softmax=keep_softmax)
    prog, weights = lower(g, frac_bits=frac_bits, public_weights=public_weights)
    verify(prog, weights)
    return Plan(prog, weights)
