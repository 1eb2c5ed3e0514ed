"""Start-up agreement: the session id from every party's contribution, and known-answer checks.

At each session start the dealer, P0 and P1 each contribute 128 random bits; the session
id hashes the plan hash, the deployment id and all three contributions, so no single party
chooses it and a restarted party never rejoins an old session. The parties also compare a
PRG known-answer digest, so all derive the same streams from the same seeds.
"""

from __future__ import annotations

import hashlib
import secrets

import numpy as np

from mpcc.errors import PartyError
from mpcc.runtime.session import Session

CONTRIBUTORS = ("dealer", "p0", "p1")


def contribution() -> str:
    """A fresh 128-bit contribution (hex) from the OS CSPRNG."""
    return secrets.token_hex(16)


def session_id(plan_hash: str, deploy_id: str, contributions: dict[str, str]) -> str:
    """The 128-bit session id (32 hex digits) all three parties derive."""
    if set(contributions) != set(CONTRIBUTORS) or not all(
        isinstance(c, str) and len(c) == 32 for c in contributions.values()
    ):
        raise PartyError("session start-up: malformed contributions")
    h = hashlib.sha256(b"mpcc/session-id")
    for part in (plan_hash, deploy_id, *(contributions[r] for r in CONTRIBUTORS)):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:32]


def prg_kat() -> str:
    """Digest of a fixed stream through the same derivation path the runtime uses."""
    s = Session("0" * 32, "0" * 64)
    words = np.concatenate(
        [s.call_prg(bytes(16), 1, 2, 3).uint64(8), s.weight_prg(bytes(range(16)), "w").uint64(8)]
    )
    return hashlib.sha256(words.tobytes()).hexdigest()


def _short(v: object) -> str:
    return f"{v[:12]}…" if isinstance(v, str) and len(v) > 12 else repr(v)


def mismatch(what: str, mine: object, theirs: object, me: str, peer: str) -> None:
    """Raise a clear start-up error if two parties disagree on `what`."""
    if mine != theirs:
        raise PartyError(
            f"start-up aborted: {me} and {peer} disagree on the {what} "
            f"({me}: {_short(mine)}, {peer}: {_short(theirs)})"
        )
