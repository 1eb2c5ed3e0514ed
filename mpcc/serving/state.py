"""A party's deployed model on disk: the public plan, a deployment id and (P0, P1) its shares.

One file, `deployment.npz` (mode 0600, in a 0700 directory), so a party that restarts serves
the same model without the owner sending it again. Parties never hold plaintext weights; the
dealer's file holds the public plan only.

A deploy is two-phase (see `mpcc.serving.owner`): a party first *stages* what it received,
as `staged-<deployment id>.npz` beside the active file, and replaces the active file with it
(`activate`) only once all three parties have staged theirs. Every write is fsynced, file and
directory, and lands under a temporary name first, so a crash leaves the old file or the new
one, never a mix; what a crash leaves over (temporary and staged files) is removed at start
(`clean`).

With its share a compute party keeps the owner's commitments to both parties' shares
(`share_commitment`) and the salt of its own: it checks its share against its commitment
whenever it receives or loads one, and P0 and P1 compare the pair at every session start, so
a corrupted share file or shares of two different deployments stop the start-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mpcc.compiler.ir import Program
from mpcc.compiler.planfile import canonical_json, from_public, plan_hash
from mpcc.errors import PlanError
from mpcc.serving.certs import fsync_dir, write_private

FILE = "deployment.npz"
STAGED = "staged-{}.npz"  # a deployment received, waiting for the owner's "activate"
_DEPLOY_ID = re.compile(r"^[0-9a-f]{8,64}$")
META = "__deployment__"
SHARE_ROLES = ("p0", "p1")
SALT_BYTES = 32


def share_commitment(deploy_id: str, role: str, salt: bytes, shares: dict[str, np.ndarray]) -> str:
    """SHA-256 commitment (hex) to one party's weight shares in one deployment.

    Hashes a domain tag, the deployment id, the role, a 256-bit salt and then every share in
    name order (name, shape, little-endian uint64 words), each field length-prefixed.

    Why it may go to both parties: with secret weights a share is uniform in Z_2^64 (drawn
    from AES-CTR keyed by `secrets`) and independent of the weights on its own, so its hash
    says nothing about them. The salt, known only to the share's holder and the owner, makes
    the commitment hiding anyway: even a share that is not uniform (with --public-weights,
    P0's share holds the non-linear weights in the clear) cannot be tested against guesses
    by the peer, which sees only the hash of salt and share.
    """
    h = hashlib.sha256(b"mpcc/share-commitment/v1")

    def field(b: bytes | memoryview) -> None:
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)  # a share is hashed where it lies: no copy of a weight-sized array

    field(deploy_id.encode())
    field(role.encode())
    field(salt)
    for n in sorted(shares):
        a = np.ascontiguousarray(shares[n], dtype="<u8")
        field(n.encode())
        field(json.dumps(list(a.shape)).encode())
        field(memoryview(a).cast("B"))
    return h.hexdigest()


def _check_commitments(commitments: Any) -> dict[str, str]:
    if (
        not isinstance(commitments, dict)
        or set(commitments) != set(SHARE_ROLES)
        or not all(
            isinstance(c, str) and len(c) == 64 and all(ch in "0123456789abcdef" for ch in c)
            for c in commitments.values()
        )
    ):
        raise PlanError("malformed or missing commitments to the weight shares")
    return dict(commitments)


@dataclass(frozen=True)
class Deployment:
    """What a party holds of a deployed model."""

    prog: Program
    public: dict[str, Any]
    plan_hash: str
    deploy_id: str
    shares: dict[str, np.ndarray] | None  # None at the dealer
    # P0/P1 only: whose shares these are, the owner's commitments to both parties' shares
    # and the salt of this party's commitment
    role: str | None = None
    commitments: dict[str, str] | None = None
    salt: bytes | None = None

    @classmethod
    def build(
        cls,
        public: dict[str, Any],
        claimed_hash: str,
        deploy_id: str,
        shares: dict[str, np.ndarray] | None,
        *,
        role: str | None = None,
        commitments: Any = None,
        salt: Any = None,
    ) -> Deployment:
        """Check a received plan against its hash, the shares against the plan and against
        the owner's commitment to them (`salt`: bytes or hex)."""
        prog = from_public(public)
        h = plan_hash(prog)
        if h != claimed_hash:
            raise PlanError(f"plan hash {h[:12]}… does not match the claimed {claimed_hash[:12]}…")
        if len(prog.inputs) != 1:
            raise PlanError("serving supports plans with exactly one input")
        if not isinstance(deploy_id, str) or not 8 <= len(deploy_id) <= 64:
            raise PlanError("malformed deployment id")
        if shares is None:
            return cls(prog, public, h, deploy_id, None)
        check_shares(prog, shares)
        if role not in SHARE_ROLES:
            raise PlanError(f"weight shares belong to p0 or p1, not {role!r}")
        commitments = _check_commitments(commitments)
        if isinstance(salt, str):
            try:
                salt = bytes.fromhex(salt)
            except ValueError:
                salt = None
        if not isinstance(salt, bytes) or len(salt) != SALT_BYTES:
            raise PlanError("malformed or missing salt of the share commitment")
        dep = cls(prog, public, h, deploy_id, shares, role, commitments, salt)
        dep.check_commitment(shares)
        return dep

    def check_commitment(self, shares: dict[str, np.ndarray]) -> None:
        """`shares` are this party's, as the owner committed to them (PlanError if not)."""
        check_shares(self.prog, shares)
        role = str(self.role)
        if share_commitment(self.deploy_id, role, self.salt, shares) != self.commitments[role]:
            raise PlanError(
                f"{role.upper()}'s weight shares do not match the owner's commitment to them "
                f"(deployment {self.deploy_id[:8]}…): the shares are corrupted or were changed"
            )

    def public_part(self) -> Deployment:
        """This deployment without the shares in memory (a compute party reads them from
        its deployment file at each session start: `load_shares`)."""
        return replace(self, shares=None)


def check_shares(prog: Program, shares: dict[str, np.ndarray]) -> None:
    """Every weight of the plan, once, as uint64 of its shape."""
    if set(shares) != set(prog.weights):
        missing = sorted(set(prog.weights) - set(shares))
        extra = sorted(set(shares) - set(prog.weights))
        raise PlanError(f"weight shares do not match the plan (missing {missing}, extra {extra})")
    for n, spec in prog.weights.items():
        s = shares[n]
        if s.dtype != np.uint64 or tuple(s.shape) != tuple(spec.shape):
            raise PlanError(
                f"share of {n!r} is {s.dtype}{list(s.shape)}, expected uint64{list(spec.shape)}"
            )


def staged_path(directory: Path, deploy_id: str) -> Path:
    if not isinstance(deploy_id, str) or not _DEPLOY_ID.match(deploy_id):
        raise PlanError("malformed deployment id")
    return directory / STAGED.format(deploy_id)


def stage(directory: Path, dep: Deployment) -> Path:
    """Write a received deployment beside the active one, not yet in use (`activate`)."""
    return save(directory, dep, staged_path(directory, dep.deploy_id).name)


def activate(directory: Path, deploy_id: str) -> None:
    """Make a staged deployment the active one (an atomic rename, made durable)."""
    os.replace(staged_path(directory, deploy_id), directory / FILE)
    fsync_dir(directory)


def discard(directory: Path, deploy_id: str) -> None:
    """Remove a staged deployment the owner did not activate."""
    staged_path(directory, deploy_id).unlink(missing_ok=True)


def clean(directory: Path) -> list[str]:
    """Remove what an interrupted write or deploy left in `directory` (temporary files and
    deployments staged and never activated); returns their names."""
    if not directory.is_dir():
        return []
    gone = []
    for p in directory.iterdir():
        if p.name.startswith((FILE + ".tmp", "staged-")) and p.is_file():
            p.unlink(missing_ok=True)
            gone.append(p.name)
    if gone:
        fsync_dir(directory)
    return sorted(gone)


def save(directory: Path, dep: Deployment, name: str = FILE) -> Path:
    """Write the deployment (atomically and durably, mode 0600) into `directory` (mode 0700)
    as `name`."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    meta = {
        "plan": dep.public,
        "plan_hash": dep.plan_hash,
        "deploy_id": dep.deploy_id,
        "has_shares": dep.shares is not None,
    }
    if dep.shares is not None:
        meta.update(role=dep.role, commitments=dep.commitments, salt=dep.salt.hex())
    arrays = {META: np.frombuffer(canonical_json(meta), dtype=np.uint8)}
    for i, n in enumerate(sorted(dep.shares or {})):
        arrays[f"w{i}"] = dep.shares[n]
    names = sorted(dep.shares or {})
    arrays["__names__"] = np.frombuffer(json.dumps(names).encode(), dtype=np.uint8)
    path = directory / name
    write_private(path, lambda f: np.savez(f, **arrays))  # streamed: no copy of the shares
    return path


def load_shares(directory: Path, dep: Deployment) -> dict[str, np.ndarray]:
    """This party's weight shares of `dep`, read from its deployment file and checked
    against the owner's commitment: a fresh copy, for one session's use."""
    path = directory / FILE
    meta, shares = _read(path)
    if meta.get("deploy_id") != dep.deploy_id or shares is None:
        raise PlanError(
            f"{path} no longer holds deployment {dep.deploy_id[:8]}…; deploy the model again"
        )
    try:
        dep.check_commitment(shares)
    except PlanError as e:
        raise PlanError(f"{path}: {e}; deploy the model again") from None
    return shares


def _read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    """A deployment file's metadata and shares (None at the dealer), unchecked."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z[META].tobytes())
            names = json.loads(z["__names__"].tobytes())
            shares = {n: z[f"w{i}"] for i, n in enumerate(names)} if meta["has_shares"] else None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PlanError(
            f"{path} is not a readable deployment ({e}); deploy the model again"
        ) from None
    if not isinstance(meta, dict):
        raise PlanError(f"{path} is not a readable deployment; deploy the model again")
    return meta, shares


def load(directory: Path) -> Deployment | None:
    """The deployment stored in `directory`, or None if nothing was deployed there."""
    path = directory / FILE
    if not path.exists():
        return None
    meta, shares = _read(path)
    try:
        return Deployment.build(
            meta["plan"],
            meta["plan_hash"],
            meta["deploy_id"],
            shares,
            role=meta.get("role"),
            commitments=meta.get("commitments"),
            salt=meta.get("salt"),
        )
    except (PlanError, KeyError) as e:
        raise PlanError(f"{path}: {e}; deploy the model again") from None
