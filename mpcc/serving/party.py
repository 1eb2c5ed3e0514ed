"""A compute party (P0 or P1) as a long-running server.

Links: clients and the owner dial in; the dealer dials in to start each session; P1 dials
P0 for their peer link. A session starts when the dealer offers one: the three compare the
plan hash and deployment id, derive the session id from everyone's contribution, the
dealer sends each party its seed, P0 and P1 check each other (including the owner's
commitments to their weight shares) and open the masked weights.

Queries: clients send one share of an input batch to each party, tagged with a request
id. P0 leads: it takes queued requests (several per query if the plan's batch allows),
announces them to P1, and both run the plan on the shares and answer the client. P1 keeps
its requests until P0 announces them. Preprocessing is made ahead in the background, up to
`stock` queries within `stock_mb` of memory (P0 expands its seed; P1 also takes the dealer's
corrections), so a query pays only the online phase. Any fault inside a session -- a peer
that dies, a link that drops or stalls, a malformed frame -- fails the queries in flight
with a clear error and ends the session on all three parties; the dealer then starts a new
one, with fresh seeds and material.
"""

from __future__ import annotations

import math
import queue
import re
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mpcc.compiler.batching import rows_independent
from mpcc.compiler.costmodel import estimate
from mpcc.errors import InputError, MpccError, PartyError
from mpcc.runtime.executor import PartyExecutor
from mpcc.runtime.material import Bundle
from mpcc.runtime.session import Session
from mpcc.serving.config import ClusterConfig
from mpcc.serving.server import PartyServer
from mpcc.serving.startup import (
    contribution,
    mismatch,
    prg_kat,
    session_id,
)
from mpcc.serving.state import Deployment, load_shares
from mpcc.serving.tls import LinkRefused, TlsChannel, dial
from mpcc.serving.wire import Message

RID = re.compile(r"^[0-9a-f]{16,64}$")
MAX_QUEUE = 1024
# Requests one client link may have waiting at a party (a client keeps `window` in flight).
MAX_PER_LINK = 32
# P0 offers a request P1 did not have again after RETRY_S * 4^k (k-th time), at most
# RETRY_MAX_S apart, until timeout_s after it arrived. P1 never waits for a request, and
# P0 fills a batch with requests P1 is known to hold first: a client that sends a share to
# P0 alone slows nobody else down.
RETRY_S = 0.002
RETRY_MAX_S = 0.5
MAX_ARRIVED = 1024  # request ids P1 reports per answer to an announcement
CLIENT_SEND_STALL_S = 1.0


@dataclass
class Request:
    """One client request: a share of `rows` samples, waiting to be run."""

    rid: str
    rows: int
    share: np.ndarray
    ch: TlsChannel
    arrived: float
    not_before: float = 0.0  # P0: P1 did not have it yet; offer it again from then on
    retries: int = 0


@dataclass
class Prepared:
    offline_s: float  # expanding this party's material (P1: plus the dealer's dealing time)
    ready_at: float
    dealer_bytes: int = 0
    dealer_wire: int = 0


class StalePlan(InputError):
    """A request encoded for another plan than the one deployed (the client must re-read)."""


