"""The benchmark suite: MLP 784-500-10, CNN, LeNet, ResNet at batch 1 and 64, secure vs plain.

Each model runs `mpcc bench` in a fresh process (so its first query is a true cold start with
numba's on-disk cache), with --layers. Then LeNet's first query once more with an empty numba
cache (JIT compilation included), and the ring kernels' G MAC/s on LeNet's layers. Writes
`benchmarks/results/latest.md`, `latest.json` and, if matplotlib is installed, `latest.png`.

Each model runs twice (`--passes`), in fresh processes; per batch size the pass with the lower
online median is kept (on a shared machine other processes only add time).

Run: `.venv/bin/python benchmarks/run.py` (or `make bench`); about two minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mpcc.bench import Link, fmt_bytes, fmt_s, machine_info  # noqa: E402
from mpcc.bench.network import QueryTraffic  # noqa: E402

MODELS = {"mlp": "MLP 784-500-10", "cnn": "CNN", "lenet": "LeNet", "resnet": "ResNet"}
BATCHES = (1, 64)
# Timed queries per batch size (after the cold query and one warm-up): ~1.5 minutes in all.
REPEATS = {"mlp": (300, 50), "cnn": (100, 20), "lenet": (100, 15), "resnet": (50, 6)}
QUICK_REPEATS = (3, 2)

# (model, batch, metric, limit, label); metrics: online_s, dealer_s, sent (B/party), rounds
TARGETS = [
    ("lenet", 1, "online_s", 0.040, "LeNet batch 1 online"),
    ("lenet", 1, "sent", 1.5e6, "LeNet batch 1 bytes per compute party"),
    ("lenet", 1, "rounds", 70, "LeNet batch 1 rounds"),
    ("lenet", 64, "online_s", 1.0, "LeNet batch 64 online"),
    ("cnn", 1, "online_s", 0.015, "CNN batch 1 online"),
    ("cnn", 64, "online_s", 0.18, "CNN batch 64 online"),
    ("mlp", 1, "online_s", 0.0015, "MLP batch 1 online"),
    ("mlp", 1, "sent", 100e3, "MLP batch 1 bytes per compute party"),
    ("mlp", 64, "online_s", 0.045, "MLP batch 64 online"),
    ("lenet", 1, "dealer_s", 0.050, "LeNet dealer material for one query (batch 1)"),
]
# Online latency of prior systems on this kind of machine (seconds).
PRIOR = {
    ("lenet", 1): 0.380,
    ("lenet", 64): 6.6,
    ("cnn", 1): 0.076,
    ("cnn", 64): 0.9,
    ("mlp", 1): 0.008,
    ("mlp", 64): 0.230,
}
LINKS = {"LAN 1 ms, 1 Gbit/s": Link(1e-3, 1.0), "WAN 40 ms, 100 Mbit/s": Link(40e-3, 0.1)}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- measuring


def bench_model(onnx: Path, repeats: tuple[int, int], env: dict | None = None) -> dict[str, Any]:
    """`mpcc bench` in a fresh process; its JSON report."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "mpcc", "bench", str(onnx), "--layers", "--json", str(out)]
        cmd += ["--batch", ",".join(map(str, BATCHES)), "--repeat", ",".join(map(str, repeats))]
        subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def jit_cold(onnx: Path) -> dict[str, Any]:
    """The first query of batch 1 with an empty numba cache: every kernel is compiled."""
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        cmd = [sys.executable, "-m", "mpcc", "bench", str(onnx), "--json", str(out)]
        cmd += ["--batch", "1", "--repeat", "2", "--no-plaintext", "-q"]
        subprocess.run(cmd, cwd=REPO, env=env, check=True)
        return json.loads(out.read_text())["results"][0]["first_query"]


