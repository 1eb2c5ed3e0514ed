"""Run several clients at once from test threads and collect what each got; close in-process
parties all at once."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def each_client(cfg: Any, n: int, work: Callable[[Any, int], Any], timeout: float = 60.0):
    """`work(client, k)` for k in range(n), each in its own thread with its own `Client`;
    returns {k: result}. Any client's error fails the test with all of them listed."""
    from mpcc.serving.client import Client

    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def one(k: int) -> None:
        try:
            with Client(cfg) as c:
                results[k] = work(c, k)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not errors, errors
    assert len(results) == n, f"{n - len(results)} clients did not finish in {timeout:g} s"
    return results


def close_all(parties: Iterable[Any]) -> None:
    """Close in-process parties at once, as separate hosts would: each close waits a few
    tenths of a second for its threads, so one after the other cost a second per test.
    Re-raises the first close that failed, after all have run."""
    parties = list(parties)
    with ThreadPoolExecutor(max(1, len(parties))) as pool:
        for f in [pool.submit(p.close) for p in parties]:
            f.result()
