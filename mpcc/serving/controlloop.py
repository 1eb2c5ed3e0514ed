"""The control plane's event loop: one asyncio loop per party process, in a thread of its own.

Client links (requests, `info`, `mpcc cluster status`) and the owner's deploy links run on
it, one task each, so an open link costs the party no thread (`controllink.ControlLink`). The
hot links -- P0<->P1 and the dealer's material -- stay on their synchronous `TlsChannel`s.
Work that would hold the loop up (deploy staging: plan verification, file writes, fsync)
goes to a small executor of its own (`blocking`), whose threads start only when used.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
BLOCKING_WORKERS = 2  # threads for blocking control-plane work (deploys), started on demand


class ControlLoop:
    """An asyncio event loop running in a daemon thread, with a small executor for the
    blocking work its tasks hand off."""

    def __init__(self, name: str, log: logging.Logger) -> None:
        self.log = log
        self.loop = asyncio.new_event_loop()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            BLOCKING_WORKERS, thread_name_prefix=f"mpcc-{name}-work"
        )
        self._tasks: set[asyncio.Task] = set()
        self._thread = threading.Thread(target=self._run, name=f"mpcc-{name}-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def in_loop(self) -> bool:
        """Whether the caller runs in the loop's thread."""
        return threading.current_thread() is self._thread

    def spawn(
        self,
        coro: Coroutine[Any, Any, None],
        name: str | None = None,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        """Run a link's coroutine as a task of the loop (from any thread); its exceptions
        are logged, never propagated. If the loop has closed (the party stopped), the
        coroutine is dropped unrun and `on_drop` called: e.g. to close the link, which
        would otherwise keep its socket and its connection slot until the process ends."""

        def drop() -> None:
            coro.close()
            if on_drop is not None:
                on_drop()

        def start() -> None:
            if self.loop.is_closed():  # closed after `spawn` looked (`call` runs us here)
                drop()
                return
            task = self.loop.create_task(self._guard(coro), name=name)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        if self.loop.is_closed():
            drop()
            return
        self.call(start)

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - one link's bug must not stop the loop
            self.log.exception("a control link failed")

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call `fn(*args)` in the loop's thread (at once if the caller is in it)."""
        if self.in_loop:
            fn(*args)
            return
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed (the party stopped): no one else runs it
            fn(*args)

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking function in the control plane's executor and await its result."""
        return await self.loop.run_in_executor(self._pool, fn, *args)

    def close(self, timeout: float = 2.0) -> None:
        """Cancel the tasks still running (their links close), stop the loop, join it."""
        if self.loop.is_closed():
            return

        async def cancel_all() -> None:
            tasks = [t for t in self._tasks if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=timeout)

        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(timeout + 1)
            except (concurrent.futures.TimeoutError, RuntimeError):
                self.log.warning("control links did not end within %g s", timeout)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if not self._thread.is_alive():
            self.loop.close()
