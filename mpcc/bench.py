"""`mpcc bench`: secure-inference latency, traffic and rounds on this machine, vs onnxruntime.

All three parties run in this process (`LocalCluster`: two party threads, in-process queues),
or with `--processes` as three local processes over mutually authenticated TLS (as `mpcc run
--processes`), which adds the bytes on the wire, the TLS handshake and the client's latency.
Per batch size it reports the online latency (median, p90), the offline time per query (the
dealer alone, and dealer + both parties' expansion), the bytes each compute party sends, the
dealer's bytes, the rounds, and the same model's plaintext onnxruntime latency (one thread)
measured in the same run. The first query of a cluster is reported apart: in a fresh process
it includes loading (or compiling) the numba kernels. `--layers` adds a per-instruction
breakdown next to the compiler's predicted cost; `--network RTT_ms,Gbps` adds a *projection*
(not a measurement) of the latency on such a link.

    mpcc bench lenet.onnx --batch 1,64 --repeat 20 --layers --network 1,1 --json out.json
    mpcc bench lenet.onnx --processes  # the parties as processes over TLS on 127.0.0.1
    python -m mpcc.bench ...          # the same, before/without the `mpcc` entry point
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mpcc.errors import MpccError
from mpcc.runtime.warmup import numba_counts

SCHEMA = "mpcc-bench/1"
PROJECTION_NOTE = (
    "projection, not a measurement: measured online time + rounds x RTT + "
    "bytes sent per party / bandwidth (full duplex; no TCP/TLS overhead, no congestion)"
)


# --------------------------------------------------------------------------- small helpers


@dataclasses.dataclass(frozen=True)
class Link:
    """A network link for the latency projection: round-trip time and bandwidth."""

    rtt_s: float
    gbps: float

    @classmethod
    def parse(cls, text: str) -> Link:
        """`RTT_ms,Gbps`, e.g. `1,1` (LAN) or `40,0.1` (WAN)."""
        try:
            rtt_ms, gbps = (float(p) for p in text.split(","))
        except ValueError:
            raise MpccError(
                f"--network wants RTT_ms,Gbps (e.g. 1,1 or 40,0.1), not {text!r}"
            ) from None
        if not (rtt_ms >= 0 and gbps > 0 and math.isfinite(rtt_ms) and math.isfinite(gbps)):
            raise MpccError(f"--network {text!r}: RTT must be >= 0 ms and bandwidth > 0 Gbit/s")
        return cls(rtt_ms / 1e3, gbps)

    def transfer_s(self, nbytes: float) -> float:
        """Seconds to push `nbytes` through the link at full bandwidth."""
        return nbytes * 8 / (self.gbps * 1e9)

    def project(self, compute_s: float, rounds: int, nbytes: float) -> float:
        """compute + rounds x RTT + bytes / bandwidth: the latency on this link (a model)."""
        return compute_s + rounds * self.rtt_s + self.transfer_s(nbytes)

    def asdict(self) -> dict[str, float]:
        return {"rtt_ms": self.rtt_s * 1e3, "gbps": self.gbps}


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """Median, p90 (linear interpolation), min and mean of timing samples, and the samples."""
    a = np.asarray(samples, dtype=np.float64)
    return {
        "median": float(np.median(a)),
        "p90": float(np.percentile(a, 90)),
        "min": float(a.min()),
        "mean": float(a.mean()),
        "samples": [float(v) for v in a],
    }


def parse_ints(text: str, what: str) -> list[int]:
    """`1,64` -> [1, 64]; every value a positive integer."""
    try:
        vals = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        vals = []
    if not vals or any(v <= 0 for v in vals):
        raise MpccError(f"{what} wants positive integers separated by commas, not {text!r}")
    return vals


def fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def fmt_s(s: float | None) -> str:
    """Seconds with three significant digits in s, ms or us."""
    if s is None:
        return "-"
    for unit, size in (("s", 1.0), ("ms", 1e-3)):
        if abs(s) >= size:
            return f"{s / size:.3g} {unit}"
    return f"{s * 1e6:.3g} us"


def machine_info() -> dict[str, Any]:
    """CPU model, cores, library versions, date and load: the context of a measurement."""
    import numba
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load_avg_1m": load,
    }


class Progress:
    """Progress on stderr, shown only once a run has taken more than `after` seconds.

    One line per phase (`phase`: compiling, starting the parties, the first query, ...), and
    within a phase a status line (`update`: redrawn in place on a terminal; otherwise a line
    every `every` seconds of a phase, the first one `every` seconds into it). A phase still
    running when `after` seconds have passed is printed then, by a timer, so a long first
    phase is not silent; a run shorter than `after` prints nothing."""

    def __init__(
        self, enabled: bool, after: float = 1.0, stream: Any = None, every: float = 5.0
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.after = after
        self.every = every
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self._last = 0.0
        self._status = False  # a status line is on screen (terminal only)
        self._phase: str | None = None
        self._phase_t = 0.0  # when it began, seconds into the run
        self._phase_shown = True
        self._any = False
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        if enabled:
            self._timer = threading.Timer(after, self._show_pending)
            self._timer.daemon = True
            self._timer.start()

    def _elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def _clear_status(self) -> None:
        if self._status:
            print("\r\033[K", end="", file=self.stream, flush=True)
            self._status = False

    def _print_phase(self) -> None:
        self._clear_status()
        print(f"[{self._phase_t:6.1f} s] {self._phase}", file=self.stream, flush=True)
        self._phase_shown = self._any = True

    def _show_pending(self) -> None:
        with self._lock:
            if self.enabled and not self._phase_shown:
                self._print_phase()

    def phase(self, text: str) -> None:
        """A new phase of the run begins: one line (once the run is past `after` seconds)."""
        if not self.enabled:
            return
        with self._lock:
            self._phase, self._phase_t, self._phase_shown = text, self._elapsed(), False
            self._last = self.t0 + self._phase_t
            if self._phase_t >= self.after:
                self._print_phase()

    def update(self, text: str) -> None:
        """Where the current phase is (e.g. `query 3/10`)."""
        if not self.enabled:
            return
        with self._lock:
            now = time.perf_counter()
            if now - self.t0 < self.after or (not self.tty and now - self._last < self.every):
                return
            if not self._phase_shown and self._phase is not None:
                self._print_phase()
            self._last = now
            self._any = True
            if self.tty:
                print(f"\r\033[K{text}", end="", file=self.stream, flush=True)
                self._status = True
            else:
                print(text, file=self.stream, flush=True)

    def done(self) -> None:
        """The run is over: stop the timer, clear the status line, say how long it took."""
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            self._clear_status()
            if self.enabled and self._any:
                print(f"[{self._elapsed():6.1f} s] done", file=self.stream, flush=True)
            self.enabled = False


# --------------------------------------------------------------------------- inputs, plaintext


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


class Plaintext:
    """The model in onnxruntime on one thread (the floor a secure run is compared with)."""

    def __init__(self, path: Path) -> None:
        from mpcc.zoo.reference import session

        self.sess = session(path)
        self.input = self.sess.get_inputs()[0]
        self.path = path

    def accepts(self, shape: Sequence[int]) -> bool:
        dims = self.input.shape
        return len(dims) == len(shape) and all(
            not isinstance(d, int) or d == s for d, s in zip(dims, shape, strict=True)
        )

    def time(self, x: np.ndarray, runs: int, min_seconds: float = 0.2) -> dict[str, Any]:
        """Warm once, then at least `runs` runs and `min_seconds` (at most 2000 runs)."""
        feed = {self.input.name: np.ascontiguousarray(x, dtype=np.float32)}
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


# --------------------------------------------------------------------------- per-instruction clock


class ThreadStat:
    """(CPU seconds, seconds runnable but not running) of the calling thread.

    The second comes from Linux's per-thread schedstat (an open file per thread, about a
    microsecond per read; NaN elsewhere). Its CPU figure is only updated at scheduler events,
    so the CPU time is the thread clock's."""

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}

    def __call__(self) -> tuple[float, float]:
        tid = threading.get_native_id()
        fd = self._fds.get(tid)
        if fd is None:
            try:
                fd = os.open(f"/proc/self/task/{tid}/schedstat", os.O_RDONLY)
            except OSError:
                fd = -1
            self._fds[tid] = fd
        cpu = time.thread_time()
        if fd < 0:
            return cpu, math.nan
        return cpu, int(os.pread(fd, 128, 0).split()[1]) / 1e9

    def close(self) -> None:
        for fd in self._fds.values():
            if fd >= 0:
                os.close(fd)
        self._fds.clear()


