"""Constant folding of an ONNX model: every node whose inputs are all constant is evaluated
(onnx's reference evaluator, onnxruntime where it has gaps) and becomes an initializer, until
nothing changes; what no longer feeds the outputs is pruned."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

from mpcc.errors import ModelError
from mpcc.frontends.onnx_shapes import infer, static_shape

_NONDETERMINISTIC = {
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
}


def fold_constants(m: onnx.ModelProto) -> None:
    """Evaluate every node whose inputs are all constant, until nothing changes."""
    opsets = {o.domain or "": o.version for o in m.opset_import}
    for _ in range(100):
        inferred = infer(m)
        shapes = {
            vi.name: static_shape(vi)
            for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
        }
        g = m.graph
        values = _Constants(g.initializer)
        folded = []
        for n in g.node:
            out = _evaluate(n, values, shapes, opsets)
            if out is not None:
                values.update(zip(n.output, out, strict=False))
                folded.append(n)
        if not folded:
            return
        graph_outputs = {o.name for o in g.output}
        for n in folded:
            if graph_outputs & set(n.output):
                raise ModelError(
                    f"output {sorted(graph_outputs & set(n.output))[0]!r} is a constant: "
                    "it does not depend on the model's inputs"
                )
            g.node.remove(n)
        used = {t for n in g.node for t in n.input} | graph_outputs
        have = {t.name for t in g.initializer}
        for n in folded:
            for t in n.output:
                if t and t in used and t not in have:
                    g.initializer.append(numpy_helper.from_array(np.asarray(values[t]), t))
        _prune(g)
    raise ModelError("constant folding did not converge")


class _Constants(dict):
    """Constant values by name: initializers become arrays only when a node reads them."""

    def __init__(self, initializers: list[onnx.TensorProto]) -> None:
        super().__init__()
        self._inits = {t.name: t for t in initializers}

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name) or name in self._inits

    def __missing__(self, name: str) -> np.ndarray:
        value = self[name] = read_initializer(self._inits[name])
        return value


def read_initializer(t: onnx.TensorProto) -> np.ndarray:
    """An initializer's value; ModelError naming it if its data does not fit its shape."""
    try:
        return numpy_helper.to_array(t)
    except Exception as e:
        raise ModelError(f"initializer {t.name!r} cannot be read: {e}") from None


def _evaluate(
    n: onnx.NodeProto,
    values: dict[str, np.ndarray],
    shapes: dict[str, tuple[int, ...] | None],
    opsets: dict[str, int],
) -> list[np.ndarray] | None:
    """The outputs of `n` if they are constant, else None."""
    if n.op_type in ("Shape", "Size") and n.domain in ("", "ai.onnx"):
        shape = shapes.get(n.input[0])
        if shape is None:
            return None
        if n.op_type == "Size":
            return [np.array(int(np.prod(shape)), dtype=np.int64)]
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        start, end = attrs.get("start", 0), attrs.get("end", len(shape))
        return [np.array(shape[start:end], dtype=np.int64)]
    inputs = [t for t in n.input if t]
    if n.op_type in _NONDETERMINISTIC or any(a.type in (5, 10) for a in n.attribute):
        return None  # random, or has a subgraph (If, Loop, Scan)
    if not inputs and n.op_type != "Constant":
        return None
    if not all(t in values for t in inputs):
        return None
    feeds = {t: values[t] for t in inputs}
    try:
        return ReferenceEvaluator(n, opsets=opsets).run(None, feeds)
    except Exception as e:
        reference_error = e
    try:  # onnx's reference evaluator has gaps (GatherElements in onnx 1.23): ask onnxruntime
        return _evaluate_ort(n, feeds, opsets)
    except Exception as e:
        raise ModelError(
            f"node {n.name!r} (op {n.op_type}): cannot evaluate it on its constant inputs: "
            f"onnx's reference evaluator says {reference_error}; onnxruntime says {e}"
        ) from e


def _evaluate_ort(
    n: onnx.NodeProto, feeds: dict[str, np.ndarray], opsets: dict[str, int]
) -> list[np.ndarray]:
    """Evaluate one node on constant inputs with onnxruntime (graph optimizations off)."""
    import onnxruntime as ort

    ins = [
        helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
        for t, v in feeds.items()
    ]
    outs = [helper.make_empty_tensor_value_info(t) for t in n.output if t]
    graph = helper.make_graph([n], "fold", ins, outs)
    m = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()]
    )
    m.ir_version = min(m.ir_version, 10)
    typed = shape_inference.infer_shapes(m)
    found = {vi.name: vi for vi in typed.graph.value_info}
    for o in m.graph.output:
        if o.name in found:
            o.CopyFrom(found[o.name])
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in m.graph.output], sess.run(None, feeds), strict=True))
    return [got.get(t, np.zeros(0)) for t in n.output]


def _prune(g: onnx.GraphProto) -> None:
    """Remove nodes whose outputs nobody uses, and unused initializers."""
    while True:
        used = {t for n in g.node for t in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if not any(t in used for t in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)
