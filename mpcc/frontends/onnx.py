"""Load an ONNX model as a fixed-shape, constant-folded ModelProto.

`load` checks the file, fixes every graph input's shape (from `--input-shape`, or a symbolic
leading batch dim defaulting to 1), infers shapes (`onnx_shapes`) and folds every computation
on constants (`onnx_fold`), including the Shape/Gather/Unsqueeze/Concat chains exporters emit
in front of Reshape. What remains computes on the model's inputs only, with a static shape for
every tensor.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner
from onnx import helper, numpy_helper, version_converter

from mpcc.errors import ModelError
from mpcc.frontends.onnx_fold import fold_constants
from mpcc.frontends.onnx_shapes import infer, light, require_static, unfixed

MIN_OPSET = 13
NOTES_KEY = "mpcc.notes"  # metadata_props key holding load's notes, one per line
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
    fold_constants(m)
    m = infer(m)
    if check_static:
        require_static(m.graph)
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
        onnx.checker.check_model(light(m))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{label}: not a valid ONNX model: {first}") from e


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
                    raise ModelError(unfixed(inp.name, dims, k))
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
