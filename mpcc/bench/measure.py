"""Running a plan's queries on a LocalCluster (threads) or on three local processes over TLS:
the schedule of one batch size's queries and what they measured."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from mpcc.bench.clock import PartyClock, attach_clocks
from mpcc.bench.inputs import plan_input, sample_inputs
from mpcc.bench.report import summarize
from mpcc.errors import MpccError
from mpcc.runtime.warmup import numba_counts

if TYPE_CHECKING:
    from mpcc.compiler.ir import Program
    from mpcc.runtime.cluster import QueryStats


@dataclasses.dataclass
class Measurement:
    """What one batch size's run measured, per timed query (the report summarizes it)."""

    setup_s: float  # starting the session (threads) or the processes, deploying (processes)
    first_query: dict[str, Any]  # the first query: online, offline, total, kernels loaded
    online: list[float]
    offline: list[float]
    dealer: list[float] | None  # the dealer alone; None when it runs ahead in its process
    e2e: list[float]  # end to end at the caller
    traffic: list[tuple[tuple[int, int], int, int, int]]  # sent, rounds, dealer, client bytes
    clocks: list[PartyClock] = dataclasses.field(default_factory=list)  # with --layers
    tls: dict[str, Any] | None = None  # bytes on the wire and the handshake (processes)


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


def measure_threads(prog: Program, weights: dict[str, np.ndarray], sched: Schedule) -> Measurement:
    """The plan on a LocalCluster: setup, then the schedule's queries; with `sched.layers`,
    the timed ones on each party's clock (`PartyClock`, an observer of its executor and
    channel)."""
    from mpcc.runtime.cluster import LocalCluster

    shape, depth = plan_input(prog)
    sched.phase("starting the session (sharing the weights, opening F = W - B)")
    t0 = time.perf_counter()
    with LocalCluster(prog, weights) as cluster:
        setup_s = time.perf_counter() - t0

        def query(index: int) -> tuple[float, float, QueryStats]:
            """(offline, end to end, stats): the material made just before the query."""
            x = sample_inputs(shape, index, depth)
            offline = cluster.preprocess(1)
            t = time.perf_counter()
            cluster.run_batch(x)
            return offline, time.perf_counter() - t, cluster.stats

        def first_query(index: int) -> tuple[Any, tuple[int, int], tuple[int, int]]:
            """In a fresh process this loads (or compiles) the numba kernels: counted."""
            before = numba_counts()
            return query(index), before, numba_counts()

        clocks: list[PartyClock] = []

        def timing() -> None:
            if sched.layers:
                clocks.extend(attach_clocks(cluster.parties))

        try:
            first_out, timed = sched.run(query, first=first_query, timing=timing)
        finally:
            for c in clocks:
                c.detach()
    (f_off, f_e2e, f_stats), (hits0, misses0), (hits1, misses1) = first_out
    first = {
        "online_s": f_stats.online_s,
        "offline_s": f_stats.offline_s,
        "total_s": f_off + f_e2e,
        "cold": hits1 + misses1 > hits0 + misses0,  # it loaded or compiled kernels
        "numba_cache_loads": hits1 - hits0,
        "numba_compiles": misses1 - misses0,
    }
    stats = [st for _, _, st in timed]
    return Measurement(
        setup_s=setup_s,
        first_query=first,
        online=[st.online_s for st in stats],
        offline=[off for off, _, _ in timed],
        dealer=[st.dealer_s for st in stats],
        e2e=[e2e for _, e2e, _ in timed],
        traffic=[(st.sent, st.rounds, st.dealer_bytes, st.client_bytes) for st in stats],
        clocks=clocks,
    )


def wait_for_stock(client: Any, timeout: float = 300.0) -> None:
    """Wait until P0 and P1 hold their full stock of material (`info`). After a query the
    parties, and the dealer, make material for a later one; a query started meanwhile would
    share the cores with that work, which a real deployment does in its idle time."""
    deadline = time.monotonic() + timeout
    while True:
        info = client.info()
        if all(
            m.get("material_held_bytes", 0) >= m.get("stock", 1) * m.get("query_material_bytes", 0)
            for m in info.values()
        ):
            return
        if time.monotonic() > deadline:
            raise MpccError(f"the parties did not refill their stock of material in {timeout:g} s")
        time.sleep(0.01)


def measure_processes(
    prog: Program, weights: dict[str, np.ndarray], sched: Schedule
) -> Measurement:
    """The plan served by three local party processes over TLS, queried one batch at a time
    by a client, each query once the parties hold their stock of material (`wait_for_stock`):
    setup, the schedule's queries, then a TLS handshake."""
    from mpcc.serving.links import dial
    from mpcc.serving.local import serve_locally
    from mpcc.serving.tlscontext import client_context

    shape, depth = plan_input(prog)
    sched.phase("starting three party processes (TLS), deploying, starting the session")
    t0 = time.perf_counter()
    with serve_locally(prog, weights) as client:
        setup_s = time.perf_counter() - t0

        def query(index: int) -> Any:
            if index:  # as in process, each query finds its material made, the cores idle
                wait_for_stock(client)
            client.predict(sample_inputs(shape, index, depth))
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
    return Measurement(
        setup_s=setup_s,
        first_query=first,
        online=[q.online_s for q in reqs],
        offline=[q.offline_s for q in reqs],
        dealer=None,
        e2e=[q.latency_s for q in reqs],
        traffic=[(q.sent, q.rounds, q.dealer_bytes, q.client_bytes) for q in reqs],
        tls={
            "wire_sent": list(last.wire_sent),
            "overhead": [w - p for w, p in zip(last.wire_sent, last.sent, strict=True)],
            "dealer_wire": dealer_wire,
            "dealer_overhead": dealer_wire - last.dealer_bytes,
            "handshake": handshakes,
            "queued_s": summarize([q.queued_s for q in reqs]),
        },
    )