class InstrClock(list):
    """Stands in for a party's `prog.instrs` to time each step of the executor's loop.

    When armed, the next iteration over it (the executor's instruction loop) records a mark
    before each instruction and one after the last: wall time, bytes sent, rounds, seconds
    blocked in receive, the thread's CPU time and its time runnable but not running.
    Installed only when profiling; the executor itself is unchanged.
    """

    def __init__(self, instrs: Sequence[Any], channel: Any) -> None:
        super().__init__(instrs)
        self._ch = channel
        self._armed = False
        self.stat = ThreadStat()
        self.wait_s = 0.0
        self.runs: list[np.ndarray] = []  # per query: [len(instrs), 6] deltas of the marks
        # per query, the party's whole `run`: (wall, CPU, runnable not running, in receive)
        self.calls: list[tuple[float, float, float, float]] = []
        inner_get = channel._get

        def timed_get() -> Any:
            t0 = time.perf_counter()
            try:
                return inner_get()
            finally:
                self.wait_s += time.perf_counter() - t0

        channel._get = timed_get

    def arm(self) -> None:
        self._armed = True

    def __iter__(self) -> Iterator[Any]:
        if not self._armed:
            return super().__iter__()
        self._armed = False
        return self._timed()

    def _timed(self) -> Iterator[Any]:
        tr, pc, stat = self._ch.traffic, time.perf_counter, self.stat
        marks = []
        for ins in list.__iter__(self):
            marks.append((pc(), tr.bytes_sent, tr.rounds, self.wait_s, *stat()))
            yield ins
        marks.append((pc(), tr.bytes_sent, tr.rounds, self.wait_s, *stat()))
        self.runs.append(np.diff(np.asarray(marks, dtype=np.float64), axis=0))


