"""A compute party's sessions: their start-up with the dealer and the peer, the state of one
session (links, executor, stock of material) and the background making of its material.

`SessionSetup` is a mixin of `ComputeParty` (`mpcc.serving.party`); it runs the query loop
(`mpcc.serving.scheduler`) once a session is up.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mpcc.compiler.costmodel import estimate
from mpcc.errors import MpccError, PartyError
from mpcc.runtime.executor import PartyExecutor
from mpcc.runtime.material import Bundle
from mpcc.runtime.session import Session
from mpcc.serving import heap
from mpcc.serving.links import dial
from mpcc.serving.messages import (
    Accept,
    Credit,
    Dealt,
    ErrorReply,
    Hello,
    Offer,
    Ready,
    SessionCheck,
    Start,
    Welcome,
)
from mpcc.serving.startup import (
    contribution,
    mismatch,
    prg_kat,
    session_id,
)
from mpcc.serving.state import Deployment, load_shares
from mpcc.serving.tls import TlsChannel
from mpcc.serving.tlsstream import LinkRefused

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
        self.running = 0  # queries in their online phase (one per lane at most)
        self.waiting = 0  # lanes waiting for a query's material
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

    def number(self) -> int:
        """P0: the next query's number (a lane keeps it until the query runs)."""
        with self.cond:
            q, self.next_q = self.next_q, self.next_q + 1
            self.cond.notify_all()
            return q

    def announced(self, q: int) -> None:
        """P1: P0 announced query q; it must not have run (its material is gone)."""
        with self.cond:
            if q < self._ran_below or q in self._ran:
                raise PartyError(f"P0 announced query {q}, which has run already")
            self.next_q = max(self.next_q, q + 1)
            self.cond.notify_all()

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
        """Queries of material to keep ready: `stock` (at least one per lane), lowered so
        they fit in `stock_mb` (never below one, or no query could run)."""
        serving = self.server.cfg.serving
        fits = int(serving.stock_mb * 2**20) // self.query_bytes
        return max(1, min(max(serving.stock, len(self.lanes)), fits))

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
        timeout = self.prep_timeout()
        deadline = time.monotonic() + timeout
        with self.cond:
            self.waiting += 1
            self.cond.notify_all()
            try:
                while q not in self.prepared:
                    left = deadline - time.monotonic()
                    if self.ended is not None:
                        raise PartyError(f"session ended: {self.ended}")
                    if left <= 0:
                        raise PartyError(f"no preprocessing for query {q} after {timeout:.1f} s")
                    self.cond.wait(left)
            finally:
                self.waiting -= 1
            self.running += 1
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
        meanwhile, until there is one query's worth for every lane."""
        if self.running == 0:
            return False
        return len(self.lanes) == 1 or len(self.prepared) >= len(self.lanes)

    def yield_to_online(self) -> None:
        """Block while preparing should wait for an online phase (see `defer_preparing`)."""
        with self.cond:
            while self.alive and self.defer_preparing():
                self.cond.wait(0.5)

    def wait_to_prepare(self, full: bool) -> None:
        """Block while the stock is full (`full`: P0; P1's is held by its credit) or
        preparing should wait for an online phase."""
        with self.cond:
            while self.alive and ((full and self.stock_full()) or self.defer_preparing()):
                self.cond.wait(0.5)


