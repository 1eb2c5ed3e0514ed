"""Shapes of an ONNX model being loaded: strict shape inference on the model without its large
weights, and what keeps a tensor from a static shape (an unfixed input dim, or a node whose
output shape depends on a computed input)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, shape_inference

from mpcc.errors import ModelError

# Initializers with more elements than this reach shape inference and the checker by type
# alone: they need shapes, not weights, and copying hundreds of MB of weights through
# protobuf serialization dominated loading big models (VGG-11: several seconds per pass).
# Their data is checked where it is read (`read_initializer`).
LIGHT_ELEMENTS = 4096


def _numel(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims, dtype=np.int64))


def light(m: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `m` without the data of its large initializers, each a typed graph input."""
    g = m.graph
    light = onnx.ModelProto()
    light.ir_version = m.ir_version
    light.opset_import.extend(m.opset_import)
    light.functions.extend(m.functions)
    lg = light.graph
    lg.name = g.name
    lg.node.extend(g.node)
    lg.input.extend(g.input)
    lg.output.extend(g.output)
    lg.value_info.extend(g.value_info)
    lg.sparse_initializer.extend(g.sparse_initializer)
    listed = {i.name for i in g.input}
    for t in g.initializer:
        if _numel(t) <= LIGHT_ELEMENTS:
            lg.initializer.append(t)
        elif t.name not in listed:
            lg.input.append(helper.make_tensor_value_info(t.name, t.data_type, t.dims))
    return light


def unfixed(name: str, dims: list, k: int) -> str:
    """Why input `name` has no fixed shape (its dim `k` is symbolic), and what to give."""
    sym = f" ({dims[k].dim_param!r})" if dims[k].dim_param else ""
    example = "x".join(
        str(x.dim_value) if x.HasField("dim_value") else "1" if j == 0 else "<?>"
        for j, x in enumerate(dims)
    )
    return (
        f"input {name!r}: dim {k}{sym} is not fixed; give the whole shape "
        f"with --input-shape {name}={example}"
    )


def infer(m: onnx.ModelProto) -> onnx.ModelProto:
    """Re-run strict shape inference from the inputs' shapes alone, on the model without its
    large weights (`light`); the shapes found are written into `m`, which is returned."""
    del m.graph.value_info[:]
    for out in m.graph.output:
        out.type.tensor_type.ClearField("shape")
    try:
        inferred = shape_inference.infer_shapes(
            light(m), check_type=True, strict_mode=True, data_prop=True
        )
    except Exception as e:
        raise ModelError(f"shape inference failed: {str(e).strip()}") from e
    m.graph.value_info.extend(inferred.graph.value_info)
    for out, found in zip(m.graph.output, inferred.graph.output, strict=True):
        out.type.CopyFrom(found.type)
    return m


def static_shape(vi: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
        return None
    if not all(d.HasField("dim_value") for d in tt.shape.dim):
        return None
    return tuple(d.dim_value for d in tt.shape.dim)


def require_static(g: onnx.GraphProto) -> None:
    problems = static_problems(g)
    if problems:
        raise ModelError("; ".join(p for _, p in problems))


def static_problems(g: onnx.GraphProto) -> list[tuple[onnx.NodeProto | None, str]]:
    """The inputs with a dim left unfixed (node None), and the nodes whose outputs have no
    static shape while their inputs' shapes are known (the first cause of every other
    unknown shape), each with why: most often an input that mpcc needs constant (a shape,
    axes, starts, pads) but is computed from the model's inputs."""
    known = {vi.name: vi for vi in [*g.input, *g.value_info, *g.output]}
    consts = {t.name for t in g.initializer}
    problems: list[tuple[onnx.NodeProto | None, str]] = []
    for inp in g.input:
        if inp.name not in consts and static_shape(inp) is None:
            dims = list(inp.type.tensor_type.shape.dim)
            k = next(k for k, d in enumerate(dims) if not d.HasField("dim_value"))
            problems.append((None, unfixed(inp.name, dims, k)))

    def static(t: str) -> bool:
        return not t or t in consts or (t in known and static_shape(known[t]) is not None)

    for n in g.node:
        bad = [t for t in n.output if t and not static(t)]
        if not bad or not all(static(t) for t in n.input):
            continue
        computed = [(i, t) for i, t in enumerate(n.input) if i > 0 and t and t not in consts]
        where = f"node {n.name!r} (op {n.op_type})"
        if computed:
            names = ", ".join(f"{_input_name(n, i)} {t!r}" for i, t in computed)
            one = len(computed) == 1
            must = "must be a constant, but is" if one else "must be constants, but are"
            problems.append(
                (
                    n,
                    f"{where}: its {names} {must} computed from the model's inputs (the shape "
                    f"of {bad[0]!r} depends on {'it' if one else 'them'})",
                )
            )
        else:
            problems.append(
                (
                    n,
                    f"tensor {bad[0]!r} (output of node {n.name!r}, op {n.op_type}) has no "
                    "static shape after fixing the input shapes and folding constants",
                )
            )
    return problems


def _input_name(n: onnx.NodeProto, i: int) -> str:
    """The ONNX schema's name of input `i` of `n` ("shape", "axes", ...), or "input i"."""
    try:
        formal = onnx.defs.get_schema(n.op_type, domain=n.domain or "").inputs
        name = formal[min(i, len(formal) - 1)].name
    except Exception:  # an unknown op: no schema
        return f"input {i}"
    return f"input {i} ({name})"
