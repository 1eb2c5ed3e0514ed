"""Reference models and real data for tests, the demo and benchmarks.

* :func:`load_digits_28`: real handwritten digits at MNIST's size (no download).
* :func:`run_onnxruntime`: the float reference every secure result is compared against.
* ``MODELS``, :func:`build`, :func:`trained`, :func:`train`, :func:`accuracy`: hand-written
  torch models, trained briefly and exported to ONNX (these need torch; imported on first use).
"""

from __future__ import annotations

from typing import Any

from mpcc.zoo.digits import load_digits_28
from mpcc.zoo.reference import run_onnxruntime

__all__ = [
    "MODELS",
    "accuracy",
    "build",
    "info",
    "load_digits_28",
    "run_onnxruntime",
    "train",
    "trained",
]

_TORCH_NAMES = {"MODELS", "SPECS", "accuracy", "build", "info", "train", "trained"}


def __getattr__(name: str) -> Any:
    # torch is heavy and optional: import mpcc.zoo.models only when one of its names is used.
    if name in _TORCH_NAMES:
        from mpcc.zoo import models

        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
