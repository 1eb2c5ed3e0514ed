"""Load an ONNX model as a fixed-shape, constant-folded ModelProto.

`load` checks the file, fixes every graph input's shape (from `--input-shape`, or a symbolic
leading batch dim defaulting to 1), infers shapes and folds every computation on constants,
including the Shape/Gather/Unsqueeze/Concat chains exporters emit in front of Reshape. What
remains computes on the model's inputs only, with a static shape for every tensor.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner
from onnx import helper, numpy_helper, shape_inference, version_converter
from onnx.reference import ReferenceEvaluator

from mpcc.errors import ModelError

MIN_OPSET = 13
NOTES_KEY = "mpcc.notes"  # metadata_props key holding load's notes, one per line
_NONDETERMINISTIC = {
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
}
_DIMS = re.compile(r"^\d+(x\d+)*$")

Shapes = dict[str | None, tuple[int, ...]]


def parse_input_shapes(specs: list[str]) -> Shapes:
    """Parse `--input-shape` values: `1x1x28x28` (the only input) or `name=1x1x28x28`."""
    shapes: Shapes = {}
    for spec in specs:
        name, _, dims = spec.strip().rpartition("=")
        key = name.strip() or None
        dims = dims.strip().lower()
        if not _DIMS.match(dims):
            raise ModelError(
                f"bad --input-shape {spec!r}: expected dims like 1x1x28x28 or name=1x1x28x28"
            )
        shape = tuple(int(d) for d in dims.split("x"))
        if any(d <= 0 for d in shape):
            raise ModelError(f"bad --input-shape {spec!r}: every dim must be positive")
        if key in shapes:
            what = f"input {key!r}" if key else "the (unnamed) input"
            raise ModelError(f"--input-shape given twice for {what}")
        shapes[key] = shape
    if None in shapes and len(shapes) > 1:
        raise ModelError("--input-shape without a name is only allowed for a single input")
    return shapes


def load(
    model: str | Path | onnx.ModelProto,
    input_shapes: Shapes | tuple[int, ...] | None = None,
    fix_inputs: dict[str, float] | None = None,
    check_static: bool = True,
) -> onnx.ModelProto:
    """Load, check and fix the shapes of an ONNX model, folding everything constant.

    `fix_inputs` fixes inputs to a constant value (every element), e.g. a Hugging Face
    `attention_mask` to 1 when the client sends no padding: the input becomes a constant and
    what it feeds folds away. Returns a new model (the argument is not modified) whose every
    non-constant tensor has a static shape in `graph.value_info` / `graph.input` /
    `graph.output`. Without `check_static`, tensors whose shape stays unknown are left for
    the caller to report (`static_problems`). Notes for the compile report (e.g. a batch dim
    defaulted to 1, an input fixed) are in the metadata property `mpcc.notes`.
    """
    m, label = _read(model)
    _check(m, label)
    if m.functions:
        m = onnx.inliner.inline_local_functions(m)
    m = _upgrade(m)
    _stamp_ir(m)
    _name_nodes(m.graph)
    _check_domains(m.graph)
    found = _fix_input_shapes(m.graph, input_shapes, strict=check_static)
    found += _fix_inputs(m.graph, fix_inputs or {})
    _fold_constants(m)
    m = _infer(m)
    if check_static:
        _check_static(m.graph)
    for p in [p for p in m.metadata_props if p.key == NOTES_KEY]:
        m.metadata_props.remove(p)
    if found:
        m.metadata_props.add(key=NOTES_KEY, value="\n".join(found))
    return m


def notes(model: onnx.ModelProto) -> list[str]:
    """The notes `load` left in the model for the compile report."""
    for p in model.metadata_props:
        if p.key == NOTES_KEY:
            return [line for line in p.value.split("\n") if line]
    return []


def _read(model: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        return m, f"model {m.graph.name or '(unnamed)'!r}"
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    try:
        m = onnx.load(str(path))
    except Exception as e:  # protobuf decode errors have no common public base class
        raise ModelError(f"{path}: not an ONNX model (cannot parse it: {e})") from e
    if not m.graph.node and not m.graph.output:
        raise ModelError(f"{path}: not an ONNX model (no graph found in the file)")
    return m, str(path)


def _check(m: onnx.ModelProto, label: str) -> None:
    try:
        onnx.checker.check_model(_light(m))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{label}: not a valid ONNX model: {first}") from e


# Initializers with more elements than this reach shape inference and the checker by type
# alone: they need shapes, not weights, and copying hundreds of MB of weights through
# protobuf serialization dominated loading big models (VGG-11: several seconds per pass).
# Their data is checked where it is read (`read_initializer`).
LIGHT_ELEMENTS = 4096


def _numel(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims, dtype=np.int64))


def _light(m: onnx.ModelProto) -> onnx.ModelProto:
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


def _opset(m: onnx.ModelProto) -> int:
    return next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 1)


def _upgrade(m: onnx.ModelProto) -> onnx.ModelProto:
    if _opset(m) >= MIN_OPSET:
        return m
    try:
        return version_converter.convert_version(m, MIN_OPSET)
    except Exception as e:
        raise ModelError(
            f"cannot convert the model from opset {_opset(m)} to opset {MIN_OPSET}: {e}"
        ) from e


def _stamp_ir(m: onnx.ModelProto) -> None:
    """Before IR 4 every initializer had to be a graph input too, and shape inference of such
    a model ignores initializers that are not: raise the IR version so that the initializers
    are constants once `_fix_input_shapes` drops them from the inputs."""
    if m.ir_version < 4:
        m.ir_version = max(4, helper.find_min_ir_version_for(list(m.opset_import)))


def _name_nodes(g: onnx.GraphProto) -> None:
    """Give every node a unique, non-empty name."""
    seen: set[str] = set()
    for i, n in enumerate(g.node):
        name = n.name or f"{n.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        n.name = name
        seen.add(name)


def _check_domains(g: onnx.GraphProto) -> None:
    custom = [n for n in g.node if n.domain not in ("", "ai.onnx")]
    if custom:
        listed = ", ".join(f"node {n.name!r} (op {n.domain}.{n.op_type})" for n in custom)
        raise ModelError(f"only standard ONNX ops are supported, not {listed}")


def _fix_input_shapes(
    g: onnx.GraphProto, given: Shapes | tuple[int, ...] | None, strict: bool = True
) -> list[str]:
    """Drop initializers from the inputs and set every input's shape; return notes. Without
    `strict`, an input with a symbolic dim past the first keeps it (`static_problems` says)."""
    inits = {t.name for t in g.initializer}
    real = [i for i in g.input if i.name not in inits]
    del_inputs = [i for i in g.input if i.name in inits]
    for i in del_inputs:
        g.input.remove(i)
    if isinstance(given, tuple):
        given = {None: given}
    given = dict(given or {})
    if None in given:
        if len(real) != 1:
            names = ", ".join(repr(i.name) for i in real)
            raise ModelError(
                f"an unnamed --input-shape needs a model with one input; this one has {names}: "
                "use --input-shape name=DIMS"
            )
        given[real[0].name] = given.pop(None)
    unknown = set(given) - {i.name for i in real}
    if unknown:
        names = ", ".join(repr(i.name) for i in real)
        raise ModelError(f"--input-shape for unknown input {sorted(unknown)[0]!r}; inputs: {names}")
    notes = []
    for inp in real:
        tt = inp.type.tensor_type
        if not inp.type.HasField("tensor_type"):
            raise ModelError(f"input {inp.name!r} is not a tensor")
        dims = list(tt.shape.dim) if tt.HasField("shape") else None
        if inp.name in given:
            shape = given[inp.name]
            if dims is not None:
                if len(dims) != len(shape):
                    raise ModelError(
                        f"--input-shape for {inp.name!r} has {len(shape)} dims; "
                        f"the model's input has {len(dims)}"
                    )
                for k, (d, s) in enumerate(zip(dims, shape, strict=True)):
                    if d.HasField("dim_value") and d.dim_value != s:
                        raise ModelError(
                            f"--input-shape for {inp.name!r} sets dim {k} to {s}; "
                            f"the model fixes it to {d.dim_value}"
                        )
        elif dims is None:
            raise ModelError(
                f"input {inp.name!r} has no shape in the model: give it with "
                f"--input-shape {inp.name}=DIMS"
            )
        else:
            shape = []
            for k, d in enumerate(dims):
                if d.HasField("dim_value"):
                    shape.append(d.dim_value)
                elif k == 0:
                    shape.append(1)
                    sym = f" {d.dim_param!r}" if d.dim_param else ""
                    notes.append(
                        f"input {inp.name!r}: symbolic batch dim{sym} set to 1 "
                        "(use --input-shape to change it)"
                    )
                elif strict:
                    raise ModelError(_unfixed(inp.name, dims, k))
                else:
                    shape = None
                    break
        if shape is None:
            continue
        if 0 in shape:
            raise ModelError(
                f"input {inp.name!r} has shape {list(shape)}, with a dim of size 0: empty "
                "tensors are not supported"
            )
        tt.ClearField("shape")
        tt.shape.SetInParent()
        for s in shape:
            tt.shape.dim.add().dim_value = s
    return notes


def _unfixed(name: str, dims: list, k: int) -> str:
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


def parse_fixed_inputs(specs: list[str]) -> dict[str, float]:
    """Parse `--fix-input` values: `attention_mask=1`."""
    fixed: dict[str, float] = {}
    for spec in specs:
        name, eq, value = spec.partition("=")
        try:
            v = float(value)
        except ValueError:
            v = None
        if not eq or not name.strip() or v is None:
            raise ModelError(
                f"bad --fix-input {spec!r}: expected NAME=VALUE, e.g. attention_mask=1"
            )
        fixed[name.strip()] = v
    return fixed


def _fix_inputs(g: onnx.GraphProto, fixed: dict[str, float]) -> list[str]:
    """Replace each input named in `fixed` by a constant of its shape and type; return notes."""
    by_name = {i.name: i for i in g.input}
    notes = []
    for name, value in fixed.items():
        inp = by_name.get(name)
        if inp is None:
            names = ", ".join(repr(i.name) for i in g.input)
            raise ModelError(f"--fix-input for unknown input {name!r}; inputs: {names}")
        tt = inp.type.tensor_type
        shape = [d.dim_value for d in tt.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if dtype.kind in "iub" and value != int(value):
            raise ModelError(f"--fix-input {name}={value:g}: input {name!r} is {dtype}, not float")
        g.input.remove(inp)
        g.initializer.append(numpy_helper.from_array(np.full(shape, value, dtype=dtype), name))
        notes.append(
            f"input {name!r} fixed to {value:g} (--fix-input): folded into the plan, the client "
            "does not send it"
        )
    return notes


def _infer(m: onnx.ModelProto) -> onnx.ModelProto:
    """Re-run strict shape inference from the inputs' shapes alone, on the model without its
    large weights (`_light`); the shapes found are written into `m`, which is returned."""
    del m.graph.value_info[:]
    for out in m.graph.output:
        out.type.tensor_type.ClearField("shape")
    try:
        inferred = shape_inference.infer_shapes(
            _light(m), check_type=True, strict_mode=True, data_prop=True
        )
    except Exception as e:
        raise ModelError(f"shape inference failed: {str(e).strip()}") from e
    m.graph.value_info.extend(inferred.graph.value_info)
    for out, found in zip(m.graph.output, inferred.graph.output, strict=True):
        out.type.CopyFrom(found.type)
    return m


def _static_shape(vi: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
        return None
    if not all(d.HasField("dim_value") for d in tt.shape.dim):
        return None
    return tuple(d.dim_value for d in tt.shape.dim)


def _fold_constants(m: onnx.ModelProto) -> None:
    """Evaluate every node whose inputs are all constant, until nothing changes."""
    opsets = {o.domain or "": o.version for o in m.opset_import}
    for _ in range(100):
        inferred = _infer(m)
        shapes = {
            vi.name: _static_shape(vi)
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


def _check_static(g: onnx.GraphProto) -> None:
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
        if inp.name not in consts and _static_shape(inp) is None:
            dims = list(inp.type.tensor_type.shape.dim)
            k = next(k for k, d in enumerate(dims) if not d.HasField("dim_value"))
            problems.append((None, _unfixed(inp.name, dims, k)))

    def static(t: str) -> bool:
        return not t or t in consts or (t in known and _static_shape(known[t]) is not None)

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
