"""A client link's outgoing messages, sent by a thread of their own and bounded."""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from mpcc.errors import PartyError

if TYPE_CHECKING:
    from mpcc.serving.admission import Identity
    from mpcc.serving.tls import TlsChannel


class Outbox:
    """Messages to one client, sent by a thread of their own: the query loops hand answers
    over and go on, so a client that reads slowly (or not at all) delays nobody else.

    It is bounded: a client that asks faster than it reads (say `info` at thousands a
    second, reading a little now and then, so no single send stalls) would otherwise grow
    the queue without limit. Past `max_messages` or `max_bytes` waiting, the link is closed."""

    MAX_MESSAGES = 256
    MAX_BYTES = 64 * 2**20

    def __init__(
        self,
        ch: TlsChannel,
        log: Any,
        max_messages: int = MAX_MESSAGES,
        max_bytes: int = MAX_BYTES,
        account: Identity | None = None,
    ) -> None:
        """`account`: the client identity whose bytes waiting these messages count towards
        too (its links together; past its bound this link is closed)."""
        self.ch, self.log = ch, log
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self.account = account
        self._q: queue.SimpleQueue[tuple[str, dict[str, Any], list[np.ndarray]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._waiting = 0  # messages posted and not yet sent (or dropped)
        self._bytes = 0
        self._thread = threading.Thread(target=self._run, name="mpcc-outbox", daemon=True)
        self._thread.start()

    def post(self, kind: str, meta: dict[str, Any], arrays: list[np.ndarray] | None = None) -> None:
        arrays = arrays or []
        size = _message_bytes(arrays)
        with self._lock:
            over = self._waiting >= self.max_messages or self._bytes + size > self.max_bytes
            if not over and self.account is not None:
                over = not self.account.hold_answer(size)
            if not over:
                self._waiting += 1
                self._bytes += size
        if over:
            if self.ch.closed is None:
                self.log.warning(
                    "closing the link to %s: it does not read its answers (%d messages, "
                    "%d bytes waiting)",
                    self.ch.peer,
                    self._waiting,
                    self._bytes,
                )
                self.ch.close("the client does not read its answers")
            return
        self._q.put((kind, meta, arrays))

    @property
    def waiting(self) -> tuple[int, int]:
        """Messages and bytes posted and not yet sent."""
        with self._lock:
            return self._waiting, self._bytes

    def close(self, timeout: float) -> None:
        """Send what is queued (within `timeout` s), then stop."""
        self._q.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            if self.ch.closed is None:
                try:
                    self.ch.send_msg(*item)
                except PartyError as e:  # the link closes itself; later items are dropped
                    self.log.info("could not send a %s to %s: %s", item[0], self.ch.peer, e)
            size = _message_bytes(item[2])
            with self._lock:
                self._waiting -= 1
                self._bytes -= size
            if self.account is not None:
                self.account.release_answer(size)


def _message_bytes(arrays: list[np.ndarray]) -> int:
    return sum(a.nbytes for a in arrays) + 256  # arrays plus a header's worth
