"""Committed changes: the one way a job changes, and what every replica knows of them.

A change is computed from the job as stored, committed (conditional on the
revision it was computed from, and for a runner on its lease epoch), and only
then remembered, published to this replica's watchers and told to observers.
Several replicas may change one job at once (a Cancel racing a step's end):
the loser of the race re-reads the job and computes its change again, so no
caller ever sees the conflict.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from server.domain.errors import JobNotFoundError
from server.domain.job import CloneJob
from server.domain.operation import Operation
from server.engine.broadcast import Hub
from server.store.base import ConflictError, JobStore

log = logging.getLogger("clonejob.engine")
T = TypeVar("T")

# Committed jobs kept in memory for reads (each a few KiB).
CACHED_JOBS = 10_000
# A change that keeps losing races this often gives up (it would take a storm of
# writers on one job; each attempt re-reads the job).
CHANGE_ATTEMPTS = 50


class ChangeObserver(Protocol):
    """Told of every change this replica commits, in commit order; must not block or raise."""

    def on_change(self, old: CloneJob | None, new: CloneJob) -> None:
        """`old` is None for a job just created."""


class _JobLock:
    """One job's change lock, and how many hold or await it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class JobChanges:
    """The cache of committed jobs, and the commit-then-publish path of every change."""

    def __init__(
        self,
        store: JobStore,
        hub: Hub,
        *,
        clock: Callable[[], datetime],
        observers: Sequence[ChangeObserver] = (),
    ) -> None:
        self.store = store
        self.hub = hub
        self.clock = clock
        self._observers = tuple(observers)
        self._current: OrderedDict[str, CloneJob] = OrderedDict()
        self._locks: dict[str, _JobLock] = {}
        self._hooks: list[Callable[[CloneJob | None, CloneJob], None]] = []
        # While the change feed is down, other replicas' changes go unseen: the
        # cache is not trusted (reads go to the store) until it resyncs.
        self.cache_enabled = True
        self._inflight: set[asyncio.Future[Any]] = set()

    def on_commit(self, hook: Callable[[CloneJob | None, CloneJob], None]) -> None:
        """Call `hook(old, new)` after each change this replica commits."""
        self._hooks.append(hook)

    # -- reads --

    async def get(self, name: str, *, check: bool = True) -> CloneJob:
        """The job as last committed; JobNotFoundError. Served from the cache when
        this server is the store's only writer, when the job has ended (nothing
        changes it again), or when the store's revision says the cached copy is
        current (other replicas write too: the change feed keeps the cache up to
        date, but a read must not wait for its announcement). `check=False` trusts
        the cache, for a caller whose writes are checked by revision anyway."""
        if self.cache_enabled:
            job = self._current.get(name)
            if job is not None:
                self._current.move_to_end(name)
                if (
                    not check
                    or self.store.exclusive
                    or job.state.terminal
                    or await self.store.revision(name) == job.revision
                ):
                    return job
        return await self.fresh(name)

    def current(self, name: str) -> CloneJob | None:
        """The cached job when it needs no store check to be current (this server
        writes alone, or the job has ended); else None. No await: a Get's fast path."""
        if not self.cache_enabled:
            return None
        job = self._current.get(name)
        if job is None or not (self.store.exclusive or job.state.terminal):
            return None
        self._current.move_to_end(name)
        return job

    async def fresh(self, name: str) -> CloneJob:
        """The job as the store has it now."""
        job = await self.store.get(name)
        if job is None:
            raise JobNotFoundError(name)
        return self.remember(job)

    def cached(self, name: str) -> CloneJob | None:
        return self._current.get(name)

    def remember(self, job: CloneJob) -> CloneJob:
        """Keep `job` unless a newer revision is known; returns the newest known.
        So a read never goes back behind a revision this replica has sent."""
        current = self._current.get(job.name)
        if current is not None and current.revision >= job.revision:
            return current
        self._current[job.name] = job
        self._current.move_to_end(job.name)
        if len(self._current) > CACHED_JOBS:
            self._current.popitem(last=False)
        return job

    def forget(self, name: str) -> None:
        self._current.pop(name, None)

    def forget_all(self) -> None:
        self._current.clear()

    # -- changes --

    async def create(self, job: CloneJob, *, operation: Operation | None = None) -> None:
        """Insert `job` (DuplicateJobError), with its operation if any, then publish it."""
        await self._unsplit(self._create(job, operation))

    async def _create(self, job: CloneJob, operation: Operation | None) -> None:
        await self.store.create(job, operation=operation)
        self.committed(None, job)

    async def change(
        self, name: str, fn: Callable[[CloneJob], CloneJob], *, epoch: int | None = None
    ) -> CloneJob:
        """Apply `fn` to the job, commit and publish; the job after it.

        `fn` returns its input unchanged to change nothing. With `epoch` the
        commit is fenced: LeaseLostError when that lease is gone.
        """
        return await self._unsplit(self._change_all(name, (fn,), epoch))

    async def change_all(
        self,
        name: str,
        fns: Sequence[Callable[[CloneJob], CloneJob]],
        *,
        epoch: int | None = None,
    ) -> CloneJob:
        """Apply each of `fns` in turn, each change its own revision, committed in
        one transaction (all or none) and published in order; the job after the last."""
        return await self._unsplit(self._change_all(name, fns, epoch))

    async def _unsplit(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` to its end even if the caller goes away (a client's deadline,
        a disconnect, a stopping runner): a change the store committed is always
        published and acted on, never left half done."""
        task = asyncio.ensure_future(work)
        self._inflight.add(task)
        task.add_done_callback(self._settle)
        return await asyncio.shield(task)

    def _settle(self, task: asyncio.Future[Any]) -> None:
        self._inflight.discard(task)
        if not task.cancelled():
            task.exception()  # consumed: its caller may be gone

    async def drain(self) -> None:
        """Wait for the changes under way (before the store closes)."""
        await asyncio.gather(*self._inflight, return_exceptions=True)

    async def _change_all(
        self, name: str, fns: Sequence[Callable[[CloneJob], CloneJob]], epoch: int | None
    ) -> CloneJob:
        # The lock lives while anyone holds or awaits it: dropped sooner (when the
        # holder leaves before a waiter has woken), a newcomer would make a second
        # lock and change the job beside the waiter.
        entry = self._locks.get(name)
        if entry is None:
            entry = self._locks[name] = _JobLock()
        entry.users += 1
        try:
            async with entry.lock:  # one change at a time per job in this replica
                # A runner's write is fenced and checked by revision: its cached copy
                # needs no check first (a stale one fails the write and is re-read).
                job = await self.get(name, check=epoch is None)
                for _ in range(CHANGE_ATTEMPTS):
                    chain: list[tuple[CloneJob, CloneJob]] = []  # (old, new)
                    current = job
                    for fn in fns:
                        new = fn(current)
                        if new is not current:
                            chain.append((current, new))
                            current = new
                    if not chain:
                        return job
                    failure = await self._write_chain(chain, epoch)
                    if failure is None:
                        return current
                    if not isinstance(failure, ConflictError):
                        raise failure
                    # Another replica changed it: the chain is computed again from it.
                    job = await self.fresh(name)
                raise ConflictError(f"{name} kept changing under {CHANGE_ATTEMPTS} attempts")
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[name]

    async def _write_chain(
        self, chain: list[tuple[CloneJob, CloneJob]], epoch: int | None
    ) -> BaseException | None:
        """Commit the chain's changes (all or none), then publish each in order; the
        error that refused them, if any."""
        first = chain[0][0]
        try:
            if len(chain) == 1:
                await self.store.update(chain[0][1], expected_revision=first.revision, epoch=epoch)
            else:
                # One commit: each change is computed from the one before it, so none
                # may land over a revision that another writer made.
                await self.store.update_chain(
                    [new for _, new in chain], expected_revision=first.revision, epoch=epoch
                )
        except Exception as error:
            return error
        for old, new in chain:
            self.committed(old, new)
        return None

    def committed(self, old: CloneJob | None, new: CloneJob) -> None:
        """A change this replica committed: remember, publish, tell."""
        self.remember(new)
        self.hub.publish(new)
        if old is None or old.state is not new.state:
            before = "none" if old is None else old.state.name
            log.info(
                "%s: %s -> %s (revision %d)",
                new.name,
                before,
                new.state.name,
                new.revision,
                extra={
                    "job": new.name,
                    "old_state": before,
                    "new_state": new.state.name,
                    "revision": new.revision,
                },
            )
        for hook in self._hooks:
            hook(old, new)
        for observer in self._observers:
            try:
                observer.on_change(old, new)
            except Exception:  # an observer's bug must not undo a committed change
                log.exception("observer %r failed on %s", observer, new.name)
