"""A compute party's counters and latency histograms, for `mpcc cluster status` and Prometheus.

Requests received, answers sent, failures by cause, queue depths, the preprocessing stock
and the bytes on each kind of link (peer, dealer, clients), kept in a `prometheus_client`
registry of the party's own. `PartyMetrics.summary()` gives them as plain numbers for the
party's `info` (shown by `mpcc cluster status`); with `[serving] metrics_port` set, P0 serves
them in the Prometheus text format on 127.0.0.1 at that port and P1 at the next one.

Nothing secret is exported: metric names and labels are fixed strings, never ids or values.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import start_http_server

# seconds; a LeNet query is tens of milliseconds on a quiet machine, a queue can add seconds
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CAUSES = (
    "bad_request",  # malformed request, wrong shape or kind
    "stale_plan",  # encoded for another plan (a redeploy since)
    "limit",  # a queue, rate or memory limit of the client or the party
    "duplicate",  # a request id already waiting or running
    "no_session",  # no live session (a party down, the session starting)
    "session_fault",  # the query failed or the session ended under it
    "unpaired",  # its twin never reached the other party in time
    "shutdown",  # the party is stopping
    "other",
)
LINKS = ("peer", "dealer", "client")
SUMMARY_EVERY_S = 0.2


def failure_cause(why: str, code: str | None = None) -> str:
    """The cause of a failed or refused request, from its message (one of CAUSES)."""
    w = why.lower()
    if code == "stale_plan":
        return "stale_plan"
    for cause, words in (
        ("shutdown", ("shutting down",)),
        ("duplicate", ("duplicate request id", "holds another request under this id")),
        ("limit", ("limit", "too many", "waiting (", "requests from one connection")),
        ("no_session", ("no session",)),
        ("unpaired", ("never received", "did not schedule")),
        ("session_fault", ("query failed", "session ended", "please retry")),
        ("bad_request", ("rejected", "expected", "malformed", "unknown request")),
    ):
        if any(x in w for x in words):
            return cause
    return "other"


class PartyMetrics:
    """The metrics of one compute party (`role` "p0" or "p1")."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.registry = r = CollectorRegistry()
        self.requests = Counter("mpcc_requests", "Client requests received", registry=r)
        self.answers = Counter("mpcc_answers", "Requests answered with a result", registry=r)
        self.failures = Counter(
            "mpcc_failures", "Requests failed or refused, by cause", ["cause"], registry=r
        )
        for c in CAUSES:
            self.failures.labels(c)
        self.queries = Counter("mpcc_queries", "Queries run (a query serves a batch)", registry=r)
        self.sessions = Counter("mpcc_sessions", "Sessions started", registry=r)
        self.latency = Histogram(
            "mpcc_request_seconds",
            "From a request's arrival at the party to its answer being handed to the client's link",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.online = Histogram(
            "mpcc_online_seconds", "A query's online phase", buckets=LATENCY_BUCKETS, registry=r
        )
        self.link_bytes = Counter(
            "mpcc_link_bytes",
            "Bytes on the wire (TLS included) on closed links, by kind of link and direction",
            ["link", "direction"],
            registry=r,
        )
        self._live_bytes: Callable[[], dict[tuple[str, str], int]] = dict
        self._gauges: dict[str, Gauge] = {}
        self._server: Any = None
        self._lock = threading.Lock()
        self._summary: dict[str, Any] | None = None
        self._summary_at = 0.0

    # -- what the party tells us --------------------------------------------------------------
    def failed(self, why: str, code: str | None = None) -> None:
        self.failures.labels(failure_cause(why, code)).inc()

    def link_closed(self, kind: str, sent: int, received: int) -> None:
        """Add a closed link's bytes (live links are read through `live_bytes`)."""
        self.link_bytes.labels(kind, "sent").inc(sent)
        self.link_bytes.labels(kind, "received").inc(received)

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """A value read when the metrics are: queue depths, the stock, bytes held."""
        g = Gauge(name, doc, registry=self.registry)
        g.set_function(read)
        self._gauges[name] = g

    def live_bytes(self, read: Callable[[], dict[tuple[str, str], int]]) -> None:
        """Where to read the bytes of the links still open, by (link, direction)."""
        self._live_bytes = read
        for kind in LINKS:
            for d in ("sent", "received"):
                self.gauge(
                    f"mpcc_open_{kind}_link_bytes_{d}",
                    f"Bytes {d} on the open {kind} links (TLS included)",
                    lambda k=kind, d=d: float(self._live_bytes().get((k, d), 0)),
                )

    # -- what we tell ---------------------------------------------------------------------------
    def exposition(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)

    def summary(self) -> dict[str, Any]:
        """Plain numbers for `info` and `mpcc cluster status` (read at most every
        `SUMMARY_EVERY_S`: clients may ask for `info` a thousand times a second)."""
        with self._lock:
            now = time.monotonic()
            if self._summary is None or now - self._summary_at >= SUMMARY_EVERY_S:
                self._summary, self._summary_at = self._read(), now
            return self._summary

    def _read(self) -> dict[str, Any]:
        v: dict[tuple[str, tuple], float] = {}
        buckets: dict[str, list[tuple[float, int]]] = {}
        for fam in self.registry.collect():  # one pass over everything
            for smp in fam.samples:
                if smp.name.endswith("_bucket"):
                    buckets.setdefault(fam.name, []).append((float(smp.labels["le"]), smp.value))
                else:
                    v[smp.name, tuple(sorted(smp.labels.items()))] = smp.value

        def get(name: str, **labels: str) -> float:
            return v.get((name, tuple(sorted(labels.items()))), 0.0)

        def hist(name: str) -> dict[str, float | None]:
            count = int(get(f"{name}_count"))
            out: dict[str, float | None] = {
                "count": count,
                "mean": get(f"{name}_sum") / count if count else 0.0,
            }
            for key, q in (("p50_at_most", 0.5), ("p99_at_most", 0.99)):
                le = next((le for le, n in buckets.get(name, []) if count and n >= q * count), 0.0)
                out[key] = None if le == float("inf") else le  # None: beyond the last bucket
            return out

        live = self._live_bytes()
        link = {
            kind: {
                d: int(get("mpcc_link_bytes_total", link=kind, direction=d))
                + live.get((kind, d), 0)
                for d in ("sent", "received")
            }
            for kind in LINKS
        }
        failures = {c: int(get("mpcc_failures_total", cause=c)) for c in CAUSES}
        return {
            "requests": int(get("mpcc_requests_total")),
            "answers": int(get("mpcc_answers_total")),
            "failures": {c: n for c, n in failures.items() if n},
            "queries": int(get("mpcc_queries_total")),
            "sessions": int(get("mpcc_sessions_total")),
            "latency_s": hist("mpcc_request_seconds"),
            "online_s": hist("mpcc_online_seconds"),
            "gauges": {
                k.removeprefix("mpcc_"): get(k)
                for k in self._gauges
                if not k.startswith("mpcc_open_")
            },
            "link_bytes": link,
        }

    def serve(self, port: int) -> None:
        """Serve the text format on 127.0.0.1:`port` (a thread of its own)."""
        self._server, _ = start_http_server(port, addr="127.0.0.1", registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
