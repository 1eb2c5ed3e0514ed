"""The `mpcc` command line: compile, inspect and run secure inference plans."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

import numpy as np

from mpcc.errors import MpccError
from mpcc.inputs import load_npy


def cmd_compile(args: argparse.Namespace) -> int:
    from mpcc.api import compile as compile_model
    from mpcc.compiler import planfile
    from mpcc.compiler.report import format_report, report_json
    from mpcc.frontends.onnx import parse_input_shapes

    shapes = parse_input_shapes(args.input_shape) if args.input_shape else None
    prog, weights = compile_model(
        args.model,
        input_shape=shapes,
        frac_bits=args.frac_bits,
        public_weights=args.public_weights,
        keep_softmax=args.keep_softmax,
    )
    out = Path(args.output) if args.output else Path(args.model).with_suffix(".mpcc")
    planfile.save(out, prog, weights)
    if args.json:
        print(json.dumps(dict(report_json(prog), plan_file=str(out)), indent=1))
    else:
        print(format_report(prog))
        print(f"wrote {out}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from mpcc.compiler import planfile
    from mpcc.compiler.report import format_report, report_json

    prog, weights = planfile.load(args.plan)
    if args.json:
        print(json.dumps(report_json(prog), indent=1))
    else:
        print(format_report(prog))
        held = "with" if weights else "without"
        print(f"{args.plan}: plan file {held} the owner's weights ({len(prog.weights)} tensors)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from mpcc.compiler import planfile

    prog, weights = planfile.load(args.plan)
    if not weights:
        raise MpccError(f"{args.plan} holds no weights; run it through deployed parties")
    x = load_npy(args.input)
    if args.cleartext:
        from mpcc.runtime.cleartext import predict

        y = predict(prog, weights, x)
        stats = None
    elif args.processes:
        y, stats = _run_in_processes(prog, weights, x)
    else:
        from mpcc.runtime.cluster import LocalCluster

        with LocalCluster(prog, weights) as cluster:
            y = cluster.predict(x, progress=not args.quiet)
            stats = cluster.stats
    if args.output:
        np.save(args.output, y)
    if not args.quiet:
        mode = "cleartext" if args.cleartext else "secure"
        print(f"{mode} inference: {len(y)} samples, output shape {list(y.shape)}")
        if stats is not None:
            print(stats.summary())
        if not args.output:
            print(np.array2string(y, precision=4, max_line_width=120))
    return 0


def _run_in_processes(prog, weights, x: np.ndarray):
    """Three party processes on 127.0.0.1 over mutually authenticated TLS, then a client."""
    from mpcc.serving.local import serve_locally

    with serve_locally(prog, weights) as client:
        return client.predict(x), client.stats


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mpcc", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="compile an ONNX or Keras model to a secure plan file")
    c.add_argument("model", help="model file: .onnx, or Keras .keras / full-model .h5")
    c.add_argument("-o", "--output", help="plan file to write (default: MODEL.mpcc)")
    c.add_argument(
        "--input-shape",
        action="append",
        metavar="[NAME=]DxDx..",
        help="fix an input's shape, e.g. 1x1x28x28 or input=64x1x28x28 (repeatable)",
    )
    c.add_argument("--frac-bits", type=int, default=16, help="fixed-point fractional bits")
    c.add_argument(
        "--public-weights",
        action="store_true",
        help="keep weights public (linear layers become local): only if the model is not secret",
    )
    c.add_argument(
        "--keep-softmax",
        action="store_true",
        help="compute a final Softmax/LogSoftmax securely instead of returning logits",
    )
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(fn=cmd_compile)

    i = sub.add_parser("inspect", help="print a plan file")
    i.add_argument("plan")
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=cmd_inspect)

    r = sub.add_parser("run", help="run a plan on inputs from a .npy file")
    r.add_argument("plan")
    r.add_argument("--input", required=True, help=".npy file with one or more samples")
    r.add_argument("--output", help=".npy file for the outputs")
    r.add_argument("--cleartext", action="store_true", help="plaintext fixed-point interpreter")
    r.add_argument(
        "--processes",
        action="store_true",
        help="run the three parties as local processes over TLS instead of threads",
    )
    r.add_argument("-q", "--quiet", action="store_true")
    r.set_defaults(fn=cmd_run)

    from mpcc import bench

    bench.add_command(sub)

    from mpcc.serving.commands import add_commands

    add_commands(sub)
    return p


class Terminated(SystemExit):
    """SIGTERM, raised in the main thread so that `with` blocks clean up (party processes,
    temporary directories) before the process exits with status 143."""


def _on_sigterm(signum: int, _frame: object) -> None:
    signal.signal(signum, signal.SIG_IGN)  # once: a second SIGTERM must not cut the clean-up
    raise Terminated(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mpcc` console script; user errors exit with status 2.

    SIGTERM ends the command like an exception (`Terminated`), so clean-up runs."""
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        return args.fn(args)
    except MpccError as e:
        print(f"mpcc: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mpcc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stays open until exit
        return 0
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
