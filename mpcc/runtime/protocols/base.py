"""What a protocol module exports: one object that deals, expands and runs one call type.

Each protocol module (`linear`, `multiply`, `matmul_ss`, `truncation`, `relu`) implements one of the
compiler's call types (`mpcc.compiler.calls`) and exports it as `PROTOCOL`:

- `deal(call, prg0, prg1, *operands)`: the dealer's correction for P1, flat uint64 words
  (P0 gets nothing: all of its material comes from its seed);
- `expand(party, call, prg, correction, *operands)`: one party's material for one call;
- `run`: the online phase (its arguments are the protocol's own);
- `cost(call)`: rounds and bytes, the compiler's formula (`mpcc.compiler.costs`);
- `correction_words(call)`: the length of `deal`'s output, which is the priced dealer bytes;
- `shared_words(call)`: how many leading words of that output the dealer sends P0 too
  (0 but for function secret sharing, whose keys share correction words that depend on
  both parties' seeds: `sign_fss`); P0's `expand` then gets them as its correction.

`operands` is what a call needs beyond its sizes: for `calls.Linear`, the bilinear map and
the session's prepared weight operand (B at the dealer, F at a party). Protocols know
nothing of the IR.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpcc.compiler.calls import Call
from mpcc.compiler.costs import Cost


@dataclass(frozen=True)
class Protocol:
    """One protocol's offline and online phases, for one call type."""

    call: type[Call]
    deal: Callable[..., np.ndarray]
    expand: Callable[..., Any]
    run: Callable[..., np.ndarray]
    correction_words: Callable[[Any], int]
    shared_words: Callable[[Any], int] = lambda call: 0

    def cost(self, call: Call) -> Cost:
        return call.cost()
