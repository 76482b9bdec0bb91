"""The engine: every change to a job goes through here.

A change is computed from the stored job under that job's lock, committed to
the store, and only then published to watchers and returned to callers, so no
one ever sees a change that a crash could take back. At start the engine picks
up every job a previous process left unfinished: it re-runs the interrupted
step (each step is safe to repeat) or finishes a cancellation.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from server.domain.errors import (
    JobExistsError,
    JobFinishedError,
    JobNotFoundError,
    MigratingVmNotFoundError,
    NoCompletedCycleError,
    RequestIdReusedError,
    RevisionOutOfRangeError,
    StepCancelledError,
    StepFailedError,
)
from server.domain.job import (
    CloneJob,
    ErrorCode,
    JobError,
    Progress,
    State,
    StepKind,
    TargetResult,
    TargetSpec,
)
from server.domain.listing import ListQuery
from server.domain.names import CloneJobName, MigratingVmName
from server.engine.broadcast import Hub
from server.store.base import DuplicateJobError, JobStore
from server.targets.base import Target

log = logging.getLogger("clonejob.engine")
T = TypeVar("T")

# Committed jobs kept in memory for reads (each a few KiB).
CACHED_JOBS = 10_000
# Progress commits per job are at most this often; state changes are never held back.
PROGRESS_INTERVAL = 0.1
CLEANUP_ATTEMPTS = 3


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Sent on an idle watch: the job is still at `revision`."""

    revision: int


class ChangeObserver(Protocol):
    """Told of every committed change, in commit order; must not block or raise."""

    def on_change(self, old: CloneJob | None, new: CloneJob) -> None:
        """`old` is None for a job just created."""


@dataclass(slots=True)
class _Run:
    """What the engine holds for a job it is running."""

    cancelled: threading.Event = field(default_factory=threading.Event)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    progress_task: asyncio.Task[None] | None = None
    last_progress: float = 0.0
    last_percent: int = -1


