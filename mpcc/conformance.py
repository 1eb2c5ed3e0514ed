"""ONNX's own operator tests (the backend node tests) run through mpcc.

`onnx.backend.test.case.node.collect_testcases()` regenerates ONNX's node test cases (the
wheel ships no data); they are cached under ``.cache/`` per onnx version. Every case whose ops
are all in :data:`mpcc.compiler.supported.SUPPORTED_OPS` is compiled and run, in cleartext or
securely (`LocalCluster`), against the expected outputs, in two variants:

- ``given``: the model as ONNX ships it (weights, shapes, axes, pads often graph inputs);
- ``frozen``: the inputs mpcc needs constant (those of `CONST_INPUTS`, a MatMul's second
  operand, and every non-float input: shapes, axes, indices) frozen to the case's values.

Each run ends in one status: ``pass`` (every output within `ATOL` + `RTOL` |expected|, a
tolerance suited to f = 16), ``refused`` (a ModelError or InputError of one of the documented
`REFUSALS` kinds), ``softmax`` (compiled with its final Softmax dropped to logits: not a
pass), or a failure: ``wrong`` (a result outside the tolerance), ``undocumented`` (a refusal
of no known kind) or ``crash`` (any other exception). The summary of the cleartext runs is
checked in (`SUMMARY`); the README op table gives its counts per op.

    python -m mpcc.conformance                    # print the per-op counts
    python -m mpcc.conformance --write            # rewrite docs/conformance.json
    python -m mpcc.conformance --secure           # run the secure variant as well
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import sys
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from mpcc.compiler.pipeline import compile_onnx
from mpcc.compiler.supported import CONST_INPUTS, SUPPORTED_OPS
from mpcc.errors import InputError, ModelError

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"
SUMMARY = ROOT / "docs" / "conformance.json"
VARIANTS = ("given", "frozen")
ATOL = 1e-3  # 65 LSBs at f = 16: products' truncations accumulate over a sum
RTOL = 1e-3

# Why a case is refused: kind -> (pattern of the message, what the README says).
REFUSALS: dict[str, tuple[str, str]] = {
    "constant input": (
        r"must be a constant|must be constants|needs a constant|multiplies two computed|"
        r"at constant indices",
        "a weight, shape, axes, pads or bound fed as a graph input (mpcc needs it constant)",
    ),
    "rank": (
        r"only 2-D NCHW|needs a 4-D|must be 2-D|constant operand must be|of rank",
        "a tensor rank mpcc does not lower (e.g. convolution over more than 3 spatial axes)",
    ),
    "range": (
        r"must be finite|within \|v\|",
        "inputs that are infinite, NaN or beyond the fixed-point range (|v| < 2^46 at f = 16)",
    ),
    "empty": (
        r"empty|zero-size|no samples|dim of 0",
        "a tensor with a dimension of size 0",
    ),
    "attribute": (
        r"is not supported|are not supported|only constant padding|training mode|"
        r"only a reduction|noop_with_empty_axes|a slice step of 0|ceil_mode|Indices output|"
        r"only p = 2|only mode '|only keep_aspect_ratio_policy|output_shape",
        "an attribute or mode mpcc does not support (see the op's row)",
    ),
    "broadcast": (
        r"broadcast",
        "a constant operand that broadcasts the secret tensor to a larger shape",
    ),
    "dtype": (
        r"dtype|not a float|integer|bool",
        "integer or boolean tensors (mpcc computes on fixed-point reals)",
    ),
    "not final": (
        r"not the model's last op",
        "Softmax/LogSoftmax other than as the final op",
    ),
    "constant output": (
        r"is a constant: it does not depend",
        "the output does not depend on any input (nothing to compute securely)",
    ),
}


# Cases known to give wrong results, each with why and who owns the fix. The suite fails on
# any other wrong result, and on a listed case that passes (then take it off the list).
KNOWN_WRONG: dict[str, str] = {}


@dataclass(frozen=True)
class Case:
    """One node test case: its model and first data set."""

    name: str
    model: bytes
    inputs: tuple[np.ndarray, ...]
    outputs: tuple[np.ndarray, ...]

    def proto(self) -> onnx.ModelProto:
        return onnx.load_from_string(self.model)

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(sorted({n.op_type for n in self.proto().graph.node}))


@dataclass(frozen=True)
class Result:
    """How one run of a case ended; `kind` is the refusal's kind, `detail` the message."""

    status: str  # pass, refused, softmax, wrong, undocumented, crash
    kind: str = ""
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("wrong", "undocumented", "crash")