class Outbox:
    """Messages to one client, sent by a thread of their own: the query loops hand answers
    over and go on, so a client that reads slowly (or not at all) delays nobody else.

    It is bounded: a client that asks faster than it reads (say `info` at thousands a
    second, reading a little now and then, so no single send stalls) would otherwise grow
    the queue without limit. Past `max_messages` or `max_bytes` waiting, the link is closed."""

    MAX_MESSAGES = 256
    MAX_BYTES = 64 * 2**20

    def __init__(
        self, ch: TlsChannel, log: Any, max_messages: int = MAX_MESSAGES, max_bytes: int = MAX_BYTES
    ) -> None:
        self.ch, self.log = ch, log
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self._q: queue.SimpleQueue[tuple[str, dict[str, Any], list[np.ndarray]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._waiting = 0  # messages posted and not yet sent (or dropped)
        self._bytes = 0
        self._thread = threading.Thread(target=self._run, name="mpcc-outbox", daemon=True)
        self._thread.start()

    def post(self, kind: str, meta: dict[str, Any], arrays: list[np.ndarray] | None = None) -> None:
        arrays = arrays or []
        size = _message_bytes(arrays)
        with self._lock:
            over = self._waiting >= self.max_messages or self._bytes + size > self.max_bytes
            if not over:
                self._waiting += 1
                self._bytes += size
        if over:
            if self.ch.closed is None:
                self.log.warning(
                    "closing the link to %s: it does not read its answers (%d messages, "
                    "%d bytes waiting)",
                    self.ch.peer,
                    self._waiting,
                    self._bytes,
                )
                self.ch.close("the client does not read its answers")
            return
        self._q.put((kind, meta, arrays))

    @property
    def waiting(self) -> tuple[int, int]:
        """Messages and bytes posted and not yet sent."""
        with self._lock:
            return self._waiting, self._bytes

    def close(self, timeout: float) -> None:
        """Send what is queued (within `timeout` s), then stop."""
        self._q.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            if self.ch.closed is None:
                try:
                    self.ch.send_msg(*item)
                except PartyError as e:  # the link closes itself; later items are dropped
                    self.log.info("could not send a %s to %s: %s", item[0], self.ch.peer, e)
            with self._lock:
                self._waiting -= 1
                self._bytes -= _message_bytes(item[2])


def _message_bytes(arrays: list[np.ndarray]) -> int:
    return sum(a.nbytes for a in arrays) + 256  # arrays plus a header's worth


def _rids(value: Any) -> list[str]:
    """A list of request ids from a peer's message (anything else: PartyError)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PartyError("P1 sent a malformed answer to an announcement")
    return value


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


class ComputeParty(PartyServer):
    """P0 (leader) or P1 (follower)."""

    def __init__(
        self,
        cfg: ClusterConfig,
        role: str,
        state_dir: Path | None = None,
        num_requests: int | None = None,
    ) -> None:
        if role not in ("p0", "p1"):
            raise MpccError(f"a compute party is p0 or p1, not {role!r}")
        super().__init__(cfg, role, state_dir, num_requests)
        self.party = int(role[1])
        self.label = role.upper()
        self.peer_label = "P1" if self.party == 0 else "P0"
        self._session: PartySession | None = None
        self._session_lock = threading.Lock()
        self._req = threading.Condition()
        self._queue: deque[Request] = deque()  # P0: waiting to be scheduled
        self._pending: dict[str, Request] = {}  # P1: waiting to be announced by P0
        self._rejected: OrderedDict[str, float] = OrderedDict()  # P1: rids it refused
        self._arrived: list[str] = []  # P1: rids received since its last answer to P0
        self._p1_has: set[str] = set()  # P0: rids P1 said it received
        self._inflight: dict[str, Request] = {}  # the batch being announced (P0) or run
        self._peer_links: queue.Queue[tuple[Any, TlsChannel]] = queue.Queue()
        self._idle = threading.Event()
        self._idle.set()
        # client links stay open until shutdown has answered or failed what they wait for
        self._clients_done = threading.Event()
        self._outboxes: dict[TlsChannel, Outbox] = {}
        self.answered = 0
        self._janitor = threading.Thread(
            target=self._janitor_loop, name="mpcc-janitor", daemon=True
        )

    # -- links ------------------------------------------------------------------------------
    def handlers(self):
        h = super().handlers()
        h["client"] = ({"client"}, self.on_client)
        h["dealer"] = ({"dealer"}, self.on_dealer)
        if self.party == 0:
            h["peer"] = ({"p1"}, self.on_peer)
        return h

    def start(self) -> None:
        super().start()
        self._janitor.start()

    def on_peer(self, ch: TlsChannel, hello: Message) -> None:
        """P1's link: kept for the session start-up waiting for it."""
        ch.peer = "P1"
        ch.send_msg("welcome", {"role": self.role})
        self._peer_links.put((hello.meta.get("sid"), ch))

    def info(self) -> dict[str, Any]:
        """Public facts for clients: the plan's interface, the session, counters."""
        dep, s = self.deployment, self._session
        d: dict[str, Any] = {
            "role": self.role,
            "deployed": dep is not None,
            "session": s.sid if s is not None and s.alive else None,
            "answered": self.answered,
            "last_error": self.last_error,
            "kernels_ready": self.kernels_ready.is_set(),
        }
        if s is not None and s.alive:  # how far ahead preprocessing runs, and its memory
            d.update(
                stock=s.stock(),
                query_material_bytes=s.query_bytes,
                material_held_bytes=len(s.prepared) * s.query_bytes,
            )
        if dep is not None:
            prog = dep.prog
            (_, in_vid), (out_name, out_vid) = prog.inputs[0], prog.outputs[0]
            d.update(
                plan_hash=dep.plan_hash,
                name=prog.name,
                input_shape=list(prog.value(in_vid).shape),
                batch=prog.batch,
                frac_bits=prog.frac_bits,
                output_name=out_name,
                output_shape=list(prog.value(out_vid).shape),
                output_scale=prog.value(out_vid).scale,
                rows_independent=rows_independent(prog),
            )
        return d

    # -- clients ----------------------------------------------------------------------------
    def on_client(self, ch: TlsChannel, hello: Message) -> None:
        # A client that stops reading must not hold up the query loop that answers it: a
        # send to it that makes no progress for this long fails, and its link is closed.
        ch.timeout = min(self.cfg.serving.timeout_s, CLIENT_SEND_STALL_S)
        dep = self.deployment
        ch.limit_frames(self._client_frame_limit(dep))
        ch.send_msg("welcome", {"role": self.role})
        outbox = Outbox(ch, self.log)
        with self._req:
            self._outboxes[ch] = outbox
        heard = time.monotonic()
        try:
            while not self._clients_done.is_set():
                if self.deployment is not dep:  # a model was deployed: its input size
                    dep = self.deployment
                    ch.limit_frames(self._client_frame_limit(dep))
                msg = ch.poll(0.5)
                if msg is None:
                    if time.monotonic() - heard > self.cfg.serving.client_idle_s and (
                        self._idle_link(ch, outbox)
                    ):
                        self.log.info("closing the idle link to %s", ch.peer)
                        break
                    continue
                heard = time.monotonic()
                if msg.kind == "info":
                    outbox.post("info", self.info())
                elif msg.kind == "request":
                    self._on_request(ch, msg)
                else:
                    outbox.post("error", {"msg": f"unknown request kind {msg.kind!r}"})
        except PartyError:
            pass  # the client left, or sent a bad frame (logged by the link)
        finally:
            with self._req:  # its waiting requests can no longer be answered: drop them
                del self._outboxes[ch]
                self._queue = deque(r for r in self._queue if r.ch is not ch)
                for rid in [rid for rid, r in self._pending.items() if r.ch is ch]:
                    del self._pending[rid]
            outbox.close(self.cfg.serving.timeout_s)
            ch.close("client link done")

    def _idle_link(self, ch: TlsChannel, outbox: Outbox) -> bool:
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

    def _on_request(self, ch: TlsChannel, msg: Message) -> None:
        rid = msg.meta.get("rid")
        try:
            rid = self._check_request(msg)
        except InputError as e:
            shown = rid[:8] if isinstance(rid, str) and RID.match(rid) else "?"
            self.log.warning("rejected request %s from %s: %s", shown, ch.peer, e)
            if isinstance(rid, str) and RID.match(rid):
                self._reject(
                    ch, rid, str(e), code="stale_plan" if isinstance(e, StalePlan) else None
                )
            else:
                self._post(ch, "error", {"msg": f"{self.label} rejected a request: {e}"})
            return
        r = Request(rid, int(msg.meta["rows"]), msg.arrays[0], ch, time.monotonic())
        why = None
        with self._req:
            held = [*self._queue, *self._pending.values()]
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

    def _reject(self, ch: TlsChannel, rid: str, why: str, code: str | None = None) -> None:
        """Refuse a request; P1 remembers it, so P0 fails its twin at once."""
        with self._req:
            self._rejected[rid] = time.monotonic()
            while len(self._rejected) > MAX_QUEUE:
                self._rejected.popitem(last=False)
        self._send_failed(ch, rid, f"{self.label} rejected the request: {why}", code)

    def _check_request(self, msg: Message) -> str:
        dep = self.deployment
        if dep is None:
            raise InputError(f"no model is deployed at {self.label}")
        rid, rows = msg.meta.get("rid"), msg.meta.get("rows")
        if not isinstance(rid, str) or not RID.match(rid):
            raise InputError("malformed request id")
        plan = msg.meta.get("plan")
        if plan != dep.plan_hash:
            raise StalePlan(
                f"the request was encoded for plan {str(plan)[:12]}, but {self.label} serves "
                f"plan {dep.plan_hash[:12]} (a model was deployed since): read the plan's "
                "interface again"
            )
        prog = dep.prog
        shape = prog.value(prog.inputs[0][1]).shape
        if not isinstance(rows, int) or not 1 <= rows <= prog.batch:
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
        return rid

    def _post(self, ch: TlsChannel, kind: str, meta: dict[str, Any], arrays=None) -> bool:
        """Queue a message for a client (False if its link is gone); never blocks."""
        with self._req:
            outbox = self._outboxes.get(ch)
        if outbox is None:
            return False
        outbox.post(kind, meta, arrays)
        return True

    def _send_failed(self, ch: TlsChannel, rid: str, why: str, code: str | None = None) -> None:
        meta = {"rid": rid, "msg": why}
        if code is not None:  # what the client can act on ("stale_plan": read the plan again)
            meta["code"] = code
        self._post(ch, "failed", meta)

    def _fail(self, reqs: list[Request], why: str) -> None:
        for r in reqs:
            self._send_failed(r.ch, r.rid, why)

    def _answer(self, r: Request, y: np.ndarray, stats: dict[str, Any], plan: str) -> int:
        """Hand a result to its client's outbox: 1 if it was, 0 if the client left. `plan`:
        the hash of the plan that computed it, which the client checks before decoding."""
        meta = {"rid": r.rid, "plan": plan, "stats": stats}
        if not self._post(r.ch, "result", meta, [y]):
            self.log.info("could not answer request %s: its client left", r.rid[:8])
            return 0
        self.answered += 1
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
        while not self.stop_event.wait(0.25):
            now = time.monotonic()
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

    # -- sessions ---------------------------------------------------------------------------
    def on_new_deployment(self) -> None:
        self._end_session("a new model was deployed")

    def _end_session(self, reason: str) -> None:
        with self._session_lock:
            s, self._session = self._session, None
        if s is not None:
            s.end(reason)

    def on_dealer(self, ch: TlsChannel, hello: Message) -> None:
        """The dealer starts a session; this thread then runs it until it ends."""
        ch.peer = "dealer"
        self._end_session("the dealer started a new session")
        ch.send_msg("welcome", {"role": self.role})
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
                ch.send_msg("error", {"msg": str(e)})
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

    def _setup(self, dealer: TlsChannel) -> PartySession:
        t = self.cfg.serving.setup_timeout_s
        offer = dealer.recv_msg(t, expect="offer")
        self.await_kernels(t)  # no session before the kernels are loaded: none compiles online
        dep = self.deployment
        if dep is None:
            why = f" (its stored one was rejected: {self.load_error})" if self.load_error else ""
            raise PartyError(f"no model is deployed at {self.label}{why}")
        if dep.role != self.role:  # e.g. the other party's deployment.npz copied here
            held = str(dep.role).upper()
            raise PartyError(f"{self.label} holds {held}'s weight shares; deploy the model again")
        mismatch("plan hash", dep.plan_hash, offer.meta.get("plan_hash"), self.label, "dealer")
        mismatch("deployment", dep.deploy_id, offer.meta.get("deploy_id"), self.label, "dealer")
        mine, kat = contribution(), prg_kat()
        dealer.send_msg(
            "accept",
            {
                "plan_hash": dep.plan_hash,
                "deploy_id": dep.deploy_id,
                "contribution": mine,
                "kat": kat,
            },
        )
        start = dealer.recv_msg(t, expect="start")
        contribs = start.meta.get("contributions")
        if not isinstance(contribs, dict):
            raise PartyError("malformed session start")
        mismatch(
            "contribution of " + self.label, mine, contribs.get(self.role), self.label, "dealer"
        )
        sid = session_id(dep.plan_hash, dep.deploy_id, contribs)
        mismatch("session id", sid, start.meta.get("sid"), self.label, "dealer")
        if (
            len(start.arrays) != 1
            or start.arrays[0].dtype != np.uint8
            or start.arrays[0].size != 16
        ):
            raise PartyError("the dealer sent a malformed seed")
        seed = start.arrays[0].tobytes()
        peer = self._peer_link(sid, t, dealer)
        try:
            check = {
                "plan_hash": dep.plan_hash,
                "deploy_id": dep.deploy_id,
                "sid": sid,
                "kat": kat,
                "contributions": contribs,
                # both commitments, so a corrupted or foreign share at either party (checked
                # against its own commitment on load) or a mixed deployment is caught here
                "weight_share_commitments": dep.commitments,
            }
            peer.send_msg("check", check)
            theirs = peer.recv_msg(t, expect="check").meta
            for k, v in check.items():
                mismatch(k.replace("_", " "), v, theirs.get(k), self.label, self.peer_label)
            s = PartySession(self, dep, sid, seed, dealer, peer, load_shares(self.state_dir, dep))
            s.ex.open_weights()
            dealer.send_msg("ready", {"sid": sid})
            if self.party == 1:
                dealer.send_msg("credit", {"upto": s.stock() - 1, "answered": 0})
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
                    ch, _ = dial(
                        self.cfg, self.client_ctx, "p0", me="p1", link="peer", meta={"sid": sid}
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
                    raise PartyError(f"P1 did not connect within {timeout:g} s") from None
                continue
            if got == sid and ch.closed is None:
                return ch
            ch.close("stale session")

    # -- preprocessing ----------------------------------------------------------------------
    def _prepare_loop(self, s: PartySession) -> None:
        """Keep up to `s.stock()` queries of material ready (P1: as the dealer's bundles
        arrive; its credit to the dealer holds the dealer to that stock)."""
        try:
            while s.alive:
                s.wait_to_prepare(full=self.party == 0)
                if not s.alive:
                    return
                if self.party == 0:
                    q = s.prepared_upto + 1
                    t0 = time.perf_counter()
                    nbytes = s.ex.prepare(q, None, s.yield_to_online)
                    p = Prepared(time.perf_counter() - t0, time.monotonic())
                    s.mark_prepared(q, p, nbytes)
                else:
                    msg = s.dealer.poll(0.5)
                    if msg is None:
                        continue
                    if msg.kind != "bundle":
                        raise PartyError(f"the dealer sent {msg.kind!r} where material was due")
                    s.wait_to_prepare(full=False)  # a query may have started meanwhile
                    if not s.alive:
                        return
                    t0 = time.perf_counter()
                    bundle = Bundle.from_arrays(msg.arrays)
                    if bundle.query != s.prepared_upto + 1:
                        raise PartyError(f"the dealer sent material for query {bundle.query}")
                    nbytes = s.ex.prepare(bundle.query, bundle, s.yield_to_online)
                    deal_s = float(msg.meta.get("deal_s", 0.0))
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

    # -- queries ----------------------------------------------------------------------------
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
        return known + rest

    def _next_ready_in(self) -> float:
        """Seconds until a deferred request may be offered again (at most 0.2)."""
        later = [r.not_before for r in self._queue if r.not_before > 0]
        return max(0.001, min([0.2, *(t - time.monotonic() for t in later)]))

    def _dequeue(self, reqs: list[Request]) -> list[Request]:
        """Take these requests out of the queue (with `_req` held): they are in flight, and
        `_idle` says so before the lock is let go, so shutdown waits for them."""
        taken = {id(r) for r in reqs}
        self._queue = deque(r for r in self._queue if id(r) not in taken)
        self._inflight = {r.rid: r for r in reqs}
        if reqs:
            self._idle.clear()
        return reqs

    def _requeue(self, reqs: list[Request], front: bool = True) -> None:
        with self._req:
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
        keep = [r for r in reqs if now - r.arrived < limit]
        for r in keep:
            r.retries += 1
            r.not_before = now + min(RETRY_MAX_S, RETRY_S * 4 ** min(r.retries, 8))
        self._requeue(keep, front=False)

    def _lead(self, s: PartySession) -> None:
        """P0's loop: schedule queued requests, announce them to P1, run them."""
        t = self.cfg.serving.timeout_s
        while s.alive and not self.stop_event.is_set():
            batch = self._take_batch(s)
            if not batch:
                continue
            if self.stop_event.is_set() or not s.alive:
                if self.stop_event.is_set():
                    self._fail(batch, f"{self.label} is shutting down")
                else:
                    self._requeue(batch)
                with self._req:
                    self._inflight = {}
                self._idle.set()
                return
            try:
                q = s.next_q
                s.peer.send_msg("announce", {"q": q, "reqs": [[r.rid, r.rows] for r in batch]})
                reply = s.peer.recv_msg(2 * t + 1)
                if reply.kind not in ("go", "skip"):
                    raise PartyError(f"P1 answered the announcement with {reply.kind!r}")
                have = set(_rids(reply.meta.get("have")))
                rejected = set(_rids(reply.meta.get("rejected")))
                arrived = set(_rids(reply.meta.get("arrived", []))[:MAX_ARRIVED])
                gone = set(_rids(reply.meta.get("absent", []))) - arrived
                with self._req:
                    self._p1_has.update(arrived)
                    self._p1_has.difference_update(have | rejected | gone)
                    if len(self._p1_has) > 4 * MAX_QUEUE:  # ids P0 never got: forget them
                        self._p1_has &= {r.rid for r in self._queue}
                self._fail(
                    [r for r in batch if r.rid in rejected],
                    f"{self.peer_label} rejected this request",
                )
                self._defer_or_fail([r for r in batch if r.rid not in have | rejected])
                batch = [r for r in batch if r.rid in have]
                if reply.kind == "skip" or not batch:
                    batch = []
                    continue
                self._execute(s, q, batch)
            except MpccError as e:
                self._query_failed(s, batch, e)
                return
            except Exception as e:  # noqa: BLE001 - a bug: fail the query, keep the party
                self.log.exception("query failed")
                self._query_failed(s, batch, PartyError(f"internal error ({type(e).__name__})"))
                return
            finally:
                with self._req:
                    self._inflight = {}
                self._idle.set()

    def _follow(self, s: PartySession) -> None:
        """P1's loop: wait for P0's announcements, then run the announced requests."""
        while s.alive:
            batch: list[Request] = []
            try:
                msg = s.peer.poll(0.5)
                if msg is None:
                    continue
                self._idle.clear()
                if msg.kind != "announce":
                    raise PartyError(f"P0 sent {msg.kind!r} between queries")
                q, reqs = msg.meta.get("q"), msg.meta.get("reqs")
                if q != s.next_q:
                    raise PartyError(f"P0 announced query {q}, expected {s.next_q}")
                batch, rejected, absent = self._gather(reqs, s.dep.prog.batch)
                with self._req:
                    arrived, self._arrived = self._arrived, []
                    # as at P0: a request id being run is taken until its answer is sent
                    self._inflight = {r.rid: r for r in batch}
                reply = {
                    "have": [r.rid for r in batch],
                    "rejected": rejected,
                    "absent": absent,
                    "arrived": arrived,
                }
                if not batch:
                    s.peer.send_msg("skip", reply)
                    continue
                s.peer.send_msg("go", reply)
                self._execute(s, q, batch)
                batch = []  # answered
                credit = {"upto": s.next_q - 1 + s.stock(), "answered": s.answered}
                s.dealer.send_msg("credit", credit)
            except MpccError as e:
                self._query_failed(s, batch, e)
                return
            except Exception as e:  # noqa: BLE001 - a bug: fail the query, keep the party
                self.log.exception("query failed")
                self._query_failed(s, batch, PartyError(f"internal error ({type(e).__name__})"))
                return
            finally:
                with self._req:
                    self._inflight = {}
                self._idle.set()

    def _gather(self, reqs: Any, cap: int) -> tuple[list[Request], list[str], list[str]]:
        """P1: of the announced requests, those it holds (in P0's order), the ids it
        rejected and the ids it has not received (it does not wait for them)."""
        if (
            not isinstance(reqs, list)
            or not reqs
            or not all(
                isinstance(x, list)
                and len(x) == 2
                and isinstance(x[0], str)
                and isinstance(x[1], int)
                for x in reqs
            )
            or sum(x[1] for x in reqs) > cap
        ):
            raise PartyError("P0 sent a malformed announcement")
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

    def _execute(self, s: PartySession, q: int, batch: list[Request]) -> None:
        """Run query q on the batch's shares (zero rows pad it) and answer each client."""
        prog = s.dep.prog
        prep = s.wait_prepared(q)
        x = np.concatenate([r.share for r in batch]) if len(batch) > 1 else batch[0].share
        if len(x) < prog.batch:
            x = np.concatenate([x, np.zeros((prog.batch - len(x), *x.shape[1:]), np.uint64)])
        (in_name, _), (out_name, _) = prog.inputs[0], prog.outputs[0]
        t_before, w_before = s.peer.traffic.snapshot(), s.peer.wire.snapshot()
        start = time.monotonic()
        t0 = time.perf_counter()
        try:
            y = s.ex.run(q, {in_name: x})[out_name]
        finally:
            s.online_over()
        online = time.perf_counter() - t0
        s.consumed(q)
        used = s.peer.traffic.since(t_before)
        stats = {
            "party": self.role,
            "session": s.sid[:8],
            "query": q,
            "batch_requests": len(batch),
            "online_s": online,
            "offline_s": prep.offline_s,
            "ahead_s": max(0.0, start - prep.ready_at),
            "rounds": used.rounds,
            "sent": used.bytes_sent,
            "wire_sent": s.peer.wire.sent - w_before.sent,
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
        s.answered += n
        if self.party == 0:
            try:
                s.dealer.send_msg("answered", {"answered": s.answered})
            except PartyError:
                pass  # the session is ending: its error is reported where it is noticed

    def _query_failed(self, s: PartySession, batch: list[Request], e: MpccError) -> None:
        why = f"{self.label}: query failed: {e}" if s.alive else f"{self.label}: {s.ended}"
        if s.alive:
            s.peer.abort(str(e))
        self._fail(batch, why)
        s.end(str(e))

    # -- stopping ---------------------------------------------------------------------------
    def shutdown(self) -> None:
        self._idle.wait(self.cfg.serving.timeout_s)  # let a query in flight finish
        self._end_session(f"{self.label} is shutting down")
        with self._req:
            left = list(self._queue) + list(self._pending.values())
            self._queue.clear()
            self._pending.clear()
        self._fail(left, f"{self.label} is shutting down")
        with self._req:
            outboxes = list(self._outboxes.values())
        deadline = time.monotonic() + self.cfg.serving.timeout_s
        for outbox in outboxes:  # what the clients are owed goes out before their links close
            outbox.close(max(0.0, deadline - time.monotonic()))
        self._clients_done.set()
        self._janitor.join(timeout=1)
