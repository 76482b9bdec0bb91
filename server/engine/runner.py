"""One job's runner: its steps, one after another, under a lease.

The runner holds the job's lease for as long as it runs, renewing it every
third of the TTL, and makes every write to the job fenced by the lease's
epoch. When a renewal says the lease is gone — the process was paused past
the TTL, or cut off from the database that long — the running step is stopped
at once and nothing more is committed: the replica that claimed the job next
owns it, its products included.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from server.domain.errors import LeaseLostError, StepCancelledError, StepFailedError
from server.domain.job import (
    CloneJob,
    DiskProgress,
    ErrorCode,
    JobError,
    Progress,
    State,
    StepKind,
    TargetResult,
)
from server.engine.changes import JobChanges
from server.store.base import JobStore, Lease, StoreError
from server.targets.base import Target

log = logging.getLogger("clonejob.engine")

# Progress commits per job are at most this often; state changes are never held back.
PROGRESS_INTERVAL = 0.1
CLEANUP_ATTEMPTS = 3
# Pauses after each failed attempt to give a lease back.
RELEASE_RETRIES = (0.2, 1.0, 0.0)
# How long a fenced check from a step's thread waits for the store.
FENCE_TIMEOUT = 10.0

UNEXPECTED = JobError(
    code=ErrorCode.INTERNAL, reason="ENGINE_ERROR", message="the job stopped unexpectedly"
)


class StoreFence:
    """A lease's fence for the target's threads: `check` asks the store."""

    def __init__(self, runner: Runner, loop: asyncio.AbstractEventLoop) -> None:
        self._runner = runner
        self._loop = loop

    @property
    def epoch(self) -> int:
        return self._runner.epoch

    def check(self) -> None:
        runner = self._runner
        if runner.lost:
            raise LeaseLostError(runner.name)
        if runner.store.exclusive:
            # This process is the store's only writer (behind its lock file) and its
            # leases last the process: no one else can take the job over.
            return
        future = asyncio.run_coroutine_threadsafe(
            runner.store.holds(runner.name, runner.epoch), self._loop
        )
        try:
            held = future.result(FENCE_TIMEOUT)
        except Exception as error:  # unreachable store: the lease cannot be vouched for
            raise LeaseLostError(runner.name) from error
        if not held:
            runner.lose("the fenced check found the lease gone")
            raise LeaseLostError(runner.name)


class Runner:
    """Runs one leased job until it ends, the lease is lost, or the replica stops."""

    def __init__(
        self,
        changes: JobChanges,
        target: Target,
        lease: Lease,
        *,
        ttl: float,
        renew: bool = True,
    ) -> None:
        self.changes = changes
        self.store: JobStore = changes.store
        self.target = target
        self.name = lease.job.name
        self.epoch = lease.epoch
        self.ttl = ttl
        # Set to stop the running step: cancel asked, lease lost, or shutdown.
        self.cancelled = threading.Event()
        self.lost = False
        self._progress_task: asyncio.Task[None] | None = None
        self._progress_pending: Progress | None = None  # the latest report, not yet committed
        self._progress_final = asyncio.Event()  # wakes the progress commits: the step ended
        self._step_over = False
        self._last_progress = 0.0
        self._last_percent = -1
        self._stopping = False
        self._renew_lease = renew
        self._ended = False  # a terminal commit: it released the lease itself

    @property
    def ended(self) -> bool:
        """Whether this runner committed its job's end (which released the lease)."""
        return self._ended

    # -- what the worker and the change feed call --

    def cancel_step(self) -> None:
        """The job is CANCELLING: stop the running step promptly."""
        self.cancelled.set()

    def lose(self, why: str) -> None:
        if not self.lost:
            self.lost = True
            log.warning("%s: lease epoch %d lost (%s); its step stops", self.name, self.epoch, why)
        self.cancelled.set()

    def stop(self) -> None:
        """The replica stops: the step stops where it is; the next owner re-runs it."""
        self._stopping = True
        self.cancelled.set()

    # -- running --

    async def run(self) -> None:
        # A lease that lasts the process (SQLite's) has nothing to renew.
        renewal = (
            asyncio.create_task(self._renew(), name=f"lease {self.name}")
            if self._renew_lease
            else None
        )
        why = "the job ended"
        try:
            await self._run_job()
        except LeaseLostError:
            self.lose("a fenced write was refused")
        except StoreError as error:
            why = "the store failed"
            # The store could not be reached (a cut connection, a restart): the job is
            # not at fault. This runner stops; the lease is given back (or expires) and
            # the job is claimed again, here or elsewhere, re-running the step.
            self.cancelled.set()
            log.warning(
                "%s: the store failed under lease epoch %d (%s); the job will be taken up again",
                self.name,
                self.epoch,
                error,
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            if self.lost:
                return
            # A bug: end the job FAILED (cleaned up) rather than leave it running; if
            # even that fails, the lease expires and another runner takes it up again.
            log.exception("job %s stopped unexpectedly", self.name)
            try:
                await self._finish(await self.changes.fresh(self.name), UNEXPECTED)
            except Exception:
                log.exception("job %s could not be ended; its lease will expire", self.name)
        finally:
            try:
                await self._wind_up(renewal)
            finally:  # even when the replica's stop cancels the winding up
                if self.lost:
                    why = "lease lost"
                elif self._stopping:
                    why = "the replica stops"
                log.info("%s: runner of lease epoch %d ended (%s)", self.name, self.epoch, why)

    async def _wind_up(self, renewal: asyncio.Task[None] | None) -> None:
        """Stop renewing, let the last progress commit land, give the lease back."""
        if renewal is not None:
            renewal.cancel()
            await asyncio.gather(renewal, return_exceptions=True)
        if self._progress_task is not None:
            await asyncio.gather(self._progress_task, return_exceptions=True)
        if self.lost or self._ended:
            return  # nothing to give back (a terminal commit released it)
        # Given back at once (not left to expire): another worker may take it now.
        # A few tries: on SQLite a lease lasts the process, so one left unreleased
        # would keep the job until the next start.
        for pause in RELEASE_RETRIES:
            try:
                await asyncio.shield(self.store.release(self.name, self.epoch))
                return
            except StoreError:
                await asyncio.sleep(pause)
            except asyncio.CancelledError:
                return  # stopping: on PostgreSQL it expires by itself

    async def _renew(self) -> None:
        interval = self.ttl / 3
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            try:
                held = await self.store.renew(self.name, self.epoch, ttl=self.ttl)
            except StoreError as error:
                # The database clock decides; ours only says when we can no longer
                # claim the lease was renewed in time.
                if time.monotonic() - last_ok >= self.ttl:
                    self.lose(f"no renewal for {self.ttl:g} s: {error}")
                    return
                continue
            if not held:
                self.lose("a renewal found it taken or expired")
                return
            last_ok = time.monotonic()

    async def _change(self, *fns: Callable[[CloneJob], CloneJob]) -> CloneJob:
        """The job's changes under this lease, each its own revision, committed together."""
        if self.lost:
            raise LeaseLostError(self.name)
        job = await self.changes.change_all(self.name, fns, epoch=self.epoch)
        if job.state.terminal:
            self._ended = True
        return job

    async def _advance(self, *fns: Callable[[CloneJob], CloneJob]) -> CloneJob:
        """Changes of the running job; a cancelling or ended job is left as it is."""
        return await self._change(*(functools.partial(_unless_stopped, fn) for fn in fns))

    async def _run_job(self) -> None:
        # The job as the claim read it, in the transaction that took the lease: a
        # change since (a Cancel elsewhere) fails the first fenced write, which re-reads.
        job = await self.changes.get(self.name, check=False)
        if job.state is State.CANCELLING:
            await self._finish(job, None)
            return
        await self._steps()

    async def _steps(self) -> None:
        clock = self.changes.clock
        while True:
            if self.lost:
                raise LeaseLostError(self.name)
            # The cached copy, unchecked: a change it misses (a Cancel from another
            # replica) fails this runner's next write, which then re-reads the job.
            job = await self.changes.get(self.name, check=False)
            if job.state is State.CANCELLING:
                await self._finish(job, None)
                return
            if job.state.terminal:
                return
            kind = job.next_step()
            if kind is None:
                await self._advance(lambda j: j.succeed(clock()))
                continue
            if job.running_step is None:
                # The first step; each later one starts in the commit that ends the
                # one before (a step resumed after a restart is running already).
                job = await self._advance(functools.partial(_start_step, kind, clock))
                if job.state is State.CANCELLING or job.state.terminal:
                    continue
            try:
                result = await self._step(job, kind)
            except StepCancelledError:
                if self._stopping:
                    return
                await self._confirm_cancel()
                continue
            except StepFailedError as failure:
                await self._finish(await self.changes.get(self.name), failure.error)
                return
            except OSError as error:
                await self._finish(await self.changes.get(self.name), _io_error(kind, error))
                return
            # The last report (100%) and the step's end: two revisions, one commit.
            pending = await self._end_progress()
            end = functools.partial(_finish_step, result, clock)
            if pending is None:
                await self._advance(end)
            else:
                await self._advance(functools.partial(_with_progress, pending, clock), end)

    async def _confirm_cancel(self) -> None:
        """The step stopped for a cancel: the job as stored says whether one is under
        way. Were there none, the step would only stop again at once, over and over:
        the stop is taken back and the step runs again."""
        if self.lost:
            return
        job = await self.changes.fresh(self.name)
        if job.state is not State.CANCELLING and not job.state.terminal:
            log.warning(
                "%s: its step stopped for a cancel the job does not show (%s); it runs again",
                self.name,
                job.state.name,
            )
            self.cancelled.clear()

    async def _step(self, job: CloneJob, kind: StepKind) -> TargetResult:
        """Run `kind` in the target, with a log line at its start and its end (the
        chaos test reads them to check that no step runs under two leases at once)."""
        log.info("%s: step %s started under lease epoch %d", self.name, kind.value, self.epoch)
        outcome = "failed"
        try:
            result = await self._target_step(job, kind)
            outcome = "done"
            return result
        except StepCancelledError:
            outcome = "stopped" if self._stopping else "lost" if self.lost else "cancelled"
            raise
        except LeaseLostError:
            outcome = "lost"
            raise
        except asyncio.CancelledError:
            outcome = "stopped"  # the replica stops; the step's thread ends on `cancelled`
            raise
        finally:
            log.info(
                "%s: step %s ended under lease epoch %d (%s)",
                self.name,
                kind.value,
                self.epoch,
                outcome,
            )

    async def _target_step(self, job: CloneJob, kind: StepKind) -> TargetResult:
        loop = asyncio.get_running_loop()
        fence = StoreFence(self, loop)
        if kind is StepKind.PREPARING_VM_DISKS:
            # The step's start was committed just now: the first report waits out the
            # interval too (a short copy's 0% is replaced by its 100%, one commit).
            self._last_progress = time.monotonic()
            sent: Progress | None = None  # the last report handed to the loop

            def progress(
                done: int,
                total: int,
                /,
                *,
                virtual_bytes: int = 0,
                disks: tuple[DiskProgress, ...] = (),
            ) -> None:
                nonlocal sent
                percent = 100 if total <= 0 else min(100, done * 100 // total)
                value = Progress(
                    percent=percent,
                    bytes_done=done,
                    bytes_total=total,
                    virtual_bytes=virtual_bytes,
                    disks=disks,
                )
                if value == sent:
                    return  # the same report again (a copy's end, then the step's): no hop
                sent = value
                loop.call_soon_threadsafe(self._progress, value)

            return await self.target.prepare_disks(job, progress, self.cancelled, fence)
        if kind is StepKind.ADAPTING_OS:
            return await self.target.adapt_os(job, self.cancelled, fence)
        return await self.target.instantiate(job, self.cancelled, fence)

    def _progress(self, value: Progress) -> None:
        """A report of the disk copy. Committed when its percent moves, at most every
        PROGRESS_INTERVAL. A report held back is committed when the interval is up (or
        replaced by a later one), so the last before a stall — a slow disk, a hold
        between disks — is not lost; the one pending when the step ends (its 100%) is
        committed with the step's end."""
        if self._stopping or self.lost:
            return  # a copy thread still reporting after stop: nothing more is committed
        if self._progress_pending is None and value.percent == self._last_percent:
            return
        self._progress_pending, self._last_percent = value, value.percent
        if self._progress_task is None or self._progress_task.done():
            self._progress_task = asyncio.create_task(self._progress_commits())

    async def _progress_commits(self) -> None:
        clock = self.changes.clock
        while self._progress_pending is not None and not (self._stopping or self.lost):
            wait = self._last_progress + PROGRESS_INTERVAL - time.monotonic()
            if wait > 0 and not self._progress_final.is_set():
                with contextlib.suppress(TimeoutError):  # later reports replace the pending one
                    await asyncio.wait_for(self._progress_final.wait(), wait)
            if self._step_over:
                return  # the step's end commits what is pending
            value, self._progress_pending = self._progress_pending, None
            self._progress_final.clear()
            self._last_progress = time.monotonic()
            await self._progress_commit(functools.partial(_with_progress, value, clock))

    async def _end_progress(self) -> Progress | None:
        """The step ended: stop its progress commits (one under way is awaited);
        the report still pending, for the step's end to commit."""
        self._step_over = True
        self._progress_final.set()
        try:
            if self._progress_task is not None:
                await asyncio.gather(self._progress_task, return_exceptions=True)
        finally:
            self._step_over = False
            self._progress_final.clear()
        pending, self._progress_pending = self._progress_pending, None
        return pending

    async def _progress_commit(self, apply: Callable[[CloneJob], CloneJob]) -> None:
        try:
            await self._advance(apply)
        except LeaseLostError:
            self.lose("a fenced progress write was refused")
        except StoreError as error:  # progress is best effort; the step's end is not
            log.warning("%s: progress not committed: %s", self.name, error)

    async def _finish(self, job: CloneJob, error: JobError | None) -> None:
        """Delete what the job made, then end it CANCELLED (when asked) or FAILED.
        Only the lease holder deletes: the fenced check comes first."""
        if not await self.store.holds(self.name, self.epoch):
            raise LeaseLostError(self.name)
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
        clock = self.changes.clock

        def end(current: CloneJob) -> CloneJob:
            if current.state.terminal:
                return current
            now = clock()
            if current.state is State.CANCELLING and cleanup_error is None:
                return current.cancelled(now)
            return current.fail(error or UNEXPECTED, now)

        final = await self._change(end)
        log.info("job %s ended %s", job.name, final.state.name)


def _unless_stopped(fn: Callable[[CloneJob], CloneJob], job: CloneJob) -> CloneJob:
    if job.state is State.CANCELLING or job.state.terminal:
        return job
    return fn(job)


def _start_step(kind: StepKind, clock: Callable[[], Any], job: CloneJob) -> CloneJob:
    return job.start_step(kind, clock())


def _finish_step(result: TargetResult, clock: Callable[[], Any], job: CloneJob) -> CloneJob:
    return job.finish_step_and_go_on(clock(), result)


def _with_progress(value: Progress, clock: Callable[[], Any], job: CloneJob) -> CloneJob:
    if job.running_step is None or job.running_step.kind is not StepKind.PREPARING_VM_DISKS:
        return job
    return job.with_progress(value, clock())


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
