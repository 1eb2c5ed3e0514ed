"""Start-up agreement: the session id from every party's contribution, and known-answer checks.

At each session start the dealer, P0 and P1 each contribute 128 random bits; the session
id hashes the plan hash, the deployment id and all three contributions, so no single party
chooses it and a restarted party never rejoins an old session. Each party checks its PRG
against a fixed known answer (`PRG_KAT`) and the parties compare those digests, so all
derive the right streams from the same seeds. P0 and P1 also compare the owner's
commitments to their weight shares (`mpcc.serving.state.share_commitment`).
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


# SHA-256 of 64 bytes of the call stream (seed 0^16, query 1, instruction 2, call 3) then 64
# bytes of the weight-mask stream (seed 00 01 .. 0f, weight "w"), session id "0" * 32 and plan
# hash "0" * 64: AES-128-CTR (counter block 0) over zeros, keyed with HKDF-SHA256 (no salt,
# 16 bytes, info = the "/"-joined label). tests/test_serving_startup.py recomputes it with
# the `cryptography` primitives directly, not through mpcc.
PRG_KAT = "a3bd6e3fdaad2f9490ffa344846e77dec7eee61fb0be7a2a6dcf9bf9c7b1ade1"


def prg_digest() -> str:
    """Digest of a fixed stream through the same derivation path the runtime uses."""
    s = Session("0" * 32, "0" * 64)
    words = np.concatenate(
        [s.call_prg(bytes(16), 1, 2, 3).uint64(8), s.weight_prg(bytes(range(16)), "w").uint64(8)]
    )
    return hashlib.sha256(words.tobytes()).hexdigest()


def prg_kat() -> str:
    """This build's PRG known-answer digest, checked against `PRG_KAT` (tens of microseconds).

    Raises PartyError if it differs: the parties would derive wrong masks and material even
    if they all agreed with each other."""
    got = prg_digest()
    if got != PRG_KAT:
        raise PartyError(
            f"start-up aborted: this build's PRG fails its known-answer test "
            f"(digest {_short(got)}, expected {_short(PRG_KAT)}); AES-128-CTR / HKDF-SHA256 "
            "from the `cryptography` package or mpcc.runtime.prg is broken"
        )
    return got


def _short(v: object) -> str:
    """At most 12 characters of a value for an error message (no long hex in the logs)."""
    if isinstance(v, str):
        return f"{v[:12]}…" if len(v) > 12 else repr(v)
    r = repr(v)
    return f"{r[:12]}…" if len(r) > 12 else r


def mismatch(what: str, mine: object, theirs: object, me: str, peer: str) -> None:
    """Raise a clear start-up error if two parties disagree on `what` (dicts: per key, so the
    error names the entry that differs and shows no long value)."""
    if isinstance(mine, dict) and isinstance(theirs, dict):
        for k in sorted(set(mine) | set(theirs), key=str):
            mismatch(f"{what} ({k})", mine.get(k), theirs.get(k), me, peer)
        return
    if mine != theirs:
        raise PartyError(
            f"start-up aborted: {me} and {peer} disagree on the {what} "
            f"({me}: {_short(mine)}, {peer}: {_short(theirs)})"
        )