def install_clocks(cluster: Any) -> list[InstrClock]:
    """Give both parties of a started LocalCluster an InstrClock (profiling only)."""
    clocks = []
    for party in cluster.parties:
        clock = InstrClock(party.prog.instrs, party.ch)
        party.prog = dataclasses.replace(party.prog, instrs=clock)
        inner_run = party.run

        def run(query: int, inputs: dict, inner_run=inner_run, clock=clock) -> Any:
            clock.arm()
            t0, (cpu0, runq0), wait0 = time.perf_counter(), clock.stat(), clock.wait_s
            try:
                return inner_run(query, inputs)
            finally:
                cpu1, runq1 = clock.stat()
                wall = time.perf_counter() - t0
                clock.calls.append((wall, cpu1 - cpu0, runq1 - runq0, clock.wait_s - wait0))

        party.run = run
        clocks.append(clock)
    return clocks


def layer_rows(
    prog: Any, clocks: list[InstrClock], link: Link | None, online: Sequence[float]
) -> dict[str, Any]:
    """Per instruction: median time/wait of each party and measured vs predicted cost."""
    from mpcc.compiler.costmodel import estimate

    n = len(prog.instrs)
    for c in clocks:
        if not c.runs or any(r.shape[0] != n for r in c.runs):
            raise MpccError("per-instruction timing failed: the executor's loop was not seen")
    med = [np.median(np.stack(c.runs), axis=0) for c in clocks]  # [n, 4] per party
    last = [c.runs[-1] for c in clocks]
    per = estimate(prog).per_instr
    rows = []
    for i, ins in enumerate(prog.instrs):
        cost = per[i]
        t = [float(m[i, 0]) for m in med]
        row = {
            "index": i,
            "op": ins.op.name,
            "shape": list(prog.value(ins.out).shape),
            "time_s": t,  # [P0, P1], median over the timed queries
            "wait_s": [float(m[i, 3]) for m in med],
            "cpu_s": [float(m[i, 4]) for m in med],  # the party thread's CPU time
            "runnable_s": [float(m[i, 5]) for m in med],  # runnable, not running (NaN: unknown)
            "sent": [int(r[i, 1]) for r in last],
            "rounds": int(last[0][i, 2]),
            "predicted": cost.asdict(),
        }
        if cost.macs and t[0] > 0:
            row["gmacs_per_s"] = cost.macs / t[0] / 1e9
        if link is not None:
            row["projected_s"] = link.project(t[0], row["rounds"], max(row["sent"]))
        rows.append(row)
    # Per query: P0's loop, P0's whole `run` beyond it, and the online time beyond the slower
    # party's `run` (LocalCluster's thread dispatch and collection); then medians.
    loops = np.array([r[:, 0].sum() for r in clocks[0].runs])
    calls = np.array([c.calls for c in clocks])  # [party, query, (wall, cpu, runq, wait)]
    wall = calls[:, :, 0]
    return {
        "clock": "each party's own; times include waiting for the peer",
        "instrs": rows,
        "loop_s": float(np.median(loops)),
        "closing_s": float(np.median(wall[0] - loops)),
        "handoff_s": float(np.median(np.asarray(online) - wall.max(axis=0))),
        # Where each party's `run` went (medians, [P0, P1]); NaN where the OS does not say.
        # wall = on a core + runnable but not running + asleep (on the peer or the GIL);
        # in_receive overlaps the others (a woken receiver may wait for a core or the GIL).
        "run": {
            "wall_s": np.median(wall, axis=1).tolist(),
            "cpu_s": np.median(calls[:, :, 1], axis=1).tolist(),
            "runnable_s": np.median(calls[:, :, 2], axis=1).tolist(),
            "asleep_s": np.median(wall - calls[:, :, 1] - calls[:, :, 2], axis=1).tolist(),
            "in_receive_s": np.median(calls[:, :, 3], axis=1).tolist(),
        },
    }


# --------------------------------------------------------------------------- the benchmark


def _sources(model: Path, reference: Path | None) -> tuple[str, Path | None]:
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


