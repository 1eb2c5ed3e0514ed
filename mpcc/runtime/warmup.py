"""Load (or compile) the numba kernels before a process serves its first query.

numba compiles a kernel on its first call, or loads it from its on-disk cache; with an empty
cache (a fresh clone, CI) that takes seconds, which inside a session's online phase looks
like a dead party. `warm_up()` runs tiny real plans end to end in this process -- the
cleartext interpreter, the dealer and both executors of a `LocalCluster` -- at batch 1 (a
matmul over a few rows) and at batch `kernels.FEW_ROWS` (the transposed-weight matmul), so
every kernel gets the argument types, dtypes and layouts the runtime gives it and no later
query compiles anything. The plans cover Conv (plain, grouped, depthwise, single input
channel, strided), MaxPool, AveragePool (2^j and other windows), ReLU, LeakyReLU, Clip,
Mul of two secrets, Gemm and MatMul, and an attention block (MatMul of two secrets, Softmax,
LayerNormalization, GELU); at batch 1 each also as compiled for a WAN (`--network`), whose
comparisons are by function secret sharing (the DCF kernels). The plans are compiled once
per mpcc source and kept beside numba's cache (`_plans`), so a later process -- a party
starting or restarting -- loads them without importing the ONNX frontend.

    report = warm_up()   # once per process; later calls return the same report at once
    log.info("kernels ready in %s", report)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mpcc.errors import MpccError

__all__ = ["WarmupReport", "kernel_signatures", "numba_counts", "warm_up"]

_WIDTH = 8  # input image side of the warm-up plans
WAN = "40,1"  # a network on which the warm-up plans take FSS for every comparison
_lock = threading.Lock()
_report: WarmupReport | None = None


@dataclass(frozen=True)
class WarmupReport:
    """What `warm_up` did: its seconds, the kernel signatures it loaded from numba's on-disk
    cache or compiled (both 0 if this process had them already), and the plans it ran."""

    seconds: float
    loaded: int
    compiled: int
    plans: int

    def __str__(self) -> str:
        return f"{self.seconds:.1f} s ({self.loaded} loaded from cache, {self.compiled} compiled)"


def _dispatchers() -> dict[str, Any]:
    """Every numba dispatcher defined at module level in an imported mpcc module, by name
    (but those inlined into their callers: `inline="always"` never compiles on its own)."""
    from numba.core.dispatcher import Dispatcher

    found = {}
    for name, mod in list(sys.modules.items()):
        if not name.startswith("mpcc.") or mod is None:
            continue
        for attr, obj in list(vars(mod).items()):
            if isinstance(obj, Dispatcher) and obj.targetoptions.get("inline") != "always":
                found[f"{name}.{attr}"] = obj
    return found


def numba_counts() -> tuple[int, int]:
    """(signatures loaded from numba's on-disk cache, signatures compiled) so far, in mpcc."""
    hits = misses = 0
    for d in _dispatchers().values():
        st = d.stats
        hits += sum(st.cache_hits.values())
        misses += sum(st.cache_misses.values())
    return hits, misses


def kernel_signatures() -> dict[str, int]:
    """How many signatures each mpcc numba kernel holds in this process (loaded or compiled)."""
    return {name: len(d.signatures) for name, d in _dispatchers().items()}


def _model(batch: int) -> Any:
    """A tiny ONNX model on [batch, 2, W, W] touching every kernel and every comparison use."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, *shape: int) -> Any:
        n = int(np.prod(shape))
        v = (np.linspace(-0.5, 0.5, n) + 0.03).reshape(shape).astype(np.float32)
        return numpy_helper.from_array(v, name)

    def node(op: str, inputs: list[str], out: str, **attrs: Any) -> Any:
        return helper.make_node(op, inputs, [out], out, **attrs)

    pad = [1, 1, 1, 1]
    nodes = [  # spatial size W, W, W/2 (MaxPool), W/4 (strided), W/8 (AveragePool)
        node("Conv", ["x", "w_first"], "c0", group=2, pads=pad),  # 1 channel per group: direct
        node("Conv", ["c0", "w_conv", "b_conv"], "c1", pads=pad),  # im2col
        node("Relu", ["c1"], "r1"),
        node("MaxPool", ["r1"], "m1", kernel_shape=[2, 2], strides=[2, 2]),
        node("AveragePool", ["m1"], "a1", kernel_shape=[3, 3], pads=pad),  # 4, 6, 9: not 2^j
        node("Conv", ["a1", "w_dw"], "c2", group=4, pads=pad, strides=[2, 2]),  # depthwise
        node("Clip", ["c2", "lo", "hi"], "k2"),  # ReLU6
        node("Conv", ["k2", "w_grouped"], "c3", group=2),  # grouped im2col
        node("LeakyRelu", ["c3"], "l3", alpha=0.1),
        node("Mul", ["l3", "l3"], "sq"),  # two secrets
        node("AveragePool", ["sq"], "a4", kernel_shape=[2, 2], strides=[2, 2]),  # 2^j window
        node("Flatten", ["a4"], "f"),
        node("Gemm", ["f", "w_fc", "b_fc"], "g", transB=1),
        node("Relu", ["g"], "rg"),
        node("MatMul", ["rg", "w_out"], "y"),
    ]
    side = _WIDTH // 8
    inits = [
        const("w_first", 2, 1, 3, 3),
        const("w_conv", 4, 2, 3, 3),
        const("b_conv", 4),
        const("w_dw", 4, 1, 3, 3),
        const("w_grouped", 4, 2, 1, 1),
        const("w_fc", 6, 4 * side * side),
        const("b_fc", 6),
        const("w_out", 6, 3),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
    ]
    graph = helper.make_graph(
        nodes,
        "warmup",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 2, _WIDTH, _WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)


def _attention_model(batch: int) -> Any:
    """A tiny attention block on [batch, 4, 8]: products of two secrets (Q K^T, P V), a
    product by a constant stack of matrices, a softmax inside the graph, LayerNormalization
    and GELU (the transformer kernels)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def node(op: str, inputs: list[str], out: str, **attrs: Any) -> Any:
        return helper.make_node(op, inputs, [out], out, **attrs)

    w = (np.linspace(-0.5, 0.5, 64) + 0.03).reshape(8, 8).astype(np.float32)
    nodes = [
        node("MatMul", ["x", "w_q"], "q"),
        node("Transpose", ["x"], "kt", perm=[0, 2, 1]),
        node("MatMul", ["q", "kt"], "s"),  # two secrets, batched
        node("Softmax", ["s"], "p", axis=-1),
        node("Unsqueeze", ["x", "ax1"], "x4"),
        node("MatMul", ["x4", "w_stack"], "v4"),  # by a constant stack of matrices
        node("ReduceSum", ["v4", "ax1"], "v", keepdims=0),
        node("MatMul", ["p", "v"], "a"),
        node("LayerNormalization", ["a", "gamma", "beta"], "n", axis=-1),
        node("Gelu", ["n"], "y"),
    ]
    inits = [
        numpy_helper.from_array(w, "w_q"),
        numpy_helper.from_array(np.stack([w, -w.T]), "w_stack"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
        numpy_helper.from_array(np.ones(8, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(8, np.float32), "beta"),
    ]
    graph = helper.make_graph(
        nodes,
        "warmup_attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, 8])],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    m.ir_version = 9
    return onnx.shape_inference.infer_shapes(m)


def _specs() -> list[tuple[str, int, str | None]]:
    """The warm-up plans: (model, batch, network), at batch 1 also as compiled for a WAN
    (every comparison by FSS: the DCF kernels)."""
    from mpcc.runtime import kernels

    return [
        (model, batch, network)
        for batch in (1, kernels.FEW_ROWS)
        for model in ("conv", "attention")
        for network in ((None, WAN) if batch == 1 else (None,))
    ]


def _source_key() -> str:
    """A digest of mpcc's source and numpy's version: what decides the compiled plans."""
    import mpcc

    root = Path(mpcc.__file__).resolve().parent
    h = hashlib.sha256(np.__version__.encode())
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _plan_dir() -> Path:
    """Where compiled warm-up plans are kept, beside numba's cache of the kernels."""
    env = os.environ.get("NUMBA_CACHE_DIR")
    base = Path(env) if env else Path(__file__).resolve().parent / "__pycache__"
    return base / f"warmup-plans-{_source_key()}"


def _plans() -> list[tuple[Any, dict[str, np.ndarray], np.ndarray, bool]]:
    """(program, weights, input, run in cleartext too) for each warm-up plan.

    Compiling them needs the ONNX frontend, whose imports alone take a party process ~1.5 s
    here (onnx pulls in ml_dtypes); so the first warm-up of a given mpcc source saves the
    plans it compiled as plan files, and later processes load those instead."""
    from mpcc.compiler import planfile

    where = _plan_dir()
    specs = _specs()
    files = [where / f"{m}-b{b}-{'wan' if n else 'lan'}.mpcc" for m, b, n in specs]
    out = []
    try:
        for (model, batch, network), path in zip(specs, files, strict=True):
            prog, weights = planfile.load(path)
            out.append((prog, weights, _input(model, batch), network is None))
        return out
    except (OSError, MpccError):
        pass  # not saved yet (or unreadable): compile
    from mpcc.compiler.pipeline import compile_onnx

    out = []
    for model, batch, network in specs:
        onnx_model = _model(batch) if model == "conv" else _attention_model(batch)
        prog, weights = compile_onnx(onnx_model, name="warmup", network=network)
        out.append((prog, weights, _input(model, batch), network is None))
    _save(where, files, [(p, w) for p, w, _, _ in out])
    return out


def _save(where: Path, files: list[Path], plans: list[tuple[Any, dict]]) -> None:
    """Keep the compiled plans for the next process (best effort: a read-only install only
    compiles them each time), and drop those of other mpcc sources."""
    from mpcc.compiler import planfile

    try:
        where.mkdir(parents=True, exist_ok=True)
        for path, (prog, weights) in zip(files, plans, strict=True):
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            planfile.save(tmp, prog, weights)
            os.replace(tmp, path)
        for old in where.parent.glob("warmup-plans-*"):
            if old != where:
                shutil.rmtree(old, ignore_errors=True)
    except OSError:
        pass


def _input(model: str, batch: int) -> np.ndarray:
    shape = (batch, 2, _WIDTH, _WIDTH) if model == "conv" else (batch, 4, 8)
    return np.linspace(-1.0, 1.0, int(np.prod(shape)), dtype=np.float32).reshape(shape)


def _run_plans() -> int:
    """Run the warm-up plans in cleartext and securely."""
    from mpcc.runtime import cleartext
    from mpcc.runtime.cluster import LocalCluster

    runs = 0
    for prog, weights, x, in_cleartext in _plans():
        if in_cleartext:
            cleartext.predict(prog, weights, x)
        # A cold compile takes seconds inside the session: no link timeout may cut it short.
        with LocalCluster(prog, weights, timeout=600.0) as cluster:
            cluster.run_batch(x)
        runs += 1
    return runs


def warm_up() -> WarmupReport:
    """Load or compile every kernel the runtime uses, once per process (thread-safe: a
    concurrent call waits for the first; later calls return its report at once)."""
    global _report
    with _lock:
        if _report is None:
            t0 = time.perf_counter()
            hits0, misses0 = numba_counts()
            plans = _run_plans()
            hits1, misses1 = numba_counts()
            _report = WarmupReport(
                time.perf_counter() - t0, hits1 - hits0, misses1 - misses0, plans
            )
        return _report
