"""A compute party's sessions: their start-up with the dealer and the peer (and its lanes),
and the background making of their material. A session's state is `sessionstate`'s.

`SessionSetup` is a mixin of `ComputeParty` (`mpcc.serving.party`); it runs the query loop
(`mpcc.serving.scheduler`) once a session is up.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from mpcc.errors import MpccError, PartyError
from mpcc.runtime.material import Bundle
from mpcc.serving import heap
from mpcc.serving.links import dial
from mpcc.serving.messages import (
    Accept,
    Credit,
    Dealing,
    Dealt,
    ErrorReply,
    Hello,
    Offer,
    Ready,
    SessionCheck,
    Start,
    Welcome,
)
from mpcc.serving.priority import lower_this_thread
from mpcc.serving.sessionstate import PartySession, Prepared
from mpcc.serving.startup import (
    contribution,
    mismatch,
    prg_kat,
    session_id,
)
from mpcc.serving.state import load_shares
from mpcc.serving.tls import TlsChannel
from mpcc.serving.tlsstream import LinkRefused

if TYPE_CHECKING:
    pass


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
        ch.lower_reader(self.cfg.serving.background_nice)  # it brings material
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
                Credit(upto=s.credit()[0], answered=0).send(dealer)
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
        lower_this_thread(self.cfg.serving.background_nice)  # the online rounds come first
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
                    if msg.kind == Dealing.KIND:  # the dealer is still at it: progress
                        Dealing.of(msg)
                        s.progress()
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
