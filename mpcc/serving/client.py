"""The client: secret-shares inputs to P0 and P1 and reconstructs the logits from both answers.

    with Client("cluster/cluster.toml") as c:
        logits = c.predict(x)           # any number of samples, in the plan's batches
        print(c.stats.summary())        # latency, and how much of it was the online phase

Inputs are encoded in fixed point and split with the CSPRNG; each party sees one uniformly
random share. Only the client holds both shares of the output. A Client is used from one
thread at a time; use one Client per thread for concurrent requests.
"""

from __future__ import annotations

import queue
import secrets
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mpcc.errors import InputError, MpccError, PartyError
from mpcc.inputs import ONEHOT, as_samples, input_shape, one_hot, split_rows
from mpcc.runtime.fixedpoint import decode, encode
from mpcc.runtime.prg import reconstruct, share
from mpcc.serving.certs import client_files
from mpcc.serving.config import ClusterConfig
from mpcc.serving.config import load as load_config
from mpcc.serving.links import dial
from mpcc.serving.messages import (
    ErrorReply,
    Failed,
    MalformedMessage,
    PartyInfo,
    PlanInterface,
    Request,
    Result,
)
from mpcc.serving.tls import LinkClosed, TlsChannel
from mpcc.serving.tlscontext import client_context
from mpcc.serving.wire import Message

PARTIES = ("p0", "p1")


@dataclass(frozen=True)
class RequestStats:
    """One request (one chunk of at most a batch): the client's latency and the parties' view."""

    rows: int
    latency_s: float  # from sending the shares to holding both answers
    queued_s: float  # waiting at P0 before its query started
    online_s: float  # the online phase (slower of the two parties)
    offline_s: float  # preprocessing of that query, done ahead in the background
    rounds: int
    sent: tuple[int, int]  # payload bytes P0 and P1 sent each other online
    wire_sent: tuple[int, int]  # the same on the wire (framing and TLS included)
    dealer_bytes: int  # dealer payload to P1 for the query
    dealer_wire: int
    client_bytes: int  # share bytes sent to each party
    batch_requests: int  # requests that shared the query
    session: str
    lane: int = 0  # which of the session's P0-P1 links ran the query


@dataclass
class PredictStats:
    """All requests of the last `predict` call."""

    requests: list[RequestStats] = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self) -> str:
        r = self.requests
        if not r:
            return "no requests"
        lat = [x.latency_s for x in r]
        online = sum(x.online_s for x in r)
        return (
            f"{len(r)} requests in {self.wall_s:.2f} s: latency median "
            f"{statistics.median(lat) * 1e3:.1f} ms, online {online / sum(lat):.0%} of it "
            f"(median {statistics.median(x.online_s for x in r) * 1e3:.1f} ms, "
            f"{r[-1].rounds} rounds), queued median "
            f"{statistics.median(x.queued_s for x in r) * 1e3:.1f} ms; preprocessing "
            f"{statistics.median(x.offline_s for x in r) * 1e3:.1f} ms/query done ahead; "
            f"P0<->P1 {r[-1].sent[0] / 1e3:.1f} KB payload, {r[-1].wire_sent[0] / 1e3:.1f} KB "
            f"on the wire per party; dealer {r[-1].dealer_bytes / 1e3:.1f} KB; session "
            f"{r[-1].session}…"
        )