def all_cases() -> list[Case]:
    """Every ONNX node test case (first data set), regenerated once per onnx version."""
    path = CACHE / f"onnx-node-cases-{onnx.__version__}.pkl"
    if path.exists():
        with path.open("rb") as f:
            return [Case(*fields) for fields in pickle.load(f)]
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = collect_testcases(None)
    cases = []
    for t in found:
        if t.model is None or not t.data_sets:
            continue
        ins, outs = (_arrays(vs) for vs in t.data_sets[0])
        if ins is None or outs is None:
            continue  # sequences, optionals, exotic types: no tensor model for mpcc
        cases.append(
            Case(
                t.name,
                t.model.SerializeToString(),
                tuple(np.asarray(v) for v in ins),
                tuple(np.asarray(v) for v in outs),
            )
        )
    CACHE.mkdir(exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # another process may write too
    with tmp.open("wb") as f:
        pickle.dump([(c.name, c.model, c.inputs, c.outputs) for c in cases], f)
    tmp.replace(path)
    return cases


def _arrays(values: list) -> list[np.ndarray] | None:
    """A data set's tensors as arrays (TensorProtos converted), or None if one is not one."""
    out = []
    for v in values:
        if isinstance(v, onnx.TensorProto):
            try:
                v = onnx.numpy_helper.to_array(v)
            except Exception:  # a type numpy cannot hold
                return None
        if not isinstance(v, np.ndarray | np.generic) or np.asarray(v).dtype.kind not in "biuf":
            return None
        out.append(v)
    return out


def claimed_cases() -> list[Case]:
    """The cases whose ops are all in mpcc's op table (computed: grows with the table)."""
    return [c for c in all_cases() if all(op in SUPPORTED_OPS or op == "Constant" for op in c.ops)]


def frozen_inputs(m: onnx.ModelProto) -> set[str]:
    """The graph inputs mpcc needs constant: constant operands (shapes, axes, pads, bounds,
    weights) and a MatMul's second operand."""
    g = m.graph
    names = {i.name for i in g.input} - {t.name for t in g.initializer}
    found = set()
    for n in g.node:
        wanted = set(CONST_INPUTS.get(n.op_type, {}))
        if n.op_type == "MatMul":
            wanted.add(1)
        found |= {t for i, t in enumerate(n.input) if i in wanted and t in names}
    return found


def variant(case: Case, which: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The case's model and its inputs by name, in variant `which` ("given"/"frozen")."""
    m = case.proto()
    real = [i.name for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}]
    feeds = dict(zip(real, case.inputs, strict=False))
    if which == "frozen":
        for name in frozen_inputs(m):
            m.graph.initializer.append(onnx.numpy_helper.from_array(feeds.pop(name), name))
    return m, feeds


# A final Softmax is computed securely where the compiler can (`keep_softmax`); without the
# option it is dropped and the case is reported as "softmax", not as a pass.
_KEEP_SOFTMAX = (
    {"keep_softmax": True}
    if "keep_softmax" in __import__("inspect").signature(compile_onnx).parameters
    else {}
)


def refusal_kind(message: str) -> str:
    """The documented kind of a refusal message, or "" if it is of no known kind."""
    for kind, (pattern, _) in REFUSALS.items():
        if re.search(pattern, message):
            return kind
    return ""


def run(case: Case, which: str = "given", secure: bool = False) -> Result:
    """Compile and run one case in variant `which`; never raises."""
    from mpcc.runtime.cleartext import check_inputs, encode_weights, run_decoded

    try:
        m, feeds = variant(case, which)
        plan = compile_onnx(m, **_KEEP_SOFTMAX)
        prog = plan.program
        if any(n.startswith("dropped final") for n in prog.notes):
            return Result("softmax", "", "the final Softmax was dropped: the plan gives logits")
        xs = check_inputs(prog, {n: v for n, v in feeds.items() if n in dict(prog.inputs)})
        if secure:
            from mpcc.runtime.cluster import LocalCluster

            with LocalCluster(plan) as cluster:
                got = cluster.run_outputs(xs)
        else:
            got = run_decoded(prog, encode_weights(prog, plan.weights), xs)
    except (ModelError, InputError) as e:
        kind = refusal_kind(str(e))
        return Result("refused" if kind else "undocumented", kind, str(e))
    except Exception as e:  # noqa: BLE001 - a crash is what this reports
        return Result("crash", "", f"{type(e).__name__}: {e}")
    if len(got) != len(case.outputs):
        return Result("wrong", "", f"{len(got)} outputs, expected {len(case.outputs)}")
    for (name, y), want in zip(got.items(), case.outputs, strict=True):
        ref = np.asarray(want, dtype=np.float64)
        if y.shape != ref.shape:
            return Result("wrong", "", f"output {name!r}: shape {y.shape}, expected {ref.shape}")
        err = np.abs(y - ref)
        if not np.all(err <= ATOL + RTOL * np.abs(ref)):
            worst = float(err.max())
            return Result("wrong", "", f"output {name!r}: max error {worst:.3g}")
    return Result("pass")


def run_all(secure: bool = False, cases: Sequence[Case] | None = None) -> dict:
    """Every claimed case in both variants: {name: {"ops": [...], variant: [status, kind]}}."""
    out = {}
    for c in claimed_cases() if cases is None else cases:
        entry: dict = {"ops": list(c.ops)}
        for v in VARIANTS:
            r = run(c, v, secure)
            entry[v] = [r.status, r.kind] if not r.failed else [r.status, r.detail[:200]]
        out[c.name] = entry
    return out


def summary(results: dict) -> dict:
    """What `SUMMARY` holds: the onnx version, totals per variant and the per-case results."""
    totals = {v: dict(Counter(e[v][0] for e in results.values())) for v in VARIANTS}
    return {"onnx": onnx.__version__, "cases": len(results), "totals": totals, "results": results}


def per_op(data: dict | None = None) -> dict[str, dict[str, Counter]]:
    """Per op, per variant, the statuses (refusals by kind) of the cases using the op."""
    data = load_summary() if data is None else data
    table: dict[str, dict[str, Counter]] = {}
    for entry in data["results"].values():
        for op in entry["ops"]:
            for v in VARIANTS:
                status, kind = entry[v]
                key = f"refused: {kind}" if status == "refused" else status
                table.setdefault(op, {w: Counter() for w in VARIANTS})[v][key] += 1
    return table


def load_summary() -> dict:
    """The checked-in summary of the cleartext runs."""
    return json.loads(SUMMARY.read_text())


def op_counts(op: str) -> str:
    """The README's conformance cell for `op`: 'passed as given / frozen of total (why the
    others fail, frozen variant)'."""
    if not SUMMARY.exists():
        return "-"
    row = per_op(load_summary()).get(op)
    if row is None:
        return "no node test"
    given, frozen = row["given"], row["frozen"]
    total = sum(given.values())
    why = Counter()
    for key, k in frozen.items():
        if key != "pass":
            why[key.removeprefix("refused: ")] += k
    reasons = ", ".join(f"{k} {n}" for n, k in why.most_common())
    cell = f"{given['pass']} / {frozen['pass']} of {total}"
    return f"{cell} ({reasons})" if reasons else cell


def legend() -> str:
    """What the op table's "ONNX node tests" column means, with every refusal kind."""
    data = load_summary() if SUMMARY.exists() else {"onnx": "?", "cases": 0, "totals": {}}
    given = data["totals"].get("given", {}).get("pass", 0)
    frozen = data["totals"].get("frozen", {}).get("pass", 0)
    kinds = "; ".join(f"*{k}*: {doc}" for k, (_, doc) in REFUSALS.items())
    return (
        f"*ONNX node tests*: of ONNX's own operator test cases (onnx {data['onnx']}, "
        "regenerated by `onnx.backend.test.case.node.collect_testcases`) whose ops are all "
        "supported, those using the op that pass as given / with the inputs mpcc needs "
        "constant frozen, of the total, then why the others (frozen variant) do not: "
        f"{kinds}; *wrong*: a known wrong result (`mpcc.conformance.KNOWN_WRONG`). In all "
        f"{given} / {frozen} of {data['cases']} cases pass (cleartext; the secure run is "
        "`pytest -m slow tests/test_conformance.py`). Counts from `docs/conformance.json`, "
        "written by `python -m mpcc.conformance --write`."
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m mpcc.conformance", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--write", action="store_true", help=f"rewrite {SUMMARY.relative_to(ROOT)}")
    ap.add_argument("--secure", action="store_true", help="run securely (LocalCluster)")
    ap.add_argument("-k", help="only cases whose name contains this")
    args = ap.parse_args(argv)
    cases = [c for c in claimed_cases() if not args.k or args.k in c.name]
    results = run_all(args.secure, cases)
    data = summary(results)
    for name, e in sorted(results.items()):
        print(f"{name:60s} {e['given'][0]:>8s} {e['frozen'][0]:>8s}  {e['frozen'][1][:60]}")
    print(json.dumps(data["totals"]))
    if args.write:
        SUMMARY.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"wrote {SUMMARY}")
    failed = [n for n, e in results.items() if any(e[v][0] in _FAILED for v in VARIANTS)]
    return 1 if failed else 0


_FAILED = ("wrong", "undocumented", "crash")

if __name__ == "__main__":
    sys.exit(main())
