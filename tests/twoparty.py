"""Run a two-party protocol in two threads over an in-process link (test helper)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from mpcc.compiler.calls import Call
from mpcc.runtime.prg import Prg, share
from mpcc.runtime.protocols import protocol_for
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


View = list[tuple[list[np.ndarray], list[np.ndarray]]]


def run_call(
    call: Call, x: np.ndarray, seeds: tuple[bytes, bytes], input_prg: Prg, record: bool = False
) -> tuple[np.ndarray, tuple[Channel, Channel], np.ndarray, list[View], list[Any]]:
    """Deal, expand (as the runtime does: P0 gets the correction's shared words, if any) and
    run one protocol call on x, shared by `input_prg`. Returns (the two output shares summed,
    the channels, the correction, each party's view if `record` (`record_exchanges`), the
    two parties' material)."""
    proto = protocol_for(call)
    s0, s1 = seeds
    corr = proto.deal(call, Prg.derive(s0, "op"), Prg.derive(s1, "op"))
    shared = proto.shared_words(call)
    mats = [
        proto.expand(0, call, Prg.derive(s0, "op"), corr[:shared].copy() if shared else None),
        proto.expand(1, call, Prg.derive(s1, "op"), corr),
    ]
    xs = share(np.asarray(x).astype(np.uint64), input_prg)
    views: list[View] = [[], []]

    def party(ch: Channel, p: int) -> np.ndarray:
        if record:
            record_exchanges(ch, views[p])
        return proto.run(ch, p, mats[p], xs[p])

    y0, y1, chans = run_parties(party)
    return y0 + y1, chans, corr, views, mats


def record_exchanges(ch: Channel, view: View) -> None:
    """Log each round `ch` exchanges into `view`: (copies of the arrays sent, those received)."""
    exchange = ch.exchange

    def recording(arrays):
        got = exchange(arrays)
        view.append(([np.array(a, copy=True) for a in arrays], got))
        return got

    ch.exchange = recording  # type: ignore[method-assign]
