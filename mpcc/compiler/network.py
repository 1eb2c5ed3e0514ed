"""Choosing each comparison's protocol for a network: `mpcc compile --network RTT_ms,Gbps`.

On a LAN a round costs tens of microseconds, and the bit-tree comparison (4 rounds, ~21 B
per element, ~60 B of dealer material) is the cheapest. On a WAN a round costs RTT/2, and
function secret sharing (a ReLU in 2 rounds, a sign in 1, ~16 B per element online but
~1-1.5 KB of dealer keys per element, to each party, and ~3-9x the CPU: `calls.ReluFss`)
wins for all but the largest layers (at 0.2 ms, for the small ones only). A MaxPool over
windows of 3 or 4 may also compare all pairs at once (`calls.MaxPairs`: 5 rounds against the
tournament's 8, with ~1.8x its dealer material and bytes; bigger windows in levels of 3 or 4,
10 rounds for 3x3 against 16), and with the ReLU after it fused
in (`fuse_pool_relu`: each candidate compared with 0 as well) still 5 rounds, against 12 on
the tree and 6 by FSS, at a tenth of FSS's material. Each comparison instruction
(ReLU, Clip, LeakyReLU, MaxPool, [x >= 0]: the ops with a `cmp` attribute) gets the protocol
that minimises its projected time on the network,

    time = rounds * RTT / 2 + bytes sent / bandwidth + elements * online CPU per element,

within an optional budget of dealer material per query (P1's and P0's bytes together): over
budget, the switches to a protocol with less material that cost the least time per byte
saved are made first (FSS to all pairs or to the tree, all pairs to the tree), and what the
budget has left then buys back the faster protocols that fit, most time per byte first.
Without a network the plan keeps the tree everywhere (today's LAN choice).

The plan's rounds and bytes are priced for one query on an idle link. With many queries in
flight the material's bandwidth and CPU decide instead (`docs/benchmarks.md`): serve the LAN
plan for throughput, a `--network` plan for one query's latency.

The CPU figures are measured on the 2-core reference machine (`benchmarks/fss.py`: both
parties, wall time per element of a whole layer); they only tip the choice for big layers
on fast links.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass

from mpcc.compiler import ops
from mpcc.compiler.calls import Call, MaxPairs, Relu, ReluFss, Sign, SignFss
from mpcc.compiler.costmodel import calls
from mpcc.compiler.costs import max_pairs_sizes
from mpcc.compiler.ir import Instr, Program
from mpcc.compiler.ops import Op
from mpcc.compiler.ops.base import RuleError
from mpcc.compiler.ops.pool import PAIRS_MIN_WINDOW
from mpcc.errors import MpccError

# Online CPU per compared element (the whole online phase, both parties, wall), on the
# reference machine at n = 10^5 (`benchmarks/fss.py`); for MaxPairs per comparison (it ran
# at 2.4x a tournament's three ReLUs' time for windows of 4, with 6 comparisons).
CPU_S_PER_ELEMENT = {
    Relu: 0.11e-6,
    Sign: 0.08e-6,
    ReluFss: 0.31e-6,
    SignFss: 0.71e-6,
    MaxPairs: 0.13e-6,
}


def _compared(c: Call) -> int:
    """The elements a call compares (0 for the calls that compare none)."""
    if isinstance(c, MaxPairs):
        return c.n * max_pairs_sizes(c.k, c.relu is not None)[0]
    return getattr(c, "n", 0)


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
            total += cost.rounds * self.rtt_s / 2 + cost.sent * 8 / (self.gbps * 1e9)
            total += _compared(c) * CPU_S_PER_ELEMENT.get(type(c), 0.0)
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
    with_relu: bool = False  # a MaxPool with the ReLU after it fused in (`fuse_pool_relu`)


def fuse_pool_relu(prog: Program) -> dict[int, int]:
    """Make each MaxPool over windows of 3 or more whose one use is a ReLU a single instruction
    with the ReLU in it (`relu_shift`), so that comparing all pairs at once can take both in
    its last level's 5 rounds (the tree and FSS run the same calls as the two instructions
    did). Rebuilds the program in place, its value ids renumbered; returns the new id of
    every old value (a fused MaxPool's own output: its instruction's), empty if nothing was
    fused."""
    uses = Counter(a for ins in prog.instrs for a in ins.args)
    made_by = {ins.out: ins for ins in prog.instrs}
    relu_of: dict[int, Instr] = {}  # a fused MaxPool's output -> its ReLU
    for ins in prog.instrs:
        pool = made_by.get(ins.args[0]) if ins.op is ops.relu else None
        if (
            pool is not None
            and pool.op is ops.maxpool
            and uses[pool.out] == 1
            and pool.attrs.get("relu_shift") is None
            and math.prod(pool.attrs["kernel"]) >= PAIRS_MIN_WINDOW
        ):
            relu_of[pool.out] = ins
    if not relu_of:
        return {}
    pool_of = {r.out: pool for pool, r in relu_of.items()}
    new = dataclasses.replace(prog, values=[], instrs=[], inputs=[], outputs=[], notes=[])
    ids: dict[int, int] = {}
    for ins in prog.instrs:
        if ins.out in pool_of:
            ids[ins.out] = ids[pool_of[ins.out]]
            continue
        attrs = dict(ins.attrs)
        if ins.out in relu_of:
            attrs["relu_shift"] = relu_of[ins.out].attrs["shift"]
        ids[ins.out] = new.emit(ins.op, tuple(ids[a] for a in ins.args), ins.weights, **attrs).id
    prog.values[:], prog.instrs[:] = new.values, new.instrs
    prog.inputs[:] = [(name, ids[v]) for name, v in prog.inputs]
    prog.outputs[:] = [(name, ids[v]) for name, v in prog.outputs]
    return ids


def _options(prog: Program, ins: Instr, net: Network) -> dict[str, tuple[float, int]]:
    """Each protocol the instruction's op offers and can use here: (seconds, material)."""
    per = {}
    for cmp in ins.op.attrs["cmp"].choices:
        ins.attrs["cmp"] = cmp
        try:
            cl = calls(prog, ins)
        except RuleError:  # not for this instruction (all pairs: windows of 3 or more)
            continue
        per[cmp] = (net.seconds(cl), material(cl))
    return per


