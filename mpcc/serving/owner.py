"""The model owner's deployment: the public plan to all three parties, shares to P0 and P1.

The weights are encoded and split into fresh additive shares here (`share_weights`); P0 and
P1 each receive one share of every weight, the dealer the public plan only. Every deploy
carries a fresh deployment id, which the parties compare at start-up, so shares of two
different deploys are never combined. P0 and P1 also receive the owner's commitments to both
parties' shares (`mpcc.serving.state.share_commitment`, each salted with a secret only its
holder gets), which they check their shares against and compare with each other.
A plan compiled with public weights would give P0 and P1 plaintext weights, so it is
deployed only when explicitly allowed.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import numpy as np

from mpcc.compiler import planfile
from mpcc.compiler.ir import Program
from mpcc.compiler.plan import Plan, as_plan
from mpcc.errors import MpccError, PartyError
from mpcc.runtime.owner import share_weights
from mpcc.serving.config import ClusterConfig
from mpcc.serving.config import load as load_config
from mpcc.serving.state import SALT_BYTES, share_commitment
from mpcc.serving.tls import client_context, dial


class DeployError(MpccError):
    """The deployment was refused: by a party, or here (a plan with public weights)."""


def deploy(
    plan: Plan | str | Path,
    config: str | Path | ClusterConfig,
    *,
    allow_public_weights: bool = False,
) -> str:
    """Deploy a Plan or a plan file (with the owner's weights); returns the deployment id."""
    source = "the plan" if isinstance(plan, Plan) else str(plan)
    prog, weights = as_plan(plan)
    if prog.weights and not weights:
        raise MpccError(f"{source} holds no weights: deploy the owner's plan file")
    return deploy_program(
        prog, weights, config, allow_public_weights=allow_public_weights, source=source
    )


def deploy_program(
    prog: Program,
    weights: dict[str, np.ndarray],
    config: str | Path | ClusterConfig,
    *,
    allow_public_weights: bool = False,
    source: str = "the plan",
) -> str:
    """Share `weights` afresh and send plan and shares to the parties of `config`.

    A plan compiled with public weights sends P0 and P1 the weights in the clear; it is
    refused unless `allow_public_weights`."""
    if prog.public_weights and not allow_public_weights:
        raise DeployError(
            f"{source} was compiled with --public-weights, so deploying it would send the "
            "plaintext weights to P0 and P1. Compile it again without --public-weights to keep "
            "the weights secret, or, if the model is not secret, deploy with "
            "--allow-public-weights (allow_public_weights=True)"
        )
    cfg = config if isinstance(config, ClusterConfig) else load_config(config)
    if len(prog.inputs) != 1:
        raise MpccError("serving supports plans with exactly one input")
    ctx = client_context(cfg, "owner")
    public = planfile.to_public(prog)
    digest = planfile.plan_hash(prog)
    deploy_id = secrets.token_hex(16)
    shares = dict(zip(("p0", "p1"), share_weights(prog, weights), strict=True))
    salts = {r: secrets.token_bytes(SALT_BYTES) for r in shares}
    commitments = {r: share_commitment(deploy_id, r, salts[r], s) for r, s in shares.items()}
    errors = []
    for role in ("p0", "p1", "dealer"):
        mine = shares.get(role)
        names = sorted(mine) if mine is not None else []
        try:
            ch, _ = dial(cfg, ctx, role, me="owner", link="deploy")
            try:
                head = {"plan": public, "plan_hash": digest, "deploy_id": deploy_id}
                if mine is not None:  # both commitments, but only this party's salt
                    head.update(commitments=commitments, salt=salts[role].hex())
                ch.send_msg("deploy", {**head, "weights": names})
                for n in names:
                    ch.send_msg("share", {"name": n}, [mine[n]])
                ch.send_msg("commit")
                ch.recv_msg(cfg.serving.setup_timeout_s, expect="deployed")
            finally:
                ch.close("deployed")
        except PartyError as e:
            errors.append(f"{role}: {e}")
    del shares, salts
    if errors:
        raise DeployError("deployment incomplete; " + "; ".join(errors))
    return deploy_id