def kernel_rates(onnx: Path, seconds: float) -> list[dict[str, Any]]:
    """G MAC/s of the ring kernel of each of LeNet's linear layers (one core, warm)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from kernels import _rate  # benchmarks/kernels.py

    from mpcc.compiler.ops import Site
    from mpcc.compiler.ops.linear import macs as linear_macs
    from mpcc.compiler.pipeline import compile_onnx
    from mpcc.runtime.rules import RULES

    rng = np.random.default_rng(0)  # kernel operands: timing only, nothing secret
    rows = []
    for batch in BATCHES:
        prog, _ = compile_onnx(onnx, (batch, 1, 28, 28))
        for index, ins in enumerate(prog.instrs):
            bilinear = RULES[ins.op].bilinear
            if bilinear is None:
                continue
            x_shape = prog.value(ins.args[0]).shape
            w_shape = prog.weights[ins.weights[0]].shape
            x = rng.integers(0, 2**64, size=x_shape, dtype=np.uint64)
            w = rng.integers(0, 2**64, size=w_shape, dtype=np.uint64)
            fn = bilinear(prog, ins, False)
            macs = linear_macs(Site(prog, ins))
            gmacs, secs = _rate(lambda fn=fn, x=x, w=w: fn(x, w), macs, seconds)
            rows.append(
                {
                    "batch": batch,
                    "index": index,
                    "op": ins.op.name,
                    "x": list(x_shape),
                    "w": list(w_shape),
                    "macs": macs,
                    "gmacs_per_s": gmacs,
                    "seconds": secs,
                }
            )
    return rows


def best_of(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Per batch size, the pass with the lowest online median (interference only adds time);
    every pass's median is kept in `pass_medians`."""
    best = dict(reports[0])
    best["results"] = []
    for i, _ in enumerate(reports[0]["results"]):
        rs = [rep["results"][i] for rep in reports]
        pick = dict(min(rs, key=lambda r: r["online_s"]["median"]))
        pick["pass_medians"] = [r["online_s"]["median"] for r in rs]
        best["results"].append(pick)
    return best


# --------------------------------------------------------------------------- reporting


def result(suite: dict, model: str, batch: int) -> dict[str, Any] | None:
    rep = suite["models"].get(model)
    return next((r for r in rep["results"] if r["batch"] == batch), None) if rep else None


def suite_rows(suite: dict) -> Iterator[tuple[str, str, int, dict[str, Any]]]:
    """(model, label, batch, result) for every result of the suite, in the tables' order."""
    for model, label in MODELS.items():
        for batch in BATCHES:
            r = result(suite, model, batch)
            if r is not None:
                yield model, label, batch, r


def metric(r: dict[str, Any], name: str) -> float:
    if name == "sent":
        return float(max(r["sent_bytes"]))
    if name == "rounds":
        return float(r["rounds"])
    return float(r[name]["median"])


def fmt_metric(name: str, v: float) -> str:
    if name == "sent":
        return fmt_bytes(v)
    if name == "rounds":
        return f"{v:.0f}"
    return fmt_s(v)


def target_rows(suite: dict) -> list[dict[str, Any]]:
    """Each target with the measured value and by how much it is met or missed."""
    rows = []
    for model, batch, name, limit, label in TARGETS:
        r = result(suite, model, batch)
        if r is None:
            continue
        v = metric(r, name)
        rows.append(
            {
                "target": label,
                "measured": v,
                "limit": limit,
                "met": v <= limit,
                "margin": v / limit,  # < 1: met with room; > 1: missed by (margin - 1)
                "text": f"{fmt_metric(name, v)} vs <= {fmt_metric(name, limit)}",
            }
        )
    return rows


def status(row: dict[str, Any]) -> str:
    if row["met"]:
        return f"met ({row['margin']:.0%} of the limit)"
    return f"**missed by {row['margin'] - 1:.0%}**"


