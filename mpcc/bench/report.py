"""The JSON report: one result per batch size, the machine it ran on, timing summaries."""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mpcc.bench.network import Link, QueryTraffic
from mpcc.errors import MpccError

if TYPE_CHECKING:
    from mpcc.bench.measure import Measurement
    from mpcc.compiler.ir import Program

SCHEMA = "mpcc-bench/1"


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """Median, p90 (linear interpolation), min and mean of timing samples, and the samples."""
    a = np.asarray(samples, dtype=np.float64)
    return {
        "median": float(np.median(a)),
        "p90": float(np.percentile(a, 90)),
        "min": float(a.min()),
        "mean": float(a.mean()),
        "samples": a.tolist(),
    }


def machine_info() -> dict[str, Any]:
    """CPU model, cores, library versions, date and load: the context of a measurement."""
    import numba
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load_avg_1m": load,
    }


SETTINGS = {
    False: "P0, P1 and the dealer in this process: two party threads, in-process queues",
    True: "P0, P1 and the dealer as three local processes over mutually authenticated TLS 1.3 "
    "(127.0.0.1), queried by a client in this process",
}


def result(
    prog: Program, repeat: int, warmup: int, m: Measurement, link: Link | None
) -> dict[str, Any]:
    """One batch size's report from a measurement, next to the compiler's cost model."""
    from mpcc.compiler.costmodel import estimate
    from mpcc.compiler.planfile import plan_hash

    predicted = estimate(prog)
    if len({t[:3] for t in m.traffic}) != 1:  # pragma: no cover - the plan fixes them
        raise MpccError(f"traffic differed between queries of one plan: {m.traffic}")
    sent, rounds, dealer_bytes, client_bytes = m.traffic[-1]
    sent = tuple(sent)
    pt = predicted.total
    res: dict[str, Any] = {
        "batch": prog.batch,
        "plan": {"name": prog.name, "sha256": plan_hash(prog), "instructions": len(prog.instrs)},
        "repeat": repeat,
        "warmup": warmup,
        "setup_s": m.setup_s,
        "first_query": m.first_query,
        "online_s": summarize(m.online),
        "offline_s": summarize(m.offline),
        "dealer_s": summarize(m.dealer) if m.dealer is not None else None,
        "e2e_s": summarize(m.e2e),
        "sent_bytes": list(sent),
        "rounds": rounds,
        "dealer_bytes": dealer_bytes,
        "client_bytes": client_bytes,
        "predicted": {
            **pt.asdict(),
            "client_sent_per_party": predicted.client_sent,
            "client_received_per_party": predicted.client_received,
        },
        "matches_cost_model": (
            sent == (pt.sent, pt.sent) and rounds == pt.rounds and dealer_bytes == pt.dealer
        ),
        "tls": m.tls,
        "plaintext_s": None,
        "ratio": None,
        "projection": None,
        "layers": None,
    }
    if link is not None:
        out = prog.value(prog.outputs[0][1])
        q = QueryTraffic(rounds, max(sent), client_bytes, 8 * int(np.prod(out.shape)))
        # the query with no delay, as measured (processes: over TLS, the client's work too)
        res["projection"] = link.projection(
            res["e2e_s"]["median"], q, dealer_bytes, res["online_s"]["median"]
        )
    if m.clocks:
        from mpcc.bench.clock import layer_rows

        res["layers"] = layer_rows(prog, predicted.per_instr, m.clocks, link, m.online)
    return res