class Client:
    """Secure predictions from a deployed cluster."""

    def __init__(
        self,
        config: str | Path | ClusterConfig,
        *,
        timeout: float | None = None,
        window: int = 2,
        role: str | None = "client",
        cert: str | Path | None = None,
        key: str | Path | None = None,
        identity: str | None = None,
    ) -> None:
        """`identity`: use the certificate `mpcc cluster add-client NAME` issued to NAME
        (default: the cluster's shared client certificate, or `cert` and `key`)."""
        self.cfg = config if isinstance(config, ClusterConfig) else load_config(config)
        if identity is not None:
            cert, key = client_files(self.cfg, identity)
            if not cert.is_file() or not key.is_file():
                raise MpccError(f"no certificate and key of client {identity!r} ({cert}, {key})")
        self.timeout = timeout if timeout is not None else self.cfg.serving.client_timeout_s
        self.window = max(1, window)
        self._ctx = client_context(self.cfg, None if cert else role, cert, key)
        self._links: dict[str, TlsChannel] = {}
        self._inbox: queue.Queue[tuple[str, Message | LinkClosed]] = queue.Queue()
        self._plan: dict[str, Any] | None = None
        self.stats = PredictStats()

    # -- connection ---------------------------------------------------------------------------
    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for ch in self._links.values():
            ch.close("client closed")
        self._links = {}
        self._plan = None
        self._inbox = queue.Queue()

    def _connect(self) -> dict[str, TlsChannel]:
        if self._links and all(ch.closed is None for ch in self._links.values()):
            return self._links
        self.close()
        try:
            for role in PARTIES:
                ch, _ = dial(self.cfg, self._ctx, role, me="client", link="client")
                ch.forward_to(self._inbox, role)
                self._links[role] = ch
        except MpccError:
            self.close()
            raise
        return self._links

    def _next(self, timeout: float) -> tuple[str, Message]:
        try:
            role, item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise PartyError(f"no answer from the parties within {timeout:g} s") from None
        if isinstance(item, LinkClosed):
            raise PartyError(f"lost the connection to {role.upper()}: {item.reason}")
        if item.kind == "error":
            raise PartyError(f"{role.upper()}: {ErrorReply.lenient(item.meta).msg}")
        return role, item

    def info(self) -> dict[str, dict[str, Any]]:
        """Each compute party's public facts: plan interface, session id, counters."""
        links = self._connect()
        try:
            for ch in links.values():
                ch.send_msg("info")
            got: dict[str, dict[str, Any]] = {}
            while len(got) < len(links):
                role, msg = self._next(self.cfg.serving.timeout_s)
                if msg.kind == PartyInfo.KIND:
                    got[role] = _party_info(role, msg.meta)
            return got
        except MpccError:
            self.close()
            raise

    def wait_ready(self, timeout: float = 60.0) -> str:
        """Wait until P0 and P1 share a live session; returns its id."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                got = self.info()
                sids = {m.get("session") for m in got.values()}
                if len(sids) == 1 and None not in sids:
                    return sids.pop()
                last = "; ".join(
                    f"{r.upper()}: session {m.get('session')}, {m.get('last_error')}"
                    for r, m in got.items()
                )
            except MpccError as e:
                last = str(e)
            time.sleep(0.2)
        raise PartyError(f"the cluster is not ready after {timeout:g} s ({last})")

    def _interface(self) -> dict[str, Any]:
        """P0's `info`, once P0 and P1 are seen to serve one plan (read again after a
        redeploy: see `predict`)."""
        if self._plan is None:
            got = self.info()
            p0, p1 = got["p0"], got["p1"]
            if not p0.get("deployed") or not p1.get("deployed"):
                raise MpccError("no model is deployed on the cluster (run `mpcc deploy`)")
            if p0.get("plan_hash") != p1.get("plan_hash"):
                raise PartyError("P0 and P1 serve different plans; redeploy the model")
            self._plan = p0
        return self._plan

    # -- predictions --------------------------------------------------------------------------
    def _plan_interface(self) -> PlanInterface:
        try:
            return PlanInterface.parse(self._interface())
        except MalformedMessage as e:
            self._plan = None
            raise PartyError(f"P0 described its plan badly: {e}") from None

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits (the plan's first output) for any number of samples."""
        plan = self._plan_interface()
        enc, batch = plan.input_encoding, plan.batch
        shape = input_shape(plan.input_shape, enc)
        x = as_samples(x, shape, allow_empty=False, ids=enc == ONEHOT)
        if not plan.rows_independent:
            whole = len(x) == batch or (len(x) % batch == 0 and plan.output_shape[:1] == [batch])
            if not whole:
                raise InputError(
                    f"this plan mixes samples across its batch axis: give exactly {batch} "
                    f"samples (or a multiple, if its output keeps the batch first), not {len(x)}"
                )
        chunks = split_rows(x, batch)  # P0 pads a query's batch with zero rows
        try:
            outs = self._run(chunks, plan)
        except StalePlanError:
            # a model was deployed since the interface was read: read it again, and encode
            # for the new plan (its scale and shapes may differ), once
            self.close()
            return self._predict_again(x, plan)
        except MpccError:
            self.close()  # answers still in flight would be out of step: start afresh
            raise
        return np.concatenate(outs)

    def _predict_again(self, x: np.ndarray, old: PlanInterface) -> np.ndarray:
        plan = self._plan_interface()
        if plan.plan_hash == old.plan_hash:
            raise PartyError("the parties refused the plan they announce; redeploy the model")
        try:
            return self.predict(x)
        except StalePlanError as e:  # deployed again meanwhile: let the caller decide
            self.close()
            raise PartyError(
                f"the model was redeployed twice during one prediction ({e})"
            ) from None

    def _run(self, chunks: list[np.ndarray], plan: PlanInterface) -> list[np.ndarray]:
        links = self._connect()
        frac, scale = plan.frac_bits, plan.output_scale
        out_shape, out_tail = tuple(plan.output_shape), tuple(plan.output_shape[1:])
        rowwise = plan.rows_independent
        outs: list[np.ndarray | None] = [None] * len(chunks)
        stats: list[RequestStats | None] = [None] * len(chunks)
        # by request id: its chunk, when it was sent, its share's size, the answers so far
        pending: dict[str, tuple[int, float, int, dict[str, tuple[Result, np.ndarray]]]] = {}
        t_start, nxt = time.perf_counter(), 0
        while nxt < len(chunks) or pending:
            while nxt < len(chunks) and len(pending) < self.window:
                rid = secrets.token_hex(16)
                if plan.input_encoding == ONEHOT:  # token ids, one-hot encoded here
                    if plan.input_depth is None:
                        raise PartyError("P0 did not say the depth of its one-hot input")
                    s0, s1 = share(one_hot(chunks[nxt], plan.input_depth))
                else:
                    s0, s1 = share(encode(chunks[nxt], frac))
                pending[rid] = (nxt, time.perf_counter(), s0.nbytes, {})
                req = Request(rid, len(chunks[nxt]), plan.plan_hash)
                req.send(links["p0"], [s0])
                req.send(links["p1"], [s1])
                nxt += 1
            try:
                role, msg = self._next(self.timeout)
            except PartyError as e:
                raise PartyError(_silent_parties(pending, self.timeout) or str(e)) from None
            kind = {Failed.KIND: Failed, Result.KIND: Result}.get(msg.kind)
            if kind is None:
                continue  # e.g. a late answer to an info request
            try:
                answer = kind.parse(msg.meta)
            except MalformedMessage as e:
                raise PartyError(f"{role.upper()}: {e}") from None
            rid = answer.rid
            if rid not in pending:
                continue  # e.g. an answer to a request of a prediction that failed
            if isinstance(answer, Failed):
                stale = answer.code == "stale_plan"
                raise StalePlanError(answer.msg) if stale else PartyError(answer.msg)
            if answer.plan != plan.plan_hash:  # never decode at another plan's scale
                raise StalePlanError(f"{role.upper()} answered from another plan than was read")
            i, t0, nbytes, got = pending[rid]
            want = (len(chunks[i]), *out_tail) if rowwise else out_shape
            if len(msg.arrays) != 1 or msg.arrays[0].shape != want:
                raise PartyError(f"{role.upper()} answered with a malformed result")
            got[role] = (answer, msg.arrays[0])
            if len(got) == 2:
                del pending[rid]
                a0, a1 = got["p0"][1], got["p1"][1]
                outs[i] = decode(reconstruct(a0, a1), scale)
                stats[i] = _stats(got, len(chunks[i]), time.perf_counter() - t0, nbytes)
        self.stats = PredictStats([s for s in stats if s], time.perf_counter() - t_start)
        return [o for o in outs if o is not None]

    # -- low level (tests, tools) -------------------------------------------------------------
    def send_raw(
        self, role: str, kind: str, meta: dict[str, Any], arrays: list[np.ndarray]
    ) -> Message:
        """Send one message to P0 or P1 and return that party's next message."""
        links = self._connect()
        links[role].send_msg(kind, meta, arrays)
        while True:
            got, msg = self._next(self.timeout)
            if got == role:
                return msg


