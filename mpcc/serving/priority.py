"""Thread priorities: material is made beside the online rounds, and yields to them.

A party's preparation thread (expanding material from seeds and the dealer's bundles), its
dealer link's reader (which decrypts bundles while that thread waits) and the dealer's
dealing thread do throughput work: each query's material must be ready when
its turn comes, not sooner. The lanes' online rounds are latency work: every round trip
waits for a party to be scheduled. On a machine whose cores the parties share (or are busy
otherwise), the scheduler then favours the rounds if the material makers run at a higher
niceness (`[serving] background_nice`). They lose nothing when the rounds wait for the
network or for material: then the cores are theirs. With four lanes on the two-core WAN bed
this gave 47 answers/s against 43 (`docs/benchmarks.md`, "Many queries in flight").

Linux keeps a niceness per thread (`setpriority` on a thread id; at most 19); elsewhere a
thread's native id is no process id, so this does nothing there. Threads a lowered thread
starts inherit its niceness (the dealer's link readers: all of its work is material). Nice
values rank the threads of one scheduling group (an autogroup, a systemd unit's cgroup):
where other busy programs share a party's group, its material makers get about a tenth of a
core against each busy thread of theirs. A query waits as long as its material keeps coming
(`PartySession.wait_prepared`: each call's material restarts the wait), but P1 also waits
for the dealer's bundles: if a big model's queries fail with "no preprocessing for query"
on such hosts, set `background_nice = 0` there.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)


def lower_this_thread(nice: int) -> None:
    """Run the calling thread `nice` (0-19) steps nicer than its process's main thread."""
    lower_thread(threading.get_native_id(), nice)


def lower_thread(tid: int, nice: int) -> None:
    """Run thread `tid` of this process `nice` (0-19) steps nicer than the main thread, at
    most 19 (Linux only; setting it again changes nothing)."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        base = os.getpriority(os.PRIO_PROCESS, os.getpid())
        os.setpriority(os.PRIO_PROCESS, tid, min(19, base + nice))
    except OSError as e:  # e.g. a sandbox that forbids it, or a thread that has just ended
        log.debug("could not lower thread %d's priority: %s", tid, e)
