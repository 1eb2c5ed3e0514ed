"""LocalCluster: the dealer, P0 and P1 on this machine (threads, in-process transport).

with LocalCluster(plan) as cluster:          # a Plan, a plan file, or (program, weights)
    logits = cluster.predict(x)
    print(cluster.stats.summary())
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpcc.compiler.ir import Program
from mpcc.compiler.plan import Plan, as_plan
from mpcc.compiler.planfile import plan_hash
from mpcc.errors import MpccError, PartyError
from mpcc.runtime.cleartext import Samples, check_inputs, encode_input, in_batches
from mpcc.runtime.dealer import Dealer
from mpcc.runtime.executor import PartyExecutor
from mpcc.runtime.fixedpoint import decode
from mpcc.runtime.material import Bundle
from mpcc.runtime.owner import share_weights
from mpcc.runtime.prg import reconstruct, share
from mpcc.runtime.session import Session, new_seeds
from mpcc.runtime.transport import DEFAULT_TIMEOUT_S, local_link


@dataclass(frozen=True)
class QueryStats:
    """What the last query cost: time, traffic and rounds, as counted by the transport."""

    batch: int
    online_s: float
    offline_s: float  # the dealer making the material, then both parties expanding it
    sent: tuple[int, int]  # bytes P0 and P1 sent to each other online
    rounds: int
    dealer_bytes: int  # correction payload the dealer sent to P1 (P0: nothing)
    material_bytes: int  # preprocessing material P0 and P1 held for the query (both)
    client_bytes: int  # input shares the client sent to each compute party
    dealer_s: float  # of offline_s, the dealer alone (`Dealer.deal`)
    dealer_p0_bytes: int = 0  # FSS keys' common words the dealer also sent to P0

    def summary(self) -> str:
        return (
            f"last query: batch {self.batch}, online {self.online_s * 1e3:.1f} ms, "
            f"offline (dealer + expansion) {self.offline_s * 1e3:.1f} ms, "
            f"{self.rounds} rounds, sent P0 {self.sent[0] / 1e3:.1f} KB / "
            f"P1 {self.sent[1] / 1e3:.1f} KB, dealer {self.dealer_bytes / 1e3:.1f} KB"
        )


class LocalCluster:
    """Three parties in one process; the model owner's weights enter only as shares."""

    def __init__(
        self,
        plan: Plan | Program | str | Path,
        weights: dict[str, np.ndarray] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        """`plan` is a Plan, a plan file holding the weights, or a Program and its
        `weights`."""
        plan = as_plan(plan, weights)
        if not plan.has_weights:
            raise MpccError("LocalCluster needs the model owner's weights (none were given)")
        self.plan = plan
        self.prog = plan.program
        self._weights = plan.weights
        self.timeout = timeout
        self.stats: QueryStats | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._failed: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """New session: fresh seeds and id, weights shared, masked weights opened. The
        dealer draws its masks meanwhile, in a thread of its own (it needs nothing of the
        parties', as a separate dealer machine would not)."""
        self.session = Session.new(plan_hash(self.prog))
        seeds = new_seeds()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mpcc-dealer") as bg:
            dealer = bg.submit(Dealer, self.prog, self.session, seeds)
            try:
                self._start_parties(seeds)
            finally:
                self.dealer = dealer.result()

    def _start_parties(self, seeds: tuple[bytes, bytes]) -> None:
        t0 = time.perf_counter()
        shares = share_weights(self.prog, self._weights)
        t1 = time.perf_counter()
        ch0, ch1 = local_link("P0", "P1", self.timeout)
        # The dealer gives each bundle away as it sends it: no copy on this link.
        self._dealer_out, self._p1_from_dealer = local_link(
            "dealer", "P1", self.timeout, copy=False
        )
        self._dealer_out0, self._p0_from_dealer = local_link(
            "dealer", "P0", self.timeout, copy=False
        )
        # The shares are made for this session alone: opening turns them into F in place.
        self.parties = tuple(
            PartyExecutor(p, self.prog, self.session, seeds[p], shares[p], ch, consume_shares=True)
            for p, ch in ((0, ch0), (1, ch1))
        )
        del shares
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mpcc-party")
        self._next_query = 0
        self._prepared: list[int] = []
        # query -> (seconds, the dealer's seconds, dealer bytes, material bytes both hold)
        self._offline: dict[int, tuple[float, float, int, int]] = {}
        self._both(lambda p: p.open_weights())
        # The owner's sharing is a deployment's work (once per model when serving); opening
        # F = W - B is each session's.
        self.setup_s = {"sharing": t1 - t0, "opening": time.perf_counter() - t1}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _both(self, fn, args=(None, None)):
        """Run fn(party, arg) on P0 and P1 concurrently; a failure aborts the other side."""
        if self._failed:
            raise MpccError(f"this cluster's session ended after a failure: {self._failed}")
        if self._pool is None:
            raise MpccError("the cluster is not started (use `with LocalCluster(...)`)")

        def guarded(p: PartyExecutor, arg):
            try:
                return fn(p) if arg is None else fn(p, arg)
            except BaseException as e:
                p.ch.abort(f"P{p.party} failed: {e}")
                raise

        futs = [self._pool.submit(guarded, p, a) for p, a in zip(self.parties, args, strict=True)]
        results, errors = [], []
        for f in futs:
            try:
                results.append(f.result())
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
        if errors:
            # The root cause is the error that is not the peer's abort notice.
            root = next((e for e in errors if not isinstance(e, PartyError)), errors[0])
            self._failed = str(root)
            raise root
        return results

    # -- offline -----------------------------------------------------------------------------
    def preprocess(self, queries: int = 1) -> float:
        """Make material for the next `queries` queries ahead of time; returns the seconds."""
        start = time.perf_counter()
        for _ in range(queries):
            t0 = time.perf_counter()
            q = self._next_query + len(self._prepared)
            bundle = self.dealer.deal(q)
            dealer_s = time.perf_counter() - t0
            dealer_bytes = bundle.nbytes
            p0_part = self.dealer.for_p0(bundle) if self.dealer.sends_p0 else None
            if p0_part is not None:
                self._dealer_out0.send(p0_part.to_arrays())
            self._dealer_out.send(bundle.to_arrays())
            del bundle  # P1 has it now

            def prep(p: PartyExecutor, q=q) -> int:
                link = self._p1_from_dealer if p.party == 1 else self._p0_from_dealer
                b = Bundle.from_arrays(link.recv()) if p.needs_dealer else None
                return p.prepare(q, b)

            held = sum(self._both(prep))
            self._prepared.append(q)
            p0_bytes = 0 if p0_part is None else p0_part.nbytes
            self._offline[q] = (time.perf_counter() - t0, dealer_s, dealer_bytes, held, p0_bytes)
        return time.perf_counter() - start

    # -- online ------------------------------------------------------------------------------
    def run_batch(self, x: Samples) -> np.ndarray:
        """One query on exactly one batch of inputs; returns the decoded first output."""
        return self.run_outputs(x)[self.prog.outputs[0][0]]

    def run_outputs(self, x: Samples) -> dict[str, np.ndarray]:
        """One query on exactly one batch of inputs (an array for a one-input plan, else a
        dict by input name); returns every output, decoded, by name."""
        xs = x if isinstance(x, Mapping) else {self.prog.inputs[0][0]: x}
        shares = {n: share(encode_input(self.prog, v, n)) for n, v in xs.items()}
        if not self._prepared:  # a bad input costs no material
            self.preprocess(1)
        q = self._prepared.pop(0)
        offline, dealer_s, dealer_bytes, material_bytes, p0_bytes = self._offline.pop(q)
        self._next_query = q + 1
        before = [p.ch.traffic.snapshot() for p in self.parties]
        t0 = time.perf_counter()
        outs = self._both(
            lambda p, s: p.run(q, s),
            tuple({n: sh[k] for n, sh in shares.items()} for k in (0, 1)),
        )
        online = time.perf_counter() - t0
        y = {
            name: decode(reconstruct(outs[0][name], outs[1][name]), self.prog.value(vid).scale)
            for name, vid in self.prog.outputs
        }
        used = [p.ch.traffic.since(b) for p, b in zip(self.parties, before, strict=True)]
        self.stats = QueryStats(
            batch=self.prog.batch,
            online_s=online,
            offline_s=offline,
            sent=(used[0].bytes_sent, used[1].bytes_sent),
            rounds=used[0].rounds,
            dealer_bytes=dealer_bytes,
            material_bytes=material_bytes,
            client_bytes=sum(sh[0].nbytes for sh in shares.values()),
            dealer_s=dealer_s,
            dealer_p0_bytes=p0_bytes,
        )
        return y

    def predict(self, x: Samples, progress: bool = False) -> np.ndarray:
        """Secure prediction for any number of samples, in batches of the plan's batch size
        (first output). `x` is an array for a one-input plan, else a dict by input name."""
        x = check_inputs(self.prog, x)
        done = [0]
        total = -(-len(next(iter(x.values()))) // self.prog.batch)

        def one(chunk: np.ndarray) -> np.ndarray:
            y = self.run_batch(chunk)
            done[0] += 1
            if progress and total > 1:
                print(f"\rsecure inference: batch {done[0]}/{total}", end="", file=sys.stderr)
                if done[0] == total:
                    print(file=sys.stderr)
            return y

        return in_batches(self.prog, x, one)