class StalePlanError(PartyError):
    """The parties serve another plan than the one this client read (a redeploy)."""


def _silent_parties(pending: dict[str, tuple[Any, ...]], timeout: float) -> str | None:
    """Which party left the client's requests unanswered, when only one did (a stalled
    party: a dead one closes its link, which is reported at once)."""
    answered = {role for *_, got in pending.values() for role in got}
    silent = [r.upper() for r in PARTIES if r not in answered]
    if answered and len(silent) == 1:
        return (
            f"{silent[0]} has not answered within {timeout:g} s "
            f"({', '.join(sorted(a.upper() for a in answered))} did); is it stalled?"
        )
    return None


def _stats(
    got: dict[str, tuple[Result, np.ndarray]], rows: int, latency: float, share_bytes: int
) -> RequestStats:
    s0, s1 = got["p0"][0].stats or {}, got["p1"][0].stats or {}
    return RequestStats(
        rows=rows,
        latency_s=latency,
        queued_s=float(s0.get("queued_s", 0.0)),
        online_s=max(float(s0.get("online_s", 0.0)), float(s1.get("online_s", 0.0))),
        offline_s=max(float(s0.get("offline_s", 0.0)), float(s1.get("offline_s", 0.0))),
        rounds=int(s0.get("rounds", 0)),
        sent=(int(s0.get("sent", 0)), int(s1.get("sent", 0))),
        wire_sent=(int(s0.get("wire_sent", 0)), int(s1.get("wire_sent", 0))),
        dealer_bytes=int(s1.get("dealer_bytes", 0)),
        dealer_wire=int(s1.get("dealer_wire", 0)),
        client_bytes=share_bytes,
        batch_requests=int(s0.get("batch_requests", 1)),
        session=str(s0.get("session", "")),
        lane=int(s0.get("lane", 0)),
    )


