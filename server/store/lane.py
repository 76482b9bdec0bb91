"""A lane: one thread that runs blocking calls for the event loop, one at a time.

What `loop.run_in_executor` on a one-thread ThreadPoolExecutor does, with less
in between: the call and the asyncio future it settles go on a queue, and the
thread settles that future through `call_soon_threadsafe`. No concurrent Future
is made and chained to the asyncio one, which on a store's busy lanes (every
commit, every read) was a fifth of the event loop's own work.

A call whose awaiting caller was cancelled still runs (as one already started
in an executor does): a commit may have happened either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]


class Lane:
    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """`fn()` on the lane's thread; the future settles with its result or error."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._thread is None:
            self._start()
        self._calls.put((loop, future, fn))
        return future

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                # A daemon: a process that exits without closing its store is not held
                # up by it (SQLite's own journal keeps the file whole).
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()

    def shutdown(self) -> None:
        """Run what is queued, then end the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._calls.put(None)
            thread.join()

    def _work(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                return
            loop, future, fn = call
            try:
                result, error = fn(), None
            except BaseException as failure:  # handed to the awaiting caller
                result, error = None, failure
            with contextlib.suppress(RuntimeError):  # the loop closed: no one waits
                loop.call_soon_threadsafe(_settle, future, result, error)
            del call, future, fn, result, error


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
