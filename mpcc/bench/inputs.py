"""What a benchmark feeds the model: its sources, its input shape and real digits."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mpcc.compiler import ops
from mpcc.compiler.ir import Program
from mpcc.errors import MpccError
from mpcc.inputs import ONEHOT, input_shape


@functools.lru_cache(maxsize=1)
def _digit_pixels() -> np.ndarray:
    from mpcc.zoo.digits import load_digits_28

    try:
        return load_digits_28("test")[0]
    except ImportError as e:
        raise MpccError(f"benchmark inputs are the digits data set: {e}") from None


def plan_input(prog: Program) -> tuple[tuple[int, ...], int | None]:
    """The shape of what a client passes for the plan's (first) input, and for token ids
    (a one-hot encoded input) the vocabulary size; None for a real-valued input."""
    name, vid = prog.inputs[0]
    ins = next(i for i in prog.instrs if i.op is ops.input and i.attrs["name"] == name)
    encoding = ins.attrs.get("encoding")
    shape = input_shape(prog.value(vid).shape, encoding)
    return shape, (int(ins.attrs["depth"]) if encoding == ONEHOT else None)


def sample_inputs(shape: Sequence[int], index: int, depth: int | None = None) -> np.ndarray:
    """Query `index`'s input: test digits if the shape is [n, 1, 28, 28], else their pixels;
    with a `depth`, token ids spread over [0, depth) (a stride prime to any vocabulary)."""
    shape = tuple(shape)
    if depth is not None:
        n = math.prod(shape)
        return ((np.arange(n) * 7919 + index * n) % depth).reshape(shape).astype(np.int64)
    digits = _digit_pixels()
    if shape[1:] == digits.shape[1:]:
        rows = (np.arange(shape[0]) + index * shape[0]) % len(digits)
        return digits[rows]
    flat = digits.reshape(-1)
    n = math.prod(shape)
    return flat[(np.arange(n) + index * n) % flat.size].reshape(shape)


def onnx_input_shape(path: Path, batch: int) -> tuple[int, ...]:
    """The ONNX model's only input shape with the leading dim set to `batch`."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    real = [i for i in m.graph.input if i.name not in inits]
    if len(real) != 1:
        raise MpccError(f"{path}: mpcc bench takes models with one input, this has {len(real)}")
    dims = list(real[0].type.tensor_type.shape.dim)
    rest = [d.dim_value for d in dims[1:]]
    if not dims or any(v <= 0 for v in rest):
        raise MpccError(
            f"{path}: input {real[0].name!r} has dynamic dimensions besides the batch; fix "
            "them with `mpcc compile --input-shape` and bench the plan file"
        )
    return (batch, *rest)


def sources(model: Path, reference: Path | None) -> tuple[str, Path | None]:
    """("onnx" or "plan", the ONNX model for the plaintext floor): a plan file's default
    reference is the .onnx file beside it, if there is one."""
    if not model.is_file():
        raise MpccError(f"no model or plan file at {model}")
    kind = "onnx" if model.suffix.lower() == ".onnx" else "plan"
    if kind == "onnx":
        return kind, model
    if reference is None and model.with_suffix(".onnx").is_file():
        reference = model.with_suffix(".onnx")
    if reference is not None and not reference.is_file():
        raise MpccError(f"no ONNX reference model at {reference}")
    return kind, reference
