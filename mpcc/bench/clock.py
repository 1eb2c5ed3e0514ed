"""Per-instruction clocks of the compute parties (`--layers`)."""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from mpcc.bench.network import Link
from mpcc.errors import MpccError


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
