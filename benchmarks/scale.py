"""Memory and compile time on big models: AlexNet, VGG-11, ResNet-18, MobileNetV2 at 224x224.

The models are torchvision's, written out in torch (`benchmarks/bigmodels.py`), with random
weights under a fixed seed, batch 1. Each is exported to ONNX once (cached in `.cache/scale/`)
with mpcc's own exporter, `mpcc.api.export_onnx`, and its onnxruntime output on a fixed input
is kept as the reference. Then, for each model, each measurement runs in a fresh process:

* compile: `compile_onnx` then `planfile.save` (what `mpcc compile model.onnx -o plan.mpcc`
  does), timed apart, with the plan file's size and each step's peak RSS;
* cluster: the plan loaded, then `LocalCluster(prog, weights)` (all three parties in this
  process): session setup (`__enter__`: weights shared, F = W - B opened) and the first
  batch-1 query, timed, with the peak RSS of each;
* serve: `serve_locally(prog, weights)`, three party processes over TLS, one query; the peak
  RSS (VmHWM) of the P0, P1 and dealer processes afterwards.

Both secure outputs are checked against onnxruntime (max abs error, argmax). Peak RSS is the
kernel's high-water mark (VmHWM, which `getrusage` also reports), reset between the steps of a
process by writing 5 to /proc/self/clear_refs, so each step's peak is its own. Bytes per
parameter count the peak above a baseline: for this process, its RSS after the imports and
the numba kernels' warm-up; for a party process, the peak of a party serving a tiny plan.

    .venv/bin/python benchmarks/scale.py                     # all four models (~30 min)
    .venv/bin/python benchmarks/scale.py --quick             # ResNet-18 only
    .venv/bin/python benchmarks/scale.py --models alexnet,vgg11 --skip serve
    .venv/bin/python benchmarks/scale.py --repo /work/main   # measure another checkout
    .venv/bin/python benchmarks/scale.py --profile vgg11     # where time and memory go

Writes `benchmarks/results/scale.md` and `scale.json` (`--out NAME` for another name).
The machine is shared and the figures are noisy; run one at a time, on a quiet machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = REPO / ".cache" / "scale"
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

import bigmodels  # noqa: E402

MiB = 2**20
QUICK_MODELS = ["resnet18"]
STEPS = ("compile", "cluster", "serve")
SEED_INPUT = 1

# The targets of issue 10, part 6: (key, model or None for every model, limit, text).
TARGETS = [
    ("compile_total_s", "vgg11", 15.0, "VGG-11 compiles (compile + save) in at most 15 s"),
    (
        "cluster_weights_per_param",
        None,
        48.0,
        "LocalCluster peak RSS <= 48 bytes/param, plus what a batch-1 query adds",
    ),
    (
        "party_marginal_per_param",
        None,
        24.0,
        "one party process holds <= 24 bytes/param (besides its stock of material)",
    ),
    (
        "opening_s",
        "vgg11",
        5.0,
        "session setup (opening W - B; the owner's sharing apart) for VGG-11 in at most 5 s",
    ),
]


def log(msg: str) -> None:
    print(f"[scale] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- memory


def status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, VmHWM, ... of a process in bytes ({} if it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Vm"):
                    key, val = line.split(":", 1)
                    parts = val.split()
                    if len(parts) == 2 and parts[1] == "kB":
                        out[key] = int(parts[0]) * 1024
    except OSError:
        pass
    return out


def rss(pid: int | str = "self") -> int:
    return status(pid).get("VmRSS", 0)


def hwm(pid: int | str = "self") -> int:
    return status(pid).get("VmHWM", 0)


def ru_maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def reset_peak() -> bool:
    """Reset this process's VmHWM (and so ru_maxrss) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def children(pid: int) -> dict[int, str]:
    """Direct children of `pid`: {child pid: its command line}."""
    found = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            if ppid != pid:
                continue
            with open(f"/proc/{d}/cmdline", "rb") as f:
                found[int(d)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
    return found


def party_pids() -> dict[str, int]:
    """The `python -m mpcc party --role R` processes this process started: {R: pid}."""
    out = {}
    for pid, cmd in children(os.getpid()).items():
        args = cmd.split()
        if "party" in args and "--role" in args:
            out[args[args.index("--role") + 1]] = pid
    return out


class Sampler(threading.Thread):
    """Samples the RSS of this process (and of `others()`) every `interval` seconds: a
    timeline, and the stacks of the threads running mpcc code when this process's RSS
    reached its highest. If the machine's available memory falls below `min_free`, calls
    `on_low` once (to stop before the kernel's OOM killer picks a process of someone else).

    `profile`: also a sampling profiler of every thread (cProfile sees only the thread that
    enables it, and LocalCluster's parties run in a pool): the wall time between samples goes
    to each busy thread's innermost Python frame (own) and to every frame on its stack
    (inclusive). `trace_peak`: a tracemalloc snapshot whenever traced memory reaches a new
    high (by 128 MiB), so the allocation sites alive at the peak can be listed."""

    def __init__(
        self,
        interval: float = 0.05,
        others: Callable[[], dict[str, int]] | None = None,
        min_free: int = 0,
        on_low: Callable[[str], None] | None = None,
        stacks: bool = False,
        profile: bool = False,
        trace_peak: bool = False,
    ) -> None:
        super().__init__(daemon=True)
        self.interval, self.others, self.min_free, self.on_low = interval, others, min_free, on_low
        self.stacks, self.profile, self.trace_peak = stacks, profile, trace_peak
        self.t0 = time.perf_counter()
        self.timeline: list[tuple[float, int]] = []
        self.peaks: dict[str, int] = {}
        self.peak_stack: list[str] = []
        self.peak_stack_rss = 0
        self.low: str | None = None
        self.marks: list[tuple[float, str]] = []
        self.own: dict[str, float] = {}
        self.inclusive: dict[str, float] = {}
        self.busy_s = 0.0
        self.unsampled_s = 0.0
        self.peak_snapshot: Any = None
        self.peak_traced = 0
        self._halt = threading.Event()

    def mark(self, label: str) -> None:
        self.marks.append((round(time.perf_counter() - self.t0, 3), label))

    def _profile(self, dt: float) -> None:
        me = threading.get_ident()
        for tid, frame in sys._current_frames().items():
            if tid == me:
                continue
            names = []
            f = frame
            while f is not None:
                code = f.f_code
                names.append(f"{_short(code.co_filename)}:{code.co_name}")
                f = f.f_back
            if not names or _idle(names[0]):
                continue
            self.busy_s += dt
            self.own[names[0]] = self.own.get(names[0], 0.0) + dt
            for n in set(names):
                self.inclusive[n] = self.inclusive.get(n, 0.0) + dt

    def _trace(self) -> None:
        import tracemalloc

        current = tracemalloc.get_traced_memory()[0]
        if current > self.peak_traced + 128 * MiB:
            self.peak_snapshot = tracemalloc.take_snapshot()
            self.peak_traced = tracemalloc.get_traced_memory()[0]

    def run(self) -> None:
        last = time.perf_counter()
        while not self._halt.is_set():
            now = rss()
            t = time.perf_counter()
            self.timeline.append((t - self.t0, now))
            if self.profile:
                # A gap much longer than the interval is C code holding the GIL: it ran
                # before this sample, in whichever frame, so it is not charged to this stack.
                dt = min(t - last, 3 * self.interval)
                self.unsampled_s += t - last - dt
                self._profile(dt)
            last = t
            if self.trace_peak:
                self._trace()
            if self.stacks and now > self.peak_stack_rss + 16 * MiB:
                self.peak_stack_rss, self.peak_stack = now, mpcc_stacks()
            if self.others is not None:
                for role, pid in self.others().items():
                    self.peaks[role] = max(self.peaks.get(role, 0), rss(pid))
            free = mem_available()
            if self.min_free and free < self.min_free and self.low is None:
                self.low = f"machine memory low: {free / MiB:.0f} MiB available"
                if self.on_low is not None:
                    self.on_low(self.low)
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def summary(self, points: int = 240) -> list[tuple[float, float]]:
        """The timeline in at most `points` buckets: (seconds, max MiB in the bucket)."""
        tl = self.timeline
        if not tl:
            return []
        step = max(1, len(tl) // points)
        return [
            (round(tl[i][0], 2), round(max(r for _, r in tl[i : i + step]) / MiB, 1))
            for i in range(0, len(tl), step)
        ]


_IDLE = {
    ("threading.py", "wait"),
    ("threading.py", "_wait_for_tstate_lock"),
    ("threading.py", "join"),
    ("_base.py", "result"),
    ("thread.py", "_worker"),
    ("queue.py", "get"),
    ("selectors.py", "select"),
    ("socket.py", "accept"),
}


def _idle(frame: str) -> bool:
    """A thread whose innermost Python frame is one of these is waiting, not working."""
    file, _, func = frame.rpartition(":")
    return (Path(file).name, func) in _IDLE


def mpcc_stacks() -> list[str]:
    """Every thread's stack that passes through mpcc, innermost frame last, as file:function."""
    out = []
    for frame in sys._current_frames().values():
        names = []
        f = frame
        while f is not None:
            code = f.f_code
            names.append(f"{_short(code.co_filename)}:{code.co_name}:{f.f_lineno}")
            f = f.f_back
        names.reverse()
        keep = [n for n in names if n.startswith("mpcc/") or n.startswith("numpy/")]
        if any(n.startswith("mpcc/") for n in keep):
            out.append(" > ".join(keep[-8:]))
    return out


def _short(filename: str) -> str:
    p = filename.replace("\\", "/")
    for marker in ("/mpcc/", "/numpy/", "/numba/", "/benchmarks/"):
        if marker in p:
            return marker[1:] + p.split(marker, 1)[1]
    return Path(p).name


def ir_stats(prog: Any) -> dict[str, Any]:
    """Instruction and value counts, weight elements, and activation bytes at 8 bytes per
    element (one party's shares): of every IR value, and of the values live at once if each
    is freed after its last use."""
    sizes = [int(np.prod(v.shape)) for v in prog.values]
    out: dict[str, Any] = {
        "instrs": len(prog.instrs),
        "values": len(prog.values),
        "weight_elements": int(sum(int(np.prod(w.shape)) for w in prog.weights.values())),
        "activation_bytes": 8 * sum(sizes),
        "largest_value_bytes": 8 * max(sizes, default=0),
    }
    try:
        last = {}
        for k, ins in enumerate(prog.instrs):
            for a in ins.args:
                last[a] = k
        for _, v in prog.outputs:
            last[v] = len(prog.instrs)
        defined = {ins.out for ins in prog.instrs}
        live = {v for v in range(len(sizes)) if v not in defined}
        peak = sum(sizes[v] for v in live)
        for k, ins in enumerate(prog.instrs):
            live.add(ins.out)
            peak = max(peak, sum(sizes[v] for v in live))
            live = {v for v in live if last.get(v, -1) > k}
        out["live_activation_bytes"] = 8 * peak
    except (AttributeError, TypeError, IndexError):
        pass
    return out


def check_output(y: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    y = np.asarray(y, dtype=np.float64).reshape(ref.shape)
    err = float(np.max(np.abs(y - ref)))
    return {
        "max_abs_error": err,
        "rel_error": err / max(float(np.max(np.abs(ref))), 1e-30),
        "argmax_agrees": bool(np.array_equal(np.argmax(y, axis=-1), np.argmax(ref, axis=-1))),
        "ref_max_abs": float(np.max(np.abs(ref))),
    }


def warm_kernels() -> str | None:
    try:
        from mpcc.runtime.warmup import warm_up
    except ImportError:
        return None
    return str(warm_up())


# --------------------------------------------------------------------------- cache


def source_tag() -> str:
    """Changes when the model definitions change, so stale ONNX files are not reused."""
    return hashlib.sha256((HERE / "bigmodels.py").read_bytes()).hexdigest()[:10]


def cached(model: str, what: str) -> Path:
    suffix = {"onnx": ".onnx", "x": ".x.npy", "ref": ".ref.npy", "plan": ".mpcc"}[what]
    return CACHE / f"{model}-{source_tag()}{suffix}"


# --------------------------------------------------------------------------- workers
# Each runs in a fresh process: `scale.py --worker KIND --model M --json OUT`.


def worker_export(model: str) -> dict[str, Any]:
    """Build the torch model, export it with mpcc's exporter, and keep onnxruntime's output
    on a fixed input as the reference."""
    import onnx
    import onnxruntime as ort
    import torch

    from mpcc.api import export_onnx

    torch.manual_seed(SEED_INPUT)
    x = torch.randn(bigmodels.INPUT_SHAPE)
    module = bigmodels.build(model)
    t0 = time.perf_counter()
    proto = export_onnx(module, x)
    export_s = time.perf_counter() - t0
    with torch.no_grad():
        y_torch = module(x).numpy()
    del module
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = cached(model, "onnx").with_suffix(".tmp")
    onnx.save(proto, str(tmp))
    del proto
    sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.save(cached(model, "x"), x.numpy())
    np.save(cached(model, "ref"), ref.astype(np.float64))
    tmp.replace(cached(model, "onnx"))
    return {
        "export_s": export_s,
        "onnx_mb": cached(model, "onnx").stat().st_size / MiB,
        "torch_vs_ort": float(np.max(np.abs(y_torch - ref))),
    }


def worker_compile(model: str) -> dict[str, Any]:
    from mpcc.compiler.pipeline import compile_onnx  # the imports belong to the baseline

    out: dict[str, Any] = {"baseline_rss": rss()}
    path, plan_path = cached(model, "onnx"), cached(model, "plan")
    reset_peak()
    t0 = time.perf_counter()
    plan = compile_onnx(str(path))
    out["compile_s"] = time.perf_counter() - t0
    out["compile_peak_rss"] = hwm()
    out["rss_after_compile"] = rss()
    reset_peak()
    t0 = time.perf_counter()
    plan.save(plan_path)
    out["save_s"] = time.perf_counter() - t0
    out["save_peak_rss"] = hwm()
    out["plan_mb"] = plan_path.stat().st_size / MiB
    out["ir"] = ir_stats(plan.program)
    return out


def worker_cluster(model: str, min_free: int) -> dict[str, Any]:
    import mpcc
    from mpcc.runtime.cluster import LocalCluster  # part of the baseline

    out: dict[str, Any] = {"import_rss": rss()}
    out["warm_up"] = warm_kernels()
    out["baseline_rss"] = rss()
    x, ref = np.load(cached(model, "x")), np.load(cached(model, "ref"))
    t0 = time.perf_counter()
    plan = mpcc.load(cached(model, "plan"))
    out["load_s"] = time.perf_counter() - t0
    out["rss_after_load"] = rss()
    out["ir"] = ir_stats(plan.program)

    def low(why: str) -> None:
        out["aborted"] = why
        emit(out)
        os._exit(3)

    sampler = Sampler(min_free=min_free, on_low=low)
    sampler.start()
    out["peak_reset"] = reset_peak()
    cluster = LocalCluster(plan)
    t0 = time.perf_counter()
    cluster.__enter__()
    try:
        out["setup_s"] = time.perf_counter() - t0
        out["setup_parts_s"] = cluster.setup_s  # sharing, opening
        out["setup_peak_rss"] = hwm()
        out["rss_after_setup"] = rss()
        sampler.mark("setup done")
        reset_peak()
        t0 = time.perf_counter()
        cluster.preprocess(1)  # the dealer's and the parties' material, apart
        out["preprocess_s"] = time.perf_counter() - t0
        out["preprocess_peak_rss"] = hwm()
        sampler.mark("preprocess done")
        y = cluster.predict(x)
        out["query_s"] = time.perf_counter() - t0
        out["query_peak_rss"] = hwm()
        for key in ("online_s", "offline_s", "material_bytes", "dealer_bytes"):
            out[f"query_{key}"] = getattr(cluster.stats, key)
        sampler.mark("query done")
    finally:
        cluster.__exit__(None, None, None)
    del cluster
    # A second session of the same plan in this process: its memory is no longer the VM's
    # first touch (a fresh process's pages cost a host fault each on this kind of VM).
    t0 = time.perf_counter()
    again = LocalCluster(plan)
    again.__enter__()
    out["setup2_s"] = time.perf_counter() - t0
    out["setup2_parts_s"] = again.setup_s
    again.__exit__(None, None, None)
    del again
    sampler.stop()
    out["peak_rss"] = max(out["setup_peak_rss"], out["query_peak_rss"])
    out["timeline_mib"] = sampler.summary()
    out["marks"] = sampler.marks
    out["check"] = check_output(y, ref)
    return out


def tiny_plan() -> Any:
    """A conv-relu-gemm plan of a few hundred weights: what a party process costs without a
    model worth mentioning (its numba kernels, TLS, buffers)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from mpcc.compiler.pipeline import compile_onnx

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "cw"),
        numpy_helper.from_array(np.zeros(4, np.float32), "cb"),
        numpy_helper.from_array(rng.normal(0, 0.3, (10, 4 * 6 * 6)).astype(np.float32), "gw"),
        numpy_helper.from_array(np.zeros(10, np.float32), "gb"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "cw", "cb"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "gw", "gb"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return compile_onnx(onnx.shape_inference.infer_shapes(proto))


# Big models take longer than the defaults allow for a session's setup, for a query and even
# for a TLS handshake while three processes share two busy cores.
SERVE_SETTINGS = {
    "timeout_s": 600.0,
    "handshake_timeout_s": 120.0,
    "setup_timeout_s": 1800.0,
    "client_timeout_s": 1800.0,
}


def worker_serve(model: str, min_free: int) -> dict[str, Any]:
    """Three party processes over TLS (serve_locally), one query, then each party's VmHWM.
    The pids are this process's children `python -m mpcc party --role p0|p1|dealer`:
    serve_locally keeps its ProcessCluster to itself."""
    import mpcc
    from mpcc.serving.local import serve_locally  # part of the baseline

    out: dict[str, Any] = {"settings": SERVE_SETTINGS}
    if model == "_floor":
        plan = tiny_plan()
        x = np.random.default_rng(0).normal(size=(1, 3, 8, 8)).astype(np.float32)
        ref = None
    else:
        plan = mpcc.load(cached(model, "plan"))
        x, ref = np.load(cached(model, "x")), np.load(cached(model, "ref"))
    out["owner_rss_before"] = rss()

    def low(why: str) -> None:
        out["aborted"] = why
        for pid in party_pids().values():
            os.kill(pid, signal.SIGKILL)

    sampler = Sampler(interval=0.1, others=party_pids, min_free=min_free, on_low=low)
    sampler.start()
    t0 = time.perf_counter()
    try:
        with serve_locally(plan, **SERVE_SETTINGS) as client:
            out["ready_s"] = time.perf_counter() - t0
            pids = party_pids()
            out["pids"] = pids
            out["rss_ready"] = {r: rss(p) for r, p in pids.items()}
            t0 = time.perf_counter()
            y = client.predict(x)
            out["query_s"] = time.perf_counter() - t0
            out["hwm"] = {r: hwm(p) for r, p in pids.items()}
            out["rss_after_query"] = {r: rss(p) for r, p in pids.items()}
            # The parties go on preparing a stock of material for later queries: their peak
            # once that has settled, too.
            out["settle_s"] = settle(pids)
            out["hwm_settled"] = {r: hwm(p) for r, p in pids.items()}
            # What each party holds once settled: its memory, and of it the material made
            # ahead (its stock of queries, as the party reports it).
            out["rss_settled"] = {r: rss(p) for r, p in pids.items()}
            out["material"] = {
                role: {
                    k: facts.get(k)
                    for k in ("stock", "query_material_bytes", "material_held_bytes")
                }
                for role, facts in client.info().items()
            }
    except Exception as e:
        if "aborted" not in out:
            raise
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        sampler.stop()
    out["sampled_peak"] = sampler.peaks
    out["owner_peak_rss"] = ru_maxrss()
    if ref is not None and "error" not in out:
        out["check"] = check_output(y, ref)
    return out


def settle(pids: dict[str, int], quiet_s: float = 3.0, limit_s: float = 120.0) -> float:
    """Wait until no process of `pids` has grown by 1 MiB for `quiet_s`; the seconds waited."""
    t0 = last_change = time.perf_counter()
    seen = {r: rss(p) for r, p in pids.items()}
    while time.perf_counter() - last_change < quiet_s and time.perf_counter() - t0 < limit_s:
        time.sleep(0.25)
        now = {r: rss(p) for r, p in pids.items()}
        if any(now[r] > seen[r] + MiB for r in now):
            last_change = time.perf_counter()
        seen = {r: max(seen[r], now[r]) for r in now}
    return time.perf_counter() - t0


def worker_profile(model: str, mode: str) -> dict[str, Any]:
    """Where compile_onnx, planfile.save, the plan's loading and LocalCluster's setup spend
    time (mode "time": cProfile, and the stacks at each step's RSS peak) or memory (mode
    "memory": tracemalloc, whose counts include numpy's array buffers)."""
    import cProfile
    import pstats
    import tracemalloc

    import mpcc
    from mpcc.compiler.pipeline import compile_onnx
    from mpcc.runtime.cluster import LocalCluster

    warm_kernels()
    x = np.load(cached(model, "x"))
    plan_path = CACHE / f"{model}-profile.mpcc"
    out: dict[str, Any] = {"mode": mode, "steps": {}}
    state: dict[str, Any] = {}

    def step_compile() -> None:
        state["plan"] = compile_onnx(str(cached(model, "onnx")))

    def step_save() -> None:
        state["plan"].save(plan_path)

    def step_load() -> None:
        state.pop("plan")
        state["plan"] = mpcc.load(plan_path)

    def step_setup() -> None:
        state["cluster"] = LocalCluster(state["plan"])
        state["cluster"].__enter__()

    def step_preprocess() -> None:
        state["cluster"].preprocess(1)

    def step_query() -> None:
        state["cluster"].predict(x)

    steps = [
        ("compile", step_compile),
        ("save", step_save),
        ("load", step_load),
        ("setup", step_setup),
        ("preprocess", step_preprocess),
        ("query", step_query),
    ]
    if mode == "memory":
        tracemalloc.start(12)
    try:
        for name, fn in steps:
            log(f"profile {model}: {name}")
            rec: dict[str, Any] = {"rss_before": rss()}
            reset_peak()
            if mode == "memory":
                tracemalloc.reset_peak()
                before = tracemalloc.take_snapshot()
            sampler = Sampler(
                interval=0.02, stacks=True, profile=mode == "time", trace_peak=mode == "memory"
            )
            sampler.start()
            prof = cProfile.Profile() if mode == "time" else None
            t0 = time.perf_counter()
            if prof is not None:
                prof.enable()
            fn()
            if prof is not None:
                prof.disable()
            rec["seconds"] = time.perf_counter() - t0
            sampler.stop()
            rec["peak_rss"], rec["rss_after"] = hwm(), rss()
            rec["peak_stacks"] = sampler.peak_stack
            rec["timeline_mib"] = sampler.summary(60)
            if prof is not None:
                rec["top"] = top_functions(pstats.Stats(prof))
                rec["sampled"] = {
                    "busy_thread_s": sampler.busy_s,
                    "unsampled_s": sampler.unsampled_s,
                    "own": top_sampled(sampler.own),
                    "inclusive": top_sampled(sampler.inclusive, mpcc_only=True),
                }
            if mode == "memory":
                rec["traced_peak"] = tracemalloc.get_traced_memory()[1]
                after = tracemalloc.take_snapshot()
                rec["held"] = top_memory(after.compare_to(before, "traceback"))
                if sampler.peak_snapshot is not None:
                    rec["at_peak_traced"] = sampler.peak_traced
                    rec["at_peak"] = top_memory(
                        sampler.peak_snapshot.compare_to(before, "traceback")
                    )
                del after, before
                sampler.peak_snapshot = None
            out["steps"][name] = rec
    finally:
        if "cluster" in state:
            state["cluster"].__exit__(None, None, None)
        plan_path.unlink(missing_ok=True)
    return out


def top_functions(stats: Any, n: int = 15) -> dict[str, list[dict[str, Any]]]:
    """The `n` functions with the most own time and the most cumulative time."""
    rows = []
    for (filename, line, func), (_cc, ncalls, tt, ct, _callers) in stats.stats.items():
        rows.append(
            {"fn": f"{_short(filename)}:{func}:{line}", "calls": ncalls, "own_s": tt, "cum_s": ct}
        )
    own = sorted(rows, key=lambda r: -r["own_s"])[:n]
    cum = sorted(
        (r for r in rows if r["fn"].startswith(("mpcc/", "numpy/", "zipfile", "gzip"))),
        key=lambda r: -r["cum_s"],
    )[:n]
    return {"own": own, "cumulative": cum}


def top_sampled(
    times: dict[str, float], n: int = 15, mpcc_only: bool = False
) -> list[dict[str, Any]]:
    rows = [
        {"fn": fn, "s": t}
        for fn, t in times.items()
        if not mpcc_only or fn.startswith(("mpcc/", "numpy/", "zipfile", "onnx", "shape_inf"))
    ]
    return sorted(rows, key=lambda r: -r["s"])[:n]


def top_memory(diffs: list[Any], n: int = 12) -> list[dict[str, Any]]:
    """Memory still held after a step, by the allocating line's traceback (mpcc frames)."""
    rows = []
    for d in diffs[:60]:
        if d.size_diff <= 0:
            continue
        frames = [f"{_short(fr.filename)}:{fr.lineno}" for fr in d.traceback]
        mpcc_frames = [f for f in frames if f.startswith("mpcc/")] or frames[-1:]
        rows.append({"bytes": d.size_diff, "count": d.count_diff, "where": mpcc_frames[-4:]})
    return rows[:n]


WORKERS: dict[str, Callable[..., dict[str, Any]]] = {
    "export": worker_export,
    "compile": worker_compile,
    "cluster": worker_cluster,
    "serve": worker_serve,
}

_OUT: Path | None = None


def emit(result: dict[str, Any]) -> None:
    assert _OUT is not None
    result.setdefault("final_rss", rss())
    result.setdefault("final_hwm", hwm())
    result["mpcc"] = sys.modules["mpcc"].__file__ if "mpcc" in sys.modules else None
    _OUT.write_text(json.dumps(result, indent=1, default=str))


def run_worker(args: argparse.Namespace) -> int:
    global _OUT
    _OUT = Path(args.json)
    try:
        if args.worker == "profile":
            result = worker_profile(args.model, args.profile_mode)
        elif args.worker in ("cluster", "serve"):
            result = WORKERS[args.worker](args.model, int(args.min_free_gb * 2**30))
        else:
            result = WORKERS[args.worker](args.model)
    except Exception as e:  # reported in the results, not a crash of the whole run
        emit({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]})
        return 1
    emit(result)
    return 0


# --------------------------------------------------------------------------- orchestration


def spawn(
    kind: str, model: str, repo: Path, opts: argparse.Namespace, extra: list[str] | None = None
) -> dict[str, Any]:
    """A worker in a fresh process; its JSON result ({"error": ...} if it failed)."""
    env = dict(os.environ, KERAS_BACKEND="torch")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="mpcc-scale-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind]
        cmd += ["--model", model, "--json", str(out), "--min-free-gb", str(opts.min_free_gb)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [*cmd, *(extra or [])],
                cwd=repo,
                env=env,
                timeout=opts.timeout,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {opts.timeout:g} s"}
        wall = time.perf_counter() - t0
        if out.exists():
            result = json.loads(out.read_text())
        else:
            tail = proc.stderr.strip().splitlines()[-5:]
            result = {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
        result["wall_s"] = wall
        if "error" in result:
            log(f"{model} {kind}: FAILED: {result['error']}")
        return result


def ensure_exported(model: str, repo: Path, opts: argparse.Namespace) -> dict[str, Any]:
    if all(cached(model, w).exists() for w in ("onnx", "x", "ref")):
        return {"cached": True, "onnx_mb": cached(model, "onnx").stat().st_size / MiB}
    log(f"{model}: exporting to ONNX (once; cached in {CACHE})")
    return spawn("export", model, repo, opts)


def measure(models: list[str], steps: list[str], repo: Path, opts: argparse.Namespace) -> dict:
    report: dict[str, Any] = {
        "machine": machine_info(),
        "code": code_info(repo),
        "settings": {"serve": SERVE_SETTINGS, "steps": steps, "min_free_gb": opts.min_free_gb},
        "models": {},
    }
    if "serve" in steps:
        log("party floor: serve_locally on a tiny plan")
        report["party_floor"] = spawn("serve", "_floor", repo, opts)
    for m in models:
        params = bigmodels.PARAMS[m]
        rec: dict[str, Any] = {"name": bigmodels.MODELS[m][0], "params": params}
        report["models"][m] = rec
        rec["export"] = ensure_exported(m, repo, opts)
        if "error" in rec["export"]:
            continue
        if "compile" in steps or not cached(m, "plan").exists():
            log(f"{m}: compile + save ({params:,} parameters)")
            rec["compile"] = c = spawn("compile", m, repo, opts)
            if "error" not in c:
                log(
                    f"{m}: compile {c['compile_s']:.1f} s + save {c['save_s']:.1f} s, "
                    f"plan {c['plan_mb']:.0f} MB, peak {c['compile_peak_rss'] / MiB:.0f} MiB"
                )
            else:
                continue
        if "cluster" in steps:
            log(f"{m}: LocalCluster, batch-1 query")
            rec["cluster"] = c = spawn("cluster", m, repo, opts)
            if "error" not in c and "aborted" not in c:
                log(
                    f"{m}: setup {c['setup_s']:.1f} s, query {c['query_s']:.1f} s, peak "
                    f"{c['peak_rss'] / MiB:.0f} MiB "
                    f"({(c['peak_rss'] - c['baseline_rss']) / params:.0f} B/param), "
                    f"max error {c['check']['max_abs_error']:.2g}"
                )
        if "serve" in steps:
            log(f"{m}: serve_locally (three party processes over TLS), one query")
            rec["serve"] = s = spawn("serve", m, repo, opts)
            if "hwm" in s:
                log(
                    f"{m}: parties ready in {s['ready_s']:.1f} s, query {s['query_s']:.1f} s, "
                    + ", ".join(f"{r} {v / MiB:.0f} MiB" for r, v in sorted(s["hwm"].items()))
                )
        report["load_after"] = os.getloadavg()[0]
    report["rows"] = rows(report)
    report["targets"] = target_rows(report)
    return report


def profile(model: str, repo: Path, opts: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"machine": machine_info(), "code": code_info(repo), "model": model}
    ensure_exported(model, repo, opts)
    for mode in ("time", "memory"):
        log(f"profile {model} ({mode}) in a fresh process")
        out[mode] = spawn("profile", model, repo, opts, ["--profile-mode", mode])
    return out


def machine_info() -> dict[str, Any]:
    """`mpcc bench`'s machine facts, with the memory and torch this benchmark depends on."""
    from mpcc.bench import machine_info as bench_machine

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    return {
        **bench_machine(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "mem_available_gib": round(mem_available() / 2**30, 1),
        "load_avg": list(os.getloadavg()),
        "torch": torch_version,
    }


def code_info(repo: Path) -> dict[str, Any]:
    def git(*a: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(repo), *a], capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {
        "repo": str(repo),
        "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
        "commit": git("rev-parse", "HEAD"),
        "mpcc_commit": git("log", "-1", "--format=%H", "--", "mpcc"),  # last change to mpcc/
        "dirty": bool(git("status", "--porcelain", "--", "mpcc")),
    }


# --------------------------------------------------------------------------- report


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per model, the figures the tables and targets read."""
    floor = report.get("party_floor", {}).get("hwm", {})
    floor_rss = report.get("party_floor", {}).get("rss_settled", {})
    out = []
    for m, rec in report["models"].items():
        params = rec["params"]
        r: dict[str, Any] = {"model": m, "name": rec["name"], "params": params}
        c = rec.get("compile", {})
        if "compile_s" in c:
            r.update(
                compile_s=c["compile_s"],
                save_s=c["save_s"],
                compile_total_s=c["compile_s"] + c["save_s"],
                plan_mb=c["plan_mb"],
                compile_peak_mib=max(c["compile_peak_rss"], c["save_peak_rss"]) / MiB,
            )
        k = rec.get("cluster", {})
        if "peak_rss" in k:
            act = k["ir"]["activation_bytes"]
            material = k.get("query_material_bytes") or 0
            marginal = k["peak_rss"] - k["baseline_rss"]
            r.update(
                load_s=k["load_s"],
                setup_s=k["setup_s"],
                setup2_s=k.get("setup2_s"),
                sharing_s=(k.get("setup_parts_s") or {}).get("sharing"),
                opening_s=(k.get("setup_parts_s") or {}).get("opening"),
                opening2_s=(k.get("setup2_parts_s") or {}).get("opening"),
                query_s=k["query_s"],
                material_mib=material / MiB,
                cluster_peak_mib=k["peak_rss"] / MiB,
                cluster_setup_peak_mib=k["setup_peak_rss"] / MiB,
                cluster_query_peak_mib=k["query_peak_rss"] / MiB,
                preprocess_s=k.get("preprocess_s"),
                cluster_preprocess_peak_mib=k.get("preprocess_peak_rss", 0) / MiB or None,
                cluster_baseline_mib=k["baseline_rss"] / MiB,
                cluster_per_param=marginal / params,
                activation_mib=act / MiB,
                live_activation_mib=k["ir"].get("live_activation_bytes", act) / MiB,
                # the session (weights) apart from what a query adds (activations, its
                # preprocessing material, the protocols' working memory)
                cluster_weights_per_param=(k["setup_peak_rss"] - k["baseline_rss"]) / params,
                cluster_query_mib=max(0, k["query_peak_rss"] - k["setup_peak_rss"]) / MiB,
                max_abs_error=k["check"]["max_abs_error"],
                rel_error=k["check"]["rel_error"],
                argmax_agrees=k["check"]["argmax_agrees"],
            )
        elif k:
            r["cluster_error"] = k.get("aborted") or k.get("error")
        s = rec.get("serve", {})
        if "hwm" in s:
            hw = s["hwm"]
            worst = max(hw.get("p0", 0), hw.get("p1", 0))
            base = max(floor.get("p0", 0), floor.get("p1", 0))
            # What a party holds, settled: its RSS above a tiny plan's party's, less the
            # material it reports holding (its stock of queries made ahead).
            settled, floor_settled = s.get("rss_settled", {}), floor_rss
            held = {
                role: settled.get(role, 0)
                - floor_settled.get(role, 0)
                - (s.get("material", {}).get(role, {}).get("material_held_bytes") or 0)
                for role in ("p0", "p1")
            }
            material = (
                max((m.get("material_held_bytes") or 0) for m in s.get("material", {}).values())
                if s.get("material")
                else 0
            )
            r.update(
                serve_ready_s=s["ready_s"],
                serve_query_s=s["query_s"],
                p0_peak_mib=hw.get("p0", 0) / MiB,
                p1_peak_mib=hw.get("p1", 0) / MiB,
                dealer_peak_mib=hw.get("dealer", 0) / MiB,
                party_settled_mib=max(s.get("hwm_settled", hw).get(k, 0) for k in ("p0", "p1"))
                / MiB,
                party_floor_mib=base / MiB,
                party_per_param=worst / params,
                party_material_mib=material / MiB,
                party_raw_per_param=(worst - base) / params,
                party_marginal_per_param=max(held.values()) / params,
            )
            if "check" in s:
                r["serve_max_abs_error"] = s["check"]["max_abs_error"]
                r["serve_argmax_agrees"] = s["check"]["argmax_agrees"]
        elif s:
            r["serve_error"] = s.get("aborted") or s.get("error")
        out.append(r)
    return out


def target_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key, model, limit, text in TARGETS:
        for r in report["rows"]:
            if (model is None or r["model"] == model) and key in r:
                out.append(
                    {
                        "target": text,
                        "model": r["model"],
                        "key": key,
                        "value": r[key],
                        "limit": limit,
                        "met": r[key] <= limit,
                    }
                )
    return out


def _f(v: Any, fmt: str = "{:.1f}") -> str:
    return "–" if v is None else fmt.format(v)


def markdown(report: dict[str, Any], title: str) -> str:
    mi, code = report["machine"], report["code"]
    lines = [
        f"# {title}",
        "",
        f"Measured {mi['date']} on {mi['cpu']}, {mi['cores']} cores, {mi['memory_gib']} GiB "
        f"(available at start {mi['mem_available_gib']} GiB); load average "
        f"{' / '.join(f'{v:.2f}' for v in mi['load_avg'])} at start, "
        f"{report.get('load_after', float('nan')):.2f} at the end. Python {mi['python']}, "
        f"numpy {mi['numpy']}, numba {mi['numba']}, torch {mi['torch']}, "
        f"onnxruntime {mi['onnxruntime']}.",
        f"Code: `{code['repo']}` branch `{code['branch']}` at `{code['commit'][:12]}`"
        + (f", mpcc/ as of `{code['mpcc_commit'][:12]}`" if code.get("mpcc_commit") else "")
        + (" (mpcc/ modified)" if code["dirty"] else "")
        + ". The machine is shared with other work: times are noisy (one run each), memory "
        "figures much less so.",
        "",
        "Batch 1, 224x224x3, random weights; the models are torchvision's layer shapes written "
        "in torch (`benchmarks/bigmodels.py`). Each measurement runs in a fresh process. "
        "Run: `.venv/bin/python benchmarks/scale.py` (see its docstring).",
        "",
        "| model | params | compile s (+ save s) | plan MiB | setup s: sharing + opening (again) "
        "| first query s "
        "| material MiB | LocalCluster peak MiB | B/param | party peak MiB (P0 / P1) | B/param "
        "| max error vs onnxruntime | argmax |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["rows"]:
        party = "–"
        if "p0_peak_mib" in r:
            party = f"{r['p0_peak_mib']:.0f} / {r['p1_peak_mib']:.0f}"
        elif "serve_error" in r:
            party = "failed (see below)"
        cluster = _f(r.get("cluster_peak_mib"), "{:.0f}")
        if "cluster_error" in r:
            cluster = "failed (see below)"
        err = r.get("max_abs_error")
        lines.append(
            f"| {r['name']} | {r['params']:,} "
            f"| {_f(r.get('compile_s'))} (+ {_f(r.get('save_s'))}) "
            f"| {_f(r.get('plan_mb'), '{:.0f}')} | {_f(r.get('setup_s'))}: "
            f"{_f(r.get('sharing_s'))} + {_f(r.get('opening_s'))} "
            f"({_f(r.get('setup2_s'))}: {_f(r.get('opening2_s'))}) | {_f(r.get('query_s'))} "
            f"| {_f(r.get('material_mib'), '{:.0f}')} "
            f"| {cluster} | {_f(r.get('cluster_per_param'), '{:.0f}')} "
            f"| {party} | {_f(r.get('party_marginal_per_param'), '{:.0f}')} "
            f"| {_f(err, '{:.2g}')}"
            + (f" ({r['rel_error']:.1e} rel.)" if err is not None else "")
            + f" | {'same' if r.get('argmax_agrees') else '–' if err is None else 'differs'} |"
        )
    lines += [
        "",
        "- *compile s*: `compile_onnx(model.onnx)`; *save s*: `planfile.save` of the plan with "
        "its weights (together: `mpcc compile model.onnx -o plan.mpcc`).",
        "- *setup s*: `LocalCluster.__enter__` in a fresh process: the owner's sharing of the "
        "weights (a deployment's work, once per model when serving) + the session's opening "
        "of F = W - B (the dealer draws B meanwhile), and *(again)* the whole and the opening "
        "of a second session in the same process: on this VM a page's first touch costs a "
        "fault in the host (under 1 GB/s), so the first session pays for its memory; *first "
        "query s*: `predict` of one sample, dealer material included, numba kernels warm; "
        "*material*: the preprocessing material P0 and P1 held for that query "
        "(`QueryStats.material_bytes`).",
        "- *LocalCluster peak*: the process's VmHWM over setup and query (reset after the plan "
        "was loaded); *B/param*: (peak - RSS after imports and kernel warm-up) / parameters. "
        "The caller's copy of the weights counts: `LocalCluster(prog, weights)` needs it.",
        "- *party peak*: VmHWM of the P0 and P1 processes of `serve_locally` after one query; "
        "*B/param*: what the larger holds once settled, per parameter: its RSS above a party "
        "serving a tiny plan, less the preprocessing material it reports holding "
        "(`material_held_bytes`: its stock of queries made ahead, bounded by `[serving] "
        "stock` and `stock_mb`); the peak above the tiny plan's, material included, is "
        "`party_raw_per_param` in the JSON. Serving defaults but for longer timeouts.",
        "- *max error*: the secure logits against onnxruntime's on the same input.",
        "",
        "## Targets (issue 10, part 6)",
        "",
        "| target | model | measured | limit | |",
        "|---|---|---:|---:|---|",
    ]
    by = {r["model"]: r for r in report["rows"]}
    for t in report["targets"]:
        r = by[t["model"]]
        if t["key"] == "cluster_weights_per_param":
            meas = (
                f"{t['value']:.1f} B/param; a query adds {r['cluster_query_mib']:.0f} MiB "
                f"(activations {r['activation_mib']:.0f}, material {r['material_mib']:.0f})"
            )
            lim = "48 B/param"
        elif t["key"] == "party_marginal_per_param":
            meas = (
                f"{t['value']:.1f} B/param (+ {r['party_material_mib']:.0f} MiB of material; "
                f"peak {r['party_raw_per_param']:.0f} B/param)"
            )
            lim = "24 B/param"
        else:
            meas, lim = f"{t['value']:.1f} s", f"{t['limit']:g} s"
        lines.append(
            f"| {t['target']} | {t['model']} | {meas} | {lim} | {'met' if t['met'] else 'MISSED'} |"
        )
    lines += [
        "",
        "*LocalCluster*: its session (the weights: the plan's, the dealer's mask B, each "
        "party's F and operand) is its setup peak; a batch-1 query adds what scales with the "
        "activations: the values (8 bytes x the elements of every IR value, none freed; the "
        "executor frees each after its last use, the live figure below), the query's "
        "preprocessing material (about 100 bytes per compared element and party, "
        "`calls.Relu`, held before the query runs) and the protocols' working memory for the "
        "largest layer.",
        "",
        "## Details",
        "",
        "| model | IR instrs | plan weights | activations MiB (all / live) | compile peak MiB "
        "| load s | setup peak MiB | dealer material s (peak MiB) | query peak MiB | online s "
        "| baseline MiB | parties ready s | party query s | dealer peak MiB | party floor MiB "
        "| party peak, stock settled MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m, rec in report["models"].items():
        r = by[m]
        ir = rec.get("cluster", {}).get("ir") or rec.get("compile", {}).get("ir") or {}
        online = rec.get("cluster", {}).get("query_online_s")
        lines.append(
            f"| {r['name']} | {ir.get('instrs', '–')} | {ir.get('weight_elements', 0):,} "
            f"| {_f(r.get('activation_mib'), '{:.0f}')} / "
            f"{_f(r.get('live_activation_mib'), '{:.0f}')} "
            f"| {_f(r.get('compile_peak_mib'), '{:.0f}')} | {_f(r.get('load_s'))} "
            f"| {_f(r.get('cluster_setup_peak_mib'), '{:.0f}')} "
            f"| {_f(r.get('preprocess_s'))} ({_f(r.get('cluster_preprocess_peak_mib'), '{:.0f}')}) "
            f"| {_f(r.get('cluster_query_peak_mib'), '{:.0f}')} | {_f(online)} "
            f"| {_f(r.get('cluster_baseline_mib'), '{:.0f}')} | {_f(r.get('serve_ready_s'))} "
            f"| {_f(r.get('serve_query_s'))} | {_f(r.get('dealer_peak_mib'), '{:.0f}')} "
            f"| {_f(r.get('party_floor_mib'), '{:.0f}')} "
            f"| {_f(r.get('party_settled_mib'), '{:.0f}')} |"
        )
    fails = [
        (m, step, rec[step].get("aborted") or rec[step].get("error"))
        for m, rec in report["models"].items()
        for step in ("export", *STEPS)
        if isinstance(rec.get(step), dict) and (rec[step].get("error") or rec[step].get("aborted"))
    ]
    if fails:
        lines += ["", "## Failures", ""]
        lines += [f"- {m} {step}: {why}" for m, step, why in fails]
    return "\n".join(lines) + "\n"


def profile_markdown(prof: dict[str, Any]) -> str:
    mi, code = prof["machine"], prof["code"]
    lines = [
        f"# Where time and memory go: {prof['model']}",
        "",
        f"{mi['date']}, {mi['cpu']}, {mi['cores']} cores, load {mi['load_avg'][0]:.2f}; "
        f"code `{code['commit'][:12]}` ({code['branch']}"
        + (f", mpcc/ as of `{code['mpcc_commit'][:12]}`" if code.get("mpcc_commit") else "")
        + "). `benchmarks/scale.py --profile "
        f"{prof['model']}`: one process under cProfile (times inflated by the profiler), "
        "one under tracemalloc (numpy buffers included).",
    ]
    t, m = prof.get("time", {}), prof.get("memory", {})
    for step in ("compile", "save", "load", "setup", "preprocess", "query"):
        ts, ms = t.get("steps", {}).get(step), m.get("steps", {}).get(step)
        if ts is None:
            continue
        lines += [
            "",
            f"## {step}: {ts['seconds']:.1f} s under cProfile"
            + (f", {ms['seconds']:.1f} s under tracemalloc" if ms else ""),
            "",
            f"RSS {ts['rss_before'] / MiB:.0f} MiB before, peak {ts['peak_rss'] / MiB:.0f} MiB, "
            f"{ts['rss_after'] / MiB:.0f} MiB after"
            + (f"; tracemalloc peak {ms['traced_peak'] / MiB:.0f} MiB" if ms else "")
            + ".",
            "",
            "Most own time:",
            "",
            "| function | calls | own s | cumulative s |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| `{r['fn']}` | {r['calls']} | {r['own_s']:.2f} | {r['cum_s']:.2f} |"
            for r in ts["top"]["own"][:10]
        ]
        sampled = ts.get("sampled")
        if sampled:
            lines += [
                "",
                f"Sampled every 20 ms in every thread ({sampled['busy_thread_s']:.1f} busy "
                "thread-seconds; LocalCluster's parties are two threads), innermost Python "
                "frame (own) and on the stack (inclusive). C calls that hold the GIL stop the "
                f"sampler; their {sampled.get('unsampled_s', 0):.1f} s are left out (the "
                "cProfile table above has them, for the main thread):",
                "",
                "| own: function | s | inclusive: function | s |",
                "|---|---:|---|---:|",
            ]
            own, inc = sampled["own"][:12], sampled["inclusive"][:12]
            for k in range(max(len(own), len(inc))):
                a = own[k] if k < len(own) else None
                b = inc[k] if k < len(inc) else None
                lines.append(
                    (f"| `{a['fn']}` | {a['s']:.1f} " if a else "| | ")
                    + (f"| `{b['fn']}` | {b['s']:.1f} |" if b else "| | |")
                )
        lines += [
            "",
            "Most cumulative time (mpcc, numpy, zipfile):",
            "",
            "| function | cumulative s |",
        ]
        lines += ["|---|---:|"]
        lines += [f"| `{r['fn']}` | {r['cum_s']:.2f} |" for r in ts["top"]["cumulative"][:12]]
        if ts.get("peak_stacks"):
            lines += ["", "Threads running mpcc code when RSS was highest:", ""]
            lines += [f"- `{s}`" for s in ts["peak_stacks"]]
        if ms and ms.get("at_peak"):
            lines += [
                "",
                f"Memory allocated during the step and alive at its traced peak "
                f"({ms['at_peak_traced'] / MiB:.0f} MiB traced in all), by allocation site:",
                "",
                "| MiB | blocks | allocated at (innermost first; `<`: called from) |",
                "|---:|---:|---|",
            ]
            lines += [
                f"| {h['bytes'] / MiB:.0f} | {h['count']} | `{' < '.join(reversed(h['where']))}` |"
                for h in ms["at_peak"]
                if h["bytes"] >= MiB
            ]
        if ms and ms.get("held"):
            lines += ["", "Memory still held after the step (tracemalloc, by allocation site):"]
            lines += [
                "",
                "| MiB | blocks | allocated at (innermost first; `<`: called from) |",
                "|---:|---:|---|",
            ]
            lines += [
                f"| {h['bytes'] / MiB:.0f} | {h['count']} | `{' < '.join(reversed(h['where']))}` |"
                for h in ms["held"]
                if h["bytes"] >= MiB
            ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default=",".join(bigmodels.MODELS), help="comma-separated")
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_MODELS)}")
    ap.add_argument("--skip", default="", help=f"steps to leave out, of {','.join(STEPS)}")
    ap.add_argument("--out", default="scale", help="results/NAME.md and NAME.json")
    ap.add_argument("--repo", default=str(REPO), help="the mpcc checkout to measure")
    ap.add_argument("--profile", metavar="MODEL", help="profile compile/save/setup of MODEL")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per measurement")
    ap.add_argument(
        "--min-free-gb",
        type=float,
        default=2.0,
        help="abort a measurement when the machine has less memory available than this",
    )
    ap.add_argument("--render", action="store_true", help="rewrite NAME.md from NAME.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    ap.add_argument("--profile-mode", default="time", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return run_worker(args)

    repo = Path(args.repo).resolve()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.profile:
        prof = profile(args.profile, repo, args)
        name = f"{args.out}-profile-{args.profile}" if args.out != "scale" else None
        name = name or f"scale-profile-{args.profile}"
        (RESULTS / f"{name}.json").write_text(json.dumps(prof, indent=1, default=str))
        (RESULTS / f"{name}.md").write_text(profile_markdown(prof))
        log(f"wrote {RESULTS / name}.md and .json")
        return 0

    if args.render:
        report = json.loads((RESULTS / f"{args.out}.json").read_text())
        (RESULTS / f"{args.out}.md").write_text(markdown(report, "Scale: big models, batch 1"))
        return 0
    models = QUICK_MODELS if args.quick else [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in bigmodels.MODELS]
    if unknown:
        ap.error(
            f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(bigmodels.MODELS)}"
        )
    skip = {s for s in args.skip.split(",") if s}
    steps = [s for s in STEPS if s not in skip]
    report = measure(models, steps, repo, args)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=1, default=str))
    (RESULTS / f"{args.out}.md").write_text(markdown(report, "Scale: big models, batch 1"))
    log(f"wrote {RESULTS / args.out}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