class Engine:
    def __init__(
        self,
        store: JobStore,
        target: Target,
        *,
        max_concurrent_jobs: int = 4,
        hub: Hub | None = None,
        clock: Callable[[], datetime] = utcnow,
        observers: Sequence[ChangeObserver] = (),
    ) -> None:
        self.store = store
        self.target = target
        self.hub = hub or Hub()
        self._clock = clock
        self._slots = asyncio.Semaphore(max_concurrent_jobs)
        self._locks: dict[str, asyncio.Lock] = {}
        self._current: OrderedDict[str, CloneJob] = OrderedDict()
        self._runs: dict[str, _Run] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self._unsplittable: set[asyncio.Future[Any]] = set()
        self._observers = tuple(observers)
        self._queued = 0  # jobs waiting for a slot
        self._in_slots = 0  # jobs holding a slot

    # -- lifecycle --

    async def start(self) -> int:
        """Resume every unfinished job; returns how many."""
        unfinished = await self.store.unfinished()
        for job in unfinished:
            log.info("resuming %s from %s", job.name, job.state.name)
            self._submit(job.name)
        return len(unfinished)

    async def stop(self) -> None:
        """Stop running jobs where they are; the next start resumes them."""
        self._stopping = True
        self.hub.close()
        for run in self._runs.values():
            run.cancelled.set()  # worker threads stop copying; the restart re-runs the step
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Changes being committed finish (and are published) before the store closes.
        await asyncio.gather(*self._unsplittable, return_exceptions=True)

    @property
    def queued_jobs(self) -> int:
        """Jobs waiting for a free slot."""
        return self._queued

    @property
    def slots_in_use(self) -> int:
        """Jobs holding a slot: running their steps."""
        return self._in_slots

    # -- the calls --

    async def create(
        self,
        *,
        name: CloneJobName,
        target: TargetSpec,
        request_id: str = "",
        request_hash: str = "",
    ) -> CloneJob:
        """Store a new job and start it; a retry with the same request id gets the original."""
        if request_id:
            existing = await self.store.get_by_request_id(request_id)
            if existing is not None:
                return self._same_request(request_id, request_hash, existing)
        existing = await self.store.get(str(name))
        if existing is not None:
            raise JobExistsError(existing)
        cycle = await self.target.latest_cycle(name.parent)
        job = CloneJob.new(
            name=str(name),
            target=target,
            source_cycle=cycle,
            now=self._clock(),
            request_id=request_id,
            request_hash=request_hash,
        )
        try:
            await self._unsplit(self._insert(job))
        except DuplicateJobError as dup:  # a concurrent create won the race
            if request_id and dup.existing.request_id == request_id:
                return self._same_request(request_id, request_hash, dup.existing)
            raise JobExistsError(dup.existing) from None
        log.info("created %s (cycle %s)", job.name, cycle)
        return job

    async def _insert(self, job: CloneJob) -> None:
        await self.store.create(job)
        self.hub.publish(job)
        self._committed(None, job)
        self._submit(job.name)

    async def _unsplit(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` to its end even if the caller goes away (a client's deadline or
        disconnect cancels its handler): a change the store committed is always
        published and acted on, never left half done."""
        task = asyncio.ensure_future(work)
        self._unsplittable.add(task)
        task.add_done_callback(_settle(self._unsplittable))
        return await asyncio.shield(task)

    async def migrating_vm_exists(self, name: MigratingVmName) -> bool:
        try:
            await self.target.latest_cycle(name)
        except MigratingVmNotFoundError:
            return False
        except NoCompletedCycleError:
            return True
        return True

    @staticmethod
    def _same_request(request_id: str, request_hash: str, existing: CloneJob) -> CloneJob:
        if existing.request_hash != request_hash:
            raise RequestIdReusedError(request_id, existing)
        return existing

    async def get(self, name: str) -> CloneJob:
        """The job as last committed. This process is the store's only writer (the
        store holds a lock file), so its cache of committed jobs is never stale."""
        job = self._current.get(name)
        if job is not None:
            self._current.move_to_end(name)
            return job
        job = await self.store.get(name)
        if job is None:
            raise JobNotFoundError(name)
        self._remember(job)
        return job

    def _remember(self, job: CloneJob) -> None:
        current = self._current.get(job.name)
        if current is not None and current.revision > job.revision:
            return  # a read that raced a commit: keep the newer
        self._current[job.name] = job
        self._current.move_to_end(job.name)
        if len(self._current) > CACHED_JOBS:
            self._current.popitem(last=False)

    async def list(self, query: ListQuery) -> Sequence[CloneJob]:
        return await self.store.list(query)

    async def cancel(self, name: str) -> CloneJob:
        """CANCELLING at once; the job's task then cleans up and ends CANCELLED."""

        def request(job: CloneJob) -> CloneJob:
            if job.state in (State.SUCCEEDED, State.FAILED):
                raise JobFinishedError(job)
            return job.request_cancel(self._clock())

        job = await self._change(name, request)
        if job.state is State.CANCELLING and name not in self._runs and not self._stopping:
            self._submit(name)  # no task runs it here (yet): one finishes the cancel
        return job

    async def watch(
        self, name: str, *, after_revision: int, heartbeat_interval: float
    ) -> AsyncGenerator[CloneJob | Heartbeat, None]:
        """Every committed change after `after_revision`, once and in order.

        With `after_revision` 0 the first item is the current job. Ends after
        the job's terminal state; raises WatchClosedError at shutdown and
        WatcherTooSlowError when the reader falls behind.
        """
        sub = self.hub.subscribe(name)  # before reading, so no change falls in between
        try:
            job = await self.get(name)
            last = after_revision
            if after_revision > job.revision:
                raise RevisionOutOfRangeError(name, after_revision, 0, job.revision)
            if after_revision <= 0:
                yield job
                last = job.revision
            elif after_revision < job.revision:
                oldest = await self.store.oldest_revision(name)
                if after_revision < oldest - 1:
                    raise RevisionOutOfRangeError(name, after_revision, oldest, job.revision)
                history = await self.store.revisions(name, after=after_revision)
                if not history or history[0].revision != after_revision + 1:
                    # Compacted between the two reads: resuming would skip changes.
                    oldest = history[0].revision if history else job.revision + 1
                    raise RevisionOutOfRangeError(name, after_revision, oldest, job.revision)
                for past in history:
                    yield past
                    last = past.revision
                    if past.state.terminal:  # it may have ended after `job` was read
                        return
            if job.state.terminal and last >= job.revision:
                return
            while True:
                item = await sub.next(heartbeat_interval)
                if item is None:
                    yield Heartbeat(last)
                    continue
                if item.revision <= last:
                    continue
                yield item
                last = item.revision
                if item.state.terminal:
                    return
        finally:
            sub.close()

    # -- changes --

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    async def _change(self, name: str, fn: Callable[[CloneJob], CloneJob]) -> CloneJob:
        """Apply `fn` to the stored job, commit, then publish. The one way jobs change."""
        return await self._unsplit(self._change_locked(name, fn))

    async def _change_locked(self, name: str, fn: Callable[[CloneJob], CloneJob]) -> CloneJob:
        lock = self._lock(name)
        try:
            async with lock:
                job = await self.get(name)
                new = fn(job)
                if new is not job:
                    await self.store.update(new, expected_revision=job.revision)
                    self.hub.publish(new)
                    self._committed(job, new)
                return new
        finally:
            # Locks live while a job runs here; calls on other jobs leave none behind.
            if name not in self._tasks and not lock.locked() and self._locks.get(name) is lock:
                del self._locks[name]

    def _committed(self, old: CloneJob | None, new: CloneJob) -> None:
        self._remember(new)
        if new.state is State.CANCELLING:
            run = self._runs.get(new.name)
            if run is not None:  # the running step stops promptly
                run.cancelled.set()
                run.wake.set()
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
        for observer in self._observers:
            try:
                observer.on_change(old, new)
            except Exception:  # an observer's bug must not undo a committed change
                log.exception("observer %r failed on %s", observer, new.name)

    async def _advance(self, name: str, fn: Callable[[CloneJob], CloneJob]) -> CloneJob:
        """Like `_change`, but leaves a cancelling or ended job as it is."""

        def guarded(job: CloneJob) -> CloneJob:
            if job.state is State.CANCELLING or job.state.terminal:
                return job
            return fn(job)

        return await self._change(name, guarded)

    # -- running jobs --

    def _submit(self, name: str) -> None:
        if name in self._tasks:
            return
        run = self._runs[name] = _Run()
        task = asyncio.create_task(self._run(name, run), name=f"job {name}")
        self._tasks[name] = task

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.pop(name, None)
            self._runs.pop(name, None)
            lock = self._locks.get(name)
            if lock is not None and not lock.locked():
                del self._locks[name]
            if not t.cancelled() and t.exception() is not None:
                log.error("job %s stopped unexpectedly", name, exc_info=t.exception())

        task.add_done_callback(done)

    async def _run(self, name: str, run: _Run) -> None:
        try:
            await self._run_job(name, run)
        except Exception:
            # A bug or a store failure: end the job FAILED (cleaned up) rather than
            # leave it running with no task; if even that fails, the next start resumes it.
            log.exception("job %s stopped unexpectedly", name)
            try:
                await self._finish(await self.get(name), _UNEXPECTED)
            except Exception:
                log.exception("job %s could not be ended; it resumes at the next start", name)

    async def _run_job(self, name: str, run: _Run) -> None:
        job = await self.get(name)
        if job.state is State.CANCELLING:
            await self._finish(job, None)
            return
        if not await self._acquire_slot(run):
            await self._finish(await self.get(name), None)
            return
        self._in_slots += 1
        try:
            await self._steps(name, run)
        finally:
            self._in_slots -= 1
            self._slots.release()

    async def _acquire_slot(self, run: _Run) -> bool:
        """Wait for a free slot; False when the job is cancelled while waiting."""
        acquire = asyncio.ensure_future(self._slots.acquire())
        woken = asyncio.ensure_future(run.wake.wait())
        self._queued += 1
        try:
            await asyncio.wait({acquire, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._queued -= 1
            woken.cancel()
            if not acquire.done():
                acquire.cancel()
        if acquire.done() and not acquire.cancelled():
            if run.cancelled.is_set():
                self._slots.release()
                return False
            return True
        return False

    async def _steps(self, name: str, run: _Run) -> None:
        while True:
            job = await self.get(name)
            if job.state is State.CANCELLING:
                await self._finish(job, None)
                return
            if job.state.terminal:
                return
            kind = job.next_step()
            if kind is None:
                await self._advance(name, self._succeed)
                continue
            job = await self._advance(name, functools.partial(self._start_step, kind))
            if job.state is State.CANCELLING or job.state.terminal:
                continue
            try:
                result = await self._step(job, kind, run)
            except StepCancelledError:
                continue
            except StepFailedError as failure:
                await self._finish(await self.get(name), failure.error)
                return
            except OSError as error:
                await self._finish(await self.get(name), _io_error(kind, error))
                return
            await self._wait_progress(run)
            await self._advance(name, functools.partial(self._finish_step, result))

    def _succeed(self, job: CloneJob) -> CloneJob:
        return job.succeed(self._clock())

    def _start_step(self, kind: StepKind, job: CloneJob) -> CloneJob:
        return job.start_step(kind, self._clock())

    def _finish_step(self, result: TargetResult, job: CloneJob) -> CloneJob:
        return job.finish_step(self._clock(), result)

    async def _step(self, job: CloneJob, kind: StepKind, run: _Run) -> TargetResult:
        if kind is StepKind.PREPARING_VM_DISKS:
            loop = asyncio.get_running_loop()

            def progress(done: int, total: int) -> None:
                loop.call_soon_threadsafe(self._progress, job.name, run, done, total)

            return await self.target.prepare_disks(job, progress, run.cancelled)
        if kind is StepKind.ADAPTING_OS:
            return await self.target.adapt_os(job, run.cancelled)
        return await self.target.instantiate(job, run.cancelled)

    def _progress(self, name: str, run: _Run, done: int, total: int) -> None:
        if self._stopping:
            return  # a copy thread still reporting after stop: nothing more is committed
        percent = 100 if total <= 0 else min(100, done * 100 // total)
        now = time.monotonic()
        if run.progress_task is not None and not run.progress_task.done():
            return
        if percent == run.last_percent or (
            percent < 100 and now - run.last_progress < PROGRESS_INTERVAL
        ):
            return
        run.last_progress, run.last_percent = now, percent
        value = Progress(percent=percent, bytes_done=done, bytes_total=total)

        def apply(job: CloneJob) -> CloneJob:
            if job.running_step is None or job.running_step.kind is not StepKind.PREPARING_VM_DISKS:
                return job
            return job.with_progress(value, self._clock())

        run.progress_task = asyncio.create_task(self._progress_commit(name, apply))

    async def _progress_commit(self, name: str, apply: Callable[[CloneJob], CloneJob]) -> None:
        await self._advance(name, apply)

    @staticmethod
    async def _wait_progress(run: _Run) -> None:
        if run.progress_task is not None:
            await asyncio.gather(run.progress_task, return_exceptions=True)

    async def _finish(self, job: CloneJob, error: JobError | None) -> None:
        """Delete what the job made, then end it CANCELLED (when asked) or FAILED."""
        cleanup_error: BaseException | None = None
        for attempt in range(1, CLEANUP_ATTEMPTS + 1):
            try:
                await self.target.cleanup(job)
                cleanup_error = None
                break
            except OSError as failure:
                cleanup_error = failure
                log.warning("cleanup of %s failed (attempt %d): %s", job.name, attempt, failure)
        if cleanup_error is not None:
            error = JobError(
                code=ErrorCode.INTERNAL if error is None else error.code,
                reason="CLEANUP_FAILED" if error is None else error.reason,
                message=(error.message + "; " if error else "")
                + f"deleting what the job created failed: {cleanup_error}",
            )

        def end(current: CloneJob) -> CloneJob:
            if current.state.terminal:
                return current
            now = self._clock()
            if current.state is State.CANCELLING and cleanup_error is None:
                return current.cancelled(now)
            return current.fail(error or _UNEXPECTED, now)

        final = await self._change(job.name, end)
        log.info("job %s ended %s", job.name, final.state.name)


def _settle(tasks: set[asyncio.Future[Any]]) -> Callable[[asyncio.Future[Any]], None]:
    """A done-callback: forget the task, and consume its outcome (its caller may be gone)."""

    def done(task: asyncio.Future[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()

    return done


_UNEXPECTED = JobError(
    code=ErrorCode.INTERNAL, reason="ENGINE_ERROR", message="the job stopped unexpectedly"
)


def _io_error(kind: StepKind, error: OSError) -> JobError:
    step = kind.value.replace("_", " ")
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return JobError(
            code=ErrorCode.RESOURCE_EXHAUSTED,
            reason="TARGET_STORAGE_FULL",
            message=f"the target storage is full: no space left while {step}",
            metadata={"step": kind.value},
        )
    return JobError(
        code=ErrorCode.UNAVAILABLE,
        reason="TARGET_IO_ERROR",
        message=f"an I/O error stopped the job while {step}: {error.strerror or error}",
        metadata={"step": kind.value},
    )
