"""Soak (slow): concurrent clients while each party in turn is killed and restarted.

Every prediction either matches onnxruntime or fails with a clear MpccError within the
client's timeout; after each restart the cluster serves again under a new session.
Run with `make test-slow` (or `pytest -m slow tests/test_serving_soak.py`).
"""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest

from mpcc.errors import MpccError
from mpcc.serving.client import Client
from mpcc.serving.local import ProcessCluster
from mpcc.serving.owner import deploy_program

pytestmark = pytest.mark.slow

TIMEOUT_S = 3.0
CLIENT_TIMEOUT_S = 10.0


def test_soak_with_party_failures(tmp_path, zoo_model, digits_test):
    from mpcc.compiler.pipeline import compile_onnx
    from mpcc.zoo.reference import run_logits

    path = zoo_model("lenet")
    prog, weights = compile_onnx(path, (2, 1, 28, 28))  # batch 2: requests get merged
    X = np.asarray(digits_test[0][:40])
    ref = run_logits(path, X)  # onnxruntime, float32: the correctness reference
    stop = threading.Event()
    ok, failed, bad = [], [], []
    lock = threading.Lock()

    def client(k: int) -> None:
        i = k
        c = Client(pc.cfg, timeout=CLIENT_TIMEOUT_S)
        while not stop.is_set():
            rows = slice(i % 37, i % 37 + 1 + k % 3)
            t0 = time.monotonic()
            try:
                y = c.predict(X[rows])
                good = np.array_equal(y.argmax(1), ref[rows].argmax(1)) and (
                    np.abs(y - ref[rows]).max() < 1e-2
                )
                with lock:
                    (ok if good else bad).append((k, c.stats.requests[-1].session))
            except MpccError as e:
                with lock:
                    failed.append((k, str(e), time.monotonic() - t0))
                time.sleep(0.1)
            except Exception as e:  # noqa: BLE001 - anything else is a bug
                with lock:
                    bad.append((k, repr(e)))
            i += 7
        c.close()

    with ProcessCluster(tmp_path, timeout_s=TIMEOUT_S, stock=3, batch_wait_ms=5.0) as pc:
        pc.start_all()
        deploy_program(prog, weights, pc.cfg)
        with Client(pc.cfg) as c:
            sessions = [c.wait_ready(60)]
        threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        try:
            for victim in ("p1", "dealer", "p0", "p1"):
                time.sleep(4)
                pc.kill(victim, signal.SIGKILL)
                time.sleep(0.5)
                pc.start(victim)
                pc.wait_listening()
                with Client(pc.cfg) as c:
                    sessions.append(c.wait_ready(60))
                for other in ("p0", "p1", "dealer"):
                    assert pc.alive(other), pc.log(other)[-2000:]
            with lock:
                before = len(ok)
            time.sleep(4)
        finally:
            stop.set()
            for t in threads:
                t.join(CLIENT_TIMEOUT_S + 5)
        assert not any(t.is_alive() for t in threads), "a client hung"
        assert not bad, bad[:5]
        assert len(sessions) == len(set(sessions)) == 5
        assert len(ok) > before + 20, "service did not resume after the last restart"
        assert all(d < CLIENT_TIMEOUT_S + 1 for _, _, d in failed), failed
        assert {s for _, s in ok} <= {s[:8] for s in sessions}
        for role in ("p0", "p1", "dealer"):
            assert "Traceback" not in pc.log(role), pc.log(role)[-3000:]
