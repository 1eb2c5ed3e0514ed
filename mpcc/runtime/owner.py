"""The model owner's side: encode the weights and split them into shares for P0 and P1."""

from __future__ import annotations

import numpy as np

from mpcc.compiler.ir import Program
from mpcc.runtime.cleartext import encode_weights
from mpcc.runtime.dealer import linear_weights
from mpcc.runtime.prg import share


def share_weights(
    prog: Program, weights: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each party's weight shares. With public weights, linear weights go to both parties in
    the clear and every other weight goes to P0 (P1 holds zeros), so the additive
    semantics of the executor are unchanged."""
    enc = encode_weights(prog, weights)
    s0: dict[str, np.ndarray] = {}
    s1: dict[str, np.ndarray] = {}
    if prog.public_weights:
        linear = set(linear_weights(prog))
        for n, w in enc.items():
            s0[n] = w
            s1[n] = w if n in linear else np.zeros_like(w)
        return s0, s1
    for n, w in enc.items():
        s0[n], s1[n] = share(w)
    return s0, s1
