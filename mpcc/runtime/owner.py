"""The model owner's side: encode the weights and split them into shares for P0 and P1."""

from __future__ import annotations

import numpy as np

from mpcc.compiler.costmodel import linear_weights
from mpcc.compiler.ir import Program
from mpcc.errors import InputError, ModelError
from mpcc.runtime.fixedpoint import encode
from mpcc.runtime.prg import share


def encode_weight(prog: Program, name: str, w: np.ndarray) -> np.ndarray:
    """One weight encoded at the scale its instruction needs."""
    spec = prog.weights[name]
    try:
        return encode(w, spec.scale)
    except InputError as e:
        src = f" (from {spec.source!r})" if spec.source else ""
        raise ModelError(f"weight {name}{src} cannot be encoded: {e}") from None


def share_weights(
    prog: Program, weights: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each party's weight shares, made one weight at a time (the encoding becomes P1's
    share in place), so sharing costs the two shares and no more. With public weights,
    linear weights go to both parties in the clear and every other weight goes to P0 (P1
    holds zeros), so the additive semantics of the executor are unchanged."""
    s0: dict[str, np.ndarray] = {}
    s1: dict[str, np.ndarray] = {}
    linear = set(linear_weights(prog)) if prog.public_weights else set()
    for n in prog.weights:
        w = encode_weight(prog, n, weights[n])
        if prog.public_weights:
            s0[n], s1[n] = w, (w if n in linear else np.zeros_like(w))
        else:
            s0[n], s1[n] = share(w, in_place=True)
    return s0, s1
