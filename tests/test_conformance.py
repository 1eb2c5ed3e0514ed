"""ONNX's own operator tests through mpcc (issue 12, item 1): every node test case whose ops
are all supported passes within the f = 16 tolerance or is refused with a documented message,
as given and with its constant inputs frozen. Cleartext for all of them and securely for one
case per op here; securely for all behind `-m slow`."""

from __future__ import annotations

import pytest

from mpcc import conformance as C

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture(scope="module")
def cases() -> dict[str, C.Case]:
    return {c.name: c for c in C.claimed_cases()}


@pytest.fixture(scope="module")
def results(cases) -> dict:
    return C.run_all(secure=False, cases=list(cases.values()))


def _failures(results: dict) -> list[str]:
    return [
        f"{name} ({v}): {e[v][0]}: {e[v][1]}"
        for name, e in sorted(results.items())
        for v in C.VARIANTS
        if e[v][0] in ("crash", "undocumented")
        or (e[v][0] == "wrong" and name not in C.KNOWN_WRONG)
    ]


def test_no_crash_no_undocumented_refusal_no_new_wrong_result(results) -> None:
    assert not _failures(results), "\n".join(_failures(results))


def test_known_wrong_cases_are_still_wrong(results) -> None:
    """A listed wrong case that now passes comes off `KNOWN_WRONG` (and is counted)."""
    fixed = [n for n in C.KNOWN_WRONG if n in results and results[n]["given"][0] != "wrong"]
    assert not fixed, f"take {fixed} off mpcc.conformance.KNOWN_WRONG"


def test_refusals_are_of_documented_kinds(results) -> None:
    kinds = {e[v][1] for e in results.values() for v in C.VARIANTS if e[v][0] == "refused"}
    assert kinds <= set(C.REFUSALS)
    assert all(doc and pattern for pattern, doc in C.REFUSALS.values())
    assert C.refusal_kind("an unknown complaint") == ""


def test_a_case_that_passed_still_passes(results) -> None:
    """Against the checked-in summary: ops others add bring new cases, but never a loss."""
    before = C.load_summary()["results"]
    lost = [
        f"{n} ({v}): {results.get(n, {}).get(v)}"
        for n, e in before.items()
        for v in C.VARIANTS
        if e[v][0] == "pass" and results.get(n, {}).get(v, [""])[0] != "pass"
    ]
    assert not lost, "\n".join(lost)


def test_summary_is_current(results) -> None:
    """docs/conformance.json (and the README op table's counts) match this run."""
    assert C.load_summary() == C.summary(results), (
        "run python -m mpcc.conformance --write, then python -m mpcc.optable --write README.md "
        "docs/ops.md"
    )


def test_frozen_variant_passes_more(results) -> None:
    totals = C.summary(results)["totals"]
    assert totals["frozen"]["pass"] > totals["given"]["pass"] > 100


def _one_per_op(results: dict) -> list[tuple[str, str]]:
    """The first passing (case, variant) of every op, by name: a representative subset."""
    picked: dict[str, tuple[str, str]] = {}
    for name, e in sorted(results.items()):
        for v in C.VARIANTS:
            if e[v][0] == "pass":
                for op in e["ops"]:
                    picked.setdefault(op, (name, v))
                break
    return sorted(set(picked.values()))


def test_secure_matches_for_one_case_per_op(cases, results) -> None:
    subset = _one_per_op(results)
    assert len(subset) >= 20
    bad = [(n, v, C.run(cases[n], v, secure=True)) for n, v in subset]
    bad = [f"{n} ({v}): {r}" for n, v, r in bad if r.status != "pass"]
    assert not bad, "\n".join(bad)


@pytest.mark.slow
def test_secure_matches_for_every_passing_case(cases, results) -> None:
    bad = []
    for name, e in sorted(results.items()):
        for v in C.VARIANTS:
            if e[v][0] == "pass":
                r = C.run(cases[name], v, secure=True)
                if r.status != "pass":
                    bad.append(f"{name} ({v}): {r}")
    assert not bad, "\n".join(bad)


def test_frozen_inputs_are_the_constant_operands() -> None:
    """Conv's weight and bias and Reshape's shape are frozen; the data input is not."""
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"]),
            helper.make_node("Reshape", ["c", "s"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "w", "b", "s")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    assert C.frozen_inputs(helper.make_model(g)) == {"w", "b", "s"}
