"""One LeNet query across the emulated WAN (`mpcc.bench.wan`): the three party processes and
the client in their own network namespaces, every link delayed 2.5 ms each way (5 ms RTT).

The answer must match onnxruntime, and the latency must respect the physics that the
projection (`Link.project_query`) charges: each of the query's rounds is one message each way
between P0 and P1 through the relay, and the client's shares, P0's announcement, P1's go and
the answers cross it once each, every later message waiting on an earlier one, so the query
cannot take less than (rounds + 4) x RTT/2. (No upper bound: the machine's load sets that.)
Needs root and `ip netns`; CI runs as root.
"""

from __future__ import annotations

import os
import subprocess
import time

import numpy as np
import pytest

from mpcc.bench.network import Link, QueryTraffic
from mpcc.bench.wan import WanBed, unavailable

RTT_MS = 5.0
TOLERANCE = 1e-2  # served logits against onnxruntime's float32 ones (16 fractional bits)

why = unavailable()
pytestmark = pytest.mark.skipif(why is not None, reason=why or "")


def _ours(bed: WanBed) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.startswith(bed.tag)]


def test_lenet_query_across_the_wan(tmp_path, zoo_model, digits_test):
    from mpcc.compiler.pipeline import compile_onnx
    from mpcc.serving.client import Client
    from mpcc.serving.owner import deploy_program
    from mpcc.zoo.reference import run_logits

    path = zoo_model("lenet")
    prog, weights = compile_onnx(path, (1, 1, 28, 28))
    x = digits_test[0][:1]
    ref = run_logits(path, x)
    with WanBed(tmp_path, RTT_MS, 1.0, timeout_s=30, handshake_timeout_s=30) as bed:
        assert len(_ours(bed)) == 5  # hub, p0, p1, dealer, client
        bed.start_parties()
        with bed.inside("client"):
            cfg = bed.view("client")
            assert cfg.address("p0")[0] != bed.role_ip("p0")  # through the relay
            deploy_program(prog, weights, cfg)
            with Client(cfg) as c:
                c.wait_ready(300)
                t0 = time.perf_counter()
                y = c.predict(x)
                latency = time.perf_counter() - t0
                r = c.stats.requests[-1]
    assert not _ours(bed), "the bed left namespaces behind"
    assert np.array_equal(y.argmax(1), ref.argmax(1))
    assert np.abs(y - ref).max() < TOLERANCE
    assert r.rounds > 10
    q = QueryTraffic(r.rounds, max(r.sent), r.client_bytes, 80)
    floor = Link(RTT_MS / 1e3, 1.0).project_query(0.0, q)["delay_s"]
    assert floor == pytest.approx((r.rounds + 4) * RTT_MS / 2e3)
    assert latency >= floor, (latency, r.rounds)


def test_bed_cleans_up_after_a_failure(tmp_path):
    """A failure inside the `with` block still deletes every namespace the bed made."""
    with pytest.raises(RuntimeError, match="boom"):
        with WanBed(tmp_path, RTT_MS, 1.0) as bed:
            assert _ours(bed)
            raise RuntimeError("boom")
    assert not _ours(bed)


def test_leftovers_of_dead_runs_are_removed():
    """A bed killed outright leaves its namespaces; the next bed deletes those whose process
    is gone (and no one else's)."""
    from mpcc.bench.wan import PREFIX, remove_stale

    dead = f"{PREFIX}{2**22 + 7}xdeadbe-hub"  # above the largest pid Linux hands out
    alive = f"{PREFIX}{os.getpid()}xalive0-hub"
    for ns in (dead, alive):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        gone = remove_stale()
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert dead in gone and dead not in left
        assert alive in left
    finally:
        for ns in (dead, alive):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
