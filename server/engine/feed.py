"""The change feed, as one replica hears it: other replicas' commits reach this
replica's watchers, its cache and its runners.

The store announces each committed change (job name and revision, and whether
the job may need a worker) on one listening connection per replica. For a job
this replica cares about — cached, watched or run here — the feed reads the
job from the store once, however many watch it, and publishes it to the one
in-process broadcast. After the feed reconnects, everything it cares about is
read again (watchers fill any gap from the store's revisions), and the cache,
which may have missed changes, starts over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from server.domain.errors import JobNotFoundError
from server.domain.job import State
from server.engine.changes import JobChanges
from server.engine.worker import Worker
from server.store.base import StoreError

log = logging.getLogger("clonejob.engine")


class ChangeFeed:
    """The store's ChangeListener for one replica."""

    def __init__(
        self,
        changes: JobChanges,
        worker: Worker | None,
        *,
        on_available: Callable[[bool], None] = lambda available: None,
    ) -> None:
        self._changes = changes
        self._worker = worker
        self._on_available = on_available
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self.available = True

    def start(self) -> None:
        self._task = asyncio.create_task(self._read_loop(), name="change feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # -- ChangeListener --

    def on_change(self, name: str, revision: int, claimable: bool) -> None:
        if claimable and self._worker is not None:
            self._worker.poke()
        known = self._changes.cached(name)
        if known is not None and known.revision >= revision:
            return  # committed here, or already read
        if not self._cares(name):
            # Only cached: drop the stale copy rather than read a job no one follows.
            self._changes.forget(name)
            return
        self._enqueue(name)

    def on_resync(self) -> None:
        changes = self._changes
        changes.forget_all()
        changes.cache_enabled = True
        for name in changes.hub.names():
            self._enqueue(name)
        if self._worker is not None:
            for name in self._worker.running_names():
                self._enqueue(name)
            self._worker.poke()

    def on_available(self, available: bool) -> None:
        if not available:
            self._changes.cache_enabled = False  # changes go unheard until the resync
        if available is not self.available:
            self.available = available
            log.warning("the job store is %s", "reachable again" if available else "unreachable")
            self._on_available(available)

    # -- reading --

    def _cares(self, name: str) -> bool:
        if self._changes.hub.watched(name):
            return True
        return self._worker is not None and self._worker.runner(name) is not None

    def _enqueue(self, name: str) -> None:
        if name not in self._queued:
            self._queued.add(name)
            self._queue.put_nowait(name)

    async def _read_loop(self) -> None:
        changes = self._changes
        while True:
            name = await self._queue.get()
            self._queued.discard(name)
            before = changes.cached(name)
            try:
                job = await changes.fresh(name)
            except (StoreError, JobNotFoundError) as error:
                log.debug("change feed: reading %s failed: %s", name, error)
                continue
            if before is None or job.revision > before.revision:
                changes.hub.publish(job)
            if job.state is State.CANCELLING and self._worker is not None:
                runner = self._worker.runner(name)
                if runner is not None:
                    runner.cancel_step()
