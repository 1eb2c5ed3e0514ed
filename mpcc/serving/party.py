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

The party is put together from one module per part: `clients` (client links, request
admission, answers; `outbox`), `partysession` (session start-up and preprocessing) and
`scheduler` (the query loop), each a mixin of `ComputeParty`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

from mpcc.compiler.batching import rows_independent
from mpcc.errors import MpccError
from mpcc.serving.admission import Identity
from mpcc.serving.clients import MAX_PER_LINK, ClientLinks, Request
from mpcc.serving.config import ClusterConfig
from mpcc.serving.controllink import ControlLink
from mpcc.serving.messages import Hello, PartyInfo, PlanInterface, Welcome
from mpcc.serving.metrics import PartyMetrics
from mpcc.serving.outbox import Outbox
from mpcc.serving.partysession import SessionSetup
from mpcc.serving.scheduler import QueryLoop
from mpcc.serving.server import PartyServer
from mpcc.serving.sessionstate import PartySession
from mpcc.serving.tls import TlsChannel

__all__ = ["MAX_PER_LINK", "ComputeParty", "Outbox", "PartySession", "Request"]


class ComputeParty(ClientLinks, SessionSetup, QueryLoop, PartyServer):
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
        self._outboxes: dict[ControlLink, Outbox] = {}
        self._identities: dict[str, Identity] = {}  # client identities seen, by name
        self._last_served: dict[Any, int] = {}  # P0: identity -> when a batch last took one
        self.answered = 0
        self.metrics = self._make_metrics()
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
        port = self.cfg.serving.metrics_port
        if port:
            try:
                self.metrics.serve(port + self.party)
                self.log.info("metrics on http://127.0.0.1:%d/metrics", port + self.party)
            except OSError as e:
                self.log.error("cannot serve metrics on port %d: %s", port + self.party, e)

    def _make_metrics(self) -> PartyMetrics:
        """Counters and histograms, and gauges read from the party's state when asked."""
        m = PartyMetrics(self.role)

        def outboxes(i: int) -> float:
            with self._req:
                return float(sum(o.waiting[i] for o in self._outboxes.values()))

        def session(read) -> float:
            s = self._session
            return float(read(s)) if s is not None and s.alive else 0.0

        m.gauge(
            "mpcc_queued_requests",
            "Requests waiting (P0: to be scheduled; P1: to be announced)",
            lambda: float(len(self._queue) + len(self._pending)),
        )
        m.gauge(
            "mpcc_inflight_requests",
            "Requests in the query being run",
            lambda: float(len(self._inflight)),
        )
        m.gauge("mpcc_client_links", "Open client links", lambda: float(len(self._outboxes)))
        m.gauge(
            "mpcc_outbox_messages", "Answers waiting to be sent to clients", lambda: outboxes(0)
        )
        m.gauge(
            "mpcc_outbox_bytes",
            "Bytes of answers waiting to be sent to clients",
            lambda: outboxes(1),
        )
        m.gauge(
            "mpcc_stock_queries",
            "Queries of preprocessing ready ahead",
            lambda: session(lambda s: len(s.prepared)),
        )
        m.gauge(
            "mpcc_stock_bytes",
            "Memory the preprocessing ready ahead takes",
            lambda: session(lambda s: len(s.prepared) * s.query_bytes),
        )
        m.gauge(
            "mpcc_session_live",
            "1 while P0 and P1 share a live session",
            lambda: session(lambda s: 1),
        )
        m.live_bytes(self._open_link_bytes)
        return m

    def _open_link_bytes(self) -> dict[tuple[str, str], int]:
        """Wire bytes of the links open now: the clients', the session's peer and dealer."""
        out: dict[tuple[str, str], int] = {}
        with self._req:
            chans = [("client", ch) for ch in self._outboxes]
        s = self._session
        if s is not None:
            chans += [*(("peer", lane.peer) for lane in s.lanes), ("dealer", s.dealer)]
        for kind, ch in chans:
            w = getattr(ch, "wire", None)
            if w is not None:
                out[kind, "sent"] = out.get((kind, "sent"), 0) + w.sent
                out[kind, "received"] = out.get((kind, "received"), 0) + w.received
        return out

    def on_peer(self, ch: TlsChannel, hello: Hello) -> None:
        """P1's link: kept for the session start-up waiting for it."""
        lane = hello.lane or 0
        ch.peer = "P1" if lane == 0 else f"P1 lane {lane}"
        Welcome(self.role).send(ch)
        self._peer_links.put(((hello.sid, lane), ch))

    def info(self) -> dict[str, Any]:
        """Public facts for clients (`PartyInfo`): the plan's interface, the session,
        counters."""
        dep, s = self.deployment, self._session
        live = s is not None and s.alive
        plan = None
        if dep is not None:
            prog = dep.prog
            (_, in_vid), (_, out_vid) = prog.inputs[0], prog.outputs[0]
            first = next(ins for ins in prog.instrs if ins.out == in_vid)
            plan = PlanInterface(
                plan_hash=dep.plan_hash,
                batch=prog.batch,
                input_shape=list(prog.value(in_vid).shape),
                output_shape=list(prog.value(out_vid).shape),
                frac_bits=prog.frac_bits,
                output_scale=prog.value(out_vid).scale,
                rows_independent=rows_independent(prog),
                input_encoding=first.attrs.get("encoding"),
                input_depth=first.attrs.get("depth"),
            )
        info = PartyInfo(
            role=self.role,
            deployed=dep is not None,
            answered=self.answered,
            kernels_ready=self.kernels_ready.is_set(),
            metrics=self.metrics.summary(),
            session=s.sid if live else None,
            last_error=self.last_error,
            # how far ahead preprocessing runs, and its memory
            stock=s.stock() if live else None,
            lanes=len(s.lanes) if live else None,
            query_material_bytes=s.query_bytes if live else None,
            material_held_bytes=len(s.prepared) * s.query_bytes if live else None,
            name=dep.prog.name if dep is not None else None,
            output_name=dep.prog.outputs[0][0] if dep is not None else None,
        )
        return info.meta(plan)

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
        self.metrics.close()
