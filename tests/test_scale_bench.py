"""benchmarks/bigmodels.py keeps torchvision's layer shapes; benchmarks/scale.py's report."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bigmodels():
    pytest.importorskip("torch")
    return _load("bigmodels")


@pytest.mark.parametrize("name", ["alexnet", "vgg11", "resnet18", "mobilenet_v2"])
def test_parameter_counts_are_torchvisions(bigmodels, name):
    model = bigmodels.build(name)  # asserts the count itself
    assert bigmodels.count_params(model) == bigmodels.PARAMS[name]
    assert not model.training


def test_report_rows_targets_and_markdown(bigmodels):
    scale = _load("scale")
    mib = 2**20
    params = bigmodels.PARAMS["vgg11"]
    report = {
        "machine": scale.machine_info(),
        "code": {"repo": "r", "branch": "b", "commit": "0" * 40, "dirty": False},
        "party_floor": {
            "hwm": {"p0": 250 * mib, "p1": 260 * mib},
            "rss_settled": {"p0": 240 * mib, "p1": 250 * mib},
        },
        "models": {
            "vgg11": {
                "name": "VGG-11",
                "params": params,
                "compile": {
                    "compile_s": 10.0,
                    "save_s": 4.0,
                    "plan_mb": 500.0,
                    "compile_peak_rss": 2000 * mib,
                    "save_peak_rss": 2500 * mib,
                },
                "cluster": {
                    "baseline_rss": 500 * mib,
                    "peak_rss": 500 * mib + 40 * params,
                    "setup_peak_rss": 500 * mib + 40 * params,
                    "query_peak_rss": 500 * mib,
                    "load_s": 1.0,
                    "setup_s": 6.0,
                    "setup_parts_s": {"sharing": 0.5, "opening": 5.5},
                    "query_s": 2.0,
                    "ir": {"activation_bytes": 100 * mib, "instrs": 30, "weight_elements": params},
                    "check": {"max_abs_error": 1e-3, "rel_error": 1e-3, "argmax_agrees": True},
                },
                "serve": {
                    "ready_s": 9.0,
                    "query_s": 3.0,
                    "hwm": {"p0": 260 * mib + 40 * params},
                    # what P0 holds settled: 30 B/param and 100 MiB of material made ahead
                    "rss_settled": {"p0": 240 * mib + 30 * params + 100 * mib},
                    "material": {"p0": {"material_held_bytes": 100 * mib}},
                },
            }
        },
    }
    report["rows"] = scale.rows(report)
    report["targets"] = scale.target_rows(report)
    met = {t["key"]: t["met"] for t in report["targets"]}
    assert met == {
        "compile_total_s": True,
        "cluster_weights_per_param": True,
        "party_marginal_per_param": False,
        "opening_s": False,
    }
    assert report["rows"][0]["party_marginal_per_param"] == pytest.approx(30, abs=0.1)
    text = scale.markdown(report, "t")
    assert "| VGG-11 | 132,863,336 | 10.0 (+ 4.0) |" in text
    assert text.count("MISSED") == 2
