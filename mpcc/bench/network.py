"""The network projection: a link's round-trip time and bandwidth, and the latency of a
measured run projected onto it (a model, not a measurement)."""

from __future__ import annotations

import dataclasses
import math

from mpcc.errors import MpccError

PROJECTION_NOTE = (
    "projection, not a measurement: measured online time + rounds x RTT/2 + "
    "bytes sent per party / bandwidth (a round is one message each way at once, so it costs "
    "one one-way delay; full duplex; no TCP/TLS overhead, no congestion)"
)


@dataclasses.dataclass(frozen=True)
class Link:
    """A network link for the latency projection: round-trip time and bandwidth."""

    rtt_s: float
    gbps: float

    @classmethod
    def parse(cls, text: str) -> Link:
        """`RTT_ms,Gbps`, e.g. `1,1` (LAN) or `40,0.1` (WAN)."""
        try:
            rtt_ms, gbps = (float(p) for p in text.split(","))
        except ValueError:
            raise MpccError(
                f"--network wants RTT_ms,Gbps (e.g. 1,1 or 40,0.1), not {text!r}"
            ) from None
        if not (rtt_ms >= 0 and gbps > 0 and math.isfinite(rtt_ms) and math.isfinite(gbps)):
            raise MpccError(f"--network {text!r}: RTT must be >= 0 ms and bandwidth > 0 Gbit/s")
        return cls(rtt_ms / 1e3, gbps)

    def transfer_s(self, nbytes: float) -> float:
        """Seconds to push `nbytes` through the link at full bandwidth."""
        return nbytes * 8 / (self.gbps * 1e9)

    @property
    def round_s(self) -> float:
        """What one round costs: both parties send at once and each waits for the other's
        message, so a round is one one-way delay, RTT/2 (not a request and its reply)."""
        return self.rtt_s / 2

    def project(self, compute_s: float, rounds: int, nbytes: float) -> float:
        """compute + rounds x RTT/2 + bytes / bandwidth: the latency on this link (a model)."""
        return compute_s + rounds * self.round_s + self.transfer_s(nbytes)

    def projection(
        self, online_s: float, rounds: int, sent: int, dealer_bytes: int
    ) -> dict[str, float]:
        """A measured query on this link: its online time (`sent` bytes per party), the
        rounds' and the transfer's share of it, and the dealer's material's transfer."""
        return {
            **self.asdict(),
            "online_s": self.project(online_s, rounds, sent),
            "rounds_s": rounds * self.round_s,
            "transfer_s": self.transfer_s(sent),
            "dealer_transfer_s": self.transfer_s(dealer_bytes),
        }

    def asdict(self) -> dict[str, float]:
        """The link as the JSON report gives it."""
        return {"rtt_ms": self.rtt_s * 1e3, "gbps": self.gbps}
