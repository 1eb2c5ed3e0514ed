"""Command-line subcommands for deployment: `cluster init|status`, `party`, `deploy`, `predict`.

`add_commands(subparsers)` registers them on the `mpcc` parser (`mpcc.cli`, which also runs
them and turns errors into messages); each sets `fn(args) -> int`.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
import time
from pathlib import Path

import numpy as np

from mpcc.errors import InputError, MpccError
from mpcc.inputs import load_npy
from mpcc.serving import config as cfgmod
from mpcc.serving.config import DEFAULT_DAYS, ROLES


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register the deployment subcommands on an argparse subparsers object."""
    c = subparsers.add_parser("cluster", help="set up a three-party cluster")
    csub = c.add_subparsers(dest="cluster_command", required=True)
    i = csub.add_parser(
        "init", help="write DIR/cluster.toml and a fresh CA with a key+certificate per role"
    )
    i.add_argument("dir", help="directory to create (certificates, keys and cluster.toml)")
    for role in ("p0", "p1", "dealer"):
        i.add_argument(f"--{role}", required=True, metavar="HOST:PORT", help=f"{role}'s address")
    i.add_argument(
        "--days", type=int, default=DEFAULT_DAYS, help="certificate validity in days (at least 1)"
    )
    i.add_argument("--force", action="store_true", help="overwrite an existing cluster")
    i.set_defaults(fn=cmd_cluster_init)
    st = csub.add_parser(
        "status", help="ask P0 and P1 what they serve (exit 0 if serving, 1 if not)"
    )
    st.add_argument("--config", required=True, help="cluster.toml (client credentials)")
    st.add_argument(
        "--client", metavar="NAME", help="ask with the certificate `cluster add-client NAME` issued"
    )
    st.add_argument(
        "--wait", type=float, default=0.0, metavar="S", help="wait up to S seconds for serving"
    )
    st.set_defaults(fn=cmd_cluster_status)
    a = csub.add_parser(
        "add-client",
        help="issue a client a certificate of its own (its own limits; revocable alone)",
    )
    a.add_argument("name", help="the client's name (letters, digits, '_', '.', '-')")
    a.add_argument("--config", required=True, help="cluster.toml (next to ca.crt and ca.key)")
    a.add_argument(
        "--days", type=int, default=DEFAULT_DAYS, help="certificate validity in days (at least 1)"
    )
    a.add_argument("--force", action="store_true", help="issue a new certificate for NAME")
    a.set_defaults(fn=cmd_cluster_add_client)
    rv = csub.add_parser(
        "revoke", help="revoke a client's certificate (parties re-read the list as it changes)"
    )
    rv.add_argument("name", help="the client's name (`client`: the shared client certificate)")
    rv.add_argument("--config", required=True, help="cluster.toml (next to ca.crt and ca.key)")
    rv.set_defaults(fn=cmd_cluster_revoke)

    p = subparsers.add_parser("party", help="run one party (p0, p1 or dealer) until stopped")
    p.add_argument("--config", required=True, help="cluster.toml")
    p.add_argument("--role", required=True, choices=("p0", "p1", "dealer"))
    p.add_argument("--state-dir", help="where the deployed model is kept (default: from config)")
    p.add_argument(
        "--num-requests",
        type=int,
        help="stop after this many answered requests (the dealer: as P1 reports them)",
    )
    p.add_argument("--timeout", type=float, help="override [serving] timeout_s")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument(
        "--cpus",
        metavar="LIST",
        help="run on these CPUs only, e.g. 0 or 2-3,6 (parties sharing one machine: P0 and P1 "
        "on CPUs of their own run their rounds side by side)",
    )
    p.set_defaults(fn=cmd_party)

    d = subparsers.add_parser(
        "deploy", help="share a plan's weights to P0 and P1, its public part to all three"
    )
    d.add_argument("plan", help="plan file with the owner's weights (from `mpcc compile`)")
    d.add_argument("--config", required=True, help="cluster.toml (owner credentials)")
    d.add_argument(
        "--allow-public-weights",
        action="store_true",
        help="deploy a plan compiled with --public-weights: P0 and P1 receive plaintext weights",
    )
    d.set_defaults(fn=cmd_deploy)

    r = subparsers.add_parser("predict", help="secure prediction from a deployed cluster")
    r.add_argument("--config", required=True, help="cluster.toml (client credentials)")
    r.add_argument("--input", required=True, help=".npy file with one or more samples")
    r.add_argument("--output", help=".npy file for the logits (or labels with --argmax)")
    r.add_argument("--argmax", action="store_true", help="output class labels")
    r.add_argument("--timeout", type=float, help="seconds to wait for an answer")
    r.add_argument(
        "--client",
        metavar="NAME",
        help="use the certificate `cluster add-client NAME` issued (default: the shared one)",
    )
    r.add_argument("-q", "--quiet", action="store_true")
    r.set_defaults(fn=cmd_predict)


def cmd_cluster_init(args: argparse.Namespace) -> int:
    from mpcc.serving.certs import check_days, init_ca

    check_days(args.days)
    d = Path(args.dir)
    if (d / cfgmod.CONFIG_NAME).exists() and not args.force:
        raise MpccError(f"{d / cfgmod.CONFIG_NAME} exists; use --force to replace the cluster")
    addresses = {r: cfgmod.parse_address(getattr(args, r)) for r in cfgmod.PARTIES}
    name = secrets.token_hex(4)
    init_ca(d, name, ROLES, args.days)
    (d / cfgmod.CONFIG_NAME).write_text(cfgmod.render(name, addresses))
    print(f"cluster {name}: wrote {d / cfgmod.CONFIG_NAME}, ca.crt and a key+certificate for")
    print(f"  {', '.join(ROLES)} (keys mode 0600) into {d}/")
    print("Give each machine cluster.toml, ca.crt and only its own <role>.key/<role>.crt;")
    print("keep ca.key offline (it is needed only to issue new certificates).")
    return 0


