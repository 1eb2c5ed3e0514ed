"""A party's deployed model on disk: the public plan, a deployment id and (P0, P1) its shares.

One file, `deployment.npz` (mode 0600, in a 0700 directory), replaced atomically, so a party
that restarts serves the same model without the owner sending it again. Parties never hold
plaintext weights; the dealer's file holds the public plan only.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mpcc.compiler.ir import Program
from mpcc.compiler.planfile import canonical_json, from_public, plan_hash
from mpcc.errors import PlanError
from mpcc.serving.certs import write_private

FILE = "deployment.npz"
META = "__deployment__"


@dataclass(frozen=True)
class Deployment:
    """What a party holds of a deployed model."""

    prog: Program
    public: dict[str, Any]
    plan_hash: str
    deploy_id: str
    shares: dict[str, np.ndarray] | None  # None at the dealer

    @classmethod
    def build(
        cls,
        public: dict[str, Any],
        claimed_hash: str,
        deploy_id: str,
        shares: dict[str, np.ndarray] | None,
    ) -> Deployment:
        """Check a received plan against its hash and the shares against the plan."""
        prog = from_public(public)
        h = plan_hash(prog)
        if h != claimed_hash:
            raise PlanError(f"plan hash {h[:12]}… does not match the claimed {claimed_hash[:12]}…")
        if len(prog.inputs) != 1:
            raise PlanError("serving supports plans with exactly one input")
        if not isinstance(deploy_id, str) or not 8 <= len(deploy_id) <= 64:
            raise PlanError("malformed deployment id")
        if shares is not None:
            check_shares(prog, shares)
        return cls(prog, public, h, deploy_id, shares)


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


def save(directory: Path, dep: Deployment) -> Path:
    """Write the deployment (atomically, mode 0600) into `directory` (mode 0700)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    meta = {
        "plan": dep.public,
        "plan_hash": dep.plan_hash,
        "deploy_id": dep.deploy_id,
        "has_shares": dep.shares is not None,
    }
    arrays = {META: np.frombuffer(canonical_json(meta), dtype=np.uint8)}
    for i, n in enumerate(sorted(dep.shares or {})):
        arrays[f"w{i}"] = dep.shares[n]
    names = sorted(dep.shares or {})
    arrays["__names__"] = np.frombuffer(json.dumps(names).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = directory / FILE
    write_private(path, buf.getvalue())
    return path


def load(directory: Path) -> Deployment | None:
    """The deployment stored in `directory`, or None if nothing was deployed there."""
    path = directory / FILE
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z[META].tobytes())
            names = json.loads(z["__names__"].tobytes())
            shares = {n: z[f"w{i}"] for i, n in enumerate(names)} if meta["has_shares"] else None
    except (OSError, ValueError, KeyError) as e:
        raise PlanError(
            f"{path} is not a readable deployment ({e}); deploy the model again"
        ) from None
    return Deployment.build(meta["plan"], meta["plan_hash"], meta["deploy_id"], shares)
