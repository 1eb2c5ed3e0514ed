"""`mpcc bench --network`'s projection of a query's latency at the client
(`Link.project_query`), on a synthetic query: the formula's numbers written out by hand, so
that a change to it cannot pass unnoticed, and its TLS byte count against the real framing.
No network, no timing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mpcc.bench.network import Link, QueryTraffic, tls_bytes, wire_bytes
from mpcc.serving.wire import encode, frame_size

# 60 rounds of 12,000 B each way, a 28x28 input share (6,272 B) to each of P0 and P1, ten
# logits (80 B) back from each
LENET_LIKE = QueryTraffic(rounds=60, sent=720_000, client_bytes=6272, answer_bytes=80)


def test_query_projection_by_hand() -> None:
    link = Link.parse("40,0.1")  # 20 ms each way, 12.5 MB/s
    p = link.project_query(0.010, LENET_LIKE)
    # rounds: one message of 12,000 + 16 + 50 B each = one TLS record, 12,088 B; 60 of them
    # 725,280 B in 501 TCP segments of 66 B headers each
    online = 725_280 + 501 * 66
    # shares: 2 messages of 6,272 + 16 + 400 B, one record each (13,420 B, 10 segments);
    # answers: 2 of 80 + 16 + 400 B (1,036 B, one segment)
    upload, answer = 13_420 + 10 * 66, 1_036 + 66
    assert p["delay_s"] == pytest.approx((60 + 4) * 0.020)  # rounds, 2 client legs, announce
    assert p["transfer_s"] == pytest.approx(online / 12.5e6)
    assert p["upload_s"] == pytest.approx(upload / 12.5e6)
    assert p["answer_s"] == pytest.approx(answer / 12.5e6)
    assert p["latency_s"] == pytest.approx(0.010 + 1.28 + (online + upload + answer) / 12.5e6)
    assert p["latency_s"] == pytest.approx(1.35188224)


def test_query_projection_scales_with_delay_and_rate() -> None:
    """Each RTT ms adds (rounds + 4) / 2 ms; with no delay and a boundless link, the
    projection is the measured time."""
    base = Link(0.010, 1.0).project_query(0.05, LENET_LIKE)
    more = Link(0.030, 1.0).project_query(0.05, LENET_LIKE)
    assert more["latency_s"] - base["latency_s"] == pytest.approx(64 * 0.010)
    assert Link(0.0, 1e9).project_query(0.05, LENET_LIKE)["latency_s"] == pytest.approx(0.05)
    slow = Link(0.010, 0.5).project_query(0.05, LENET_LIKE)
    bytes_s = sum(base[k] for k in ("transfer_s", "upload_s", "answer_s"))
    assert slow["latency_s"] - base["latency_s"] == pytest.approx(bytes_s)
    # the parties' online phase alone: no client legs, no announcement
    p = Link(0.010, 1.0).projection(0.05, LENET_LIKE, dealer_bytes=10**6, online_s=0.03)
    assert p["online_s"] == pytest.approx(0.03 + 60 * 0.005 + base["transfer_s"])
    assert p["dealer_transfer_s"] == pytest.approx(wire_bytes(10**6, 1) * 8 / 1e9)


@pytest.mark.parametrize(
    "shape", [(1, 10), (1, 6, 24, 24), (16384 // 8 - 8,), (16384 // 8,), (3, 40, 100)]
)
def test_tls_bytes_is_the_framing(shape) -> None:
    """One round's message as `mpcc.serving.wire` frames it, in TLS 1.3 records of at most
    16 KiB + 22 B: `tls_bytes` counts the same bytes (given that message's header)."""
    msgs = [np.zeros(shape, np.uint64)] * 3
    frame = frame_size(encode("data", {}, [msgs[0]]))
    payload = sum(a.nbytes for a in msgs)
    header = frame - 16 - msgs[0].nbytes  # this layout's JSON header
    on_socket = 3 * (frame + 22 * math.ceil(frame / 16384))
    assert tls_bytes(payload, 3, header) == on_socket
    assert wire_bytes(payload, 3, header) == on_socket + 66 * math.ceil(on_socket / 1448)
    assert tls_bytes(0, 0) == wire_bytes(0, 0) == 0
