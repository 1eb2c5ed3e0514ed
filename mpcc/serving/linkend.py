"""What every end of a link has, whether a thread reads it (`tls.TlsChannel`) or the control
loop does (`controllink.ControlLink`): why it closed, callbacks for its closing, and the
limits on the frames it accepts."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from mpcc.serving.frameparser import FrameParser

log = logging.getLogger("mpcc.serving.link")


class LinkEnd:
    """A mixin: the class sets `_closed` (None while open), `_close_lock`, `_on_close` (a
    list) and `_parser`, and calls `_mark_closed` then `_closed_callbacks` when it closes."""

    _closed: str | None
    _close_lock: threading.Lock
    _on_close: list[Callable[[str], None]]
    _parser: FrameParser

    @property
    def closed(self) -> str | None:
        """None while open, else why it closed."""
        return self._closed

    def limit_frames(
        self,
        max_frame_bytes: int,
        max_message_bytes: int | None = None,
        max_header_bytes: int | None = None,
    ) -> None:
        """What this end accepts from now on, e.g. once the link's kind is known (see
        `FrameParser.limit`)."""
        self._parser.limit(max_frame_bytes, max_message_bytes, max_header_bytes)

    def on_close(self, fn: Callable[[str], None]) -> None:
        """Call fn(reason) once when the link closes (at once if it is closed already)."""
        with self._close_lock:
            if self._closed is None:
                self._on_close.append(fn)
                return
        fn(self._closed)

    def _mark_closed(self, reason: str) -> list[Callable[[str], None]] | None:
        """Record why the link closed; its close callbacks, or None if it was closed."""
        with self._close_lock:
            if self._closed is not None:
                return None
            self._closed = reason
            callbacks, self._on_close = self._on_close, []
        return callbacks

    @staticmethod
    def _closed_callbacks(callbacks: list[Callable[[str], None]], reason: str) -> None:
        for fn in callbacks:
            try:
                fn(reason)
            except Exception:  # noqa: BLE001 - a callback must not break closing
                log.exception("close callback failed")
