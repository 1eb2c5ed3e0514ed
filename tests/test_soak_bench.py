"""The soak benchmark (benchmarks/soak.py) for 60 s: 16 clients on LeNet, P1 killed with
SIGKILL and restarted every 20 s, an `info` flooder, a slow reader and a sender of malformed
frames alongside.

The machine may be shared and loaded, so the recovery bound is on what the cluster does
after P1's process is up again (the session start-up, not the interpreter's start); the full
run by hand (`benchmarks/soak.py --duration 600`) reports the whole time against 10 s.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

RECOVERY_AFTER_START_S = 10.0  # from P1's process loaded to a new request answered


def _soak():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"
    spec = importlib.util.spec_from_file_location("mpcc_bench_soak", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_soak_60s(tmp_path, zoo_model):
    zoo_model("lenet")  # trained and exported (cached) before the clock
    soak = _soak()
    rep = soak.run(duration=60, clients=16, restart_every=20, directory=tmp_path, log=print)
    report = soak.markdown(rep)
    print(report)
    assert rep.wrong == 0, report
    assert not rep.unexpected, report
    assert rep.answers > 0, report
    assert len(rep.restarts) == 2, report
    for r in rep.restarts:
        killed = r["killed_s"]
        assert r["recovery_s"] is not None, f"no answer after the kill at {killed} s\n{report}"
        assert r["p1_up_s"] is not None, report
        assert r["recovery_s"] - r["p1_up_s"] <= RECOVERY_AFTER_START_S, report
    assert rep.sessions >= 3, report  # a new session after each restart
    # every failure is a clear error saying what went wrong (a party, the session, a link,
    # or how long the client waited), never an empty message
    clear = ("P<n>", "p<n>", "session", "TLS", "connection", "within <n> s")
    for msg in rep.failures:
        assert any(w in msg for w in clear), f"unclear error {msg!r}\n{report}"
    mal = rep.abusers["malformed"]
    assert mal["sent"] > 0 and not mal["left_open"], report
    assert rep.abusers["flood_info"]["sent"] > 0, report
    assert not any(rep.tracebacks.values()), report


if __name__ == "__main__":
    pytest.main([__file__, "-s"])
