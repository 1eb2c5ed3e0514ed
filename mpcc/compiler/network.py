"""Choosing each comparison's protocol for a network: `mpcc compile --network RTT_ms,Gbps`.

On a LAN a round costs tens of microseconds, and the bit-tree comparison (4 rounds, ~21 B
per element, ~60 B of dealer material) is the cheapest. On a WAN a round costs RTT/2, and
function secret sharing (a ReLU in 2 rounds, a sign in 1, ~16 B per element online but
~1-1.5 KB of dealer keys per element, to each party, and ~3-9x the CPU: `calls.ReluFss`)
wins for all but the largest layers (at 0.2 ms, for the small ones only). Each comparison
instruction (ReLU, Clip, LeakyReLU, MaxPool, [x >= 0]: the ops with a `cmp` attribute) gets
the protocol that minimises its projected time on the network,

    time = rounds * RTT / 2 + bytes sent / bandwidth + elements * online CPU per element,

within an optional budget of dealer material per query (P1's and P0's bytes together): over
budget, the FSS choices that save the least time per extra byte go back to the tree first.
Without a network the plan keeps the tree everywhere (today's LAN choice).

The CPU figures are measured on the 2-core reference machine (`benchmarks/fss.py`: both
parties, wall time per element of a whole layer); they only tip the choice for big layers
on fast links.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mpcc.compiler.calls import Call, Relu, ReluFss, Sign, SignFss
from mpcc.compiler.costmodel import calls
from mpcc.compiler.ir import Program
from mpcc.compiler.ops import Op
from mpcc.errors import MpccError

# Online CPU per compared element (the whole online phase, both parties, wall), on the
# reference machine at n = 10^5 (`benchmarks/fss.py`).
CPU_S_PER_ELEMENT = {Relu: 0.11e-6, Sign: 0.08e-6, ReluFss: 0.31e-6, SignFss: 0.71e-6}


@dataclass(frozen=True)
class Network:
    """A link between the compute parties: round-trip time and bandwidth."""

    rtt_s: float
    gbps: float

    @classmethod
    def parse(cls, text: str) -> Network:
        """From "RTT_ms,Gbps", e.g. "10,1"."""
        try:
            rtt, gbps = (float(v) for v in text.split(","))
        except ValueError:
            raise MpccError(f"--network wants RTT_ms,Gbps such as 10,1, not {text!r}") from None
        if not (rtt >= 0 and gbps > 0 and math.isfinite(rtt) and math.isfinite(gbps)):
            raise MpccError(f"--network {text!r}: RTT must be >= 0 ms and bandwidth > 0 Gbit/s")
        return cls(rtt / 1e3, gbps)

    def __str__(self) -> str:
        return f"{self.rtt_s * 1e3:g} ms RTT, {self.gbps:g} Gbit/s"

    def seconds(self, call_list: list[Call]) -> float:
        """Projected online time of an instruction's calls on this link."""
        total = 0.0
        for c in call_list:
            cost = c.cost()
            n = getattr(c, "n", 0)
            total += cost.rounds * self.rtt_s / 2 + cost.sent * 8 / (self.gbps * 1e9)
            total += n * CPU_S_PER_ELEMENT.get(type(c), 0.0)
        return total


def material(call_list: list[Call]) -> int:
    """Dealer bytes per query for these calls: to P1, and to P0 (FSS keys)."""
    return sum(c.cost().dealer + c.dealer_p0() for c in call_list)


@dataclass(frozen=True)
class Choice:
    """One comparison instruction's protocol and its projected time and material."""

    index: int
    op: Op
    cmp: str
    seconds: float
    material: int
    saved_s: float  # against the tree
    extra: int  # material beyond the tree's


def choose(prog: Program, net: Network, budget_bytes: int | None = None) -> list[Choice]:
    """Set each comparison instruction's `cmp` for `net` (in place) and return the choices."""
    options = []
    for i, ins in enumerate(prog.instrs):
        if "cmp" not in ins.op.attrs:
            continue
        per = {}
        for cmp in ("tree", "fss"):
            ins.attrs["cmp"] = cmp
            cl = calls(prog, ins)
            per[cmp] = (net.seconds(cl), material(cl))
        best = min(per, key=lambda k: per[k][0])
        tree_s, tree_m = per["tree"]
        options.append(
            Choice(i, ins.op, best, *per[best], tree_s - per[best][0], per[best][1] - tree_m)
        )
    if budget_bytes is not None:
        total = sum(material(calls(prog, ins)) for ins in prog.instrs if "cmp" not in ins.op.attrs)
        total += sum(c.material for c in options)
        # over budget: drop the FSS choices that buy the least time per extra byte first
        for c in sorted(
            (c for c in options if c.cmp == "fss"), key=lambda c: c.saved_s / max(c.extra, 1)
        ):
            if total <= budget_bytes:
                break
            tree = Choice(c.index, c.op, "tree", c.seconds + c.saved_s, c.material - c.extra, 0, 0)
            options[options.index(c)] = tree
            total -= c.extra
        if total > budget_bytes:
            raise MpccError(
                f"--material-budget {budget_bytes / 1e6:g} MB is below what the plan needs with "
                f"the cheapest protocols ({total / 1e6:.1f} MB of dealer material per query)"
            )
    for c in options:
        ins = prog.instrs[c.index]
        if c.cmp == "fss":
            ins.attrs["cmp"] = "fss"
        else:
            ins.attrs.pop("cmp", None)
    return options


def describe(choices: list[Choice], net: Network, budget_bytes: int | None) -> str:
    """One note for the compile report: how many comparisons use which protocol, and why."""
    fss = [c for c in choices if c.cmp == "fss"]
    budget = "" if budget_bytes is None else f", material budget {budget_bytes / 1e6:g} MB"
    saved = sum(c.saved_s for c in fss)
    return (
        f"protocols chosen for {net}{budget}: {len(fss)} of {len(choices)} comparison "
        f"instructions use FSS (projected {saved * 1e3:.1f} ms saved online, "
        f"{sum(c.extra for c in fss) / 1e6:.1f} MB more dealer material per query)"
    )


__all__ = ["Choice", "Network", "choose", "describe", "material"]
