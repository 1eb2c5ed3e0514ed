"""The state of one session at a compute party: its lanes (P0-P1 links and the executors
that run queries over them), its stock of material, and the numbering of its queries.

Made and run by `mpcc.serving.partysession.SessionSetup`; the query loop
(`mpcc.serving.scheduler`) takes material and lanes from it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mpcc.compiler.costmodel import estimate
from mpcc.errors import PartyError
from mpcc.runtime.executor import PartyExecutor
from mpcc.runtime.session import Session
from mpcc.serving.state import Deployment
from mpcc.serving.tls import TlsChannel

if TYPE_CHECKING:
    from mpcc.serving.party import ComputeParty


@dataclass
class Prepared:
    offline_s: float  # expanding this party's material (P1: plus the dealer's dealing time)
    ready_at: float
    dealer_bytes: int = 0
    dealer_wire: int = 0


@dataclass
class Lane:
    """One of a session's P0-P1 links and the executor that runs queries over it: a session
    runs one query at a time on each lane, so on a WAN, where a query mostly waits for round
    trips, its lanes keep the parties busy. Every lane takes its queries' material from the
    session's one store (each query's material used once, whichever lane runs it)."""

    index: int
    peer: TlsChannel
    ex: PartyExecutor
    q: int | None = None  # P0: the query number this lane holds until it runs


class PartySession:
    """One session at a compute party: its links, executors and stock of material."""

    def __init__(
        self,
        server: ComputeParty,
        dep: Deployment,
        sid: str,
        seed: bytes,
        dealer: TlsChannel,
        peer: TlsChannel,
        shares: dict[str, np.ndarray],
    ) -> None:
        """`shares`: this party's weight shares, read for this session alone (opening the
        masked weights overwrites them with F)."""
        self.server, self.dep, self.sid = server, dep, sid
        self.dealer, self.peer = dealer, peer
        self.ex = PartyExecutor(
            server.party,
            dep.prog,
            Session(sid, dep.plan_hash),
            seed,
            shares,
            peer,
            consume_shares=True,
        )
        self.lanes = [Lane(0, peer, self.ex)]
        self.cond = threading.Condition()
        self.prepared: dict[int, Prepared] = {}
        self.prepared_upto = -1
        self.next_q = 0  # P0: queries numbered so far; P1: 1 + the highest announced
        self._ran_below = 0  # every query below this one has run
        self._ran: set[int] = set()  # ... and these above it
        self.last_offline_s: float | None = None
        self._credited = -1  # P1: the highest query the dealer may make material for
        self.running = 0  # queries in their online phase (one per lane at most)
        self.starting: set[int] = set()  # queries a lane is about to run (see `defer_preparing`)
        self.waiting = 0  # lanes waiting for a query's material
        self.pieces = 0  # calls' material made so far (progress within a query's material)
        self.answered = 0  # requests answered in this session
        # bytes of one query's material here: the cost model's dealer bytes until measured
        self.query_bytes = max(1, estimate(dep.prog).total.dealer)
        self.ended: str | None = None

    @property
    def alive(self) -> bool:
        return self.ended is None

    def add_lanes(self, peers: list[TlsChannel]) -> None:
        """More lanes over these links (after the weights are opened over lane 0's)."""
        for ch in peers:
            self.lanes.append(Lane(len(self.lanes), ch, self.ex.on_channel(ch)))

    def watch_links(self) -> None:
        self.dealer.on_close(lambda why: self.end(f"the dealer link closed ({why})"))
        for lane in self.lanes:
            lane.peer.on_close(lambda why: self.end(f"the link to the peer closed ({why})"))

    def number(self, q: int | None) -> int:
        """P0: a lane with requests is about to run query `q`, or (None) the next query's
        number (a lane keeps it until the query runs). Until its online phase begins or
        `settled(q)`, the query counts as starting (see `defer_preparing`)."""
        with self.cond:
            if q is None:
                q, self.next_q = self.next_q, self.next_q + 1
            self.starting.add(q)
            self.cond.notify_all()
            return q

    def settled(self, q: int) -> None:
        """Query q runs, ran, was skipped or failed: it no longer counts as starting."""
        with self.cond:
            self.starting.discard(q)
            self.cond.notify_all()

    def announced(self, q: int) -> int | None:
        """P1: P0 announced query q; it must not have run (its material is gone). It counts
        as starting until its online phase begins or `settled(q)`. Returns the credit to give
        the dealer now if it rose (material up to the highest query announced plus the
        stock), else None. With one lane and query q + 1's material credited already (a stock
        of two or more), None: the rise waits for the credit sent when q ends, so a query that
        found the stock full runs with no dealing for it and no bundle arriving (P1 could not
        expand one before q ends anyway). With a stock of one, q + 1 is dealt meanwhile."""
        with self.cond:
            if q < self._ran_below or q in self._ran:
                raise PartyError(f"P0 announced query {q}, which has run already")
            self.next_q = max(self.next_q, q + 1)
            self.starting.add(q)
            self.cond.notify_all()
            if len(self.lanes) == 1 and self._credited > q:
                return None
            upto, rose = self.credit()
            return upto if rose else None

    def credit(self) -> tuple[int, bool]:
        """P1: the highest query the dealer may make material for (the highest announced
        plus the stock), and whether it rose since last asked."""
        with self.cond:
            upto = max(self._credited, self.next_q - 1 + self.stock())
            rose, self._credited = upto > self._credited, upto
            return upto, rose

    def end(self, reason: str) -> None:
        with self.cond:
            if self.ended is not None:
                return
            self.ended = reason
            self.prepared.clear()
            self.cond.notify_all()
        self.server.log.info("session %s… ended: %s", self.sid[:8], reason)
        self.server.last_error = f"session ended: {reason}"
        self.dealer.close(reason)
        for lane in self.lanes:
            lane.peer.close(reason)
        self.server.drop_requests(f"the session ended ({reason})")

    def mark_prepared(self, q: int, p: Prepared, nbytes: int) -> None:
        with self.cond:
            self.prepared[q] = p
            self.prepared_upto = q
            self.last_offline_s = p.offline_s
            self.query_bytes = max(1, nbytes)
            self.cond.notify_all()

    def stock(self) -> int:
        """Queries of material to keep ready: `stock`, lowered so they fit in `stock_mb`,
        but never below one per lane: each lane holds a query's number until it runs, and a
        lane whose query is beyond the stock would wait for material that P1's credit does
        not let the dealer make (so `stock_mb` is exceeded rather than lanes stalled)."""
        serving = self.server.cfg.serving
        fits = int(serving.stock_mb * 2**20) // self.query_bytes
        return max(len(self.lanes), min(serving.stock, fits))

    def prep_timeout(self) -> float:
        """How long a query may wait for its material. The first one of a session waits as
        long as a start-up (nothing could be made ahead: a big model's first material);
        later ones wait the link timeout plus one query's offline time, so a slow dealer for
        a big model is not taken for a dead one (a dead dealer closes its link at once)."""
        serving = self.server.cfg.serving
        if self.last_offline_s is None:
            return serving.setup_timeout_s
        return serving.timeout_s + 2 * self.last_offline_s

    def wait_prepared(self, q: int) -> Prepared:
        """Query q's material, once made. The wait fails after `prep_timeout` without
        progress: each query made ahead of q (lanes wait in turn for one maker), each
        call's material made (a big model's, made slower than the last query's, as when
        other programs take the cores from the lower-priority maker), and each word from the
        dealer of how far its dealing got (`progress`) restarts it."""
        timeout = self.prep_timeout()
        deadline = time.monotonic() + timeout
        with self.cond:
            self.waiting += 1
            self.cond.notify_all()
            seen = (self.prepared_upto, self.pieces)
            try:
                while q not in self.prepared:
                    if (self.prepared_upto, self.pieces) != seen:
                        seen = (self.prepared_upto, self.pieces)
                        deadline = time.monotonic() + timeout
                    left = deadline - time.monotonic()
                    if self.ended is not None:
                        raise PartyError(f"session ended: {self.ended}")
                    if left <= 0:
                        raise PartyError(f"no preprocessing for query {q} after {timeout:.1f} s")
                    self.cond.wait(left)
            finally:
                self.waiting -= 1
            self.running += 1
            self.starting.discard(q)
            return self.prepared.pop(q)

    def consumed(self, q: int) -> None:
        with self.cond:
            self._ran.add(q)
            while self._ran_below in self._ran:
                self._ran.discard(self._ran_below)
                self._ran_below += 1
            self.cond.notify_all()

    def online_over(self) -> None:
        with self.cond:
            self.running -= 1
            self.cond.notify_all()

    def stock_full(self) -> bool:
        return self.prepared_upto - self.next_q + 1 >= self.stock()

    def defer_preparing(self) -> bool:
        """Whether to hold off making material (with `cond` held). With one lane, while its
        query's online phase runs: preparing would only slow that phase down (same cores,
        and the GIL), and the query took its material before the phase began. With several
        lanes, a query mostly waits for round trips, and the next ones' material is made
        meanwhile, until there is one query's worth for every lane. With one lane, a query
        about to run whose material is ready counts as running: the prompt to prepare came
        when P0 numbered it (a round trip before its online phase) or P1 saw it announced."""
        if len(self.lanes) == 1:
            return self.running > 0 or any(q in self.prepared for q in self.starting)
        return self.running > 0 and len(self.prepared) >= len(self.lanes)

    def progress(self) -> None:
        """Material is on its way (the dealer says how far it got): count it as progress, as
        each call's material made is (`wait_prepared`)."""
        with self.cond:
            self.pieces += 1
            self.cond.notify_all()

    def yield_to_online(self) -> None:
        """Before each call's material: count the progress (see `wait_prepared`), and block
        while preparing should wait for an online phase (see `defer_preparing`)."""
        with self.cond:
            self.pieces += 1
            while self.alive and self.defer_preparing():
                self.cond.wait(0.5)

    def wait_to_prepare(self, full: bool) -> None:
        """Block while the stock is full (`full`: P0; P1's is held by its credit) or
        preparing should wait for an online phase."""
        with self.cond:
            while self.alive and ((full and self.stock_full()) or self.defer_preparing()):
                self.cond.wait(0.5)
