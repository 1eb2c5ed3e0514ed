"""The plaintext floor: the same ONNX model in onnxruntime on one thread."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mpcc.bench.report import summarize


class Plaintext:
    """The model in onnxruntime on one thread (the floor a secure run is compared with)."""

    def __init__(self, path: Path) -> None:
        from mpcc.zoo.reference import session

        self.sess = session(path)
        self.input = self.sess.get_inputs()[0]
        self.path = path

    def accepts(self, shape: Sequence[int]) -> bool:
        """Whether the model's input takes this shape (symbolic dimensions take any)."""
        dims = self.input.shape
        return len(dims) == len(shape) and all(
            not isinstance(d, int) or d == s for d, s in zip(dims, shape, strict=True)
        )

    def time(self, x: np.ndarray, runs: int, min_seconds: float = 0.2) -> dict[str, Any]:
        """Warm once, then at least `runs` runs and `min_seconds` (at most 2000 runs)."""
        dtype = np.int64 if self.input.type == "tensor(int64)" else np.float32
        feed = {self.input.name: np.ascontiguousarray(x, dtype=dtype)}
        self.sess.run(None, feed)
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < 2000 and (
            len(times) < runs or time.perf_counter() - start < min_seconds
        ):
            t0 = time.perf_counter()
            self.sess.run(None, feed)
            times.append(time.perf_counter() - t0)
        out = summarize(times)
        out.update(runs=len(times), threads=1, engine="onnxruntime CPU")
        del out["samples"]
        return out