class SessionSetup:
    """Session start-up and preprocessing (a mixin of `ComputeParty`)."""

    def on_new_deployment(self) -> None:
        self._end_session("a new model was deployed")

    def _end_session(self, reason: str) -> None:
        with self._session_lock:
            s, self._session = self._session, None
        if s is not None:
            s.end(reason)
            for kind, ch in [*(("peer", lane.peer) for lane in s.lanes), ("dealer", s.dealer)]:
                self.metrics.link_closed(kind, ch.wire.sent, ch.wire.received)

    def on_dealer(self, ch: TlsChannel, hello: Hello) -> None:
        """The dealer starts a session; this thread then runs it until it ends."""
        ch.peer = "dealer"
        self._end_session("the dealer started a new session")
        Welcome(self.role).send(ch)
        generation = self.deploy_generation
        try:
            s = self._setup(ch)
        except MpccError as e:
            repeated = self.last_error == f"session start-up failed: {e}"
            self.last_error = f"session start-up failed: {e}"
            if ch.closed is not None and "sent nothing" not in str(e):
                # the dealer retries every second or so while a party is down: say it once
                log = self.log.debug if repeated else self.log.info
                log("the dealer abandoned a session start-up (%s)", ch.closed)
            else:
                self.log.error("session start-up failed: %s", e)
            try:
                ErrorReply(str(e)).send(ch)
            except PartyError:
                pass
            ch.close("start-up failed")
            return
        with self._session_lock:
            if self.stop_event.is_set() or generation != self.deploy_generation:
                s.end(
                    f"{self.label} is shutting down"
                    if self.stop_event.is_set()
                    else "a new model was deployed"
                )
                return
            self._session = s
        self.metrics.sessions.inc()
        self.last_error = None
        s.watch_links()
        self.log.info("session %s… ready (plan %s)", s.sid[:8], s.dep.plan_hash[:12])
        threading.Thread(
            target=self._prepare_loop, args=(s,), name="mpcc-prep", daemon=True
        ).start()
        loop = self._lead if self.party == 0 else self._follow
        others = [
            threading.Thread(
                target=loop, args=(s, lane), name=f"mpcc-lane{lane.index}", daemon=True
            )
            for lane in s.lanes[1:]
        ]
        try:
            for th in others:
                th.start()
            loop(s, s.lanes[0])
        finally:
            s.end(
                f"{self.label} is shutting down"
                if self.stop_event.is_set()
                else "session loop ended"
            )
            for th in others:
                if th.ident is not None:
                    th.join(self.cfg.serving.timeout_s)
            del s
            heap.trim()  # the session's material and buffers are garbage now

    def _setup(self, dealer: TlsChannel) -> PartySession:
        t = self.cfg.serving.setup_timeout_s
        offer = Offer.recv(dealer, t)
        self.await_kernels(t)  # no session before the kernels are loaded: none compiles online
        dep = self.deployment
        if dep is None:
            why = f" (its stored one was rejected: {self.load_error})" if self.load_error else ""
            raise PartyError(f"no model is deployed at {self.label}{why}")
        if dep.role != self.role:  # e.g. the other party's deployment.npz copied here
            held = str(dep.role).upper()
            raise PartyError(f"{self.label} holds {held}'s weight shares; deploy the model again")
        mismatch("plan hash", dep.plan_hash, offer.plan_hash, self.label, "dealer")
        mismatch("deployment", dep.deploy_id, offer.deploy_id, self.label, "dealer")
        mine, kat = contribution(), prg_kat()
        Accept(dep.plan_hash, dep.deploy_id, mine, kat).send(dealer)
        msg = dealer.recv_msg(t, expect=Start.KIND)
        start = Start.of(msg)
        contribs = start.contributions
        mismatch(
            "contribution of " + self.label, mine, contribs.get(self.role), self.label, "dealer"
        )
        sid = session_id(dep.plan_hash, dep.deploy_id, contribs)
        mismatch("session id", sid, start.sid, self.label, "dealer")
        if len(msg.arrays) != 1 or msg.arrays[0].dtype != np.uint8 or msg.arrays[0].size != 16:
            raise PartyError("the dealer sent a malformed seed")
        seed = msg.arrays[0].tobytes()
        peer = self._peer_link(sid, t, dealer)
        lanes = [peer]
        try:
            # both commitments, so a corrupted or foreign share at either party (checked
            # against its own commitment on load) or a mixed deployment is caught here
            n = self.cfg.serving.lanes
            check = SessionCheck(
                dep.plan_hash, dep.deploy_id, sid, kat, contribs, dep.commitments, n
            )
            check.send(peer)
            theirs = SessionCheck.recv(peer, t).to_meta()
            for k, v in check.to_meta().items():
                mismatch(k.replace("_", " "), v, theirs[k], self.label, self.peer_label)
            lanes += self._more_lanes(sid, t, dealer, n)
            s = PartySession(self, dep, sid, seed, dealer, peer, load_shares(self.state_dir, dep))
            s.ex.open_weights()
            s.add_lanes(lanes[1:])
            Ready(sid).send(dealer)
            if self.party == 1:
                Credit(upto=s.stock() - 1, answered=0).send(dealer)
        except BaseException:
            for ch in lanes:
                ch.close("start-up failed")
            raise
        return s

    def _more_lanes(self, sid: str, timeout: float, dealer: TlsChannel, n: int) -> list[TlsChannel]:
        """Lanes 1..n-1, once lane 0 has shown both parties want n: P1 dials them; P0 takes
        them in whatever order their hellos arrive."""
        if self.party == 1:
            return [self._peer_link(sid, timeout, dealer, lane) for lane in range(1, n)]
        got: dict[int, TlsChannel] = {}
        deadline = time.monotonic() + timeout
        try:
            while len(got) < n - 1:
                if dealer.closed is not None:
                    raise PartyError(f"the dealer abandoned the start-up ({dealer.closed})")
                try:
                    (their_sid, lane), ch = self._peer_links.get(timeout=0.2)
                except queue.Empty:
                    if time.monotonic() > deadline:
                        raise PartyError(
                            f"P1 opened {len(got) + 1} of {n} lanes within {timeout:g} s"
                        ) from None
                    continue
                if their_sid != sid or not 1 <= lane < n or lane in got or ch.closed:
                    ch.close("stale session" if their_sid != sid else f"unexpected lane {lane}")
                    continue
                got[lane] = ch
        except BaseException:
            for ch in got.values():
                ch.close("start-up failed")
            raise
        return [got[lane] for lane in range(1, n)]

    def _peer_link(self, sid: str, timeout: float, dealer: TlsChannel, lane: int = 0) -> TlsChannel:
        """P1 dials P0 (retrying briefly: P0 may be starting); P0 waits for P1's link of
        lane 0, over which the parties compare their sessions (and their lane count)."""
        deadline = time.monotonic() + timeout
        dial_until = time.monotonic() + min(timeout, self.cfg.serving.timeout_s)
        while True:
            if dealer.closed is not None:
                raise PartyError(f"the dealer abandoned the start-up ({dealer.closed})")
            if self.stop_event.is_set():
                raise PartyError("stopping")
            if self.party == 1:
                try:
                    ch, _ = dial(
                        self.cfg, self.client_ctx, "p0", me="p1", link="peer", sid=sid, lane=lane
                    )
                    return ch
                except LinkRefused:
                    raise
                except PartyError:
                    if time.monotonic() > dial_until:
                        raise
                    time.sleep(0.2)
                    continue
            try:
                got, ch = self._peer_links.get(timeout=0.2)
            except queue.Empty:
                if time.monotonic() > deadline:
                    which = "" if lane == 0 else f" lane {lane}"
                    raise PartyError(f"P1 did not connect{which} within {timeout:g} s") from None
                continue
            if got == (sid, 0) and ch.closed is None:
                return ch
            ch.close("stale session" if got[0] != sid else f"lane {got[1]} before lane 0")

    # -- preprocessing ----------------------------------------------------------------------
    def _prepare_loop(self, s: PartySession) -> None:
        """Keep up to `s.stock()` queries of material ready (P1: as the dealer's bundles
        arrive; its credit to the dealer holds the dealer to that stock; P0 likewise for a
        plan with FSS keys, whose bundles the dealer sends with P1's)."""
        try:
            from_dealer = s.ex.needs_dealer  # P1; P0 too for a plan with FSS keys
            while s.alive:
                s.wait_to_prepare(full=not from_dealer)
                if not s.alive:
                    return
                if not from_dealer:
                    q = s.prepared_upto + 1
                    t0 = time.perf_counter()
                    nbytes = s.ex.prepare(q, None, s.yield_to_online)
                    p = Prepared(time.perf_counter() - t0, time.monotonic())
                    s.mark_prepared(q, p, nbytes)
                else:
                    msg = s.dealer.poll(0.5)
                    if msg is None:
                        continue
                    if msg.kind != Dealt.KIND:
                        raise PartyError(f"the dealer sent {msg.kind!r} where material was due")
                    s.wait_to_prepare(full=False)  # a query may have started meanwhile
                    if not s.alive:
                        return
                    t0 = time.perf_counter()
                    bundle = Bundle.from_arrays(msg.arrays)
                    if bundle.query != s.prepared_upto + 1:
                        raise PartyError(f"the dealer sent material for query {bundle.query}")
                    nbytes = s.ex.prepare(bundle.query, bundle, s.yield_to_online)
                    deal_s = Dealt.of(msg).deal_s
                    p = Prepared(
                        time.perf_counter() - t0 + deal_s,
                        time.monotonic(),
                        bundle.nbytes,
                        msg.wire_bytes,
                    )
                    s.mark_prepared(bundle.query, p, nbytes)
        except MpccError as e:
            s.end(f"preprocessing failed: {e}")
        except Exception as e:  # noqa: BLE001 - end the session, keep the party
            self.log.exception("preprocessing failed")
            s.end(f"preprocessing failed: {type(e).__name__}")