SETTINGS = {
    False: "P0, P1 and the dealer in this process: two party threads, in-process queues",
    True: "P0, P1 and the dealer as three local processes over mutually authenticated TLS 1.3 "
    "(127.0.0.1), queried by a client in this process",
}


def bench(
    model: str | Path,
    batches: Sequence[int] | None = None,
    repeat: int | Sequence[int] = 10,
    *,
    warmup: int = 1,
    layers: bool = False,
    link: Link | None = None,
    reference: str | Path | None = None,
    plaintext: bool = True,
    progress: bool = False,
    processes: bool = False,
) -> dict[str, Any]:
    """Benchmark an .onnx model (compiled at each batch size) or a plan file; JSON-able dict.

    `processes`: the parties run as local processes over TLS (`mpcc.serving`) instead of
    threads of this process; the report adds the bytes on the wire and the TLS handshake."""
    from mpcc.compiler import planfile
    from mpcc.compiler.pipeline import compile_onnx

    model = Path(model)
    kind, ref_path = _sources(model, Path(reference) if reference else None)
    plan = None
    if kind == "plan":
        plan = planfile.load(model)
        if not plan[1]:
            raise MpccError(f"{model} holds no weights: a local benchmark needs the owner's plan")
        batches = list(batches or [plan[0].batch])
        if any(b != plan[0].batch for b in batches):
            raise MpccError(
                f"{model} is compiled for batch {plan[0].batch}; to bench batch "
                f"{','.join(map(str, batches))}, bench the .onnx model (compiled per batch)"
            )
    batches = list(batches or [1])
    repeats = [repeat] * len(batches) if isinstance(repeat, int) else list(repeat)
    if len(repeats) == 1:
        repeats = repeats * len(batches)
    if len(repeats) != len(batches) or any(r < 1 for r in repeats):
        raise MpccError("--repeat wants one positive count, or one per batch size")
    if warmup < 0:
        raise MpccError("--warmup must be >= 0")
    if processes and layers:
        raise MpccError("--layers times the party threads of this process: not with --processes")
    floor = Plaintext(ref_path) if plaintext and ref_path is not None else None
    notes = []
    if plaintext and floor is None:
        notes.append("no ONNX model for the plaintext floor (pass --reference MODEL.onnx)")

    prog_ = Progress(progress)
    results = []
    try:
        for b, reps in zip(batches, repeats, strict=True):
            where = f"mpcc bench {model.name} batch {b}"
            compile_s = None
            if plan is not None:
                prog, weights = plan
            else:
                prog_.phase(f"{where}: compiling")
                t0 = time.perf_counter()
                prog, weights = compile_onnx(model, onnx_input_shape(model, b))
                compile_s = time.perf_counter() - t0
            sched = Schedule(
                reps,
                warmup,
                layers,
                phase=lambda text, where=where: prog_.phase(f"{where}: {text}"),
                progress=lambda text, where=where: prog_.update(f"{where}: {text}"),
            )
            m = (_measure_processes if processes else _measure_threads)(prog, weights, sched)
            res = _result(prog, reps, warmup, m, link)
            res["compile_s"] = compile_s
            if floor is not None:
                shape = prog.value(prog.inputs[0][1]).shape
                if floor.accepts(shape):
                    prog_.phase(f"{where}: plaintext floor (onnxruntime)")
                    res["plaintext_s"] = floor.time(sample_inputs(shape, 0), reps)
                    res["ratio"] = res["online_s"]["median"] / res["plaintext_s"]["median"]
                else:
                    notes.append(
                        f"{ref_path} does not take shape {list(shape)}: no plaintext floor"
                    )
            results.append(res)
    finally:
        prog_.done()
    return {
        "schema": SCHEMA,
        "model": str(model),
        "name": results[0]["plan"]["name"] if results else model.stem,
        "reference": str(ref_path) if ref_path else None,
        "machine": machine_info(),
        "mode": "processes" if processes else "threads",
        "setting": SETTINGS[processes],
        "network": None if link is None else {**link.asdict(), "note": PROJECTION_NOTE},
        "notes": notes,
        "results": results,
    }


def _count(n: int) -> str:
    return f"{n} query" if n == 1 else f"{n} queries"


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How one batch size is measured: a first query, `warmup` untimed ones, `repeat` timed."""

    repeat: int
    warmup: int
    layers: bool
    phase: Callable[[str], None]  # a new phase begins (one progress line)
    progress: Callable[[str], None]  # where the phase is

    def run(
        self,
        query: Callable[[int], Any],
        *,
        first: Callable[[int], Any] | None = None,
        timing: Callable[[], None] | None = None,
    ) -> tuple[Any, list]:
        """`query(i)` on inputs number i: the first query's result (from `first`, if given)
        and the timed ones'; `timing()` is called between the warm-up and the timed queries."""
        self.phase("first query")
        first_out = (first or query)(0)
        if self.warmup:
            self.phase(f"warm-up ({_count(self.warmup)})")
        for w in range(self.warmup):
            self.progress(f"warm-up {w + 1}/{self.warmup}")
            query(1 + w)
        if timing is not None:
            timing()
        self.phase(f"timing {_count(self.repeat)}")
        timed = []
        for i in range(self.repeat):
            self.progress(f"query {i + 1}/{self.repeat}")
            timed.append(query(1 + self.warmup + i))
        return first_out, timed


