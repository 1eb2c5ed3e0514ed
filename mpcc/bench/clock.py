"""Per-instruction clocks of the compute parties (`--layers`), on the runtime's observer hooks.

A `PartyClock` watches one party of a started `LocalCluster`. As an `ExecutionObserver` of
the party's executor it takes a *mark* when a query and each of its instructions start and
end; as a `ChannelObserver` of the party's channel it adds up the seconds spent inside
receive. A mark holds the columns of `MARK`: the wall clock, the channel's bytes sent and
rounds so far, the seconds in receive so far, the thread's CPU time and its time runnable but
not running. Nothing of the executor or the channel is replaced: `attach` appends the clock to
their `observers`, `detach` takes it off again.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mpcc.bench.network import Link
from mpcc.errors import MpccError
from mpcc.runtime.executor import ExecutionObserver
from mpcc.runtime.transport import Channel, ChannelObserver

if TYPE_CHECKING:
    from mpcc.compiler.costs import Cost
    from mpcc.compiler.ir import Instr, Program
    from mpcc.runtime.executor import PartyExecutor

MARK = ("wall", "sent", "rounds", "recv", "cpu", "runnable")  # the columns of a mark
WALL, SENT, ROUNDS, RECV, CPU, RUNNABLE = range(len(MARK))


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


class PartyClock(ExecutionObserver, ChannelObserver):
    """One compute party's clock: per query, each instruction's and the whole query's cost
    (end mark - start mark, the columns of `MARK`)."""

    def __init__(self, party: PartyExecutor) -> None:
        self._party = party
        self._stat = ThreadStat()
        self._recv_s = 0.0
        self._marks: list[tuple[float, ...]] = []
        self.instrs: list[np.ndarray] = []  # per query: [instructions, MARK]
        self.loops: list[float] = []  # per query: first instruction's start to last one's end
        self.queries: list[np.ndarray] = []  # per query: [MARK], query start to query end

    def attach(self) -> PartyClock:
        """Start observing the party's executor and channel."""
        self._party.observers.append(self)
        self._party.ch.observers.append(self)
        return self

    def detach(self) -> None:
        """Stop observing; the measurements stay."""
        for observers in (self._party.observers, self._party.ch.observers):
            if self in observers:
                observers.remove(self)
        self._stat.close()

    def _mark(self) -> tuple[float, ...]:
        traffic = self._party.ch.traffic
        return (
            time.perf_counter(),
            traffic.bytes_sent,
            traffic.rounds,
            self._recv_s,
            *self._stat(),
        )

    # -- ExecutionObserver: called in the party's thread ------------------------------------
    def query_start(self, party: int, query: int) -> None:
        self._marks = [self._mark()]

    def instr_start(self, party: int, index: int, ins: Instr) -> None:
        self._marks.append(self._mark())

    def instr_end(self, party: int, index: int, ins: Instr) -> None:
        self._marks.append(self._mark())

    def query_end(self, party: int, query: int) -> None:
        self._marks.append(self._mark())
        m = np.asarray(self._marks, dtype=np.float64)  # query start, (start, end)*, query end
        spans = m[1:-1].reshape(-1, 2, len(MARK))
        self.instrs.append(spans[:, 1] - spans[:, 0])
        self.loops.append(float(spans[-1, 1, WALL] - spans[0, 0, WALL]) if len(spans) else 0.0)
        self.queries.append(m[-1] - m[0])

    # -- ChannelObserver ----------------------------------------------------------------------
    def received(self, channel: Channel, arrays: list[np.ndarray], waited_s: float) -> None:
        self._recv_s += waited_s


def attach_clocks(parties: Sequence[PartyExecutor]) -> list[PartyClock]:
    """A clock on each party of a started LocalCluster (`cluster.parties`)."""
    return [PartyClock(p).attach() for p in parties]


def layer_rows(
    prog: Program,
    per_instr: Sequence[Cost],
    clocks: Sequence[PartyClock],
    link: Link | None,
    online: Sequence[float],
) -> dict[str, Any]:
    """Per instruction: each party's median time, CPU, runnable and receive time, and the
    traffic measured next to the compiler's `per_instr` cost; then where each party's whole
    query went."""
    n = len(prog.instrs)
    if any(not c.instrs or any(len(r) != n for r in c.instrs) for c in clocks):
        raise MpccError("per-instruction timing failed: the executor's instructions were not seen")
    runs = np.array([c.instrs for c in clocks])  # [party, query, instruction, MARK]
    med = np.median(runs, axis=1).transpose(1, 2, 0)  # [instruction, MARK, party]
    last = runs[:, -1].transpose(1, 2, 0)
    rows = []
    for i, ins in enumerate(prog.instrs):
        cost, t = per_instr[i], med[i, WALL].tolist()
        row = {
            "index": i,
            "op": ins.op.name,
            "shape": list(prog.value(ins.out).shape),
            "time_s": t,  # [P0, P1], median over the timed queries
            "wait_s": med[i, RECV].tolist(),  # inside receive
            "cpu_s": med[i, CPU].tolist(),  # the party thread's CPU time
            "runnable_s": med[i, RUNNABLE].tolist(),  # runnable, not running (NaN: unknown)
            "sent": last[i, SENT].astype(int).tolist(),
            "rounds": int(last[i, ROUNDS, 0]),
            "predicted": cost.asdict(),
        }
        if cost.macs and t[0] > 0:
            row["gmacs_per_s"] = cost.macs / t[0] / 1e9
        if link is not None:
            row["projected_s"] = link.project(t[0], row["rounds"], max(row["sent"]))
        rows.append(row)
    # Per query: P0's loop, P0's whole query beyond it, and the online time beyond the slower
    # party's query (LocalCluster's thread dispatch and collection); then medians.
    loops = np.array(clocks[0].loops)
    queries = np.array([c.queries for c in clocks])  # [party, query, MARK]
    wall, cpu, runnable = queries[..., WALL], queries[..., CPU], queries[..., RUNNABLE]
    return {
        "clock": "each party's own; times include waiting for the peer",
        "instrs": rows,
        "loop_s": float(np.median(loops)),
        "closing_s": float(np.median(wall[0] - loops)),
        "handoff_s": float(np.median(np.asarray(online) - wall.max(axis=0))),
        # Where each party's query went (medians, [P0, P1]); NaN where the OS does not say.
        # wall = on a core + runnable but not running + asleep (on the peer or the GIL);
        # in_receive overlaps the others (a woken receiver may wait for a core or the GIL).
        "run": {
            "wall_s": np.median(wall, axis=1).tolist(),
            "cpu_s": np.median(cpu, axis=1).tolist(),
            "runnable_s": np.median(runnable, axis=1).tolist(),
            "asleep_s": np.median(wall - cpu - runnable, axis=1).tolist(),
            "in_receive_s": np.median(queries[..., RECV], axis=1).tolist(),
        },
    }
