"""The `mpcc` command line: compile, inspect and run secure inference plans."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

import numpy as np

from mpcc.errors import InputError, MpccError
from mpcc.inputs import load_npy


def cmd_compile(args: argparse.Namespace) -> int:
    from mpcc.api import compile as compile_model
    from mpcc.compiler import planfile
    from mpcc.compiler.calibrate import CalibrationWarning
    from mpcc.compiler.report import format_report, report_json
    from mpcc.frontends.onnx import parse_fixed_inputs, parse_input_shapes

    shapes = parse_input_shapes(args.input_shape) if args.input_shape else None
    fixed = parse_fixed_inputs(args.fix_input) if args.fix_input else None
    calibration = _load_calibration(args.calibrate) if args.calibrate else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CalibrationWarning)
        plan = compile_model(
            args.model,
            input_shape=shapes,
            frac_bits=args.frac_bits,
            public_weights=args.public_weights,
            keep_softmax=args.keep_softmax,
            calibrate=calibration,
            fix_inputs=fixed,
            network=args.network,
            material_budget_mb=args.material_budget,
        )
    for w in caught:
        if issubclass(w.category, CalibrationWarning):
            print(f"mpcc: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    prog, weights, report = plan.program, plan.weights, plan.calibration
    out = Path(args.output) if args.output else Path(args.model).with_suffix(".mpcc")
    planfile.save(out, prog, weights)
    if args.json:
        print(json.dumps(dict(report_json(prog, calibration=report), plan_file=str(out)), indent=1))
    else:
        print(format_report(prog, calibration=report))
        print(f"wrote {out}")
    return 0


def _load_calibration(path: str) -> np.ndarray | dict[str, np.ndarray]:
    """Calibration inputs: a .npy array [N, ...] (one input), or an .npz of arrays by input
    name."""
    if str(path).endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise InputError(f"no calibration file at {path}") from None
        except (OSError, ValueError) as e:
            raise InputError(f"{path} is not an .npz archive of arrays ({e})") from None
    return load_npy(path)


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
    if prog.weights and not weights:
        raise MpccError(f"{args.plan} holds no weights; run it through deployed parties")
    x = _read_inputs(args.input, [n for n, _ in prog.inputs])
    if args.processes and isinstance(x, dict):
        raise MpccError("--processes runs one-input plans only; drop it to run this plan")
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


def _read_inputs(specs: list[str], names: list[str]) -> np.ndarray | dict[str, np.ndarray]:
    """`--input` values: one FILE.npy for a one-input plan, NAME=FILE.npy per input, or one
    .npz archive holding an array per input name."""
    if len(specs) == 1 and "=" not in specs[0] and not specs[0].endswith(".npz"):
        if len(names) > 1:
            listed = ", ".join(repr(n) for n in names)
            raise InputError(
                f"this plan has {len(names)} inputs ({listed}): give --input NAME=FILE.npy "
                "for each, or one .npz archive holding them by name"
            )
        return load_npy(specs[0])
    found: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.endswith(".npz") and "=" not in spec:
            try:
                with np.load(spec, allow_pickle=False) as z:
                    found.update({k: z[k] for k in z.files})
            except (OSError, ValueError) as e:
                raise InputError(f"{spec}: not a readable .npz archive ({e})") from None
            continue
        name, sep, path = spec.partition("=")
        if not sep:
            raise InputError(f"--input {spec!r}: this plan has several inputs; give NAME=FILE.npy")
        found[name] = load_npy(path)
    if len(names) == 1 and list(found) == names:
        return found[names[0]]
    return found


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
    c.add_argument(
        "--fix-input",
        action="append",
        metavar="NAME=VALUE",
        help="fix an input to a constant, e.g. attention_mask=1 (no padding): what it feeds "
        "folds away and the client does not send it (repeatable)",
    )
    c.add_argument(
        "--frac-bits",
        type=int,
        default=None,
        help="fixed-point fractional bits (default 16, or chosen by --calibrate)",
    )
    c.add_argument(
        "--calibrate",
        metavar="X.npy",
        help="representative inputs [N, ...] (.npy; .npz by input name): run the float model "
        "on them, choose --frac-bits from the value ranges (or check the one given) and "
        "report each layer's headroom and resolution",
    )
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
    c.add_argument(
        "--network",
        metavar="RTT_ms,Gbps",
        help="choose each comparison's protocol for this link between P0 and P1, e.g. 10,1: "
        "function secret sharing (fewer rounds, more dealer material) where it is faster "
        "(default: the LAN's bit tree everywhere)",
    )
    c.add_argument(
        "--material-budget",
        metavar="MB",
        type=float,
        help="with --network: at most this much dealer material per query (MB, both parties)",
    )
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(fn=cmd_compile)

    i = sub.add_parser("inspect", help="print a plan file")
    i.add_argument("plan")
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=cmd_inspect)

    r = sub.add_parser("run", help="run a plan on inputs from a .npy file")
    r.add_argument("plan")
    r.add_argument(
        "--input",
        required=True,
        action="append",
        metavar="[NAME=]FILE",
        help=".npy file with one or more samples; NAME=FILE.npy per input (repeatable) or one "
        ".npz archive for a plan with several inputs",
    )
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