def _measure_threads(prog: Any, weights: dict[str, np.ndarray], sched: Schedule) -> dict[str, Any]:
    """The plan on a LocalCluster: setup, then the schedule's queries."""
    from mpcc.runtime.cluster import LocalCluster

    shape = prog.value(prog.inputs[0][1]).shape
    sched.phase("starting the session (sharing the weights, opening F = W - B)")
    t0 = time.perf_counter()
    cluster = LocalCluster(prog, weights)
    with cluster:
        setup_s = time.perf_counter() - t0
        dealer_times: list[float] = []
        inner_deal = cluster.dealer.deal

        def deal(query: int) -> Any:
            t = time.perf_counter()
            try:
                return inner_deal(query)
            finally:
                dealer_times.append(time.perf_counter() - t)

        cluster.dealer.deal = deal

        def query(index: int) -> tuple[float, float, Any]:
            """(offline, end to end, stats): the material made just before the query."""
            x = sample_inputs(shape, index)
            offline = cluster.preprocess(1)
            t = time.perf_counter()
            cluster.run_batch(x)
            return offline, time.perf_counter() - t, cluster.stats

        def first_query(index: int) -> tuple[Any, tuple[int, int], tuple[int, int]]:
            """In a fresh process this loads (or compiles) the numba kernels: counted."""
            before = numba_counts()
            return query(index), before, numba_counts()

        clocks: list[InstrClock] = []

        def timing() -> None:
            dealer_times.clear()
            clocks.extend(install_clocks(cluster) if sched.layers else [])

        try:
            first_out, timed = sched.run(query, first=first_query, timing=timing)
        finally:
            for c in clocks:
                c.stat.close()
    (f_off, f_e2e, f_stats), (hits0, misses0), (hits1, misses1) = first_out
    first = {
        "online_s": f_stats.online_s,
        "offline_s": f_stats.offline_s,
        "total_s": f_off + f_e2e,
        "cold": hits1 + misses1 > hits0 + misses0,  # it loaded or compiled kernels
        "numba_cache_loads": hits1 - hits0,
        "numba_compiles": misses1 - misses0,
    }
    return {
        "setup_s": setup_s,
        "first_query": first,
        "online": [st.online_s for _, _, st in timed],
        "offline": [off for off, _, _ in timed],
        "dealer": dealer_times,
        "e2e": [e2e for _, e2e, _ in timed],
        "traffic": [(st.sent, st.rounds, st.dealer_bytes, st.client_bytes) for _, _, st in timed],
        "clocks": clocks,
        "tls": None,
    }


