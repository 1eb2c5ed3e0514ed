"""A compute party's client links: reading and pacing them, admitting requests (the limits
per link, per client identity and in all), and answering them through each link's outbox.
Each link is a task of the party's control loop (`controlloop`, `controllink`); admission
runs in the loop (it holds `_req` only for a few list operations), answers are posted to the
outbox from the query loops' threads.

A mixin of `ComputeParty` (`mpcc.serving.party`), whose request state it uses: `_req` (the
lock and condition over all of it), `_queue` (P0), `_pending`, `_rejected` and `_arrived`
(P1), `_inflight` and `_outboxes`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpcc.compiler.batching import rows_independent
from mpcc.errors import InputError, PartyError
from mpcc.serving import heap, messages
from mpcc.serving.admission import Identity
from mpcc.serving.controllink import ControlLink
from mpcc.serving.messages import Hello, Welcome
from mpcc.serving.outbox import Outbox
from mpcc.serving.state import Deployment
from mpcc.serving.wire import Message

TRIM_EVERY_S = 60.0  # the janitor gives freed heap memory back this often
MAX_QUEUE = 1024
# Requests one client link may have waiting at a party (a client keeps `window` in flight).
MAX_PER_LINK = 32
MAX_ARRIVED = 1024  # request ids P1 reports per answer to an announcement
CLIENT_SEND_STALL_S = 1.0
REVOKED_CHECK_S = 1.0  # how often an open client link is checked against the revocation list


@dataclass
class Request:
    """One client request: a share of `rows` samples, waiting to be run."""

    rid: str
    rows: int
    share: np.ndarray
    ch: ControlLink
    arrived: float
    not_before: float = 0.0  # P0: P1 did not have it yet; offer it again from then on
    retries: int = 0
    who: str = "client"  # the client identity that sent it (its certificate's subject)


class StalePlan(InputError):
    """A request encoded for another plan than the one deployed (the client must re-read)."""


def _identity_of(ch: Any) -> str:
    """The client identity of a link (its certificate's subject; "?" if it names none)."""
    return getattr(ch, "peer_identity", None) or "?"


def _who(r: Request) -> str:
    return r.who


class ClientLinks:
    """Client links and request admission (a mixin of `ComputeParty`)."""

    async def on_client(self, ch: ControlLink, hello: Hello) -> None:
        """A client link, a task of the control loop: read, pace and admit its messages until
        it leaves, idles out, is revoked, or the party stops; answers go through its outbox."""
        # A client that stops reading must not hold up the query loop that answers it: a
        # send to it that makes no progress for this long fails, and its link is closed.
        ch.timeout = min(self.cfg.serving.timeout_s, CLIENT_SEND_STALL_S)
        dep = self.deployment
        ch.limit_frames(self._client_frame_limit(dep))
        who = self._identity(_identity_of(ch))
        outbox = Outbox(ch, self.log, account=who)
        outbox.post(Welcome.KIND, Welcome(self.role).to_meta())
        with self._req:
            self._outboxes[ch] = outbox
        heard = checked = time.monotonic()
        try:
            while not self._clients_done.is_set():
                if self.deployment is not dep:  # a model was deployed: its input size
                    dep = self.deployment
                    ch.limit_frames(self._client_frame_limit(dep))
                if time.monotonic() - checked >= REVOKED_CHECK_S:
                    checked = time.monotonic()
                    if self._revoked(ch):
                        self.log.warning("closing the link to %s: certificate revoked", ch.peer)
                        break
                msg = await ch.recv(0.5)
                if msg is None:
                    if time.monotonic() - heard > self.cfg.serving.client_idle_s and (
                        self._idle_link(ch, outbox)
                    ):
                        self.log.info("closing the idle link to %s", ch.peer)
                        break
                    continue
                heard = time.monotonic()
                await self._pace(ch, who)
                if msg.kind == "info":
                    outbox.post("info", self.info())
                elif msg.kind == messages.Request.KIND:
                    self._on_request(ch, msg)
                else:
                    err = messages.ErrorReply(f"unknown request kind {msg.kind!r}")
                    outbox.post(err.KIND, err.to_meta())
        except PartyError:
            pass  # the client left, or sent a bad frame (logged by the link)
        finally:
            with self._req:  # its waiting requests can no longer be answered: drop them
                del self._outboxes[ch]
                self._queue = deque(r for r in self._queue if r.ch is not ch)
                for rid in [rid for rid, r in self._pending.items() if r.ch is ch]:
                    del self._pending[rid]
            await outbox.aclose(self.cfg.serving.timeout_s)
            ch.close("client link done")
            self.metrics.link_closed("client", ch.wire.sent, ch.wire.received)

    def _identity(self, name: str) -> Identity:
        """The state of one client identity, shared by its links (kept while the party runs,
        so reconnecting does not refill its rate bucket)."""
        s = self.cfg.serving
        with self._req:
            if name not in self._identities:
                limit = int(s.client_queue_mb * 2**20)
                self._identities[name] = Identity(name, s.client_rate, s.client_burst, limit)
            return self._identities[name]

    def _revoked(self, ch: ControlLink) -> bool:
        return self.listener is not None and self.listener.revocations.revoked(ch.peer_serial)

    async def _pace(self, ch: ControlLink, who: Identity) -> None:
        """Hold this link's next read until its identity's rate allows another message:
        a client over `client_rate` is slowed down (TCP pushes back), not queued for."""
        delay = who.bucket.reserve()
        until = time.monotonic() + delay
        while delay > 0 and ch.closed is None and not self._clients_done.is_set():
            await asyncio.sleep(min(delay, 0.5))
            delay = until - time.monotonic()

    def _idle_link(self, ch: ControlLink, outbox: Outbox) -> bool:
        """Whether a client link holds nothing: no request waiting or running, no answer
        still to send (an idle link only takes a connection slot)."""
        with self._req:
            held = [*self._queue, *self._pending.values(), *self._inflight.values()]
            return not any(r.ch is ch for r in held) and outbox.waiting[0] == 0

    def _client_frame_limit(self, dep: Deployment | None) -> int:
        """The largest frame a client may send: one share of at most a batch of the deployed
        plan's input, or small requests only while no model is deployed."""
        if dep is None:
            return min(self.cfg.serving.max_frame_bytes, 64 * 1024)
        shape = dep.prog.value(dep.prog.inputs[0][1]).shape
        return min(self.cfg.serving.max_frame_bytes, 8 * math.prod(shape) + 4096)

    def _on_request(self, ch: ControlLink, msg: Message) -> None:
        self.metrics.requests.inc()
        rid = messages.Request.rid_of(msg.meta)
        try:
            req = self._check_request(msg)
        except (InputError, messages.MalformedMessage) as e:
            self.log.warning("rejected request %s from %s: %s", (rid or "?")[:8], ch.peer, e)
            if rid is not None:
                self._reject(
                    ch, rid, str(e), code="stale_plan" if isinstance(e, StalePlan) else None
                )
            else:
                self.metrics.failed("malformed request")
                self._post(ch, messages.ErrorReply(f"{self.label} rejected a request: {e}"))
            return
        rid = req.rid
        who = self._identity(_identity_of(ch))
        r = Request(rid, req.rows, msg.arrays[0], ch, time.monotonic(), who=who.name)
        serving = self.cfg.serving
        why = None
        with self._req:
            held = [*self._queue, *self._pending.values()]
            mine = [h for h in held if h.who == who.name]
            if self.stop_event.is_set():
                why = "the party is shutting down"
            elif (
                rid in self._pending
                or rid in self._inflight
                or any(q.rid == rid for q in self._queue)
            ):
                why = "duplicate request id"
            elif (
                len(held) >= MAX_QUEUE
                or sum(h.share.nbytes for h in held) + r.share.nbytes
                > self.cfg.serving.max_queue_mb * 2**20
            ):
                why = "too many queued requests"
            elif len(mine) >= serving.client_queue:
                why = (
                    f"client {who.name} has {len(mine)} requests waiting (its limit, client_queue)"
                )
            elif (
                sum(h.share.nbytes for h in mine) + r.share.nbytes + who.answer_bytes
                > serving.client_queue_mb * 2**20
            ):
                why = (
                    f"client {who.name} has more than {serving.client_queue_mb:g} MB waiting "
                    "(its limit, client_queue_mb)"
                )
            elif sum(h.ch is ch for h in held) >= MAX_PER_LINK:
                why = f"more than {MAX_PER_LINK} requests from one connection are waiting"
            elif self.party == 0:
                self._queue.append(r)
            else:
                self._pending[rid] = r
                if len(self._arrived) < MAX_ARRIVED:
                    self._arrived.append(rid)
            self._req.notify_all()
        if why == "duplicate request id":  # the first one stands
            self._send_failed(ch, rid, f"{self.label} rejected the request: {why}")
        elif why is not None:
            self._reject(ch, rid, why)

    def _reject(self, ch: ControlLink, rid: str, why: str, code: str | None = None) -> None:
        """Refuse a request; P1 remembers it, so P0 fails its twin at once."""
        with self._req:
            self._rejected[rid] = time.monotonic()
            while len(self._rejected) > MAX_QUEUE:
                self._rejected.popitem(last=False)
        self._send_failed(ch, rid, f"{self.label} rejected the request: {why}", code)

    def _check_request(self, msg: Message) -> messages.Request:
        """The request, checked against the deployed plan; InputError (StalePlan if it was
        encoded for another plan) or MalformedMessage if it cannot be run."""
        dep = self.deployment
        if dep is None:
            raise InputError(f"no model is deployed at {self.label}")
        req = messages.Request.parse(msg.meta)
        rows, plan = req.rows, req.plan
        if plan != dep.plan_hash:
            raise StalePlan(
                f"the request was encoded for plan {str(plan)[:12]}, but {self.label} serves "
                f"plan {dep.plan_hash[:12]} (a model was deployed since): read the plan's "
                "interface again"
            )
        prog = dep.prog
        shape = prog.value(prog.inputs[0][1]).shape
        if rows > prog.batch:
            raise InputError(f"a request carries 1 to {prog.batch} samples, not {rows!r}")
        if rows != prog.batch and not rows_independent(prog):
            raise InputError(
                f"this plan mixes samples across its batch axis, so a request carries exactly "
                f"{prog.batch} samples, not {rows}"
            )
        if len(msg.arrays) != 1:
            raise InputError("a request carries exactly one share")
        a = msg.arrays[0]
        want = (rows, *shape[1:])
        if a.dtype != np.uint64 or a.shape != want:
            raise InputError(
                f"input share is {a.dtype}{list(a.shape)}, expected uint64{list(want)}"
            )
        return req

    def _post(
        self, ch: ControlLink, msg: messages.ControlMessage, arrays: list[np.ndarray] | None = None
    ) -> bool:
        """Queue a message for a client (False if its link is gone); never blocks."""
        with self._req:
            outbox = self._outboxes.get(ch)
        if outbox is None:
            return False
        outbox.post(msg.KIND, msg.to_meta(), arrays)
        return True

    def _send_failed(self, ch: ControlLink, rid: str, why: str, code: str | None = None) -> None:
        self.metrics.failed(why, code)
        # `code`: what the client can act on ("stale_plan": read the plan again)
        self._post(ch, messages.Failed(rid, why, code))

    def _fail(self, reqs: list[Request], why: str) -> None:
        for r in reqs:
            self._send_failed(r.ch, r.rid, why)

    def _answer(self, r: Request, y: np.ndarray, stats: dict[str, Any], plan: str) -> int:
        """Hand a result to its client's outbox: 1 if it was, 0 if the client left. `plan`:
        the hash of the plan that computed it, which the client checks before decoding."""
        if not self._post(r.ch, messages.Result(r.rid, plan, stats), [y]):
            self.log.info("could not answer request %s: its client left", r.rid[:8])
            return 0
        with self._req:  # lanes answer from their own threads
            self.answered += 1
        self.metrics.answers.inc()
        self.metrics.latency.observe(time.monotonic() - r.arrived)
        if self.num_requests is not None and self.answered >= self.num_requests:
            self.stop(f"answered {self.answered} requests")
        return 1

    def drop_requests(self, why: str) -> None:
        """Fail every waiting request: its twin at the other party may be gone with the session."""
        with self._req:
            stale = list(self._queue) + list(self._pending.values())
            self._queue.clear()
            self._pending.clear()
            self._p1_has.clear()
            self._arrived.clear()
        self._fail(stale, f"{self.label}: {why}; please retry")

    def _janitor_loop(self) -> None:
        """Fail requests that can no longer be served in time."""
        t = self.cfg.serving
        trimmed = time.monotonic()
        while not self.stop_event.wait(0.25):
            now = time.monotonic()
            if now - trimmed > TRIM_EVERY_S:
                heap.trim()  # client links come and go: give their freed memory back
                trimmed = now
            expired: list[tuple[Request, str]] = []
            s = self._session
            with self._req:
                if self.party == 0 and (s is None or not s.alive):
                    waiting = "waiting for the dealer and P1"
                    if not self.kernels_ready.is_set():
                        waiting = "P0 is still loading its kernels"
                    while self._queue and now - self._queue[0].arrived > t.timeout_s:
                        why = self.last_error or waiting
                        expired.append((self._queue.popleft(), f"no session ({why})"))
                for rid, r in list(self._pending.items()):
                    if now - r.arrived > t.client_timeout_s:
                        del self._pending[rid]
                        expired.append((r, "P0 did not schedule this request in time"))
                while self._rejected and now - next(iter(self._rejected.values())) > 60:
                    self._rejected.popitem(last=False)
            for r, why in expired:
                self._fail([r], f"{self.label}: {why}")
