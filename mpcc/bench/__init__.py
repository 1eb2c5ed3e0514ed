"""`mpcc bench`: secure-inference latency, traffic and rounds on this machine, vs onnxruntime.

All three parties run in this process (`LocalCluster`: two party threads, in-process queues),
or with `--processes` as three local processes over mutually authenticated TLS (as `mpcc run
--processes`), which adds the bytes on the wire, the TLS handshake and the client's latency.
Per batch size it reports the online latency (median, p90), the offline time per query (the
dealer alone, and dealer + both parties' expansion), the bytes each compute party sends, the
dealer's bytes, the rounds, and the same model's plaintext onnxruntime latency (one thread)
measured in the same run. The first query of a cluster is reported apart: in a fresh process
it includes loading (or compiling) the numba kernels. `--layers` adds a per-instruction
breakdown next to the compiler's predicted cost; `--network RTT_ms,Gbps` adds a *projection*
(not a measurement) of the latency on such a link.

    mpcc bench lenet.onnx --batch 1,64 --repeat 20 --layers --network 1,1 --json out.json
    mpcc bench lenet.onnx --processes  # the parties as processes over TLS on 127.0.0.1
    python -m mpcc bench ...          # the same, without the `mpcc` entry point
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mpcc.bench.inputs import onnx_input_shape, plan_input, sample_inputs, sources
from mpcc.bench.network import PROJECTION_NOTE, Link
from mpcc.bench.plaintext import Plaintext
from mpcc.bench.progress import Progress
from mpcc.bench.report import SCHEMA, SETTINGS, machine_info, result, summarize
from mpcc.bench.text import fmt_bytes, fmt_s, format_text
from mpcc.errors import MpccError

__all__ = [
    "SCHEMA",
    "Link",
    "Progress",
    "add_command",
    "bench",
    "cmd_bench",
    "fmt_bytes",
    "fmt_s",
    "format_text",
    "machine_info",
    "parse_ints",
    "sample_inputs",
    "summarize",
]


def parse_ints(text: str, what: str) -> list[int]:
    """`1,64` -> [1, 64]; every value a positive integer."""
    try:
        vals = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        vals = []
    if not vals or any(v <= 0 for v in vals):
        raise MpccError(f"{what} wants positive integers separated by commas, not {text!r}")
    return vals


def bench(
    model: str | Path,
    batches: Sequence[int] | None = None,
    repeat: int | Sequence[int] = 10,
    *,
    warmup: int = 1,
    layers: bool = False,
    link: Link | None = None,
    reference: str | Path | None = None,
    plaintext: bool = True,
    progress: bool = False,
    processes: bool = False,
) -> dict[str, Any]:
    """Benchmark an .onnx model (compiled at each batch size) or a plan file; JSON-able dict.

    `processes`: the parties run as local processes over TLS (`mpcc.serving`) instead of
    threads of this process; the report adds the bytes on the wire and the TLS handshake."""
    # The runtime (numba) loads here, not when the CLI registers the command.
    from mpcc.bench.measure import Schedule, measure_processes, measure_threads
    from mpcc.compiler import planfile
    from mpcc.compiler.pipeline import compile_onnx

    model = Path(model)
    kind, ref_path = sources(model, Path(reference) if reference else None)
    plan = None
    if kind == "plan":
        plan = planfile.load(model)
        if not plan[1]:
            raise MpccError(f"{model} holds no weights: a local benchmark needs the owner's plan")
        batches = list(batches or [plan[0].batch])
        if any(b != plan[0].batch for b in batches):
            raise MpccError(
                f"{model} is compiled for batch {plan[0].batch}; to bench batch "
                f"{','.join(map(str, batches))}, bench the .onnx model (compiled per batch)"
            )
    batches = list(batches or [1])
    repeats = [repeat] * len(batches) if isinstance(repeat, int) else list(repeat)
    if len(repeats) == 1:
        repeats = repeats * len(batches)
    if len(repeats) != len(batches) or any(r < 1 for r in repeats):
        raise MpccError("--repeat wants one positive count, or one per batch size")
    if warmup < 0:
        raise MpccError("--warmup must be >= 0")
    if processes and layers:
        raise MpccError("--layers times the party threads of this process: not with --processes")
    floor = Plaintext(ref_path) if plaintext and ref_path is not None else None
    notes = []
    if plaintext and floor is None:
        notes.append("no ONNX model for the plaintext floor (pass --reference MODEL.onnx)")

    prog_ = Progress(progress)
    results = []
    try:
        for b, reps in zip(batches, repeats, strict=True):
            where = f"mpcc bench {model.name} batch {b}"
            compile_s = None
            if plan is not None:
                prog, weights = plan
            else:
                prog_.phase(f"{where}: compiling")
                t0 = time.perf_counter()
                prog, weights = compile_onnx(model, onnx_input_shape(model, b))
                compile_s = time.perf_counter() - t0
            sched = Schedule(
                reps,
                warmup,
                layers,
                phase=lambda text, where=where: prog_.phase(f"{where}: {text}"),
                progress=lambda text, where=where: prog_.update(f"{where}: {text}"),
            )
            m = (measure_processes if processes else measure_threads)(prog, weights, sched)
            res = result(prog, reps, warmup, m, link)
            res["compile_s"] = compile_s
            if floor is not None:
                shape, depth = plan_input(prog)
                if floor.accepts(shape):
                    prog_.phase(f"{where}: plaintext floor (onnxruntime)")
                    res["plaintext_s"] = floor.time(sample_inputs(shape, 0, depth), reps)
                    res["ratio"] = res["online_s"]["median"] / res["plaintext_s"]["median"]
                else:
                    notes.append(
                        f"{ref_path} does not take shape {list(shape)}: no plaintext floor"
                    )
            results.append(res)
    finally:
        prog_.done()
    return {
        "schema": SCHEMA,
        "model": str(model),
        "name": results[0]["plan"]["name"] if results else model.stem,
        "reference": str(ref_path) if ref_path else None,
        "machine": machine_info(),
        "mode": "processes" if processes else "threads",
        "setting": SETTINGS[processes],
        "network": None if link is None else {**link.asdict(), "note": PROJECTION_NOTE},
        "notes": notes,
        "results": results,
    }


def add_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register `mpcc bench` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "bench",
        help="benchmark secure inference with three local parties (vs plaintext onnxruntime)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("model", help="ONNX model (compiled at each batch size) or .mpcc plan file")
    p.add_argument("--batch", default=None, help="batch sizes, e.g. 1,64 (default 1 / the plan's)")
    p.add_argument("--repeat", default="10", help="timed queries per batch size, or one per batch")
    p.add_argument("--warmup", type=int, default=1, help="untimed queries after the first one")
    p.add_argument("--json", metavar="OUT", help="write the full results as JSON ('-': stdout)")
    p.add_argument("--layers", action="store_true", help="per-instruction time and bytes")
    p.add_argument(
        "--network",
        metavar="RTT_ms,Gbps",
        help="also project the latency on such a link (a projection, not a measurement)",
    )
    p.add_argument("--reference", metavar="ONNX", help="plaintext model for a plan file")
    p.add_argument("--no-plaintext", action="store_true", help="skip the onnxruntime floor")
    p.add_argument(
        "--processes",
        action="store_true",
        help="run the parties as local processes over TLS (adds bytes on the wire, handshake)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no report, no progress")
    p.set_defaults(fn=cmd_bench)
    return p


def cmd_bench(args: argparse.Namespace) -> int:
    report = bench(
        args.model,
        parse_ints(args.batch, "--batch") if args.batch else None,
        parse_ints(args.repeat, "--repeat"),
        warmup=args.warmup,
        layers=args.layers,
        link=Link.parse(args.network) if args.network else None,
        reference=args.reference,
        plaintext=not args.no_plaintext,
        progress=not args.quiet,
        processes=args.processes,
    )
    if args.json == "-":
        print(json.dumps(report, indent=1))
        return 0
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        except OSError as e:
            raise MpccError(f"cannot write {args.json}: {e}") from None
    if not args.quiet:
        print(format_text(report))
    return 0