def markdown(suite: dict) -> str:
    m = suite["machine"]
    lines = [
        "# mpcc benchmarks: latest run",
        "",
        f"Run with `make bench` (`benchmarks/run.py`) on {m['date']}, {suite['wall_s']:.0f} s.",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {m['platform']}",
        f"- Python {m['python']}, numpy {m['numpy']}, numba {m['numba']}, "
        f"onnxruntime {m['onnxruntime']}",
        f"- load average (1 min) {suite['load_before']:.2f} before, "
        f"{suite['load_after']:.2f} after"
        + (
            ": **other processes were running, so latencies are pessimistic and noisy**"
            if max(suite["load_before"], suite["load_after"]) > 0.5
            else ""
        ),
        "- setting: P0, P1 and the dealer in one process (two party threads, in-process "
        "queues); plaintext = the same ONNX model in onnxruntime on one thread, same run",
        "- online = from handing the input shares to both parties until both return their "
        "output shares; offline = dealer + both parties expanding the material; material for "
        "each query is made just before it (as `LocalCluster.predict` does)",
        f"- each model ran in {suite.get('passes', 1)} fresh process(es); per batch size the "
        "pass with the lowest online median is shown (other processes only add time), every "
        "pass's median under 'passes'",
        "",
        "## Secure inference vs plaintext",
        "",
        "| model | batch | online median | p90 | passes | offline / query | dealer alone | "
        "sent / party | dealer bytes | rounds | plaintext | secure / plain | prior system |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for model, label, batch, r in suite_rows(suite):
        pt = r["plaintext_s"]
        ratio = f"{r['ratio']:.0f}x" if r["ratio"] else "-"
        prior = PRIOR.get((model, batch))
        prior_txt = (
            f"{fmt_s(prior)} ({prior / r['online_s']['median']:.0f}x slower)" if prior else "-"
        )
        passes = ", ".join(fmt_s(v) for v in r.get("pass_medians", []))
        lines.append(
            f"| {label} | {batch} | {fmt_s(r['online_s']['median'])} | "
            f"{fmt_s(r['online_s']['p90'])} | {passes or '-'} | "
            f"{fmt_s(r['offline_s']['median'])} | "
            f"{fmt_s(r['dealer_s']['median'])} | {fmt_bytes(max(r['sent_bytes']))} | "
            f"{fmt_bytes(r['dealer_bytes'])} | {r['rounds']} | "
            f"{fmt_s(pt['median']) if pt else '-'} | "
            f"{ratio} | {prior_txt} |"
        )
    ok = all(r["matches_cost_model"] for rep in suite["models"].values() for r in rep["results"])
    agree = "equal" if ok else "**differ** from"
    lines += [
        "",
        f"Bytes, rounds and dealer bytes {agree} the compiler's cost model in every run.",
        "",
        "## Targets",
        "",
        "| target | measured vs limit | status |",
        "|---|---|---|",
    ]
    trows = target_rows(suite)
    lines += [f"| {t['target']} | {t['text']} | {status(t)} |" for t in trows]
    missed = [t for t in trows if not t["met"]]
    lines += [
        "",
        (
            f"{len(trows) - len(missed)} of {len(trows)} targets met"
            + (f"; missed: {', '.join(t['target'] for t in missed)}." if missed else ".")
        ),
        "",
        "## Cold vs warm start",
        "",
        "First query in a fresh process (numba kernels loaded from the on-disk cache) vs a warm "
        "query; compile and session setup (sharing the weights, opening W - B) are apart.",
        "",
        "| model | batch | first query | of which offline | numba (cached/compiled) | "
        "warm query (offline + online) | compile | session setup |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for _, label, batch, r in suite_rows(suite):
        f = r["first_query"]
        kind = "" if f["cold"] else " (kernels already loaded)"
        lines.append(
            f"| {label} | {batch} | {fmt_s(f['total_s'])}{kind} | {fmt_s(f['offline_s'])} | "
            f"{f['numba_cache_loads']}/{f['numba_compiles']} | "
            f"{fmt_s(r['offline_s']['median'] + r['online_s']['median'])} | "
            f"{fmt_s(r['compile_s'])} | {fmt_s(r['setup_s'])} |"
        )
    jc = suite.get("jit_cold")
    if jc:
        lines += [
            "",
            f"With an empty numba cache (a fresh install), LeNet's first batch-1 query takes "
            f"{fmt_s(jc['total_s'])}: {jc['numba_compiles']} kernel signatures compiled.",
        ]
    kr = suite.get("kernels")
    if kr:
        lines += [
            "",
            "## Ring kernels on LeNet's layers",
            "",
            "The uint64 kernel alone (`benchmarks/kernels.py`'s timer, best of repeated calls, "
            "one core, warm) vs the whole secure linear instruction (open E = X - A, one round, "
            "the kernel, adding the precomputed term; P0's clock, median).",
            "",
            "| batch | layer | x | w | MACs | kernel G MAC/s | kernel time | secure instruction |",
            "|--:|---|---|---|--:|--:|--:|--:|",
        ]
        lay = {b: (result(suite, "lenet", b) or {}).get("layers") for b in BATCHES}
        for b in BATCHES:
            secure = {row["index"]: row for row in (lay[b] or {}).get("instrs", [])}
            for row in (r for r in kr if r["batch"] == b):
                sec = secure.get(row["index"])
                sec_txt = "-"
                if sec and "gmacs_per_s" in sec:
                    sec_txt = f"{fmt_s(sec['time_s'][0])} ({sec['gmacs_per_s']:.2f} G MAC/s)"
                lines.append(
                    f"| {b} | {row['op']} | {'x'.join(map(str, row['x']))} | "
                    f"{'x'.join(map(str, row['w']))} | {row['macs']:,} | "
                    f"{row['gmacs_per_s']:.2f} | {fmt_s(row['seconds'])} | {sec_txt} |"
                )
    lines += ["", "## Projected latency on a network", ""]
    lines += [
        "**A projection, not a measurement** (`Link.project_query`, the formula "
        "`benchmarks/wan.py` checks against a WAN emulated on this machine): the measured "
        "latency with no delay + (rounds + 4) x RTT/2 (the rounds, the client's two legs, "
        "P0's announcement and P1's go) + bytes on the wire (frames, TLS records, TCP/IP "
        "headers) / bandwidth (full duplex, no congestion).",
        "",
        "| model | batch | " + " | ".join(LINKS) + " |",
        "|---|--:|" + "--:|" * len(LINKS),
    ]
    for _, label, batch, r in suite_rows(suite):
        q = QueryTraffic(
            r["rounds"],
            max(r["sent_bytes"]),
            r.get("client_bytes") or 0,
            r["predicted"].get("client_received_per_party", 0),
        )
        cells = [
            fmt_s(link.project_query(r["e2e_s"]["median"], q)["latency_s"])
            for link in LINKS.values()
        ]
        lines.append(f"| {label} | {batch} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Where the online time goes",
        "",
        "Each party's query, from the OS's per-thread accounting (medians, P0 / P1, share of "
        "the online time): on a core; runnable but not running (other processes on the cores, "
        "or the wake-up of an idle vCPU); asleep (blocked on the peer's message or on the "
        "GIL). A large 'runnable' share means the machine was busy and the latency inflated.",
        "",
        "| model | batch | online | on a core | runnable, not running | asleep | "
        "LocalCluster hand-off |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for _, label, batch, r in suite_rows(suite):
        if not r["layers"]:
            continue
        run, online = r["layers"]["run"], r["online_s"]["median"]

        def pct(key: str, run=run, online=online) -> str:
            return " / ".join(f"{v / online:.0%}" if v == v else "?" for v in run[key])

        lines.append(
            f"| {label} | {batch} | {fmt_s(online)} | {pct('cpu_s')} | "
            f"{pct('runnable_s')} | {pct('asleep_s')} | "
            f"{fmt_s(r['layers']['handoff_s'])} |"
        )
    for b in BATCHES:
        r = result(suite, "lenet", b)
        if r and r["layers"]:
            lines += ["", f"## LeNet per instruction, batch {b}", "", *layer_table(r)]
    return "\n".join(lines) + "\n"


def layer_table(r: dict[str, Any]) -> list[str]:
    lay = r["layers"]
    total = sum(row["time_s"][0] for row in lay["instrs"]) or 1.0
    lines = [
        f"P0's clock, median of {r['repeat']} queries: cpu = on a core, queued = runnable but "
        "not running (other processes, an idle vCPU waking up), recv = inside receive "
        "(waiting for the peer's message, overlaps queued); time - cpu - queued is asleep, on "
        "the peer or the GIL. Rounds and bytes measured / predicted by the cost model.",
        "",
        "| # | op | shape | time | % | cpu | queued | recv | rounds | sent / party | dealer "
        "| MACs |",
        "|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in lay["instrs"]:
        p = row["predicted"]
        t = row["time_s"][0]
        lines.append(
            f"| {row['index']} | {row['op']} | {'x'.join(map(str, row['shape']))} | {fmt_s(t)} | "
            f"{100 * t / total:.0f} | {fmt_s(row['cpu_s'][0])} | "
            f"{fmt_s(row['runnable_s'][0])} | {fmt_s(row['wait_s'][0])} | "
            f"{row['rounds']} / "
            f"{p['rounds']} | {fmt_bytes(max(row['sent']))} / {fmt_bytes(p['sent'])} | "
            f"{fmt_bytes(p['dealer'])} | {p['macs']:,} |"
        )
    lines += [
        "",
        f"Of {fmt_s(r['online_s']['median'])} online: instruction loop {fmt_s(lay['loop_s'])}, "
        f"closing the query {fmt_s(lay['closing_s'])}, LocalCluster's thread hand-off "
        f"{fmt_s(lay['handoff_s'])}.",
    ]
    return lines


def plot(suite: dict, path: Path) -> bool:
    """Latency and bytes per model, secure vs plaintext; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = [n for n in MODELS if n in suite["models"]]
    xs = np.arange(len(names))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.2
    for k, batch in enumerate(BATCHES):
        rs = [result(suite, n, batch) for n in names]
        sec = [r["online_s"]["median"] * 1e3 for r in rs]
        plain = [(r["plaintext_s"] or {}).get("median", np.nan) * 1e3 for r in rs]
        ax1.bar(xs + (2 * k - 1.5) * width, sec, width, label=f"secure, batch {batch}")
        ax1.bar(xs + (2 * k - 0.5) * width, plain, width, label=f"plaintext, batch {batch}")
        sent = [max(r["sent_bytes"]) for r in rs]
        dealer = [r["dealer_bytes"] for r in rs]
        ax2.bar(xs + (2 * k - 1.5) * width, sent, width, label=f"sent per party, batch {batch}")
        ax2.bar(xs + (2 * k - 0.5) * width, dealer, width, label=f"dealer, batch {batch}")
    for ax, title, unit in (
        (ax1, "online latency (median)", "ms"),
        (ax2, "bytes per query", "bytes"),
    ):
        ax.set_xticks(xs, [MODELS[n] for n in names])
        ax.set_yscale("log")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    m = suite["machine"]
    fig.suptitle(f"mpcc, three local parties vs onnxruntime (1 thread): {m['cpu']}, {m['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="output folder")
    ap.add_argument("--quick", action="store_true", help="a few queries each (a smoke run)")
    ap.add_argument(
        "--passes", type=int, default=2, help="fresh processes per model; the best is kept"
    )
    ap.add_argument("--no-jit-cold", action="store_true", help="skip the empty-cache run")
    ap.add_argument("--no-kernels", action="store_true", help="skip the kernel G MAC/s")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        ap.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")

    from mpcc.zoo.models import build

    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    log("training/exporting the zoo models (cached after the first run)")
    paths = {n: build(n) for n in names}
    suite: dict[str, Any] = {"schema": "mpcc-bench-suite/1", "passes": args.passes, "models": {}}
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for p in range(args.passes):
        for k, n in enumerate(names):
            log(f"pass {p + 1}/{args.passes}, {k + 1}/{len(names)}: {MODELS[n]}, batch {BATCHES}")
            runs[n].append(bench_model(paths[n], QUICK_REPEATS if args.quick else REPEATS[n]))
    suite["models"] = {n: best_of(runs[n]) for n in names}
    if "lenet" in names and not args.no_jit_cold:
        log("LeNet's first query with an empty numba cache (compiles every kernel)")
        suite["jit_cold"] = jit_cold(paths["lenet"])
    if "lenet" in names and not args.no_kernels:
        log("ring kernel G MAC/s on LeNet's layers")
        suite["kernels"] = kernel_rates(paths["lenet"], 0.05 if args.quick else 0.3)
    suite["machine"] = machine_info()
    suite["load_before"] = load_before
    suite["load_after"] = os.getloadavg()[0]
    suite["wall_s"] = time.perf_counter() - t0
    suite["targets"] = target_rows(suite)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(suite, indent=1) + "\n")
    (out / "latest.md").write_text(markdown(suite))
    if plot(suite, out / "latest.png"):
        log(f"wrote {out / 'latest.md'}, latest.json and latest.png")
    else:
        log(f"wrote {out / 'latest.md'} and latest.json; no PNG: matplotlib is not installed")
    for t in suite["targets"]:
        log(f"{t['target']}: {t['text']}: {status(t).replace('*', '')}")
    log(f"done in {suite['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
