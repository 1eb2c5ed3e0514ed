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


class PartySession:
    """One session at a compute party: its links, executor and stock of material."""

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
        self.cond = threading.Condition()
        self.prepared: dict[int, Prepared] = {}
        self.prepared_upto = -1
        self.next_q = 0
        self.last_offline_s: float | None = None
        self.online = False  # a query's online phase is running
        self.answered = 0  # requests answered in this session
        # bytes of one query's material here: the cost model's dealer bytes until measured
        self.query_bytes = max(1, estimate(dep.prog).total.dealer)
        self.ended: str | None = None

    @property
    def alive(self) -> bool:
        return self.ended is None

    def watch_links(self) -> None:
        self.dealer.on_close(lambda why: self.end(f"the dealer link closed ({why})"))
        self.peer.on_close(lambda why: self.end(f"the link to the peer closed ({why})"))

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
        self.peer.close(reason)
        self.server.drop_requests(f"the session ended ({reason})")

    def mark_prepared(self, q: int, p: Prepared, nbytes: int) -> None:
        with self.cond:
            self.prepared[q] = p
            self.prepared_upto = q
            self.last_offline_s = p.offline_s
            self.query_bytes = max(1, nbytes)
            self.cond.notify_all()

    def stock(self) -> int:
        """Queries of material to keep ready: `stock`, lowered so they fit in `stock_mb`
        (never below one, or no query could run)."""
        serving = self.server.cfg.serving
        fits = int(serving.stock_mb * 2**20) // self.query_bytes
        return max(1, min(serving.stock, fits))

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
            while q not in self.prepared:
                left = deadline - time.monotonic()
                if self.ended is not None:
                    raise PartyError(f"session ended: {self.ended}")
                if left <= 0:
                    raise PartyError(f"no preprocessing for query {q} after {timeout:.1f} s")
                self.cond.wait(left)
            self.online = True
            return self.prepared.pop(q)

    def consumed(self, q: int) -> None:
        with self.cond:
            self.next_q = q + 1
            self.cond.notify_all()

    def online_over(self) -> None:
        with self.cond:
            self.online = False
            self.cond.notify_all()

    def stock_full(self) -> bool:
        return self.prepared_upto - self.next_q + 1 >= self.stock()

    def defer_preparing(self) -> bool:
        """Whether to hold off making material: while a query's online phase runs and the
        next query's material is already made, preparing would only slow that phase down
        (same cores, and the GIL), so it waits for the phase to end."""
        return self.online and bool(self.prepared)

    def yield_to_online(self) -> None:
        """Block while a query's online phase runs (the material being made is for a later
        query: the running one took its material before its phase began)."""
        with self.cond:
            while self.alive and self.online:
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
            for kind, ch in (("peer", s.peer), ("dealer", s.dealer)):
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
        try:
            (self._lead if self.party == 0 else self._follow)(s)
        finally:
            s.end(
                f"{self.label} is shutting down"
                if self.stop_event.is_set()
                else "session loop ended"
            )
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
        try:
            # both commitments, so a corrupted or foreign share at either party (checked
            # against its own commitment on load) or a mixed deployment is caught here
            check = SessionCheck(dep.plan_hash, dep.deploy_id, sid, kat, contribs, dep.commitments)
            check.send(peer)
            theirs = SessionCheck.recv(peer, t).to_meta()
            for k, v in check.to_meta().items():
                mismatch(k.replace("_", " "), v, theirs[k], self.label, self.peer_label)
            s = PartySession(self, dep, sid, seed, dealer, peer, load_shares(self.state_dir, dep))
            s.ex.open_weights()
            Ready(sid).send(dealer)
            if self.party == 1:
                Credit(upto=s.stock() - 1, answered=0).send(dealer)
        except BaseException:
            peer.close("start-up failed")
            raise
        return s

    def _peer_link(self, sid: str, timeout: float, dealer: TlsChannel) -> TlsChannel:
        """P1 dials P0 (retrying briefly: P0 may be starting); P0 waits for P1's link."""
        deadline = time.monotonic() + timeout
        dial_until = time.monotonic() + min(timeout, self.cfg.serving.timeout_s)
        while True:
            if dealer.closed is not None:
                raise PartyError(f"the dealer abandoned the start-up ({dealer.closed})")
            if self.stop_event.is_set():
                raise PartyError("stopping")
            if self.party == 1:
                try:
                    ch, _ = dial(self.cfg, self.client_ctx, "p0", me="p1", link="peer", sid=sid)
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
                    raise PartyError(f"P1 did not connect within {timeout:g} s") from None
                continue
            if got == sid and ch.closed is None:
                return ch
            ch.close("stale session")

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
