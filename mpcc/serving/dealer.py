"""The dealer as a long-running server: starts sessions and streams preprocessing to P1.

The dealer dials P0 and P1, offers a session (plan hash, deployment id, its contribution to
the session id), sends each compute party its fresh seed, and once both report ready deals
material ahead of the queries, as far as P1's credit allows (`stock` queries, fewer if
`stock_mb` is the tighter bound). It only ever sends material: it never receives a share,
an opened value or a weight. When a session ends
(a party died, a link dropped, a new model was deployed) it starts a new one, retrying with
back-off until both parties answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mpcc.errors import MpccError, PartyError
from mpcc.runtime.dealer import Dealer
from mpcc.runtime.session import Session, new_seeds
from mpcc.serving.config import ClusterConfig
from mpcc.serving.links import dial
from mpcc.serving.messages import (
    Accept,
    Answered,
    Credit,
    Dealing,
    Dealt,
    ErrorReply,
    Offer,
    Ready,
    Start,
)
from mpcc.serving.priority import lower_this_thread
from mpcc.serving.server import PartyServer
from mpcc.serving.startup import contribution, mismatch, prg_kat, session_id
from mpcc.serving.state import Deployment
from mpcc.serving.tls import TlsChannel
from mpcc.serving.wire import Message

BACKOFF_MIN_S, BACKOFF_MAX_S = 0.2, 1.0
LIMIT_GRACE_S = 1.0  # see `DealerParty._limit_reached`
PROGRESS_S = 1.0  # while a query is dealt, how often the parties hear how far (`_progress`)


class DealerParty(PartyServer):
    """The dealer process."""

    def __init__(
        self,
        cfg: ClusterConfig,
        role: str = "dealer",
        state_dir: Path | None = None,
        num_requests: int | None = None,
    ) -> None:
        super().__init__(cfg, "dealer", state_dir, num_requests)
        self._thread = threading.Thread(target=self._loop, name="mpcc-dealer", daemon=True)
        self._links: dict[str, TlsChannel] = {}
        self.answered = 0  # requests answered, over all sessions (--num-requests)
        self._counts: dict[str, int] = {"P0": 0, "P1": 0}  # ... by party, this session's
        self._first_done_at: float | None = None
        self.session: str | None = None

    def start(self) -> None:
        super().start()
        self._thread.start()

    def on_new_deployment(self) -> None:
        self._close_links("a new model was deployed")

    def shutdown(self) -> None:
        self._close_links("the dealer is shutting down")
        if self._thread.ident is not None:  # (not if it failed to start, e.g. to listen)
            self._thread.join(timeout=self.cfg.serving.timeout_s)

    def _close_links(self, why: str) -> None:
        for ch in list(self._links.values()):
            ch.close(why)

    def _loop(self) -> None:
        lower_this_thread(self.cfg.serving.background_nice)  # the parties' rounds come first
        backoff, said = BACKOFF_MIN_S, None
        while not self.stop_event.is_set():
            if not self.kernels_ready.wait(0.5):  # offer no session before they are loaded
                continue
            dep = self.deployment
            if dep is None:
                with self.deployed:
                    self.deployed.wait(0.5)
                continue
            try:
                self._session(dep, self.deploy_generation)
                backoff = BACKOFF_MIN_S
                said = None
            except MpccError as e:
                self.last_error = str(e)
                if str(e) != said:  # say each new reason once, not at every retry
                    self.log.warning("no session: %s (retrying)", e)
                    said = str(e)
            except Exception as e:  # noqa: BLE001 - a bug: log it, keep the dealer alive
                self.log.exception("session failed")
                self.last_error = f"internal error ({type(e).__name__})"
            finally:
                self._close_links("session over")
                self._links = {}
                self.session = None
            self.stop_event.wait(backoff)
            backoff = min(2 * backoff, BACKOFF_MAX_S)

    def _session(self, dep: Deployment, generation: int) -> None:
        """Start a session; on success serve material until it ends (returns normally)."""
        t = self.cfg.serving.setup_timeout_s
        for role in ("p0", "p1"):
            self._links[role], _ = dial(self.cfg, self.client_ctx, role, me="dealer", link="dealer")
        links = self._links
        mine, kat = contribution(), prg_kat()
        offer = Offer(dep.plan_hash, dep.deploy_id, mine)
        for ch in links.values():
            offer.send(ch)
        accepts = {r: Accept.of(m) for r, m in _await_all(links, Accept.KIND, t).items()}
        for r, a in accepts.items():
            mismatch("plan hash", dep.plan_hash, a.plan_hash, "dealer", r.upper())
            mismatch("deployment", dep.deploy_id, a.deploy_id, "dealer", r.upper())
            mismatch("PRG known answer", kat, a.kat, "dealer", r.upper())
        contribs = {
            "dealer": mine,
            "p0": accepts["p0"].contribution,
            "p1": accepts["p1"].contribution,
        }
        sid = session_id(dep.plan_hash, dep.deploy_id, contribs)
        seeds = new_seeds()
        for seed, role in zip(seeds, ("p0", "p1"), strict=True):  # P0's seed to P0 only, ...
            seed_arr = np.frombuffer(seed, dtype=np.uint8)
            Start(sid, contribs).send(links[role], [seed_arr])
        for role, ready in _await_all(links, Ready.KIND, t).items():
            mismatch("session id", sid, Ready.of(ready).sid, "dealer", role.upper())
        dealer = Dealer(dep.prog, Session(sid, dep.plan_hash), seeds)
        del seeds
        self.session, self.last_error = sid, None
        self.log.info("session %s… started (plan %s)", sid[:8], dep.plan_hash[:12])
        try:
            self._serve(dealer, generation)
        except PartyError as e:
            self.log.info("session %s… ended: %s", sid[:8], e)
            self.last_error = f"session ended: {e}"

    def _serve(self, dealer: Dealer, generation: int) -> None:
        """Deal each query's material as soon as P1 has room for it (its credit)."""
        p0, p1 = self._links["p0"], self._links["p1"]
        upto, q, base = -1, 0, self.answered
        self._counts = {"P0": base, "P1": base}
        self._first_done_at = None
        try:
            while not self.stop_event.is_set():
                if self.deploy_generation != generation:
                    raise PartyError("a new model was deployed")
                if self._limit_reached():
                    return
                msg0 = p0.poll(0)
                if msg0 is not None and self._counted("P0", msg0, Answered, base):
                    return
                msg = p1.poll(0 if q <= upto else 0.2)
                if msg is not None:
                    if self._counted("P1", msg, Credit, base):
                        return
                    upto = max(upto, Credit.of(msg).upto)
                if q <= upto:
                    t0 = time.perf_counter()
                    bundle = dealer.deal(q, self._progress(q, p0 if dealer.sends_p0 else None, p1))
                    deal_s = time.perf_counter() - t0
                    if dealer.sends_p0:  # FSS keys' common words, sent with P1's bundle
                        mine = dealer.for_p0(bundle)
                        Dealt(deal_s).send(p0, mine.to_arrays())
                        p0.traffic.bytes_sent += mine.nbytes
                        p0.traffic.messages_sent += 1
                    Dealt(deal_s).send(p1, bundle.to_arrays())
                    p1.traffic.bytes_sent += bundle.nbytes
                    p1.traffic.messages_sent += 1
                    q += 1
        except PartyError:
            if self.num_requests is None:
                raise
            # A party that reached its request limit ends the session at once: its last
            # count may still be on its way, or unread, on a link that is now closing. Read
            # each link until it says it closed (its reader, of low priority, may lag: see
            # `background_nice`), for at most LIMIT_GRACE_S in all.
            deadline = time.monotonic() + LIMIT_GRACE_S
            for who, ch, kind in (("P0", p0, Answered), ("P1", p1, Credit)):
                try:
                    while (last := ch.poll(max(0.0, deadline - time.monotonic()))) is not None:
                        if self._counted(who, last, kind, base):
                            return
                except PartyError:
                    pass
            if self.answered >= self.num_requests:
                self.stop(f"the parties answered {self.answered} requests")  # no grace left
                return
            raise

    def _progress(self, q: int, p0: TlsChannel | None, p1: TlsChannel) -> Callable[[int], None]:
        """While query q's material is dealt: tell the parties that wait for it how far it
        got, every PROGRESS_S, so that a big model's bundle, dealt slower than its wait
        (`serving.timeout_s`, restarted by progress) by a dealer at `background_nice`, is
        not given up on."""
        last = time.monotonic()

        def told(calls: int) -> None:
            nonlocal last
            if time.monotonic() - last >= PROGRESS_S:
                last = time.monotonic()
                for ch in (p0, p1):
                    if ch is not None:
                        Dealing(q, calls).send(ch)

        return told

    def _counted(
        self, who: str, msg: Message, kind: type[Answered] | type[Credit], base: int
    ) -> bool:
        """Take a party's count of requests answered in this session (P0: `answered`, P1:
        with its `credit`); True once `--num-requests` is reached (the dealer stops)."""
        if msg.kind != kind.KIND:
            raise PartyError(f"{who} sent {msg.kind!r} on the dealer link")
        self._counts[who] = max(self._counts[who], base + kind.of(msg).answered)
        self.answered = max(self._counts.values())
        return self._limit_reached()

    def _limit_reached(self) -> bool:
        """Whether `--num-requests` is reached: by both compute parties' counts, or a second
        after the first of them. The two end a query's online phase together but report
        apart, and stopping closes the dealer links, which ends the session at both: the
        other party may still be finishing the same query (its last requests would fail)."""
        n = self.num_requests
        if n is None:
            return False
        done = [who for who, count in self._counts.items() if count >= n]
        if done and self._first_done_at is None:
            self._first_done_at = time.monotonic()
        if len(done) == 2 or (
            self._first_done_at is not None
            and time.monotonic() - self._first_done_at > LIMIT_GRACE_S
        ):
            self.stop(f"{' and '.join(done)} answered {self.answered} requests")
            return True
        return False


def _await_all(links: dict[str, TlsChannel], kind: str, timeout: float) -> dict[str, Message]:
    """One `kind` message from every link; the first error or closed link fails at once."""
    deadline = time.monotonic() + timeout
    got: dict[str, Message] = {}
    while len(got) < len(links):
        for role, ch in links.items():
            if role in got:
                continue
            msg = ch.poll(0.02)
            if msg is None:
                continue
            if msg.kind == ErrorReply.KIND:
                raise PartyError(f"{role.upper()}: {ErrorReply.lenient(msg.meta).msg}")
            if msg.kind != kind:
                raise PartyError(f"{role.upper()} sent {msg.kind!r} where {kind!r} was expected")
            got[role] = msg
        if len(got) < len(links) and time.monotonic() > deadline:
            late = ", ".join(r.upper() for r in links if r not in got)
            raise PartyError(f"{late} did not answer within {timeout:g} s")
    return got
