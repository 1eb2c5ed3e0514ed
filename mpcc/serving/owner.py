"""The model owner's deployment: the public plan to all three parties, shares to P0 and P1.

The weights are encoded and split into fresh additive shares here (`share_weights`); P0 and
P1 each receive one share of every weight, the dealer the public plan only. Every deploy
carries a fresh deployment id, which the parties compare at start-up, so shares of two
different deploys are never combined. P0 and P1 also receive the owner's commitments to both
parties' shares (`mpcc.serving.state.share_commitment`, each salted with a secret only its
holder gets), which they check their shares against and compare with each other.
A plan compiled with public weights would give P0 and P1 plaintext weights, so it is
deployed only when explicitly allowed.

A deploy is two-phase, so that a failure half-way leaves every party serving its previous
deployment: the owner sends to all three, each checks what it got (the plan verifier
included) and stages it; only when all three have answered "staged" does the owner send
"activate". If any party refuses, fails or cannot be reached before that, the others are
told to abort and discard what they staged.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from pathlib import Path

import numpy as np

from mpcc.compiler import planfile
from mpcc.compiler.ir import Program
from mpcc.compiler.plan import Plan, as_plan
from mpcc.errors import MpccError, PartyError
from mpcc.runtime.owner import share_weights
from mpcc.serving.config import ClusterConfig
from mpcc.serving.config import load as load_config
from mpcc.serving.links import dial
from mpcc.serving.messages import (
    Activate,
    Commit,
    Deployed,
    DeployHead,
    ErrorReply,
    Share,
    Staged,
)
from mpcc.serving.state import SALT_BYTES, share_commitment
from mpcc.serving.tls import TlsChannel
from mpcc.serving.tlscontext import client_context

ROLES = ("p0", "p1", "dealer")


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
    t = cfg.serving.setup_timeout_s
    links: dict[str, TlsChannel] = {}
    role = ROLES[0]
    try:
        # phase 1: every party receives, checks and stages; none switches yet
        for role in ROLES:
            mine = shares.get(role)
            names = sorted(mine) if mine is not None else []
            links[role], _ = dial(cfg, ctx, role, me="owner", link="deploy")
            head = DeployHead(public, digest, deploy_id, names)
            if mine is not None:  # both commitments, but only this party's salt
                head = replace(head, commitments=commitments, salt=salts[role].hex())
            head.send(links[role])
            for n in names:
                Share(n).send(links[role], [mine[n]])
            Commit().send(links[role])
        del shares, salts
        for role in links:  # (`role` names the party that failed, below)
            Staged.recv(links[role], t)
    except PartyError as e:
        for ch in links.values():  # each discards what it staged
            ch.abort(f"the deployment failed at {role}")
            ch.close("deployment aborted")
        raise DeployError(
            f"deployment failed at {role}: {_reason(links.get(role), e)}; no party switched "
            "to it, each keeps "
            "serving its previous deployment"
        ) from None
    # phase 2: all three hold it, so all switch
    done, errors = [], []
    for role, ch in links.items():
        try:
            Activate().send(ch)
        except PartyError as e:
            errors.append(f"{role}: {e}")
    for role, ch in links.items():
        try:
            if not any(err.startswith(f"{role}:") for err in errors):
                Deployed.recv(ch, t)
                done.append(role)
        except PartyError as e:
            errors.append(f"{role}: {e}")
        finally:
            ch.close("deployed")
    if errors:
        raise DeployError(
            f"deployment {deploy_id[:8]}… was activated at {', '.join(done) or 'no party'} "
            f"only ({'; '.join(errors)}); the parties will not start a session across two "
            "deployments: deploy again"
        )
    return deploy_id


def _reason(ch: TlsChannel | None, e: PartyError) -> str:
    """Why a party failed: the error it sent, if it did before closing the link (a send to
    it may fail first), else what went wrong here."""
    try:
        msg = ch.poll(0) if ch is not None else None
    except PartyError:
        msg = None
    if msg is None or msg.kind != ErrorReply.KIND:
        return str(e)
    return ErrorReply.lenient(msg.meta).msg
