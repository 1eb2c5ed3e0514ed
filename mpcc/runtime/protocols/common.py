"""Helpers every protocol shares."""

from __future__ import annotations

from typing import Any

import numpy as np

from mpcc.errors import MaterialError
from mpcc.runtime.transport import Channel


def open_shares(ch: Channel, shares: list[np.ndarray]) -> list[np.ndarray]:
    """Open additive shares in one round (flat on the wire, so 0-d arrays travel too)."""
    got = ch.exchange([np.asarray(s).reshape(-1) for s in shares])
    return [np.asarray(s + g.reshape(np.shape(s))) for s, g in zip(shares, got, strict=True)]


def checked_correction(
    protocol: str, party: int, correction: np.ndarray | None, words: int
) -> np.ndarray | None:
    """P1's dealer correction as `words` flat uint64 words (checked); None for P0, which
    expands everything from its seed and must not be handed one."""
    if party == 1:
        if correction is None or correction.size != words:
            got = None if correction is None else correction.size
            raise MaterialError(f"{protocol}: P1 needs {words} correction words, got {got}")
        return np.asarray(correction, dtype=np.uint64).reshape(-1)
    if correction is not None:
        raise MaterialError(f"{protocol}: P0 takes no correction")
    return None


def consume(protocol: str, mat: Any, why: str) -> None:
    """Mark a party's material for one invocation used; refuse it the second time."""
    if mat.used:
        raise MaterialError(f"{protocol}: material already used ({why})")
    mat.used = True
