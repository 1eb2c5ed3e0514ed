"""A compute party's metrics (mpcc.serving.metrics) without processes: causes, summary, text."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mpcc.serving.local import free_port
from mpcc.serving.metrics import CAUSES, PartyMetrics, failure_cause


@pytest.mark.parametrize(
    ("why", "code", "cause"),
    [
        (
            "P0 rejected the request: input share is uint64[1, 27], expected uint64[1, 28]",
            None,
            "bad_request",
        ),
        (
            "P0 rejected the request: the request was encoded for plan abc",
            "stale_plan",
            "stale_plan",
        ),
        (
            "P1 rejected the request: client c has 128 requests waiting (its limit, client_queue)",
            None,
            "limit",
        ),
        ("P0 rejected the request: too many queued requests", None, "limit"),
        ("P0 rejected the request: duplicate request id", None, "duplicate"),
        ("P0: no session (waiting for the dealer and P1)", None, "no_session"),
        ("P0: query failed: P1 sent nothing for 3 s", None, "session_fault"),
        ("P1: the session ended (the dealer link closed); please retry", None, "session_fault"),
        ("P1 never received this request (sent to P0 only?)", None, "unpaired"),
        ("P1: P0 did not schedule this request in time", None, "unpaired"),
        ("P0 is shutting down", None, "shutdown"),
        ("something new", None, "other"),
    ],
)
def test_failure_causes(why, code, cause):
    assert failure_cause(why, code) == cause


def test_summary_and_text_agree():
    m = PartyMetrics("p0")
    m.gauge("mpcc_queued_requests", "queued", lambda: 3.0)
    m.live_bytes(lambda: {("peer", "sent"): 100})
    for _ in range(4):
        m.requests.inc()
    for s in (0.02, 0.03, 0.2):
        m.answers.inc()
        m.latency.observe(s)
    m.failed("P0 rejected the request: too many queued requests")
    m.link_closed("client", 10, 20)
    got = m.summary()
    assert got["requests"] == 4 and got["answers"] == 3
    assert got["failures"] == {"limit": 1}
    assert got["latency_s"]["count"] == 3 and got["latency_s"]["p50_at_most"] == 0.05
    assert got["latency_s"]["p99_at_most"] == 0.25
    assert got["gauges"] == {"queued_requests": 3.0}
    assert got["link_bytes"]["peer"] == {"sent": 100, "received": 0}
    assert got["link_bytes"]["client"] == {"sent": 10, "received": 20}
    fams = {f.name: f for f in text_string_to_metric_families(m.exposition().decode())}
    assert {s.labels["cause"] for s in fams["mpcc_failures"].samples} == set(CAUSES)
    total = {s.name: s.value for s in fams["mpcc_requests"].samples}
    assert total["mpcc_requests_total"] == 4


def test_served_on_loopback_and_closed():
    m = PartyMetrics("p1")
    port = free_port()
    m.serve(port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert b"mpcc_answers_total 0.0" in r.read()
    finally:
        m.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
