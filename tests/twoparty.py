"""Run a two-party protocol in two threads over an in-process link (test helper)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from mpcc.runtime.transport import Channel, local_link


def run_parties(
    fn: Callable[[Channel, int], Any], timeout: float = 120.0
) -> tuple[Any, Any, tuple[Channel, Channel]]:
    """Call fn(channel, party) for party 0 and 1 concurrently; return both results and channels.

    An exception in either party is re-raised here (the other side is aborted so it
    does not wait for its timeout).
    """
    ch0, ch1 = local_link("P0", "P1", timeout=timeout)
    chans = (ch0, ch1)
    results: list[Any] = [None, None]
    errors: list[BaseException | None] = [None, None]

    def body(p: int) -> None:
        try:
            results[p] = fn(chans[p], p)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            errors[p] = e
            chans[p].abort(repr(e))

    threads = [threading.Thread(target=body, args=(p,)) for p in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in errors:
        if e is not None:
            raise e
    return results[0], results[1], chans