def cluster_status(
    config: str | Path | ClusterConfig, identity: str | None = None
) -> dict[str, dict[str, Any] | str]:
    """Each compute party's public `info`, or why it could not be had (asked one by one, so
    a party that is down does not hide the other). `identity`: ask with the certificate
    `cluster add-client` issued to it (default: the shared client certificate)."""
    cfg = config if isinstance(config, ClusterConfig) else load_config(config)
    if identity is None:
        ctx = client_context(cfg, "client")
    else:
        cert, key = client_files(cfg, identity)
        ctx = client_context(cfg, None, str(cert), str(key))
    got: dict[str, dict[str, Any] | str] = {}
    for role in PARTIES:
        try:
            ch, _ = dial(cfg, ctx, role, me="client", link="client")
            try:
                ch.send_msg(PartyInfo.KIND)
                msg = ch.recv_msg(cfg.serving.timeout_s, expect=PartyInfo.KIND)
                got[role] = _party_info(role, msg.meta)
            finally:
                ch.close("status read")
        except MpccError as e:
            got[role] = str(e)
    return got


def _party_info(role: str, meta: dict[str, Any]) -> dict[str, Any]:
    """A party's `info` meta, once `PartyInfo` has checked it (PartyError if malformed)."""
    try:
        PartyInfo.parse(meta)
    except MalformedMessage as e:
        raise PartyError(f"{role.upper()} described itself badly: {e}") from None
    return meta


def _ms(v: float | None) -> str:
    return "beyond the last bucket" if v is None else f"{v * 1e3:g} ms"


def format_metrics(m: dict[str, Any]) -> str:
    """One line of a party's counters (its `info`'s "metrics") for `mpcc cluster status`."""
    fails = m.get("failures", {})
    failed = sum(fails.values())
    causes = ", ".join(f"{c} {n}" for c, n in fails.items())
    g, lat, online = m.get("gauges", {}), m.get("latency_s", {}), m.get("online_s", {})
    mb = m.get("link_bytes", {})

    def n(key: str) -> int:
        return int(g.get(key, 0))

    links = ", ".join(
        f"{k} {v.get('sent', 0) / 1e6:.1f}/{v.get('received', 0) / 1e6:.1f} MB"
        for k, v in mb.items()
    )
    text = (
        f"{m.get('requests', 0)} requests, {m.get('answers', 0)} answers, {failed} failed"
        + (f" ({causes})" if causes else "")
        + f"; {m.get('queries', 0)} queries in {m.get('sessions', 0)} sessions"
        + f"; queued {n('queued_requests')}, in flight {n('inflight_requests')}"
        + f", to send {n('outbox_messages')}, client links {n('client_links')}"
        + f"; stock {n('stock_queries')} queries ({g.get('stock_bytes', 0) / 1e6:.1f} MB)"
    )
    if lat.get("count"):
        text += (
            f"; latency median <= {_ms(lat.get('p50_at_most'))}, p99 <= "
            f"{_ms(lat.get('p99_at_most'))}, online mean {online.get('mean', 0) * 1e3:.1f} ms"
        )
    return text + (f"; wire sent/received: {links}" if links else "")


def format_status(got: dict[str, dict[str, Any] | str]) -> tuple[str, bool]:
    """Lines for `mpcc cluster status`, and whether the cluster is serving (P0 and P1 in
    one live session)."""
    lines = []
    for role, m in got.items():
        if isinstance(m, str):
            lines.append(f"{role.upper()}: unreachable: {m}")
            continue
        if not m.get("deployed"):
            model = "no model deployed"
        else:
            model = (
                f"{m.get('name')} (plan {str(m.get('plan_hash'))[:12]}, input "
                f"{m.get('input_shape')}, batch {m.get('batch')})"
            )
        sid = m.get("session")
        session = f"session {sid[:8]}…" if sid else "no session"
        stock = f", stock {m['stock']}" if "stock" in m else ""
        line = f"{role.upper()}: {model}; {session}{stock}; {m.get('answered', 0)} answered"
        if m.get("last_error"):
            line += f"; last error: {m['last_error']}"
        lines.append(line)
        if isinstance(m.get("metrics"), dict):
            lines.append("    " + format_metrics(m["metrics"]))
    sids = {m.get("session") if isinstance(m, dict) else None for m in got.values()}
    serving = len(sids) == 1 and None not in sids
    lines.append("serving" if serving else "not serving")
    return "\n".join(lines), serving
