"""mpcc: compile ONNX models to secure three-party computation plans and run them.

import mpcc
plan = mpcc.compile(module, example_input=x)     # or mpcc.load("lenet.mpcc")
with mpcc.LocalCluster(plan) as cluster:
    logits = cluster.predict(x)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "LocalCluster": ("mpcc.runtime.cluster", "LocalCluster"),
    "Plan": ("mpcc.compiler.plan", "Plan"),
    "compile": ("mpcc.api", "compile"),
    "compile_onnx": ("mpcc.compiler.pipeline", "compile_onnx"),
    "export_onnx": ("mpcc.api", "export_onnx"),
    "load": ("mpcc.api", "load"),
    "serve_locally": ("mpcc.serving.local", "serve_locally"),
}


def __getattr__(name: str) -> Any:
    # Heavy modules (numba, onnx) load on first use, so `import mpcc` stays cheap.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'mpcc' has no attribute {name!r}")
