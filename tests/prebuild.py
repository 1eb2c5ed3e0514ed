"""Fill a cold test cache on the machine's other core while the suite starts.

A fresh clone has nothing cached: the zoo models are trained and exported, the numba kernels
compiled, the ONNX node cases generated, the sequence models and MiniLM exported, each by the
first test that needs it, while pytest keeps one core busy and leaves the other idle (a clean
clone's suite took 14.5 min against 8 warm). `conftest.py` starts this module in the
background (`python -m tests.prebuild`) when a large run finds the cache cold, and stops it
when the run ends. It builds what the tests need, roughly in the order they need it, with the
same functions and cache paths the tests use; a test that gets there first builds the item
itself (the zoo's file locks make the other wait; the rest write through a temporary file
of each process's own and a rename, so at worst both build it). It runs at the lowest
priority, on CPU the suite leaves idle. Nothing here is checked: a failure is only logged,
and the test that needs the item reports it.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    env = os.environ.get("MPCC_CACHE_DIR")
    return Path(env) if env else REPO / ".cache" / "mpcc"


def _marker() -> Path:
    """Written when every step has run, keyed by this file and torch's version (which key
    the zoo's and the sequence models' caches): a prebuild stopped half-way runs again."""
    import hashlib

    import torch

    key = hashlib.sha256(Path(__file__).read_bytes() + torch.__version__.encode()).hexdigest()
    return cache_dir() / f"prebuild-{key[:12]}.done"


def is_cold() -> bool:
    """Whether the suite's cache is unfilled (False without torch: the tests that need it
    are skipped then)."""
    try:
        return not _marker().exists()
    except ImportError:
        return False


def _steps() -> list[tuple[str, Callable[[], object]]]:
    from mpcc.zoo.models import build

    cache = cache_dir()

    def digits(name: str, dynamo: bool = False) -> Callable[[], object]:
        def run() -> object:
            sys.path.insert(0, str(REPO))
            from tests import digits_seq

            return digits_seq.onnx_path(name, cache, dynamo=dynamo)

        return run

    def kernels() -> object:
        from mpcc.runtime.warmup import warm_up

        return warm_up()

    def node_cases() -> object:
        from mpcc.conformance import all_cases

        return len(all_cases())

    def minilm(seq: int, layers: int = 6) -> Callable[[], object]:
        def run() -> object:
            from mpcc.zoo import minilm as m

            return m.export(seq, cache, layers=layers)

        return run

    steps: list[tuple[str, Callable[[], object]]] = []
    for name in ("mlp", "cnn", "lenet", "resnet", "mobilenet"):  # test_batching, test_bench
        steps.append((f"zoo {name}", lambda n=name: build(n, cache_dir=cache)))
    steps.append(("kernels", kernels))
    steps.append(("onnx node cases", node_cases))  # test_conformance
    for name in ("gru", "lstm", "vit"):  # test_digits_seq
        steps.append((f"digits {name}", digits(name)))
    steps.append(("minilm seq32", minilm(32)))
    steps.append(("minilm seq32 1 layer", minilm(32, 1)))
    steps.append(("zoo resnet_deep", lambda: build("resnet_deep", cache_dir=cache)))
    # dynamo exports: lenet and resnet for test_zoo, mobilenet and resnet_deep for test_model_zoo
    for name in ("lenet", "resnet", "mobilenet", "resnet_deep"):
        steps.append((f"zoo {name} dynamo", lambda n=name: build(n, dynamo=True, cache_dir=cache)))
    for name in ("gru", "lstm"):
        steps.append((f"digits {name} dynamo", digits(name, dynamo=True)))
    return steps


def main() -> int:
    os.nice(19)  # idle CPU only: the suite's own processes (party clusters too) come first
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        return 0
    t0 = time.perf_counter()
    failed = 0
    for what, step in _steps():
        t = time.perf_counter()
        try:
            step()
            print(f"prebuild: {what} in {time.perf_counter() - t:.1f} s", flush=True)
        except Exception:  # noqa: BLE001 - the test that needs it reports the error
            failed += 1
            print(f"prebuild: {what} failed:\n{traceback.format_exc()}", flush=True)
    print(f"prebuild: done in {time.perf_counter() - t0:.1f} s", flush=True)
    if not failed:
        _marker().write_text("")
    return 0


if __name__ == "__main__":
    sys.exit(main())
