"""What a benchmark feeds the model: its sources, its input shape and real digits."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mpcc.errors import MpccError


@functools.lru_cache(maxsize=1)
def _digit_pixels() -> np.ndarray:
    from mpcc.zoo.digits import load_digits_28

    try:
        return load_digits_28("test")[0]
    except ImportError as e:
        raise MpccError(f"benchmark inputs are the digits data set: {e}") from None


def sample_inputs(shape: Sequence[int], index: int) -> np.ndarray:
    """Query `index`'s input: test digits if the shape is [n, 1, 28, 28], else their pixels."""
    digits = _digit_pixels()
    shape = tuple(shape)
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
