"""The network projection: a link's round-trip time and bandwidth, and the latency of a
measured run projected onto it (a model, not a measurement).

`Link.project` prices the parties' online phase alone (rounds x RTT/2 + bytes / rate);
`project_query` prices what a client sees end to end on a deployed cluster: its legs, P0's
announcement of the query to P1, the rounds, and every byte as it goes on the wire (framing,
TLS records, TCP/IP headers). `benchmarks/wan.py` checks the latter against real party
processes over TLS on a WAN emulated on this machine.
"""

from __future__ import annotations

import dataclasses
import math

from mpcc.compiler.network import Network

PROJECTION_NOTE = (
    "projection, not a measurement: measured time + (rounds + 4) x RTT/2 (the rounds, the "
    "client's request and answer, P0's announcement of the query to P1 and P1's go) + bytes "
    "on the wire (frames, TLS records, TCP/IP headers) / bandwidth; a round is one message "
    "each way at once, so it costs one one-way delay; full duplex, no congestion"
)

# One-way delays a query pays besides its rounds (mpcc.serving): the client's shares reach
# P0 and P1 (one, both at once), P0 announces the query to P1 and P1 answers "go" (two:
# P1 starts one delay before P0, so the rounds end one delay later), the answers reach the
# client (one).
CLIENT_LEGS = 2
ANNOUNCE = 2

# Bytes on the wire per message beyond its payload (mpcc.serving.wire and TLS 1.3):
FRAME_PREFIX = 16  # "MPCF" magic, u64 body length, u32 header length
ROUND_HEADER = 50  # a round's JSON header: {"k":"data","m":{},"a":[["<u8",[...]]]}, 40-70 B
CLIENT_HEADER = 400  # a request's (rid, plan hash) or an answer's (its stats) JSON header
TLS_RECORD = 16384  # TLS 1.3's largest record plaintext
TLS_RECORD_OVERHEAD = 22  # record header 5 B + inner content type 1 B + AEAD tag 16 B
# TCP/IPv4 with timestamps over Ethernet (MTU 1500): 1448 B of stream per 1514 B frame
TCP_MSS = 1448
PACKET_OVERHEAD = 66


def tls_bytes(payload: float, messages: int, header: int = ROUND_HEADER) -> float:
    """Bytes on the socket (as `WireTraffic` counts them) for `messages` messages of equal
    size holding `payload` bytes in all: each message one frame (`FRAME_PREFIX` + its JSON
    header + its payload) sent as TLS 1.3 records of at most 16 KiB of plaintext, 22 B more
    each."""
    if messages <= 0:
        return 0.0
    frame = payload / messages + FRAME_PREFIX + header
    records = math.ceil(frame / TLS_RECORD)
    return messages * (frame + records * TLS_RECORD_OVERHEAD)


def wire_bytes(payload: float, messages: int, header: int = ROUND_HEADER) -> float:
    """What the link carries for them: `tls_bytes` cut into TCP segments of `TCP_MSS`
    bytes, each with `PACKET_OVERHEAD` bytes of TCP, IP and Ethernet headers."""
    tls = tls_bytes(payload, messages, header)
    return tls + math.ceil(tls / TCP_MSS) * PACKET_OVERHEAD


@dataclasses.dataclass(frozen=True)
class QueryTraffic:
    """What one query moves, from a measurement or the cost model (payload bytes)."""

    rounds: int  # P0<->P1 rounds: one message each way at once (`Channel.exchange`)
    sent: int  # bytes each compute party sends the other online (the larger of the two)
    client_bytes: int  # the client's input share to each compute party
    answer_bytes: int  # each compute party's output share back to the client


@dataclasses.dataclass(frozen=True)
class Link:
    """A network link for the latency projection: round-trip time and bandwidth."""

    rtt_s: float
    gbps: float

    @classmethod
    def parse(cls, text: str) -> Link:
        """`RTT_ms,Gbps`, e.g. `1,1` (LAN) or `40,0.1` (WAN): the same syntax and checks as
        `mpcc compile --network` (`mpcc.compiler.network.Network.parse`)."""
        net = Network.parse(text)
        return cls(net.rtt_s, net.gbps)

    def transfer_s(self, nbytes: float) -> float:
        """Seconds to push `nbytes` through the link at full bandwidth."""
        return nbytes * 8 / (self.gbps * 1e9)

    @property
    def round_s(self) -> float:
        """What one round costs: both parties send at once and each waits for the other's
        message, so a round is one one-way delay, RTT/2 (not a request and its reply)."""
        return self.rtt_s / 2

    def project(self, compute_s: float, rounds: int, nbytes: float) -> float:
        """compute + rounds x RTT/2 + bytes / bandwidth: the parties' online phase on this
        link alone (no client, payload bytes as given; `project_query` for a query)."""
        return compute_s + rounds * self.round_s + self.transfer_s(nbytes)

    def project_query(self, compute_s: float, q: QueryTraffic) -> dict[str, float]:
        """The latency of one query at the client on this link, and its terms (seconds).

            latency = compute_s
                    + (rounds + CLIENT_LEGS + ANNOUNCE) x RTT/2                  [delay_s]
                    + 8 / rate x ( wire(2 x client_bytes, 2, CLIENT_HEADER)       [upload_s]
                                 + wire(sent, rounds)                             [online]
                                 + wire(2 x answer_bytes, 2, CLIENT_HEADER) )     [answer_s]

        `compute_s`: the query's time with no delay, measured (the in-process online time,
        or better the end-to-end latency over TLS on localhost, `mpcc bench --processes`,
        which also holds the client's and TLS's work). A round is one message each way at
        once: one one-way delay. Besides its rounds a query pays four one-way delays: the
        shares' way to P0 and P1, P0's announcement of the query to P1, P1's "go" back
        (P1 starts one delay before P0, so the last round ends one delay later than had
        they started together), and the answers' way back. Every role's link runs at `gbps`,
        full duplex: the client's link carries both shares and both answers; P0 and P1 send
        each other at once. `wire` is `wire_bytes`: frames, TLS records, TCP/IP headers.
        No congestion, no slow start (a warm link), and compute does not overlap the wire.
        """
        delay = (q.rounds + CLIENT_LEGS + ANNOUNCE) * self.round_s
        upload = self.transfer_s(wire_bytes(2 * q.client_bytes, 2, CLIENT_HEADER))
        online = self.transfer_s(wire_bytes(q.sent, q.rounds))
        answer = self.transfer_s(wire_bytes(2 * q.answer_bytes, 2, CLIENT_HEADER))
        return {
            "latency_s": compute_s + delay + upload + online + answer,
            "compute_s": compute_s,
            "delay_s": delay,
            "upload_s": upload,
            "transfer_s": online,
            "answer_s": answer,
        }

    def projection(
        self, compute_s: float, q: QueryTraffic, dealer_bytes: int, online_s: float
    ) -> dict[str, float]:
        """A measured query on this link: `project_query`'s latency at the client and its
        terms, the parties' online phase alone (`online_s` measured in process + rounds x
        RTT/2 + its wire bytes / rate), and the dealer's material's transfer (offline)."""
        terms = self.project_query(compute_s, q)
        return {
            **self.asdict(),
            **terms,
            "online_s": online_s + q.rounds * self.round_s + terms["transfer_s"],
            "rounds_s": q.rounds * self.round_s,
            "dealer_transfer_s": self.transfer_s(wire_bytes(dealer_bytes, 1)),
        }

    def asdict(self) -> dict[str, float]:
        """The link as the JSON report gives it."""
        return {"rtt_ms": self.rtt_s * 1e3, "gbps": self.gbps}