def _measure_processes(
    prog: Any, weights: dict[str, np.ndarray], sched: Schedule
) -> dict[str, Any]:
    """The plan served by three local party processes over TLS, queried one batch at a time
    by a client: setup, the schedule's queries, then a TLS handshake."""
    from mpcc.serving.local import serve_locally
    from mpcc.serving.tls import client_context, dial

    shape = prog.value(prog.inputs[0][1]).shape
    sched.phase("starting three party processes (TLS), deploying, starting the session")
    t0 = time.perf_counter()
    with serve_locally(prog, weights) as client:
        setup_s = time.perf_counter() - t0

        def query(index: int) -> Any:
            client.predict(sample_inputs(shape, index))
            (req,) = client.stats.requests
            return req

        # The parties make each query's material ahead (their stock): its time is `offline`.
        r, reqs = sched.run(query)
        # One TLS 1.3 handshake with mutual authentication, as every link of the cluster makes
        # once per connection (P0-P1 and dealer-P1 once per session): both directions' bytes.
        handshakes = {}
        ctx = client_context(client.cfg, "client")
        for role in ("p0", "p1"):
            ch, _ = dial(client.cfg, ctx, role, me="client", link="client")
            handshakes[role] = ch.wire.handshake
            ch.close("handshake measured")
    first = {
        "online_s": r.online_s,
        "offline_s": r.offline_s,
        "total_s": r.latency_s,
        "cold": None,  # the kernels load in the party processes: not seen from here
        "numba_cache_loads": None,
        "numba_compiles": None,
    }
    last = reqs[-1]
    # P1 counts a bundle's wire bytes as they are read: bundles read together (the stock made
    # at the session's start) are all counted on the first. The median query is one read alone.
    dealer_wire = sorted(q.dealer_wire for q in reqs)[(len(reqs) - 1) // 2]
    return {
        "setup_s": setup_s,
        "first_query": first,
        "online": [q.online_s for q in reqs],
        "offline": [q.offline_s for q in reqs],
        "dealer": None,
        "e2e": [q.latency_s for q in reqs],
        "traffic": [(q.sent, q.rounds, q.dealer_bytes, q.client_bytes) for q in reqs],
        "clocks": [],
        "tls": {
            "wire_sent": list(last.wire_sent),
            "overhead": [w - p for w, p in zip(last.wire_sent, last.sent, strict=True)],
            "dealer_wire": dealer_wire,
            "dealer_overhead": dealer_wire - last.dealer_bytes,
            "handshake": handshakes,
            "queued_s": summarize([q.queued_s for q in reqs]),
        },
    }


def _result(
    prog: Any, repeat: int, warmup: int, m: dict[str, Any], link: Link | None
) -> dict[str, Any]:
    """One batch size's report from a measurement, next to the compiler's cost model."""
    from mpcc.compiler.costmodel import estimate
    from mpcc.compiler.planfile import plan_hash

    predicted = estimate(prog)
    if len({t[:3] for t in m["traffic"]}) != 1:  # pragma: no cover - the plan fixes them
        raise MpccError(f"traffic differed between queries of one plan: {m['traffic']}")
    sent, rounds, dealer_bytes, client_bytes = m["traffic"][-1]
    sent = tuple(sent)
    pt = predicted.total
    res: dict[str, Any] = {
        "batch": prog.batch,
        "plan": {"name": prog.name, "sha256": plan_hash(prog), "instructions": len(prog.instrs)},
        "repeat": repeat,
        "warmup": warmup,
        "setup_s": m["setup_s"],
        "first_query": m["first_query"],
        "online_s": summarize(m["online"]),
        "offline_s": summarize(m["offline"]),
        "dealer_s": summarize(m["dealer"]) if m["dealer"] is not None else None,
        "e2e_s": summarize(m["e2e"]),
        "sent_bytes": list(sent),
        "rounds": rounds,
        "dealer_bytes": dealer_bytes,
        "client_bytes": client_bytes,
        "predicted": {**pt.asdict(), "client_sent_per_party": predicted.client_sent},
        "matches_cost_model": (
            sent == (pt.sent, pt.sent) and rounds == pt.rounds and dealer_bytes == pt.dealer
        ),
        "tls": m["tls"],
        "plaintext_s": None,
        "ratio": None,
        "projection": None,
        "layers": None,
    }
    if link is not None:
        med = res["online_s"]["median"]
        res["projection"] = {
            **link.asdict(),
            "online_s": link.project(med, rounds, max(sent)),
            "rounds_s": rounds * link.rtt_s,
            "transfer_s": link.transfer_s(max(sent)),
            "dealer_transfer_s": link.transfer_s(dealer_bytes),
        }
    if m["clocks"]:
        res["layers"] = layer_rows(prog, m["clocks"], link, m["online"])
    return res


# --------------------------------------------------------------------------- text report


def format_text(report: dict[str, Any]) -> str:
    """The human-readable report."""
    m = report["machine"]
    lines = [
        f"mpcc bench {report['name']} ({report['model']}): {report['setting']}",
        f"machine: {m['cpu']}, {m['usable_cores']} cores; Python {m['python']}, numpy "
        f"{m['numpy']}, numba {m['numba']}, onnxruntime {m['onnxruntime']}; {m['date']}"
        + (f", load {m['load_avg_1m']:.2f}" if m["load_avg_1m"] is not None else ""),
        "",
        f"{'batch':>5} {'online med':>10} {'p90':>9} {'offline/q':>9} {'dealer/q':>9} "
        f"{'sent/party':>10} {'dealer':>9} {'rounds':>6} {'plaintext':>9} {'ratio':>7}",
    ]
    for r in report["results"]:
        pt = r["plaintext_s"]
        ratio = f"{r['ratio']:.0f}x" if r["ratio"] else "-"
        lines.append(
            f"{r['batch']:>5} {fmt_s(r['online_s']['median']):>10} "
            f"{fmt_s(r['online_s']['p90']):>9} "
            f"{fmt_s(r['offline_s']['median']):>9} "
            f"{fmt_s(r['dealer_s']['median'] if r['dealer_s'] else None):>9} "
            f"{fmt_bytes(max(r['sent_bytes'])):>10} {fmt_bytes(r['dealer_bytes']):>9} "
            f"{r['rounds']:>6} {fmt_s(pt['median'] if pt else None):>9} "
            f"{ratio:>7}"
        )
    lines.append("")
    for r in report["results"]:
        if r["tls"] is not None:
            lines.append(_first_query_served(r))
            continue
        f = r["first_query"]
        what = (
            f"cold start (first query: numba loaded {f['numba_cache_loads']} kernel signatures "
            f"from its cache, compiled {f['numba_compiles']})"
            if f["cold"]
            else "first query of a new session (kernels already in memory)"
        )
        lines.append(
            f"batch {r['batch']}: {what}: {fmt_s(f['total_s'])} = offline "
            f"{fmt_s(f['offline_s'])} + online {fmt_s(f['online_s'])}, vs warm "
            f"{fmt_s(r['offline_s']['median'])} + {fmt_s(r['online_s']['median'])}"
            + (f"; compile {fmt_s(r['compile_s'])}" if r["compile_s"] is not None else "")
            + f"; session setup {fmt_s(r['setup_s'])}"
        )
    ok = all(r["matches_cost_model"] for r in report["results"])
    lines.append(
        "bytes, rounds and dealer bytes equal the compiler's cost model"
        if ok
        else "WARNING: measured traffic differs from the compiler's cost model"
    )
    lines += [f"note: {n}" for n in report["notes"]]
    if any(r["tls"] for r in report["results"]):
        lines += ["", *format_tls(report["results"])]
    if report["network"]:
        net = report["network"]
        lines += ["", f"on a {net['rtt_ms']:g} ms RTT, {net['gbps']:g} Gbit/s link: {net['note']}"]
        for r in report["results"]:
            p = r["projection"]
            lines.append(
                f"  batch {r['batch']}: {fmt_s(p['online_s'])} online = "
                f"{fmt_s(r['online_s']['median'])} measured + {r['rounds']} x "
                f"{net['rtt_ms']:g} ms + {fmt_bytes(max(r['sent_bytes']))} / link "
                f"({fmt_s(p['transfer_s'])}); dealer material {fmt_s(p['dealer_transfer_s'])}"
            )
    for r in report["results"]:
        if r["layers"]:
            lines += ["", *format_layers(r, report["network"] is not None)]
    return "\n".join(lines)


def _first_query_served(r: dict[str, Any]) -> str:
    f = r["first_query"]
    return (
        f"batch {r['batch']}: first query of a new session (the parties load their kernels): "
        f"{fmt_s(f['total_s'])} at the client, online {fmt_s(f['online_s'])}, vs warm "
        f"{fmt_s(r['e2e_s']['median'])}, online {fmt_s(r['online_s']['median'])}"
        + (f"; compile {fmt_s(r['compile_s'])}" if r["compile_s"] is not None else "")
        + f"; starting the processes, deploying and the session {fmt_s(r['setup_s'])}"
    )


def format_tls(results: list[dict[str, Any]]) -> list[str]:
    """Process mode: the latency's online/offline split and the bytes on the wire."""
    lines = [
        "per query, at the client: latency = online + the rest (sharing the input, sending "
        "shares and results over TLS, waiting at P0); offline = material made ahead by the "
        "dealer and the parties, off the latency",
    ]
    for r in results:
        t, lat, online = r["tls"], r["e2e_s"]["median"], r["online_s"]["median"]
        lines.append(
            f"  batch {r['batch']}: latency {fmt_s(lat)} (median; p90 {fmt_s(r['e2e_s']['p90'])}) "
            f"= online {fmt_s(online)} ({online / lat:.0%}) + {fmt_s(lat - online)} "
            f"(of it queued at P0 {fmt_s(t['queued_s']['median'])}); offline "
            f"{fmt_s(r['offline_s']['median'])} ahead"
        )
    lines.append(
        "bytes on the wire per query: the transport's payload count (as in-process) + mpcc "
        "framing and TLS 1.3 records"
    )
    for r in results:
        t = r["tls"]
        links = [
            ("P0 -> P1", r["sent_bytes"][0], t["wire_sent"][0]),
            ("P1 -> P0", r["sent_bytes"][1], t["wire_sent"][1]),
            ("dealer -> P1", r["dealer_bytes"], t["dealer_wire"]),
        ]
        lines.append(
            f"  batch {r['batch']}: "
            + "; ".join(
                f"{name} {fmt_bytes(p)} + {fmt_bytes(w - p)}"
                + (f" ({(w - p) / p:.1%})" if p else "")
                + f" = {fmt_bytes(w)}"
                for name, p, w in links
            )
        )
    hs = results[-1]["tls"]["handshake"]
    lines.append(
        "TLS 1.3 handshake with mutual authentication, once per connection (both directions): "
        + ", ".join(f"client-{role.upper()} {fmt_bytes(n)}" for role, n in hs.items())
    )
    return lines


def format_layers(r: dict[str, Any], projected: bool = False) -> list[str]:
    """The per-instruction table of one batch result."""
    lay = r["layers"]
    total = sum(row["time_s"][0] for row in lay["instrs"]) or 1.0
    head = (
        f"  {'#':>3} {'op':<10} {'shape':<16} {'ms':>7} {'%':>4} {'cpu':>7} {'queued':>7} "
        f"{'recv':>7} "
        f"{'rounds':>7} {'sent/party':>19} {'dealer':>9} {'MACs':>11} {'GMAC/s':>6}"
    )
    lines = [
        f"batch {r['batch']}, per instruction (P0's clock, median of {r['repeat']} queries; "
        "cpu = on a core, queued = runnable but not running, recv = inside receive; "
        "rounds and bytes measured/predicted)",
        head + (f" {'projected':>9}" if projected else ""),
    ]
    for row in lay["instrs"]:
        p = row["predicted"]
        t = row["time_s"][0]
        rate = f"{row['gmacs_per_s']:.2f}" if "gmacs_per_s" in row else "-"
        mark = "" if (row["rounds"], max(row["sent"])) == (p["rounds"], p["sent"]) else " !"
        sent = f"{fmt_bytes(max(row['sent']))}/{fmt_bytes(p['sent'])}" if p["sent"] else "-"
        line = (
            f"  {row['index']:>3} {row['op']:<10} {'x'.join(map(str, row['shape'])):<16} "
            f"{t * 1e3:>7.3f} {100 * t / total:>4.0f} {row['cpu_s'][0] * 1e3:>7.3f} "
            f"{row['runnable_s'][0] * 1e3:>7.3f} {row['wait_s'][0] * 1e3:>7.3f} "
            f"{row['rounds']:>3}/{p['rounds']:<3} {sent:>19} "
            f"{fmt_bytes(p['dealer']) if p['dealer'] else '-':>9} "
            f"{p['macs'] or '-':>11} "
            f"{rate:>6}"
        )
        if projected:
            line += f" {fmt_s(row['projected_s']):>9}"
        lines.append(line + mark)
    lines.append(
        f"  of {fmt_s(r['online_s']['median'])} online (medians): instruction loop "
        f"{fmt_s(lay['loop_s'])}, closing the query {fmt_s(lay['closing_s'])}, "
        f"LocalCluster's thread hand-off {fmt_s(lay['handoff_s'])}"
    )
    run = lay["run"]

    def pair(key: str) -> str:
        return " / ".join(fmt_s(v) if math.isfinite(v) else "?" for v in run[key])

    lines.append(
        f"  P0 / P1 per query: {pair('wall_s')} = on a core {pair('cpu_s')} + runnable, not "
        f"running {pair('runnable_s')} + asleep (on the peer or the GIL) {pair('asleep_s')}; "
        f"inside receive {pair('in_receive_s')}"
    )
    return lines


# --------------------------------------------------------------------------- command line


def add_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register `mpcc bench` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "bench",
        help="benchmark secure inference with three local parties (vs plaintext onnxruntime)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("model", help="ONNX model (compiled at each batch size) or .mpcc plan file")
    p.add_argument("--batch", default=None, help="batch sizes, e.g. 1,64 (default 1 / the plan's)")
    p.add_argument("--repeat", default="10", help="timed queries per batch size, or one per batch")
    p.add_argument("--warmup", type=int, default=1, help="untimed queries after the first one")
    p.add_argument("--json", metavar="OUT", help="write the full results as JSON ('-': stdout)")
    p.add_argument("--layers", action="store_true", help="per-instruction time and bytes")
    p.add_argument(
        "--network",
        metavar="RTT_ms,Gbps",
        help="also project the latency on such a link (a projection, not a measurement)",
    )
    p.add_argument("--reference", metavar="ONNX", help="plaintext model for a plan file")
    p.add_argument("--no-plaintext", action="store_true", help="skip the onnxruntime floor")
    p.add_argument(
        "--processes",
        action="store_true",
        help="run the parties as local processes over TLS (adds bytes on the wire, handshake)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no report, no progress")
    p.set_defaults(fn=cmd_bench)
    return p


def cmd_bench(args: argparse.Namespace) -> int:
    report = bench(
        args.model,
        parse_ints(args.batch, "--batch") if args.batch else None,
        parse_ints(args.repeat, "--repeat"),
        warmup=args.warmup,
        layers=args.layers,
        link=Link.parse(args.network) if args.network else None,
        reference=args.reference,
        plaintext=not args.no_plaintext,
        progress=not args.quiet,
        processes=args.processes,
    )
    if args.json == "-":
        print(json.dumps(report, indent=1))
        return 0
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        except OSError as e:
            raise MpccError(f"cannot write {args.json}: {e}") from None
    if not args.quiet:
        print(format_text(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m mpcc.bench ...`: the same as `mpcc bench ...`."""
    from mpcc.cli import main as cli_main

    return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
