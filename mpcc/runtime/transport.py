"""How parties talk: one interface, counted bytes and rounds, and an in-process implementation.

A *round* is one `exchange`: both compute parties send a message and wait for the peer's.
Byte counts are payload bytes (the arrays' `nbytes`), the same quantity the compiler's cost
model predicts; framing and TLS overhead are the network transport's business.

Observers (`ChannelObserver`) see every message sent and received, with the time spent
waiting for it: the benchmark's clocks and the tests of what each party sees use them.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass

import numpy as np

from mpcc.errors import PartyError

DEFAULT_TIMEOUT_S = 30.0


@dataclass
class Traffic:
    """What one endpoint has sent and received so far."""

    bytes_sent: int = 0
    bytes_received: int = 0
    rounds: int = 0
    messages_sent: int = 0

    def snapshot(self) -> Traffic:
        return Traffic(self.bytes_sent, self.bytes_received, self.rounds, self.messages_sent)

    def since(self, earlier: Traffic) -> Traffic:
        return Traffic(
            self.bytes_sent - earlier.bytes_sent,
            self.bytes_received - earlier.bytes_received,
            self.rounds - earlier.rounds,
            self.messages_sent - earlier.messages_sent,
        )


def _contiguous(a: np.ndarray) -> np.ndarray:
    """A C-contiguous array of the same shape (0-d included, unlike np.ascontiguousarray)."""
    a = np.asarray(a)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


class ChannelObserver:
    """Sees a channel's messages: the arrays, as sent or as received. Read them during the
    call (copy what must be kept): the sender may reuse its arrays afterwards."""

    def sent(self, channel: Channel, arrays: list[np.ndarray]) -> None:
        """A message left through `channel`."""

    def received(self, channel: Channel, arrays: list[np.ndarray], waited_s: float) -> None:
        """A message arrived on `channel` after `waited_s` seconds inside receive."""


class _Abort:
    def __init__(self, reason: str) -> None:
        self.reason = reason


class Channel:
    """One endpoint of a link to a single peer. Subclasses implement `_put` and `_get`."""

    def __init__(self, name: str, peer: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.name = name
        self.peer = peer
        self.timeout = timeout
        self.traffic = Traffic()
        self.observers: list[ChannelObserver] = []

    def send(self, arrays: list[np.ndarray]) -> None:
        """Send one message (a list of arrays) to the peer."""
        arrays = [_contiguous(a) for a in arrays]
        self._put(arrays)
        self.traffic.bytes_sent += sum(a.nbytes for a in arrays)
        self.traffic.messages_sent += 1
        for o in self.observers:
            o.sent(self, arrays)

    def recv(self) -> list[np.ndarray]:
        """Receive the peer's next message; raises PartyError on timeout or abort."""
        if not self.observers:
            arrays = self._get()
        else:
            t0 = time.perf_counter()
            arrays = self._get()
            waited = time.perf_counter() - t0
            for o in self.observers:
                o.received(self, arrays, waited)
        self.traffic.bytes_received += sum(a.nbytes for a in arrays)
        return arrays

    def exchange(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """One round: send our arrays, receive the peer's arrays of the same shapes and types."""
        self.send(arrays)
        got = self.recv()
        self.traffic.rounds += 1
        if len(got) != len(arrays) or any(
            g.shape != a.shape or g.dtype != a.dtype for g, a in zip(got, arrays, strict=True)
        ):
            raise PartyError(f"{self.peer} answered a round with a message of another layout")
        return got

    def abort(self, reason: str) -> None:
        """Tell the peer that this side has failed, so it stops waiting at once."""

    def _put(self, arrays: list[np.ndarray]) -> None:
        raise NotImplementedError

    def _get(self) -> list[np.ndarray]:
        raise NotImplementedError


class QueueChannel(Channel):
    """In-process endpoint over two queues (threads in one process)."""

    def __init__(
        self,
        name: str,
        peer: str,
        inbox: queue.SimpleQueue,
        outbox: queue.SimpleQueue,
        timeout: float = DEFAULT_TIMEOUT_S,
        copy: bool = True,
    ) -> None:
        super().__init__(name, peer, timeout)
        self._inbox = inbox
        self._outbox = outbox
        self._copy = copy

    def _put(self, arrays: list[np.ndarray]) -> None:
        # Copy, as a wire would: the receiver must never alias the sender's buffers (unless
        # the sender gives its arrays away: see `local_link`).
        self._outbox.put([a.copy() for a in arrays] if self._copy else list(arrays))

    def _get(self) -> list[np.ndarray]:
        try:
            msg = self._inbox.get(timeout=self.timeout)
        except queue.Empty:
            raise PartyError(f"{self.peer} sent nothing for {self.timeout:g} s") from None
        if isinstance(msg, _Abort):
            raise PartyError(f"{self.peer} failed: {msg.reason}")
        return msg

    def abort(self, reason: str) -> None:
        self._outbox.put(_Abort(reason))


def local_link(
    a: str, b: str, timeout: float = DEFAULT_TIMEOUT_S, *, copy: bool = True
) -> tuple[Channel, Channel]:
    """A connected pair of in-process channels: (a's end, b's end). With `copy=False` a
    message's arrays pass as they are: for senders that give every array they send away
    (the dealer's fresh bundles), so a query's corrections are not held twice."""
    ab: queue.SimpleQueue = queue.SimpleQueue()  # C-implemented: a faster hand-off per round
    ba: queue.SimpleQueue = queue.SimpleQueue()
    return QueueChannel(a, b, ba, ab, timeout, copy), QueueChannel(b, a, ab, ba, timeout, copy)
