"""One entry point for every model source: ``mpcc.compile(model, ...)`` -> a :class:`Plan`.

``model`` may be

* a ``torch.nn.Module`` (put in eval mode; ``example_input`` or ``input_shape`` fixes every
  shape, batch included),
* a Keras 3 model (torch backend) or the path of a ``.keras`` / full-model ``.h5`` file
  (``input_shape`` overrides the model's batch input shape; NHWC stays NHWC),
* an ``onnx.ModelProto`` or the path of an ``.onnx`` file.

PyTorch and Keras models go through ONNX: :func:`export_onnx` gives the graph the plan is
compiled from, which is also what to compare the secure results against (onnxruntime).
Both use torch's ``torch.export``-based ONNX exporter by default (``dynamo=None``), falling
back to the TorchScript exporter if the export or the compilation of its graph fails;
``dynamo=True``/``False`` forces one.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from mpcc.compiler.pipeline import compile_onnx
from mpcc.compiler.plan import Plan
from mpcc.errors import InputError, ModelError

if TYPE_CHECKING:
    import torch

__all__ = ["compile", "export_onnx", "kind_of", "load"]

ShapeSpec = tuple[int, ...] | list[int] | str | Mapping[str | None, tuple[int, ...]]

ONNX_SUFFIXES = (".onnx",)
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def kind_of(model: object) -> str:
    """Which frontend takes ``model``: ``"torch"``, ``"keras"`` or ``"onnx"``."""
    if isinstance(model, onnx.ModelProto):
        return "onnx"
    if isinstance(model, str | Path):
        suffix = Path(model).suffix.lower()
        if suffix in ONNX_SUFFIXES:
            return "onnx"
        if suffix in KERAS_SUFFIXES:
            return "keras"
        raise ModelError(
            f"{model}: unknown model file type {suffix or '(no suffix)'!r}; expected .onnx, "
            ".keras or .h5 (for a PyTorch model, pass the torch.nn.Module itself)"
        )
    from mpcc.frontends.keras import is_keras_model

    if is_keras_model(model):  # before torch: a Keras model on torch is also an nn.Module
        return "keras"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        return "torch"
    raise ModelError(
        f"cannot compile a {type(model).__name__}: expected a torch.nn.Module, a Keras model, "
        "an onnx.ModelProto or a .onnx/.keras/.h5 path"
    )


def export_onnx(
    model: Any,
    example_input: torch.Tensor | np.ndarray | None = None,
    input_shape: ShapeSpec | None = None,
    *,
    weights: str | Path | None = None,
    dynamo: bool | None = None,
    opset: int | None = None,
) -> onnx.ModelProto:
    """The fixed-shape ONNX graph :func:`compile` compiles ``model`` from.

    ``weights`` loads a weights file first: Keras ``.weights.h5``/``.h5`` (see
    :func:`mpcc.frontends.keras.load_weights`) or a PyTorch ``state_dict`` file.
    """
    kind = kind_of(model)
    shape = _shape(example_input, input_shape)
    if kind == "onnx":
        if weights is not None:
            raise ModelError("weights= is for PyTorch and Keras models; an ONNX model has them")
        from mpcc.frontends import onnx as onnx_frontend

        return onnx_frontend.load(model, shape)
    if isinstance(shape, Mapping):
        shape = _single(shape)
    if kind == "keras":
        from mpcc.frontends import keras as keras_frontend

        return keras_frontend.export(
            model, input_shape=shape, weights=weights, dynamo=dynamo, opset=opset
        )
    return _export_torch(model, example_input, shape, weights, dynamo, opset)


def compile(  # shadows the builtin on purpose: mpcc.compile
    model: Any,
    example_input: torch.Tensor | np.ndarray | None = None,
    input_shape: ShapeSpec | None = None,
    *,
    weights: str | Path | None = None,
    frac_bits: int | None = None,
    public_weights: bool = False,
    name: str | None = None,
    dynamo: bool | None = None,
    keep_softmax: bool = False,
    calibrate: np.ndarray | Mapping[str, np.ndarray] | None = None,
    fix_inputs: dict[str, float] | None = None,
    network: str | None = None,
    material_budget_mb: float | None = None,
) -> Plan:
    """Compile a PyTorch, Keras or ONNX model to a secure Plan: the Program and its
    (owner-side) weights (``prog, weights = plan`` unpacks it).

    ``example_input`` (a tensor or array) or ``input_shape`` (``(1, 1, 28, 28)``, ``"1x1x28x28"``
    or, for ONNX, ``{"input": (1, 1, 28, 28)}``) fixes the shapes; the batch of the plan is
    their first dim. ``calibrate`` (representative inputs, ``[N, ...]``, or a dict by input
    name) runs the float model on them and chooses ``frac_bits`` from the ranges it sees (or
    checks the ``frac_bits`` given); ``plan.calibration`` is the report, and ``print(plan)``
    shows it (see :mod:`mpcc.compiler.calibrate`). Without it, ``frac_bits`` is
    ``DEFAULT_FRAC_BITS`` (16). The rest goes to :func:`mpcc.compiler.pipeline.compile_onnx`.
    """
    kind = kind_of(model)
    if name is None:
        if isinstance(model, str | Path):
            name = Path(model).stem
        elif kind == "keras":
            name = model.name
        elif kind == "torch":
            name = type(model).__name__
    opts: dict[str, Any] = dict(
        frac_bits=frac_bits,
        public_weights=public_weights,
        name=name,
        keep_softmax=keep_softmax,
        calibrate=calibrate,
        fix_inputs=fix_inputs,
        network=network,
        material_budget_mb=material_budget_mb,
    )
    plan = _compile(model, kind, example_input, input_shape, weights, dynamo, opts)
    if calibrate is not None:
        _check_fixed_point(plan, calibrate)
    return plan


def _compile(
    model: Any,
    kind: str,
    example_input: Any,
    input_shape: ShapeSpec | None,
    weights: str | Path | None,
    dynamo: bool | None,
    opts: dict[str, Any],
) -> Plan:
    if kind == "onnx":
        if weights is not None:
            raise ModelError("weights= is for PyTorch and Keras models; an ONNX model has them")
        return compile_onnx(model, _shape(example_input, input_shape), **opts)

    if kind == "keras" and isinstance(model, str | Path):
        from mpcc.frontends import keras as keras_frontend

        model = keras_frontend.load(model)  # once, not again if the export is retried

    def build(use_dynamo: bool) -> Plan:
        proto = export_onnx(model, example_input, input_shape, weights=weights, dynamo=use_dynamo)
        return compile_onnx(proto, None, **opts)  # the exported graph's shapes are fixed

    if dynamo is not None:
        return build(dynamo)
    try:
        return build(True)
    except ModelError as first:
        # The TorchScript exporter spells some layers differently (e.g. AdaptiveMaxPool2d as
        # MaxPool, not ReduceMax): retry with it before giving up.
        try:
            plan = build(False)
        except ModelError as second:
            if str(second) == str(first):  # not the exporter's doing (e.g. a bad weights file)
                raise first from None
            raise ModelError(
                f"{first}\n(with the TorchScript exporter: {_brief(second)})"
            ) from second
        plan.program.notes.append(
            f"exported with the TorchScript exporter; the dynamo graph failed: {_brief(first)}"
        )
        return plan


def _check_fixed_point(plan: Plan, data: Any, samples: int = 256) -> None:
    """Run the calibrated plan's own fixed-point arithmetic (the cleartext interpreter) on the
    first calibration samples and add the comparison to its calibration report."""
    from mpcc.compiler.calibrate import check
    from mpcc.runtime.cleartext import predict

    prog = plan.program
    if len(prog.inputs) != 1 or len(prog.outputs) != 1:
        return  # the interpreter's predict takes one input and gives one output
    x = data[prog.inputs[0][0]] if isinstance(data, Mapping) else data
    x = np.asarray(x)
    if x.ndim == len(prog.value(prog.inputs[0][1]).shape) - 1:
        x = x[None]
    try:
        fixed = predict(prog, plan.weights, x[:samples])
    except InputError:  # e.g. a plan mixing rows, given a partial batch: nothing to compare
        return
    check(plan.calibration, prog.outputs[0][0], fixed)


def load(path: str | Path, with_weights: bool = True) -> Plan:
    """Read a plan file (verified: its hash and its IR); ``with_weights=False`` reads only
    the public part."""
    return Plan.load(path, with_weights)


# ---- helpers -----------------------------------------------------------------------------


def _brief(e: Exception, limit: int = 300) -> str:
    """An error message without the list of supported ops, at most ``limit`` characters."""
    text = str(e).split(". Supported ops:")[0]
    return text if len(text) <= limit else text[:limit] + " ..."


def _shape(
    example_input: Any, input_shape: ShapeSpec | None
) -> tuple[int, ...] | dict[str | None, tuple[int, ...]] | None:
    """The input shape(s) from ``input_shape`` and/or ``example_input`` (which must agree)."""
    given: tuple[int, ...] | dict[str | None, tuple[int, ...]] | None
    if input_shape is None:
        given = None
    elif isinstance(input_shape, str):
        from mpcc.frontends.onnx import parse_input_shapes

        given = _single(parse_input_shapes([input_shape]), allow_named=True)
    elif isinstance(input_shape, Mapping):
        given = {k: tuple(int(d) for d in v) for k, v in input_shape.items()}
    else:
        given = tuple(int(d) for d in input_shape)
    if example_input is None:
        return given
    ex = tuple(int(d) for d in np.shape(example_input))
    if given is not None and given != ex:
        raise ModelError(
            f"example_input has shape {ex} but input_shape is {given}: give one, or matching ones"
        )
    return ex


def _single(
    shapes: Mapping[str | None, tuple[int, ...]], allow_named: bool = False
) -> tuple[int, ...] | dict[str | None, tuple[int, ...]]:
    if len(shapes) == 1 and None in shapes:
        return tuple(shapes[None])
    if allow_named:
        return dict(shapes)
    if len(shapes) == 1:
        return tuple(next(iter(shapes.values())))
    raise ModelError("PyTorch and Keras models take one input: give a single input_shape")


def _export_torch(
    module: torch.nn.Module,
    example_input: Any,
    shape: tuple[int, ...] | None,
    weights: str | Path | None,
    dynamo: bool | None,
    opset: int | None,
) -> onnx.ModelProto:
    import torch

    from mpcc.frontends import torch as torch_frontend

    if weights is not None:
        try:
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
            module.load_state_dict(state)
        except Exception as e:
            raise ModelError(
                f"{weights}: cannot load it as a state_dict of {type(module).__name__}:"
                f" {type(e).__name__}: {e}"
            ) from e
    if example_input is None:
        if shape is None:
            raise ModelError(
                f"compiling a {type(module).__name__} needs example_input or input_shape "
                "(e.g. (1, 1, 28, 28)): the plan's shapes are fixed"
            )
        x = torch.zeros(shape, dtype=torch.float32)
    elif isinstance(example_input, torch.Tensor):
        x = example_input.detach().to(torch.float32)
    else:
        x = torch.as_tensor(np.asarray(example_input, dtype=np.float32))
    if dynamo is not None:
        return torch_frontend.export(module, x, dynamo=dynamo, opset=opset)
    try:
        return torch_frontend.export(module, x, dynamo=True, opset=opset)
    except ModelError as first:
        try:
            return torch_frontend.export(module, x, dynamo=False, opset=opset)
        except ModelError as second:
            raise ModelError(f"{first}; the TorchScript exporter failed too: {second}") from second