def cmd_cluster_add_client(args: argparse.Namespace) -> int:
    from mpcc.serving.certs import add_client

    cfg = cfgmod.load(args.config)
    cert, key = add_client(cfg, args.name, args.days, force=args.force)
    print(f"client {args.name}: wrote {cert} and {key} (mode 0600)")
    print("Give the client cluster.toml, ca.crt and these two files; it runs")
    print(f"  mpcc predict --config cluster.toml --client {args.name} ...")
    return 0


def cmd_cluster_revoke(args: argparse.Namespace) -> int:
    from mpcc.serving.certs import revoke

    cfg = cfgmod.load(args.config)
    serial = revoke(cfg, args.name)
    print(f"revoked the certificate of client {args.name} (serial {serial:x}) in {cfg.crl}")
    print("Copy it next to cluster.toml on every party's machine: each re-reads it at the next")
    print("connection (no restart) and closes that client's open links within a second.")
    return 0


def cmd_cluster_status(args: argparse.Namespace) -> int:
    from mpcc.serving.status import cluster_status, format_status

    deadline = time.monotonic() + max(0.0, args.wait)
    while True:
        text, serving = format_status(cluster_status(args.config, args.client))
        if serving or time.monotonic() >= deadline:
            print(text)
            return 0 if serving else 1
        time.sleep(0.5)


def _setup_logging(role: str, level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=f"%(asctime)s {role} %(levelname)s %(message)s",
        stream=sys.stderr,
    )


MAX_CPU = 1 << 16  # CPU numbers above this are typos, not machines


def parse_cpus(spec: str) -> set[int]:
    """CPU numbers from a list such as "0", "2-3,6"; raises InputError if malformed."""
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise InputError(f"--cpus {spec!r}: expected CPU numbers such as 0 or 2-3,6") from None
        if a < 0 or b < a or b >= MAX_CPU:
            raise InputError(f"--cpus {spec!r}: {part.strip()!r} is not a CPU range")
        cpus.update(range(a, b + 1))
    return cpus


def pin_to_cpus(spec: str) -> None:
    """Restrict this process -- its threads so far and those it starts -- to the CPUs `spec`
    lists; InputError if one is not available here."""
    if not hasattr(os, "sched_setaffinity"):
        raise InputError("--cpus: this system cannot pin a process to CPUs")
    cpus = parse_cpus(spec)
    have = os.sched_getaffinity(0)
    if not cpus <= have:
        extra = ",".join(map(str, sorted(cpus - have)))
        mine = ",".join(map(str, sorted(have)))
        raise InputError(f"--cpus {spec}: CPU(s) {extra} not available here (CPUs {mine} are)")
    # sched_setaffinity(0) pins the calling thread alone: pin each thread started so far
    # (numpy's BLAS workers), and those started later inherit it
    tasks = Path("/proc/self/task")
    for tid in [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:  # a thread that ended meanwhile
            pass


def cmd_party(args: argparse.Namespace) -> int:
    from mpcc.serving import heap
    from mpcc.serving.certs import check_expiry

    heap.limit_arenas()  # before any thread: a long-running party's RSS stays flat
    if args.cpus:
        pin_to_cpus(args.cpus)
    cfg = cfgmod.load(args.config)
    if args.timeout is not None:
        cfg = cfg.with_serving(timeout_s=args.timeout)
    _setup_logging(args.role, args.log_level)
    check_expiry(cfg, args.role)  # refuse expired credentials, warn of ones expiring soon
    state_dir = Path(args.state_dir) if args.state_dir else None
    if args.role == "dealer":
        from mpcc.serving.dealer import DealerParty

        server = DealerParty(cfg, "dealer", state_dir, args.num_requests)
    else:
        from mpcc.serving.party import ComputeParty

        server = ComputeParty(cfg, args.role, state_dir, args.num_requests)
    server.owns_process = True  # see `heap.freeze_startup_objects`
    return server.run()


def cmd_deploy(args: argparse.Namespace) -> int:
    from mpcc.serving.owner import deploy

    deploy_id = deploy(args.plan, args.config, allow_public_weights=args.allow_public_weights)
    print(f"deployed {args.plan} to p0, p1 (weight shares) and the dealer (public plan)")
    print(f"deployment {deploy_id[:8]}…; the parties start a new session now")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from mpcc.serving.client import Client

    if args.timeout is not None:
        lo, hi = cfgmod.SERVING_RANGES["client_timeout_s"]
        if not lo <= args.timeout <= hi:
            raise cfgmod.ConfigError(
                f"--timeout must be from {lo:g} to {hi:g} s, not {args.timeout}"
            )
    x = load_npy(args.input)
    with Client(args.config, timeout=args.timeout, identity=args.client) as client:
        y = client.predict(x)
        stats = client.stats
    if args.argmax:
        y = y.argmax(axis=1)
    if args.output:
        np.save(args.output, y)
    if not args.quiet:
        print(f"secure inference on the cluster: {len(y)} samples, output {list(y.shape)}")
        print(stats.summary())
        if not args.output:
            print(np.array2string(y, precision=4, max_line_width=120))
    return 0
