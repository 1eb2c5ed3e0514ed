"""A client link's outgoing messages, sent by a task of the control loop and bounded."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

from mpcc.errors import PartyError

if TYPE_CHECKING:
    from mpcc.serving.admission import Identity
    from mpcc.serving.controllink import ControlLink

_Item = tuple[str, dict[str, Any], list[np.ndarray]]
SEND_TOGETHER = 64  # messages waiting that one write sends at most


class Outbox:
    """Messages to one client, sent by a task of the link's control loop: the query loops
    hand answers over from their threads (`post` never blocks) and go on, so a client that
    reads slowly (or not at all) delays nobody else.

    It is bounded: a client that asks faster than it reads (say `info` at thousands a
    second, reading a little now and then, so no single send stalls) would otherwise grow
    the queue without limit. Past `max_messages` or `max_bytes` waiting, the link is closed."""

    MAX_MESSAGES = 256
    MAX_BYTES = 64 * 2**20

    def __init__(
        self,
        ch: ControlLink,
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
        self._lock = threading.Lock()
        self._waiting = 0  # messages posted and not yet sent (or dropped)
        self._bytes = 0
        self._q: deque[_Item | None] = deque()  # touched in the loop only
        self._wake: asyncio.Event | None = None  # made by the sender, in the loop
        self._done = threading.Event()
        self._fin: asyncio.Event | None = None
        ch.control.spawn(self._run(), name=f"outbox {ch.peer}")

    def post(self, kind: str, meta: dict[str, Any], arrays: list[np.ndarray] | None = None) -> None:
        """Queue a message (from any thread); closes the link instead if it is over a bound."""
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
        self.ch.control.call(self._enqueue, (kind, meta, arrays))

    @property
    def waiting(self) -> tuple[int, int]:
        """Messages and bytes posted and not yet sent."""
        with self._lock:
            return self._waiting, self._bytes

    def _enqueue(self, item: _Item | None) -> None:
        if self._done.is_set():  # the sender has stopped (the link closed as this was posted):
            if item is not None:  # what it holds of the client's bounds is given back
                self._sent(item)
            return
        self._q.append(item)
        if self._wake is not None:
            self._wake.set()

    def close(self, timeout: float) -> None:
        """From another thread: send what is queued (within `timeout` s), then stop."""
        self.ch.control.call(self._enqueue, None)
        self._done.wait(timeout)

    async def aclose(self, timeout: float) -> None:
        """From the loop: send what is queued (within `timeout` s), then stop."""
        self._enqueue(None)
        try:
            await asyncio.wait_for(self._finished().wait(), timeout)
        except TimeoutError:
            pass

    def _finished(self) -> asyncio.Event:
        """Set when the sender has stopped (made in the loop by whoever asks first)."""
        if self._fin is None:
            self._fin = asyncio.Event()
        return self._fin

    async def _run(self) -> None:
        self._wake = asyncio.Event()
        try:
            while True:
                while not self._q:
                    self._wake.clear()
                    await self._wake.wait()
                batch: list[_Item] = []  # what waits goes out together (one write)
                while self._q and self._q[0] is not None and len(batch) < SEND_TOGETHER:
                    batch.append(self._q.popleft())
                if batch and self.ch.closed is None:
                    try:
                        await self.ch.send_msgs(batch)
                    except PartyError as e:  # the link closes itself; later items are dropped
                        self.log.info("could not send to %s: %s", self.ch.peer, e)
                for item in batch:
                    self._sent(item)
                if self._q and self._q[0] is None:
                    return
        finally:
            for item in self._q:  # cancelled (the party stops): what was left is dropped
                if item is not None:
                    self._sent(item)
            self._q.clear()
            self._done.set()
            self._finished().set()

    def _sent(self, item: _Item) -> None:
        size = _message_bytes(item[2])
        with self._lock:
            self._waiting -= 1
            self._bytes -= size
        if self.account is not None:
            self.account.release_answer(size)


def _message_bytes(arrays: list[np.ndarray]) -> int:
    return sum(a.nbytes for a in arrays) + 256  # arrays plus a header's worth
