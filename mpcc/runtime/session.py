"""A session: the plan's hash, a fresh session id and the dealer's seeds, and how every
stream of preprocessing randomness is derived from them."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from mpcc.runtime.prg import Prg, new_seed


@dataclass(frozen=True)
class Session:
    """Public session facts; the seeds are held by the dealer and by one party each."""

    id: str
    plan_hash: str

    @classmethod
    def new(cls, plan_hash: str) -> Session:
        """A fresh session with a random 128-bit id."""
        return cls(secrets.token_hex(16), plan_hash)

    def call_prg(self, seed: bytes, query: int, instr: int, call: int) -> Prg:
        """The stream for one protocol call of one query."""
        return Prg.derive(seed, "mpcc/call", self.plan_hash, self.id, query, instr, call)

    def weight_prg(self, seed: bytes, weight: str) -> Prg:
        """The stream for a weight's mask B (fixed for the whole session)."""
        return Prg.derive(seed, "mpcc/weight-mask", self.plan_hash, self.id, weight)


def new_seeds() -> tuple[bytes, bytes]:
    """The dealer's seeds for P0 and P1 (each shared with that party only)."""
    return new_seed(), new_seed()
