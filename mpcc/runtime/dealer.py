"""The dealer: reads the public plan and makes each query's preprocessing, ahead of time.

It holds one seed per compute party. P0 expands all of its material from its seed; P1
expands the uniform parts from its seed and receives only corrections. The dealer only ever
sends: it never sees a share, an opened value or a weight. For each instruction it deals
exactly the protocol calls the instruction's op declares, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mpcc.compiler.calls import Call
from mpcc.compiler.costmodel import calls, masked_weights
from mpcc.compiler.ir import Instr, Program
from mpcc.runtime.material import Bundle
from mpcc.runtime.protocols import linear, protocol_for
from mpcc.runtime.rules import RULES
from mpcc.runtime.rules.linear import layout, prepare_weight, prepared_maps
from mpcc.runtime.session import Session


class Dealer:
    """Makes material for a session of one plan."""

    def __init__(self, prog: Program, session: Session, seeds: tuple[bytes, bytes]) -> None:
        self.prog = prog
        self.session = session
        self._seeds = seeds
        self._calls: list[list[Call]] = [calls(prog, ins) for ins in prog.instrs]
        self._maps = prepared_maps(prog)
        # B = B_0 + B_1 for every masked weight (both halves come from the parties' seeds),
        # laid out for each linear instruction's kernel, once per session.
        self._operands: dict[tuple[str, bool], np.ndarray] = {}
        for n in masked_weights(prog):
            b = linear.dealer_weight_mask(
                prog.weights[n].shape,
                session.weight_prg(seeds[0], n),
                session.weight_prg(seeds[1], n),
            )
            for ins in prog.instrs:
                if RULES[ins.op].bilinear is not None and ins.weights[0] == n:
                    key = layout(prog, ins)
                    if key not in self._operands:
                        self._operands[key] = prepare_weight(prog, ins, b)
            del b

    def _aux(self, i: int, ins: Instr) -> tuple[Any, ...]:
        """What call i needs beyond its sizes: a linear instruction's map and B."""
        fn = self._maps.get(i)
        return () if fn is None else (fn, self._operands[layout(self.prog, ins)])

    @property
    def sends_p0(self) -> bool:
        """Whether P0 gets material too (the common words of FSS keys)."""
        return any(protocol_for(c).shared_words(c) for cs in self._calls for c in cs)

    def for_p0(self, bundle: Bundle) -> Bundle:
        """P0's part of a query's material: the leading `shared_words` of each call's
        correction that has any (FSS keys), in call order. Call before P1's bundle is taken."""
        calls_ = [c for cs in self._calls for c in cs]
        parts = [
            corr[: protocol_for(c).shared_words(c)]
            for c, corr in zip(calls_, bundle.corrections, strict=True)
            if protocol_for(c).shared_words(c)
        ]
        return Bundle(bundle.session, bundle.query, parts)

    def deal(self, query: int, progress: Callable[[int], None] | None = None) -> Bundle:
        """All of P1's corrections for one query, in the plan's call order; `progress` is
        told how many calls are dealt after each."""
        s = self.session
        out: list[np.ndarray] = []
        for i, ins in enumerate(self.prog.instrs):
            for j, call in enumerate(self._calls[i]):
                prg0 = s.call_prg(self._seeds[0], query, i, j)
                prg1 = s.call_prg(self._seeds[1], query, i, j)
                out.append(protocol_for(call).deal(call, prg0, prg1, *self._aux(i, ins)))
                if progress is not None:
                    progress(len(out))
        return Bundle(s.id, query, out)
