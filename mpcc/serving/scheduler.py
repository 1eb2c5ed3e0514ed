"""A compute party's query loop: P0 schedules queued requests into batches (round-robin
between client identities, requests P1 is known to hold first), announces them to P1, and
both run the plan on the batch and answer each client.

A mixin of `ComputeParty` (`mpcc.serving.party`), over its request state (see
`mpcc.serving.clients`).
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from mpcc.compiler.batching import rows_independent
from mpcc.errors import MpccError, PartyError
from mpcc.serving.admission import fair_order, mark_served
from mpcc.serving.clients import MAX_ARRIVED, MAX_QUEUE, Request, _who
from mpcc.serving.messages import Announce, Answered, Credit, Go, Skip
from mpcc.serving.sessionstate import Lane, PartySession

# P0 offers a request P1 did not have again after RETRY_S * 4^k (k-th time), at most
# RETRY_MAX_S apart, until timeout_s after it arrived. P1 never waits for a request, and
# P0 fills a batch with requests P1 is known to hold first: a client that sends a share to
# P0 alone slows nobody else down.
RETRY_S = 0.002
RETRY_MAX_S = 0.5


class QueryLoop:
    """Batches, announcements and running queries (a mixin of `ComputeParty`)."""

    def _take_batch(self, s: PartySession) -> list[Request]:
        """P0: the next queued requests that fit in one batch of the plan (or [])."""
        cap = s.dep.prog.batch
        wait = self.cfg.serving.batch_wait_ms / 1e3
        with self._req:
            ready = self._ready_requests()
            if not ready:
                self._req.wait(self._next_ready_in())
                ready = self._ready_requests()
            if not ready or not s.alive or self.stop_event.is_set():
                return []
            if not rows_independent(s.dep.prog):
                # Rows of one query influence each other: never let two clients share one.
                return self._dequeue([ready[0]])
            if ready[0].rows < cap and wait > 0:
                deadline = time.monotonic() + wait
                while sum(r.rows for r in ready) < cap and time.monotonic() < deadline:
                    self._req.wait(deadline - time.monotonic())
                    ready = self._ready_requests()
            batch, rows = [], 0
            for r in ready:
                if rows + r.rows <= cap:
                    batch.append(r)
                    rows += r.rows
            return self._dequeue(batch)

    def _ready_requests(self) -> list[Request]:
        """P0's queued requests to offer now (with `_req` held): first those P1 is known to
        hold, then the others not waiting out a retry pause. A batch takes them in this
        order, so one that P1 may lack only fills room no known request needs."""
        now = time.monotonic()
        known = [r for r in self._queue if r.rid in self._p1_has]
        rest = [r for r in self._queue if r.rid not in self._p1_has and r.not_before <= now]
        # round-robin between client identities, the one served longest ago first
        return [
            *fair_order(known, _who, self._last_served),
            *fair_order(rest, _who, self._last_served),
        ]

    def _next_ready_in(self) -> float:
        """Seconds until a deferred request may be offered again (at most 0.2)."""
        later = [r.not_before for r in self._queue if r.not_before > 0]
        return max(0.001, min([0.2, *(t - time.monotonic() for t in later)]))

    def _dequeue(self, reqs: list[Request]) -> list[Request]:
        """Take these requests out of the queue (with `_req` held): they are in flight, and
        `_idle` says so before the lock is let go, so shutdown waits for them."""
        taken = {id(r) for r in reqs}
        self._queue = deque(r for r in self._queue if id(r) not in taken)
        self._inflight.update((r.rid, r) for r in reqs)
        if reqs:
            self._idle.clear()
            mark_served({r.who for r in reqs}, self._last_served)
        return reqs

    def _landed(self, reqs: list[Request]) -> None:
        """These requests of a lane's are no longer in flight (answered or failed); `_idle`
        is set once no lane has any."""
        with self._req:
            self._not_inflight(reqs)

    def _not_inflight(self, reqs: list[Request]) -> None:
        for r in reqs:
            if self._inflight.get(r.rid) is r:
                del self._inflight[r.rid]
        if not self._inflight:
            self._idle.set()

    def _requeue(self, reqs: list[Request], front: bool = True) -> None:
        """Back to the queue (no longer in flight: another lane may take them at once)."""
        with self._req:
            self._not_inflight(reqs)
            reqs = [r for r in reqs if r.ch in self._outboxes]  # not those of departed clients
            if front:
                self._queue.extendleft(reversed(reqs))
            else:
                self._queue.extend(reqs)
            self._req.notify_all()

    def _defer_or_fail(self, reqs: list[Request]) -> None:
        """P0: requests P1 did not have yet go back to the queue, offered again after a
        growing pause, until `timeout_s` after their arrival: then they fail."""
        now, limit = time.monotonic(), self.cfg.serving.timeout_s
        late = [r for r in reqs if now - r.arrived >= limit]
        self._fail(late, f"{self.peer_label} never received this request (sent to P0 only?)")
        self._landed(late)
        keep = [r for r in reqs if now - r.arrived < limit]
        for r in keep:
            r.retries += 1
            r.not_before = now + min(RETRY_MAX_S, RETRY_S * 4 ** min(r.retries, 8))
        self._requeue(keep, front=False)

    def _lead(self, s: PartySession, lane: Lane) -> None:
        """P0's loop on one lane: schedule queued requests, announce them to P1 over the
        lane's link, run them. Each lane keeps the query number it took until that query
        runs (P1 may skip an announcement)."""
        t = self.cfg.serving.timeout_s
        while s.alive and not self.stop_event.is_set():
            batch = self._take_batch(s)
            if not batch:
                continue
            if self.stop_event.is_set() or not s.alive:
                if self.stop_event.is_set():
                    self._fail(batch, f"{self.label} is shutting down")
                    self._landed(batch)
                else:
                    self._requeue(batch)
                return
            q = None
            try:
                q = lane.q = s.number(lane.q)
                Announce(q, [[r.rid, r.rows] for r in batch]).send(lane.peer)
                msg = lane.peer.recv_msg(2 * t + 1)
                if msg.kind not in (Go.KIND, Skip.KIND):
                    raise PartyError(f"P1 answered the announcement with {msg.kind!r}")
                reply = (Go if msg.kind == Go.KIND else Skip).parse(msg.meta)
                have, rejected = set(reply.have), set(reply.rejected)
                arrived = set(reply.arrived[:MAX_ARRIVED])
                gone = set(reply.absent) - arrived
                with self._req:
                    self._p1_has.update(arrived)
                    self._p1_has.difference_update(have | rejected | gone)
                    if len(self._p1_has) > 4 * MAX_QUEUE:  # ids P0 never got: forget them
                        self._p1_has &= {r.rid for r in self._queue}
                refused = [r for r in batch if r.rid in rejected]
                self._fail(refused, f"{self.peer_label} rejected this request")
                self._landed(refused)
                self._defer_or_fail([r for r in batch if r.rid not in have | rejected])
                batch = [r for r in batch if r.rid in have]  # what this lane holds now
                if isinstance(reply, Skip) or not batch:
                    batch = []
                    continue
                self._execute(s, lane, q, batch)
                lane.q = None
            except MpccError as e:
                self._query_failed(s, lane, batch, e)
                return
            except Exception as e:  # noqa: BLE001 - a bug: fail the query, keep the party
                self.log.exception("query failed")
                why = PartyError(f"internal error ({type(e).__name__})")
                self._query_failed(s, lane, batch, why)
                return
            finally:
                if q is not None:
                    s.settled(q)
                self._landed(batch)

    def _follow(self, s: PartySession, lane: Lane) -> None:
        """P1's loop on one lane: wait for P0's announcements over the lane's link, then
        run the announced requests."""
        while s.alive:
            batch: list[Request] = []  # to fail if the query fails
            held: list[Request] = []  # in flight on this lane
            q = None
            try:
                msg = lane.peer.poll(0.5)
                if msg is None:
                    continue
                if msg.kind != Announce.KIND:
                    raise PartyError(f"P0 sent {msg.kind!r} between queries")
                announced = Announce.parse(msg.meta)
                q = announced.q
                more = s.announced(q)
                with self._req:  # a query may be about to run: shutdown waits for it
                    self._idle.clear()
                batch, rejected, absent = self._gather(announced.reqs, s.dep.prog.batch)
                with self._req:
                    arrived, self._arrived = self._arrived, []
                    # as at P0: a request id being run is taken until its answer is sent
                    self._inflight.update((r.rid, r) for r in batch)
                held = batch
                reply = (Go if batch else Skip)([r.rid for r in batch], rejected, absent, arrived)
                reply.send(lane.peer)
                if more is not None:  # several lanes, or a stock of one: let the dealer on
                    # (after the reply, which P0 waits for: the dealer link may be busy with
                    # a bundle that the preparation thread, lower in priority, is reading)
                    Credit(more, s.answered).send(s.dealer)
                if not batch:
                    continue
                self._execute(s, lane, q, batch)
                batch = []  # answered
                Credit(s.credit()[0], s.answered).send(s.dealer)
            except MpccError as e:
                self._query_failed(s, lane, batch, e)
                return
            except Exception as e:  # noqa: BLE001 - a bug: fail the query, keep the party
                self.log.exception("query failed")
                why = PartyError(f"internal error ({type(e).__name__})")
                self._query_failed(s, lane, batch, why)
                return
            finally:
                if q is not None:
                    s.settled(q)
                self._landed(held)

    def _gather(self, reqs: list[list], cap: int) -> tuple[list[Request], list[str], list[str]]:
        """P1: of the announced requests ([id, rows] pairs, as `Announce` checked them),
        those it holds (in P0's order), the ids it rejected and the ids it has not received
        (it does not wait for them)."""
        if sum(rows for _, rows in reqs) > cap:
            raise PartyError(f"P0 announced more than a batch ({cap} rows) for one query")
        if len({rid for rid, _ in reqs}) != len(reqs):
            raise PartyError("P0 announced a request twice")
        with self._req:
            rejected = [
                rid
                for rid, rows in reqs
                if rid in self._rejected
                or (rid in self._pending and self._pending[rid].rows != rows)
            ]
            for rid in rejected:  # a request P0 sees otherwise: refused for good
                if rid in self._pending:
                    self._rejected[rid] = time.monotonic()
                    why = f"{self.label}: P0 holds another request under this id"
                    self._fail([self._pending.pop(rid)], why)
            absent = [rid for rid, _ in reqs if rid not in self._pending and rid not in rejected]
            have = [rid for rid, _ in reqs if rid not in rejected and rid not in absent]
            return [self._pending.pop(rid) for rid in have], rejected, absent

    def _execute(self, s: PartySession, lane: Lane, q: int, batch: list[Request]) -> None:
        """Run query q on the batch's shares (zero rows pad it) over the lane, and answer
        each client."""
        prog = s.dep.prog
        prep = s.wait_prepared(q)
        x = np.concatenate([r.share for r in batch]) if len(batch) > 1 else batch[0].share
        if len(x) < prog.batch:
            x = np.concatenate([x, np.zeros((prog.batch - len(x), *x.shape[1:]), np.uint64)])
        (in_name, _), (out_name, _) = prog.inputs[0], prog.outputs[0]
        t_before, w_before = lane.peer.traffic.snapshot(), lane.peer.wire.snapshot()
        start = time.monotonic()
        t0 = time.perf_counter()
        try:
            y = lane.ex.run(q, {in_name: x})[out_name]
        finally:
            s.online_over()
        online = time.perf_counter() - t0
        self.metrics.queries.inc()
        self.metrics.online.observe(online)
        s.consumed(q)
        used = lane.peer.traffic.since(t_before)
        stats = {
            "party": self.role,
            "session": s.sid[:8],
            "query": q,
            "lane": lane.index,
            "batch_requests": len(batch),
            "online_s": online,
            "offline_s": prep.offline_s,
            "ahead_s": max(0.0, start - prep.ready_at),
            "rounds": used.rounds,
            "sent": used.bytes_sent,
            "wire_sent": lane.peer.wire.sent - w_before.sent,
            "dealer_bytes": prep.dealer_bytes,
            "dealer_wire": prep.dealer_wire,
        }
        if len(batch) == 1 and not rows_independent(prog):
            stats["queued_s"] = start - batch[0].arrived
            self._answered(s, self._answer(batch[0], y, stats, s.dep.plan_hash))
            return
        if y.shape[0] != prog.batch:  # the row check lets no such plan batch requests
            raise PartyError(f"output shape {list(y.shape)} does not keep the batch first")
        row, answered = 0, 0
        for r in batch:
            stats["queued_s"] = start - r.arrived
            answered += self._answer(r, y[row : row + r.rows], dict(stats), s.dep.plan_hash)
            row += r.rows
        self._answered(s, answered)

    def _answered(self, s: PartySession, n: int) -> None:
        """Count a query's answered requests; P0 tells the dealer at once (before a request
        limit can end the session), so `--num-requests` stops the dealer too."""
        with s.cond:  # lanes answer from their own threads
            s.answered += n
            total = s.answered
        if self.party == 0:
            try:
                Answered(total).send(s.dealer)
            except PartyError:
                pass  # the session is ending: its error is reported where it is noticed

    def _query_failed(
        self, s: PartySession, lane: Lane, batch: list[Request], e: MpccError
    ) -> None:
        why = f"{self.label}: query failed: {e}" if s.alive else f"{self.label}: {s.ended}"
        if s.alive:
            lane.peer.abort(str(e))
        self._fail(batch, why)
        s.end(str(e))