def choose(prog: Program, net: Network, budget_bytes: int | None = None) -> list[Choice]:
    """Set each comparison instruction's `cmp` for `net` (in place) and return the choices.

    Each takes its fastest protocol. Over the budget, the switch to a protocol with less
    material that costs the least time per byte saved is made first, until the plan fits;
    then what the budget has left buys back the switches to faster protocols that save the
    most time per byte, while they fit. (Run `fuse_pool_relu` first to let all pairs take
    a MaxPool's ReLU too.)"""
    options: dict[int, dict[str, tuple[float, int]]] = {}
    picked: dict[int, str] = {}
    for i, ins in enumerate(prog.instrs):
        if "cmp" in ins.op.attrs:
            options[i] = per = _options(prog, ins, net)
            picked[i] = min(per, key=lambda k: per[k][0])
    if budget_bytes is not None:
        total = sum(material(calls(prog, ins)) for ins in prog.instrs if "cmp" not in ins.op.attrs)
        total += sum(options[i][k][1] for i, k in picked.items())

        def switches(cheaper: bool) -> list[tuple[float, int, str, int]]:
            """(time per byte, instruction, protocol, material change) of each switch."""
            out = []
            for i, k0 in picked.items():
                s0, m0 = options[i][k0]
                for k, (s, m) in options[i].items():
                    fits = total + m - m0 <= budget_bytes
                    if (m < m0) if cheaper else (s < s0 and fits):
                        out.append(((s - s0) / max(abs(m - m0), 1), i, k, m - m0))
            return out

        while total > budget_bytes:
            moves = switches(cheaper=True)
            if not moves:
                raise MpccError(
                    f"--material-budget {budget_bytes / 1e6:g} MB is below what the plan needs "
                    f"with the cheapest protocols ({total / 1e6:.1f} MB of dealer material per "
                    "query)"
                )
            _, i, k, dm = min(moves)
            total, picked[i] = total + dm, k
        while moves := switches(cheaper=False):
            _, i, k, dm = min(moves)  # the most time saved per byte (most negative)
            total, picked[i] = total + dm, k
    out = []
    for i, k in picked.items():
        ins, (s, m) = prog.instrs[i], options[i][k]
        tree_s, tree_m = options[i]["tree"]
        fused = ins.attrs.get("relu_shift") is not None
        out.append(Choice(i, ins.op, k, s, m, tree_s - s, m - tree_m, fused))
        if k == "tree":
            ins.attrs.pop("cmp", None)
        else:
            ins.attrs["cmp"] = k
    return out


_NAMES = {"fss": "FSS", "pairs": "all pairs at once"}


def describe(choices: list[Choice], net: Network, budget_bytes: int | None) -> str:
    """One note for the compile report: how many comparisons use which protocol, and why."""
    moved = [c for c in choices if c.cmp != "tree"]
    budget = "" if budget_bytes is None else f", material budget {budget_bytes / 1e6:g} MB"
    counts = {k: sum(c.cmp == k for c in choices) for k in _NAMES}
    used = ", ".join(f"{m} use{'s' if m == 1 else ''} {_NAMES[k]}" for k, m in counts.items() if m)
    fused = sum(c.with_relu for c in choices)
    if fused:
        used += f", {fused} with the ReLU after {'it' if fused == 1 else 'them'} fused in"
    return (
        f"protocols chosen for {net}{budget}: of {len(choices)} comparison instructions, "
        f"{used or 'none leaves the tree'} (projected "
        f"{sum(c.saved_s for c in moved) * 1e3:.1f} ms saved online, "
        f"{sum(c.extra for c in moved) / 1e6:.1f} MB more dealer material per query)"
    )


__all__ = ["Choice", "Network", "choose", "describe", "fuse_pool_relu", "material"]
