"""Shared pytest fixtures. Keep this file small; document every fixture you add.

Zoo fixtures:
* ``digits_test`` / ``digits_train``: ``(X, y)`` of the real digits, X float32 [n, 1, 28, 28]
  in [0, 1], y int64 (about 450 test and 1347 train images). Read-only: copy before changing.
* ``zoo_cache_dir``: where trained zoo models and their ONNX files are cached
  (``$MPCC_CACHE_DIR``, else ``<repo>/.cache/mpcc``), so warm test runs skip training.
* ``zoo_model(name, dynamo=False)``: path of the named zoo model's ONNX file (symbolic batch),
  trained and exported on first use. Names: ``mpcc.zoo.models.MODELS``.
* ``zoo_module(name)``: the trained torch module itself, in eval mode.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _readonly(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y


@pytest.fixture(scope="session")
def digits_test() -> tuple[np.ndarray, np.ndarray]:
    from mpcc.zoo.digits import load_digits_28

    return _readonly(*load_digits_28("test"))


@pytest.fixture(scope="session")
def digits_train() -> tuple[np.ndarray, np.ndarray]:
    from mpcc.zoo.digits import load_digits_28

    return _readonly(*load_digits_28("train"))


@pytest.fixture(scope="session")
def zoo_cache_dir() -> Path:
    env = os.environ.get("MPCC_CACHE_DIR")
    return Path(env) if env else REPO / ".cache" / "mpcc"


@pytest.fixture(scope="session")
def zoo_model(zoo_cache_dir: Path) -> Callable[..., Path]:
    pytest.importorskip("torch")
    from mpcc.zoo.models import build

    def get(name: str, dynamo: bool = False) -> Path:
        return build(name, dynamo=dynamo, cache_dir=zoo_cache_dir)

    return get


@pytest.fixture(scope="session")
def zoo_module(zoo_cache_dir: Path) -> Callable[[str], Any]:
    pytest.importorskip("torch")
    from mpcc.zoo.models import trained

    return lambda name: trained(name, cache_dir=zoo_cache_dir)


# -- a cold cache is filled on the other core (see tests/prebuild.py) ------------------------
PREBUILD_MIN_TESTS = 300  # only a large run starts it: a few tests would only compete with it
_prebuild: list = []


def pytest_collection_finish(session: pytest.Session) -> None:
    import subprocess
    import sys

    from mpcc.serving.local import die_with_parent
    from tests import prebuild

    if (
        len(session.items) < PREBUILD_MIN_TESTS
        or os.environ.get("MPCC_NO_PREBUILD", "0") not in ("", "0")
        or session.config.option.collectonly
        or hasattr(session.config, "workerinput")  # a pytest-xdist worker
        or not prebuild.is_cold()
    ):
        return
    log = prebuild.cache_dir() / "prebuild.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        _prebuild.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.prebuild"],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(),  # a run killed outright takes it along
            )
        )


def pytest_sessionfinish(session: pytest.Session) -> None:
    import subprocess

    for p in _prebuild:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:  # a stuck builder is killed
                p.kill()
                p.wait()
