"""Progress lines on stderr for a long benchmark run."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any


class Progress:
    """Progress on stderr, shown only once a run has taken more than `after` seconds.

    One line per phase (`phase`: compiling, starting the parties, the first query, ...), and
    within a phase a status line (`update`: redrawn in place on a terminal; otherwise a line
    every `every` seconds of a phase, the first one `every` seconds into it). A phase still
    running when `after` seconds have passed is printed then, by a timer, so a long first
    phase is not silent; a run shorter than `after` prints nothing."""

    def __init__(
        self, enabled: bool, after: float = 1.0, stream: Any = None, every: float = 5.0
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.after = after
        self.every = every
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self._last = 0.0
        self._status = False  # a status line is on screen (terminal only)
        self._phase: str | None = None
        self._phase_t = 0.0  # when it began, seconds into the run
        self._phase_shown = True
        self._any = False
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        if enabled:
            self._timer = threading.Timer(after, self._show_pending)
            self._timer.daemon = True
            self._timer.start()

    def _elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def _clear_status(self) -> None:
        if self._status:
            print("\r\033[K", end="", file=self.stream, flush=True)
            self._status = False

    def _print_phase(self) -> None:
        self._clear_status()
        print(f"[{self._phase_t:6.1f} s] {self._phase}", file=self.stream, flush=True)
        self._phase_shown = self._any = True

    def _show_pending(self) -> None:
        with self._lock:
            if self.enabled and not self._phase_shown:
                self._print_phase()

    def phase(self, text: str) -> None:
        """A new phase of the run begins: one line (once the run is past `after` seconds)."""
        if not self.enabled:
            return
        with self._lock:
            self._phase, self._phase_t, self._phase_shown = text, self._elapsed(), False
            self._last = self.t0 + self._phase_t
            if self._phase_t >= self.after:
                self._print_phase()

    def update(self, text: str) -> None:
        """Where the current phase is (e.g. `query 3/10`)."""
        if not self.enabled:
            return
        with self._lock:
            now = time.perf_counter()
            if now - self.t0 < self.after or (not self.tty and now - self._last < self.every):
                return
            if not self._phase_shown and self._phase is not None:
                self._print_phase()
            self._last = now
            self._any = True
            if self.tty:
                print(f"\r\033[K{text}", end="", file=self.stream, flush=True)
                self._status = True
            else:
                print(text, file=self.stream, flush=True)

    def done(self) -> None:
        """The run is over: stop the timer, clear the status line, say how long it took."""
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            self._clear_status()
            if self.enabled and self._any:
                print(f"[{self._elapsed():6.1f} s] done", file=self.stream, flush=True)
            self.enabled = False
