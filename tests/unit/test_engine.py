"""Tests for server.engine: running jobs, cancelling, recovering and watching.

The engine runs on the real SQLite store with a FakeTarget whose steps block
until the test releases them (or the job is cancelled), so every interleaving
here is chosen by the test, not by timing.
"""

from __future__ import annotations

import asyncio
import errno
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import pytest

from server.domain.errors import (
    JobExistsError,
    JobFinishedError,
    JobNotFoundError,
    LeaseLostError,
    RequestIdReusedError,
    RevisionOutOfRangeError,
    StepCancelledError,
    StepFailedError,
    WatchClosedError,
    WatcherTooSlowError,
)
from server.domain.job import (
    CloneJob,
    ErrorCode,
    JobError,
    Progress,
    State,
    StepKind,
    TargetKind,
    TargetResult,
    TargetSpec,
)
from server.domain.names import CloneJobName, MigratingVmName
from server.engine import Engine, Heartbeat, Hub, worker
from server.store.base import ClaimResult, StoreError
from server.store.sqlite import SqliteJobStore
from server.targets.base import Fence, ProgressFn

PARENT = "projects/p/locations/l/sources/s/migratingVms/vm"
VM_PLAN = TargetKind.VM.steps
WAIT = 10.0  # a hung test fails after this long instead of at the global timeout
QUIET = 60.0  # a heartbeat interval no test reaches
RESULTS = {
    StepKind.PREPARING_VM_DISKS: TargetResult(boot_option="EFI", disk_uris=((0, "disk-0"),)),
    StepKind.ADAPTING_OS: TargetResult(boot_option="EFI", license_type="PAYG"),
    StepKind.INSTANTIATING_MIGRATED_VM: TargetResult(
        boot_option="EFI", license_type="PAYG", disk_uris=((0, "disk-0"),)
    ),
}


def job_name(job_id: str) -> str:
    return f"{PARENT}/cloneJobs/{job_id}"


def spec(kind: TargetKind = TargetKind.VM) -> TargetSpec:
    return TargetSpec(kind=kind, project="p", zone="z", vm_name="vm", machine_type="n2")


async def within(awaitable: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(awaitable, WAIT)


class HookedStore(SqliteJobStore):
    """The SQLite store, with a hook the test can run inside oldest_revision(), and
    lease renewals the test can hold back (as a paused or cut-off replica's are)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.on_oldest_revision: Callable[[], Awaitable[None]] | None = None
        self.renewals_held = False
        self.renewals: list[tuple[str, int]] = []
        self.claims_only_for: str | None = None

    async def claim(
        self, owner: str, *, limit: int, ttl: float, cancelling: bool = False
    ) -> ClaimResult:
        if self.claims_only_for not in (None, owner):
            return ClaimResult(leases=[])
        return await super().claim(owner, limit=limit, ttl=ttl, cancelling=cancelling)

    async def renew(self, name: str, epoch: int, *, ttl: float) -> bool:
        self.renewals.append((name, epoch))
        if self.renewals_held:
            raise StoreError("renewals held by the test")
        return await super().renew(name, epoch, ttl=ttl)

    async def oldest_revision(self, name: str) -> int:
        hook, self.on_oldest_revision = self.on_oldest_revision, None
        if hook is not None:
            await hook()
        return await super().oldest_revision(name)


class FakeTarget:
    """A Target whose steps block on events the test sets.

    A blocked step ends when the test releases it, or with StepCancelledError
    when the engine sets the job's `cancelled` event.
    """

    def __init__(self, store: SqliteJobStore) -> None:
        self.store = store
        self.block = True
        self.failures: dict[StepKind, BaseException] = {}
        self.progress_reports: list[tuple[int, int]] = []
        self.cleanup_errors: list[OSError] = []
        self.hold_cleanup: set[str] = set()
        self.calls: list[tuple[str, StepKind]] = []
        self.cancel_seen: list[tuple[str, StepKind]] = []
        self.cleanup_calls: list[str] = []
        self.cleanups_done: list[str] = []
        self.states_at_cleanup: list[State] = []
        self._started: defaultdict[tuple[str, StepKind, int], asyncio.Event] = defaultdict(
            asyncio.Event
        )
        self._gates: defaultdict[tuple[str, StepKind], asyncio.Event] = defaultdict(asyncio.Event)
        self._cleanup_started: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._cancel_seen_events: defaultdict[tuple[str, StepKind], asyncio.Event] = (
            defaultdict(asyncio.Event)
        )
        self._cleanup_gates: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        # Threads that wait for a job's `cancelled` event, as a real copy would.
        self._pool = ThreadPoolExecutor(64, thread_name_prefix="fake-target")
        self._cancel_events: list[threading.Event] = []
        self._waiters: list[asyncio.Future[Any]] = []

    # -- what the test does --

    async def started(self, name: str, kind: StepKind, attempt: int = 1) -> None:
        """Wait until `kind` of `name` has started for the `attempt`-th time."""
        await within(self._started[(name, kind, attempt)].wait())

    async def step_cancelled(self, name: str, kind: StepKind) -> None:
        """Wait until a blocked `kind` of `name` has been stopped by its `cancelled`."""
        await within(self._cancel_seen_events[(name, kind)].wait())

    def release(self, name: str, kind: StepKind) -> None:
        self._gates[(name, kind)].set()

    async def cleanup_started(self, name: str) -> None:
        await within(self._cleanup_started[name].wait())

    def release_cleanup(self, name: str) -> None:
        self._cleanup_gates[name].set()

    def steps_of(self, name: str) -> list[StepKind]:
        return [kind for n, kind in self.calls if n == name]

    async def close(self) -> None:
        for event in self._cancel_events:
            event.set()  # every job has ended: this only frees the waiting threads
        await asyncio.gather(*self._waiters, return_exceptions=True)
        self._pool.shutdown(wait=True)

    # -- the Target protocol --

    async def latest_cycle(self, migrating_vm: MigratingVmName) -> str:
        return "cycle-1"

    async def preflight(self, job: CloneJob) -> None:
        return None

    async def prepare_disks(
        self, job: CloneJob, progress: ProgressFn, cancelled: threading.Event, fence: Fence
    ) -> TargetResult:
        return await self._step(job, StepKind.PREPARING_VM_DISKS, cancelled, progress)

    async def adapt_os(
        self, job: CloneJob, cancelled: threading.Event, fence: Fence
    ) -> TargetResult:
        return await self._step(job, StepKind.ADAPTING_OS, cancelled)

    async def instantiate(
        self, job: CloneJob, cancelled: threading.Event, fence: Fence
    ) -> TargetResult:
        return await self._step(job, StepKind.INSTANTIATING_MIGRATED_VM, cancelled)

    async def cleanup(self, job: CloneJob) -> None:
        self.cleanup_calls.append(job.name)
        stored = await self.store.get(job.name)
        assert stored is not None
        self.states_at_cleanup.append(stored.state)
        self._cleanup_started[job.name].set()
        if job.name in self.hold_cleanup:
            await self._cleanup_gates[job.name].wait()
        if self.cleanup_errors:
            raise self.cleanup_errors.pop(0)
        self.cleanups_done.append(job.name)

    async def _step(
        self,
        job: CloneJob,
        kind: StepKind,
        cancelled: threading.Event,
        progress: ProgressFn | None = None,
    ) -> TargetResult:
        key = (job.name, kind)
        self.calls.append(key)
        self._cancel_events.append(cancelled)
        self._started[(*key, self.calls.count(key))].set()
        loop = asyncio.get_running_loop()
        if progress is not None:
            for done, total in self.progress_reports:
                await loop.run_in_executor(self._pool, progress, done, total)
        failure = self.failures.get(kind)
        if failure is not None:
            raise failure
        if self.block:
            gate = self._gates[key]
            seen = loop.run_in_executor(self._pool, cancelled.wait)
            self._waiters.append(seen)
            opened: asyncio.Future[Any] = asyncio.ensure_future(gate.wait())
            waiting: set[asyncio.Future[Any]] = {seen, opened}
            try:
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                opened.cancel()
            if not gate.is_set():
                self.cancel_seen.append(key)
                self._cancel_seen_events[key].set()
                raise StepCancelledError()
        return RESULTS[kind]


class MakeEngine(Protocol):
    async def __call__(
        self, *, max_concurrent_jobs: int = ..., buffer_limit: int = ..., start: bool = ...
    ) -> Engine: ...


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[HookedStore]:
    store = HookedStore(tmp_path / "db.sqlite")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def target(store: HookedStore) -> AsyncIterator[FakeTarget]:
    fake = FakeTarget(store)
    try:
        yield fake
    finally:
        await fake.close()


@pytest.fixture
async def make_engine(store: HookedStore, target: FakeTarget) -> AsyncIterator[MakeEngine]:
    made: list[Engine] = []

    async def make(
        *, max_concurrent_jobs: int = 4, buffer_limit: int = 1024, start: bool = True
    ) -> Engine:
        engine = Engine(
            store, target, max_concurrent_jobs=max_concurrent_jobs, hub=Hub(buffer_limit)
        )
        made.append(engine)
        if start:
            assert await engine.start() >= 0
        return engine

    try:
        yield make
    finally:
        for engine in made:
            await engine.stop()


@pytest.fixture
async def engine(make_engine: MakeEngine) -> Engine:
    return await make_engine()


async def create(engine: Engine, job_id: str, kind: TargetKind = TargetKind.VM) -> CloneJob:
    return await engine.create(
        name=CloneJobName.parse(job_name(job_id)),
        target=spec(kind),
        request_id="",
        request_hash="",
    )


async def collect(watch: AsyncIterator[CloneJob | Heartbeat]) -> list[CloneJob]:
    items: list[CloneJob] = []
    async for item in watch:
        assert isinstance(item, CloneJob), item
        items.append(item)
    return items


async def final(engine: Engine, name: str) -> CloneJob:
    """Wait for the job's terminal state through a watch."""
    watch = engine.watch(name, after_revision=0, heartbeat_interval=QUIET)
    items: list[CloneJob] = await within(collect(watch))
    assert items[-1].state.terminal
    return items[-1]


async def run_to(target: FakeTarget, name: str, kind: StepKind) -> None:
    """Release every step before `kind`, and wait until `kind` has started."""
    for earlier in VM_PLAN[: VM_PLAN.index(kind)]:
        await target.started(name, earlier)
        target.release(name, earlier)
    await target.started(name, kind)


async def release_from(target: FakeTarget, name: str, kind: StepKind) -> None:
    """Release `kind`, which has started, and every later step once it has started."""
    target.release(name, kind)
    for later in VM_PLAN[VM_PLAN.index(kind) + 1 :]:
        await target.started(name, later)
        target.release(name, later)


def assert_contiguous(items: list[CloneJob]) -> None:
    revisions = [j.revision for j in items]
    assert revisions == list(range(revisions[0], revisions[0] + len(revisions)))


# -- running --


async def test_engine_runs_every_step_in_order_to_succeeded(
    engine: Engine, target: FakeTarget, store: HookedStore
) -> None:
    job = await create(engine, "all-steps")
    assert (job.state, job.revision, job.source_cycle) == (State.PENDING, 1, "cycle-1")
    watch = engine.watch(job.name, after_revision=0, heartbeat_interval=QUIET)
    first = await within(anext(watch))
    assert first == job  # the current job comes first
    collector = asyncio.create_task(collect(watch))
    for kind in VM_PLAN:
        await target.started(job.name, kind)
        assert target.steps_of(job.name) == list(VM_PLAN[: VM_PLAN.index(kind) + 1])
        running = await engine.get(job.name)
        assert running.state is kind.state
        assert running.running_step is not None and running.running_step.kind is kind
        target.release(job.name, kind)
    items = [first, *await within(collector)]

    done = await engine.get(job.name)
    assert done.state is State.SUCCEEDED
    assert items[-1] == done
    assert [j.revision for j in items] == list(range(1, done.revision + 1))
    assert items == list(await store.revisions(job.name, after=0))
    assert [s.kind for s in done.steps] == list(VM_PLAN)
    assert all(s.end_time is not None for s in done.steps)
    assert done.result == RESULTS[StepKind.INSTANTIATING_MIGRATED_VM]
    assert done.end_time is not None and done.end_time >= done.create_time
    assert target.steps_of(job.name) == list(VM_PLAN)
    assert target.cleanup_calls == []
    assert engine.hub.open_subscriptions == 0


async def test_engine_disks_only_job_runs_one_step(engine: Engine, target: FakeTarget) -> None:
    target.block = False
    job = await create(engine, "disks", TargetKind.DISKS)
    done = await final(engine, job.name)
    assert done.state is State.SUCCEEDED
    assert target.steps_of(job.name) == [StepKind.PREPARING_VM_DISKS]
    assert done.result == RESULTS[StepKind.PREPARING_VM_DISKS]


async def test_engine_reports_step_progress(engine: Engine, target: FakeTarget) -> None:
    target.progress_reports = [(50, 100)]
    job = await create(engine, "progress")
    watch = engine.watch(job.name, after_revision=0, heartbeat_interval=QUIET)
    collector = asyncio.create_task(collect(watch))
    await run_to(target, job.name, StepKind.ADAPTING_OS)
    await release_from(target, job.name, StepKind.ADAPTING_OS)
    items = await within(collector)
    reported = [
        j for j in items if j.progress == Progress(percent=50, bytes_done=50, bytes_total=100)
    ]
    assert len(reported) == 1
    assert reported[0].running_step is not None
    assert reported[0].running_step.kind is StepKind.PREPARING_VM_DISKS
    assert_contiguous(items)
    assert items[-1].progress is None


async def test_engine_create_existing_name_raises(engine: Engine, target: FakeTarget) -> None:
    job = await create(engine, "twice")
    with pytest.raises(JobExistsError) as caught:
        await create(engine, "twice")
    assert caught.value.existing.name == job.name


async def test_engine_create_retry_with_request_id(engine: Engine, target: FakeTarget) -> None:
    request_id = "6f1c2a3e-8b4d-4c5e-9f60-7a8b9c0d1e2f"
    first = await engine.create(
        name=CloneJobName.parse(job_name("rid")),
        target=spec(),
        request_id=request_id,
        request_hash="h1",
    )
    again = await engine.create(
        name=CloneJobName.parse(job_name("rid-other")),
        target=spec(),
        request_id=request_id,
        request_hash="h1",
    )
    assert again.name == first.name
    with pytest.raises(RequestIdReusedError):
        await engine.create(
            name=CloneJobName.parse(job_name("rid")),
            target=spec(),
            request_id=request_id,
            request_hash="h2",
        )
    with pytest.raises(JobNotFoundError):
        await engine.get(job_name("rid-other"))


async def test_engine_get_missing_raises(engine: Engine) -> None:
    with pytest.raises(JobNotFoundError):
        await engine.get(job_name("missing"))


# -- cancelling --


@pytest.mark.parametrize("kind", VM_PLAN)
async def test_engine_cancel_blocked_step_ends_cancelled(
    engine: Engine, target: FakeTarget, kind: StepKind
) -> None:
    job = await create(engine, "cancel-me")
    await run_to(target, job.name, kind)
    before = await engine.get(job.name)
    assert before.state is kind.state
    cancelling = await within(engine.cancel(job.name))  # while the step is still blocked
    assert cancelling.state is State.CANCELLING
    assert cancelling.revision == before.revision + 1
    done = await final(engine, job.name)
    assert done.state is State.CANCELLED
    assert done.error is None
    assert target.cancel_seen == [(job.name, kind)]
    assert target.cleanup_calls == [job.name]
    assert target.states_at_cleanup == [State.CANCELLING]
    assert target.steps_of(job.name) == list(VM_PLAN[: VM_PLAN.index(kind) + 1])
    assert done.steps[-1].kind is kind
    assert all(s.end_time is not None for s in done.steps)
    assert done.running_step is None
    assert await engine.cancel(job.name) == done  # a repeated cancel changes nothing


async def test_engine_step_stopped_for_a_cancel_the_job_does_not_show_runs_again(
    engine: Engine, target: FakeTarget
) -> None:
    # A runner told to cancel while the stored job is not CANCELLING (the state
    # CI once reached, when a chain's change landed over a Cancel's revision)
    # must not stop its step over and over: it takes the stop back and goes on.
    job = await create(engine, "not-cancelled")
    await run_to(target, job.name, StepKind.ADAPTING_OS)
    runner = engine.worker.runner(job.name)
    assert runner is not None
    runner.cancel_step()
    await target.step_cancelled(job.name, StepKind.ADAPTING_OS)
    await target.started(job.name, StepKind.ADAPTING_OS, attempt=2)
    assert not runner.cancelled.is_set()  # else the step would stop again at once
    await release_from(target, job.name, StepKind.ADAPTING_OS)
    done = await final(engine, job.name)
    assert done.state is State.SUCCEEDED
    assert target.steps_of(job.name) == [
        StepKind.PREPARING_VM_DISKS,
        StepKind.ADAPTING_OS,
        StepKind.ADAPTING_OS,
        StepKind.INSTANTIATING_MIGRATED_VM,
    ]


async def test_engine_cancel_twice_while_cancelling_returns_cancelling(
    engine: Engine, target: FakeTarget
) -> None:
    job = await create(engine, "twice")
    await target.started(job.name, StepKind.PREPARING_VM_DISKS)
    target.hold_cleanup.add(job.name)
    first = await engine.cancel(job.name)
    await target.cleanup_started(job.name)
    second = await engine.cancel(job.name)
    assert second == first
    assert second.state is State.CANCELLING
    target.release_cleanup(job.name)
    assert (await final(engine, job.name)).state is State.CANCELLED
    assert target.cleanup_calls == [job.name]


@pytest.mark.parametrize("ending", [State.SUCCEEDED, State.FAILED])
async def test_engine_cancel_of_ended_job_raises(
    engine: Engine, target: FakeTarget, ending: State
) -> None:
    target.block = False
    if ending is State.FAILED:
        target.failures[StepKind.ADAPTING_OS] = StepFailedError(
            JobError(code=ErrorCode.INTERNAL, reason="X", message="x")
        )
    job = await create(engine, "ended")
    done = await final(engine, job.name)
    assert done.state is ending
    with pytest.raises(JobFinishedError) as caught:
        await engine.cancel(job.name)
    assert caught.value.job == done
    assert await engine.get(job.name) == done


async def test_engine_cancel_missing_job_raises(engine: Engine) -> None:
    with pytest.raises(JobNotFoundError):
        await engine.cancel(job_name("missing"))


# -- failing --


@pytest.mark.parametrize("kind", VM_PLAN)
async def test_engine_step_failure_cleans_up_then_fails(
    engine: Engine, target: FakeTarget, kind: StepKind
) -> None:
    error = JobError(
        code=ErrorCode.FAILED_PRECONDITION,
        reason="UNBOOTABLE_DISK",
        message="no bootable disk",
        metadata={"disk": "0"},
    )
    target.failures[kind] = StepFailedError(error)
    job = await create(engine, "fails")
    for earlier in VM_PLAN[: VM_PLAN.index(kind)]:
        await target.started(job.name, earlier)
        target.release(job.name, earlier)
    done = await final(engine, job.name)
    assert done.state is State.FAILED
    assert done.error == error
    assert target.cleanup_calls == [job.name]
    assert target.states_at_cleanup == [kind.state]  # cleaned up before it was FAILED
    assert target.steps_of(job.name) == list(VM_PLAN[: VM_PLAN.index(kind) + 1])
    assert done.steps[-1].kind is kind
    assert done.steps[-1].end_time == done.end_time


@pytest.mark.parametrize("kind", VM_PLAN)
@pytest.mark.parametrize(
    ("number", "reason", "code"),
    [
        (errno.ENOSPC, "TARGET_STORAGE_FULL", ErrorCode.RESOURCE_EXHAUSTED),
        (errno.EDQUOT, "TARGET_STORAGE_FULL", ErrorCode.RESOURCE_EXHAUSTED),
        (errno.EIO, "TARGET_IO_ERROR", ErrorCode.UNAVAILABLE),
    ],
)
async def test_engine_os_error_fails_job_with_reason(
    engine: Engine,
    target: FakeTarget,
    kind: StepKind,
    number: int,
    reason: str,
    code: ErrorCode,
) -> None:
    target.failures[kind] = OSError(number, "simulated")
    job = await create(engine, "oserror")
    for earlier in VM_PLAN[: VM_PLAN.index(kind)]:
        await target.started(job.name, earlier)
        target.release(job.name, earlier)
    done = await final(engine, job.name)
    assert done.state is State.FAILED
    assert done.error is not None
    assert (done.error.code, done.error.reason) == (code, reason)
    assert dict(done.error.metadata) == {"step": kind.value}
    assert target.cleanup_calls == [job.name]


async def test_engine_cleanup_retried_after_transient_error(
    engine: Engine, target: FakeTarget
) -> None:
    target.cleanup_errors = [OSError(errno.EIO, "flaky")]
    job = await create(engine, "flaky-cleanup")
    await target.started(job.name, StepKind.PREPARING_VM_DISKS)
    await engine.cancel(job.name)
    done = await final(engine, job.name)
    assert done.state is State.CANCELLED
    assert target.cleanup_calls == [job.name, job.name]
    assert target.cleanups_done == [job.name]


async def test_engine_cleanup_that_keeps_failing_fails_job(
    engine: Engine, target: FakeTarget
) -> None:
    target.cleanup_errors = [OSError(errno.EIO, "broken")] * 3
    job = await create(engine, "broken-cleanup")
    await target.started(job.name, StepKind.PREPARING_VM_DISKS)
    await engine.cancel(job.name)
    done = await final(engine, job.name)
    assert done.state is State.FAILED
    assert done.error is not None
    assert done.error.reason == "CLEANUP_FAILED"
    assert len(target.cleanup_calls) == 3
    assert target.cleanups_done == []


# -- concurrency --


async def test_engine_max_concurrent_jobs_keeps_second_pending(
    make_engine: MakeEngine, target: FakeTarget
) -> None:
    engine = await make_engine(max_concurrent_jobs=1)
    first = await create(engine, "first")
    await target.started(first.name, StepKind.PREPARING_VM_DISKS)
    second = await create(engine, "second")
    for kind in VM_PLAN:
        await target.started(first.name, kind)
        assert (await engine.get(second.name)).state is State.PENDING
        assert target.steps_of(second.name) == []
        target.release(first.name, kind)
    first_done = await final(engine, first.name)
    assert first_done.state is State.SUCCEEDED
    await target.started(second.name, StepKind.PREPARING_VM_DISKS)
    running = await engine.get(second.name)
    assert running.state is State.ACTIVE
    assert first_done.end_time is not None
    assert running.steps[0].start_time >= first_done.end_time


async def test_engine_cancel_pending_job_runs_no_step(
    make_engine: MakeEngine, target: FakeTarget
) -> None:
    engine = await make_engine(max_concurrent_jobs=1)
    first = await create(engine, "holder")
    await target.started(first.name, StepKind.PREPARING_VM_DISKS)
    waiting = await create(engine, "waiting")
    cancelling = await within(engine.cancel(waiting.name))
    assert cancelling.state is State.CANCELLING
    done = await final(engine, waiting.name)
    assert done.state is State.CANCELLED
    assert done.steps == ()
    assert target.steps_of(waiting.name) == []
    assert target.cleanup_calls == [waiting.name]
    # The holder still has its slot, and the slot is not lost to the cancelled job.
    assert (await engine.get(first.name)).state is State.ACTIVE
    third = await create(engine, "third")
    for kind in VM_PLAN:
        await target.started(first.name, kind)
        target.release(first.name, kind)
    assert (await final(engine, first.name)).state is State.SUCCEEDED
    await target.started(third.name, StepKind.PREPARING_VM_DISKS)


async def test_engine_takes_up_more_cancellations_than_one_claim_holds_at_once(
    make_engine: MakeEngine, target: FakeTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Left CANCELLING with no runner (as by a replica that stopped): more than one
    # claim of CANCELLING jobs takes; the worker claims again at once, not at its poll
    # (made longer than the test may wait).
    monkeypatch.setattr(worker, "POLL_INTERVAL", 10 * WAIT)
    count = worker.CANCEL_CLAIM_LIMIT + 6
    stopped = await make_engine(start=False)
    holder = await create(stopped, "holder")  # the oldest: it takes the one slot
    jobs = [await create(stopped, f"c-{i}") for i in range(count)]
    for job in jobs:
        await stopped.cancel(job.name)
    engine = await make_engine(max_concurrent_jobs=1)
    await target.started(holder.name, StepKind.PREPARING_VM_DISKS)
    for job in jobs:
        assert (await final(engine, job.name)).state is State.CANCELLED
    assert target.steps_of(jobs[-1].name) == []
    assert (await engine.get(holder.name)).state is State.ACTIVE


@pytest.mark.parametrize("yields", range(6))
@pytest.mark.parametrize("cancel_first", [True, False], ids=["cancel_first", "release_first"])
async def test_engine_cancel_racing_last_step_ends_in_one_terminal_state(
    engine: Engine, target: FakeTarget, store: HookedStore, yields: int, cancel_first: bool
) -> None:
    last = StepKind.INSTANTIATING_MIGRATED_VM
    job = await create(engine, "race")
    await run_to(target, job.name, last)
    watch = engine.watch(job.name, after_revision=0, heartbeat_interval=QUIET)
    first = await within(anext(watch))
    collector = asyncio.create_task(collect(watch))

    async def cancel() -> CloneJob:
        for _ in range(yields):  # vary the interleaving; correctness must not depend on it
            await asyncio.sleep(0)
        try:
            return await engine.cancel(job.name)
        except JobFinishedError as finished:
            return finished.job

    if cancel_first:
        cancelling = asyncio.create_task(cancel())
        target.release(job.name, last)
    else:
        target.release(job.name, last)
        cancelling = asyncio.create_task(cancel())
    answer = await within(cancelling)
    items = [first, *await within(collector)]

    got = await engine.get(job.name)
    assert got.state in (State.SUCCEEDED, State.CANCELLED)
    assert [j for j in items if j.state.terminal] == [got]
    assert items[-1] == got
    assert_contiguous(items)
    assert items == list(await store.revisions(job.name, after=first.revision - 1))
    if answer.state is State.SUCCEEDED:
        assert got.state is State.SUCCEEDED
    else:
        assert answer.state is State.CANCELLING
    assert target.cleanup_calls == ([job.name] if got.state is State.CANCELLED else [])


# -- recovery --


async def test_engine_recovers_interrupted_step_and_cancelling_job(
    make_engine: MakeEngine, target: FakeTarget, store: HookedStore
) -> None:
    first = await make_engine()
    resumed = await create(first, "resumed")
    await run_to(target, resumed.name, StepKind.ADAPTING_OS)
    cancelled = await create(first, "cancelled")
    await target.started(cancelled.name, StepKind.PREPARING_VM_DISKS)
    target.hold_cleanup.add(cancelled.name)
    await first.cancel(cancelled.name)
    await target.cleanup_started(cancelled.name)
    await first.stop()

    interrupted = await store.get(resumed.name)
    assert interrupted is not None
    assert interrupted.state is State.ADAPTING_OS
    assert interrupted.running_step is not None
    left = await store.get(cancelled.name)
    assert left is not None and left.state is State.CANCELLING
    assert target.cleanups_done == []

    target.release_cleanup(cancelled.name)
    second = await make_engine(start=False)
    assert await second.start() == 2
    await target.started(resumed.name, StepKind.ADAPTING_OS, attempt=2)
    await release_from(target, resumed.name, StepKind.ADAPTING_OS)

    done = await final(second, resumed.name)
    assert done.state is State.SUCCEEDED
    assert target.steps_of(resumed.name) == [
        StepKind.PREPARING_VM_DISKS,
        StepKind.ADAPTING_OS,
        StepKind.ADAPTING_OS,
        StepKind.INSTANTIATING_MIGRATED_VM,
    ]
    assert [s.kind for s in done.steps] == list(VM_PLAN)  # the same step, resumed
    assert done.steps[1].start_time == interrupted.steps[1].start_time
    history = await store.revisions(resumed.name, after=0)
    assert_contiguous(list(history))

    ended = await final(second, cancelled.name)
    assert ended.state is State.CANCELLED
    assert target.cleanups_done == [cancelled.name]
    assert target.steps_of(cancelled.name) == [StepKind.PREPARING_VM_DISKS]


async def test_engine_recovers_pending_job(
    make_engine: MakeEngine, target: FakeTarget, store: HookedStore
) -> None:
    first = await make_engine(max_concurrent_jobs=1)
    holder = await create(first, "holder")
    await target.started(holder.name, StepKind.PREPARING_VM_DISKS)
    waiting = await create(first, "waiting")
    await first.stop()
    assert (await store.get(waiting.name)).state is State.PENDING  # type: ignore[union-attr]
    target.block = False
    second = await make_engine(max_concurrent_jobs=1)
    assert (await final(second, holder.name)).state is State.SUCCEEDED
    assert (await final(second, waiting.name)).state is State.SUCCEEDED
    assert target.steps_of(waiting.name) == list(VM_PLAN)


async def test_engine_stop_closes_open_watches(engine: Engine, target: FakeTarget) -> None:
    job = await create(engine, "stopping")
    await target.started(job.name, StepKind.PREPARING_VM_DISKS)
    watch = engine.watch(job.name, after_revision=0, heartbeat_interval=QUIET)
    await within(anext(watch))
    pending = asyncio.ensure_future(anext(watch))
    await engine.stop()
    with pytest.raises(WatchClosedError):
        await within(pending)
    assert (await engine.get(job.name)).state is State.ACTIVE


# -- watching --


async def test_engine_watch_after_revision_yields_later_revisions(
    engine: Engine, target: FakeTarget, store: HookedStore
) -> None:
    target.block = False
    job = await create(engine, "history")
    done = await final(engine, job.name)
    history = list(await store.revisions(job.name, after=0))
    assert history[-1] == done
    for after in range(1, done.revision + 1):
        watch = engine.watch(job.name, after_revision=after, heartbeat_interval=QUIET)
        assert await within(collect(watch)) == history[after:]
    assert await within(
        collect(engine.watch(job.name, after_revision=0, heartbeat_interval=QUIET))
    ) == [done]


@pytest.mark.parametrize("after", [1, 2, 3])
async def test_engine_watch_after_revision_on_live_job(
    engine: Engine, target: FakeTarget, store: HookedStore, after: int
) -> None:
    job = await create(engine, "live")
    await run_to(target, job.name, StepKind.ADAPTING_OS)  # at revision 4
    watch = engine.watch(job.name, after_revision=after, heartbeat_interval=QUIET)
    collector = asyncio.create_task(collect(watch))
    await release_from(target, job.name, StepKind.ADAPTING_OS)
    items = await within(collector)
    assert items == list(await store.revisions(job.name, after=after))
    assert items[0].revision == after + 1
    assert items[-1].state is State.SUCCEEDED


@pytest.mark.parametrize("ahead", [1, 5])
async def test_engine_watch_after_current_revision_raises(
    engine: Engine, target: FakeTarget, ahead: int
) -> None:
    job = await create(engine, "ahead")
    await target.started(job.name, StepKind.PREPARING_VM_DISKS)
    current = (await engine.get(job.name)).revision
    watch = engine.watch(job.name, after_revision=current + ahead, heartbeat_interval=QUIET)
    with pytest.raises(RevisionOutOfRangeError) as caught:
        await within(anext(watch))
    assert (caught.value.requested, caught.value.current) == (current + ahead, current)
    assert not caught.value.compacted
    assert engine.hub.open_subscriptions == 0


async def test_engine_watch_missing_job_raises(engine: Engine) -> None:
    with pytest.raises(JobNotFoundError):
        await within(
            anext(engine.watch(job_name("nope"), after_revision=0, heartbeat_interval=QUIET))
        )
    assert engine.hub.open_subscriptions == 0


@pytest.mark.parametrize(("buffer_limit", "too_slow"), [(3, False), (2, True)])
async def test_engine_watch_slow_subscriber_is_dropped_alone(
    make_engine: MakeEngine, target: FakeTarget, buffer_limit: int, too_slow: bool
) -> None:
    engine = await make_engine(buffer_limit=buffer_limit)
    job = await create(engine, "slow")
    # At revision 2; 3 changes to go: each step's end commits the next one's start.
    await target.started(job.name, StepKind.PREPARING_VM_DISKS)
    slow = engine.watch(job.name, after_revision=0, heartbeat_interval=QUIET)
    fast = engine.watch(job.name, after_revision=0, heartbeat_interval=QUIET)
    assert (await within(anext(slow))).revision == 2
    assert (await within(anext(fast))).revision == 2
    fast_items = asyncio.create_task(collect(fast))
    for kind in VM_PLAN:
        await target.started(job.name, kind)
        target.release(job.name, kind)
    done = await final(engine, job.name)
    assert [j.revision for j in await within(fast_items)] == list(range(3, done.revision + 1))
    assert done.revision - 2 == 3
    if too_slow:
        with pytest.raises(WatcherTooSlowError) as caught:
            await within(anext(slow))
        assert caught.value.buffered == buffer_limit
    else:
        assert [j.revision for j in await within(collect(slow))] == list(
            range(3, done.revision + 1)
        )
    assert engine.hub.open_subscriptions == 0


async def test_engine_watch_raises_when_hub_closes(engine: Engine, target: FakeTarget) -> None:
    job = await create(engine, "closing")
    await target.started(job.name, StepKind.PREPARING_VM_DISKS)
    watch = engine.watch(job.name, after_revision=0, heartbeat_interval=QUIET)
    await within(anext(watch))
    waiting = asyncio.ensure_future(anext(watch))
    engine.hub.close()
    with pytest.raises(WatchClosedError):
        await within(waiting)
    late = engine.watch(job.name, after_revision=0, heartbeat_interval=QUIET)
    assert (await within(anext(late))).name == job.name
    with pytest.raises(WatchClosedError):
        await within(anext(late))


async def test_engine_watch_idle_yields_heartbeat(engine: Engine, target: FakeTarget) -> None:
    job = await create(engine, "idle")
    await target.started(job.name, StepKind.PREPARING_VM_DISKS)
    watch = engine.watch(job.name, after_revision=0, heartbeat_interval=0.05)
    current = await within(anext(watch))
    assert isinstance(current, CloneJob)
    assert await within(anext(watch)) == Heartbeat(current.revision)
    assert await within(anext(watch)) == Heartbeat(current.revision)
    target.release(job.name, StepKind.PREPARING_VM_DISKS)
    item = await within(anext(watch))
    while isinstance(item, Heartbeat):
        item = await within(anext(watch))
    assert item.revision == current.revision + 1
    await watch.aclose()  # type: ignore[attr-defined]


async def test_engine_watch_resuming_skips_changes_it_already_sent(
    engine: Engine, target: FakeTarget, store: HookedStore
) -> None:
    job = await create(engine, "resume-overlap")
    await run_to(target, job.name, StepKind.ADAPTING_OS)  # at revision 3

    async def advance_job() -> None:
        # Changes committed after the watch subscribed and read the job, before it read
        # the history: they reach the watch twice, through the history and the hub.
        target.release(job.name, StepKind.ADAPTING_OS)
        await target.started(job.name, StepKind.INSTANTIATING_MIGRATED_VM)

    store.on_oldest_revision = advance_job
    watch = engine.watch(job.name, after_revision=1, heartbeat_interval=QUIET)
    first = await within(anext(watch))
    collector = asyncio.create_task(collect(watch))
    assert (await engine.get(job.name)).revision == 4  # a step's end and the next's start
    target.release(job.name, StepKind.INSTANTIATING_MIGRATED_VM)
    items = [first, *await within(collector)]
    assert items == list(await store.revisions(job.name, after=1))
    assert items[-1].state is State.SUCCEEDED


async def test_engine_watch_ends_when_job_ends_while_resuming(
    engine: Engine, target: FakeTarget, store: HookedStore
) -> None:
    last = StepKind.INSTANTIATING_MIGRATED_VM
    job = await create(engine, "resume-race")
    await run_to(target, job.name, last)

    async def finish_job() -> None:
        # Between the watch's first read of the job and its read of the history.
        target.release(job.name, last)
        await final(engine, job.name)

    store.on_oldest_revision = finish_job
    watch = engine.watch(job.name, after_revision=1, heartbeat_interval=0.05)
    items: list[CloneJob | Heartbeat] = []
    async for item in watch:
        items.append(item)
        if isinstance(item, Heartbeat) or len(items) > 20:
            break
    await watch.aclose()  # type: ignore[attr-defined]
    jobs = [i for i in items if isinstance(i, CloneJob)]
    assert jobs == list(await store.revisions(job.name, after=1))
    assert jobs[-1].state is State.SUCCEEDED
    assert items == jobs, "the watch went on (with heartbeats) after the terminal revision"


# -- callers that go away --


async def test_engine_cancel_whose_caller_goes_away_is_still_carried_out(
    engine: Engine, target: FakeTarget
) -> None:
    job = await create(engine, "caller-gone")
    await run_to(target, job.name, StepKind.ADAPTING_OS)
    watch = engine.watch(job.name, after_revision=0, heartbeat_interval=QUIET)
    caller = asyncio.ensure_future(engine.cancel(job.name))
    await asyncio.sleep(0)  # the cancel is under way (waiting for its commit) ...
    caller.cancel()  # ... when its client's deadline passes
    with pytest.raises(asyncio.CancelledError):
        await caller
    items = await within(collect(watch))
    states = [j.state for j in items]
    assert State.CANCELLING in states
    assert states[-1] is State.CANCELLED
    assert target.cleanup_calls == [job.name]
    assert await engine.get(job.name) == items[-1]


async def test_engine_create_whose_caller_goes_away_still_runs_the_job(
    engine: Engine, target: FakeTarget
) -> None:
    caller = asyncio.ensure_future(create(engine, "create-gone"))
    for _ in range(3):  # past the lookups, into the commit
        await asyncio.sleep(0)
    caller.cancel()
    try:
        await caller
    except asyncio.CancelledError:
        pass
    name = job_name("create-gone")
    try:
        await engine.get(name)
    except JobNotFoundError:
        return  # cancelled before the commit: nothing was stored, nothing to run
    await run_to(target, name, StepKind.INSTANTIATING_MIGRATED_VM)
    target.release(name, StepKind.INSTANTIATING_MIGRATED_VM)
    assert (await final(engine, name)).state is State.SUCCEEDED


async def test_engine_unexpected_step_error_ends_the_job_failed(
    engine: Engine, target: FakeTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(job: CloneJob, cancelled: threading.Event, fence: Fence) -> TargetResult:
        raise ZeroDivisionError("a bug in a target")

    monkeypatch.setattr(target, "adapt_os", broken)
    job = await create(engine, "bug")
    await target.started(job.name, StepKind.PREPARING_VM_DISKS)
    target.release(job.name, StepKind.PREPARING_VM_DISKS)
    done = await final(engine, job.name)
    assert done.state is State.FAILED
    assert done.error is not None and done.error.reason == "ENGINE_ERROR"
    assert target.cleanup_calls == [job.name]


# -- leases --


async def lease_engine(store: HookedStore, target: FakeTarget, ttl: float) -> Engine:
    """An engine that treats the store as shared (other replicas could claim its
    jobs), so that its leases expire and are renewed as on PostgreSQL."""
    store.exclusive = False
    engine = Engine(store, target, lease_ttl=ttl)
    await engine.start()
    return engine


async def test_engine_runner_renews_its_lease_while_the_step_runs(
    store: HookedStore, target: FakeTarget
) -> None:
    engine = await lease_engine(store, target, ttl=0.3)
    try:
        job = await create(engine, "renewed")
        await target.started(job.name, StepKind.PREPARING_VM_DISKS)
        await asyncio.sleep(1.0)  # more than three TTLs: the behaviour under test is time
        assert len(store.renewals) >= 3
        assert await store.holds(job.name, 1)
        assert (await store.claim("thief", limit=1, ttl=10)).leases == []
        for kind in VM_PLAN:
            await target.started(job.name, kind)
            target.release(job.name, kind)
        assert (await final(engine, job.name)).state is State.SUCCEEDED
        assert not await store.holds(job.name, 1)  # released with the terminal commit
    finally:
        await engine.stop()


async def test_engine_lost_lease_stops_the_step_and_commits_nothing_more(
    store: HookedStore, target: FakeTarget
) -> None:
    engine = await lease_engine(store, target, ttl=0.4)
    try:
        job = await create(engine, "fenced")
        await target.started(job.name, StepKind.PREPARING_VM_DISKS)
        before = await store.get(job.name)
        assert before is not None
        store.renewals_held = True  # cut off, as a paused replica is
        store.claims_only_for = "thief"  # another replica takes it, not this one
        stolen = None
        for _ in range(100):
            await asyncio.sleep(0.05)  # polling the lease's expiry, which is time itself
            result = await store.claim("thief", limit=1, ttl=30)
            if result.leases:
                stolen = result.leases[0]
                break
        assert stolen is not None and stolen.epoch == 2
        # The runner finds out (its renewals failed for a whole TTL) and stops its step.
        await target.step_cancelled(job.name, StepKind.PREPARING_VM_DISKS)
        target.release(job.name, StepKind.PREPARING_VM_DISKS)
        await asyncio.sleep(0.3)  # room for a wrong write to happen
        assert await store.get(job.name) == before
        assert [j.revision for j in await store.revisions(job.name, after=0)] == list(
            range(1, before.revision + 1)
        )
        assert target.cleanup_calls == []  # the products are the new owner's now
        assert await store.holds(job.name, 2)
        # A write fenced with the old epoch is refused by the store itself.
        with pytest.raises(LeaseLostError):
            await store.update(
                before.with_progress(Progress(percent=50), before.state_time),
                expected_revision=before.revision,
                epoch=1,
            )
    finally:
        store.renewals_held = False
        store.claims_only_for = None
        await engine.stop()


async def test_engine_cancel_reaches_a_job_held_by_another_owner_only_through_the_store(
    store: HookedStore, target: FakeTarget
) -> None:
    """An API-only engine (no slots) takes a Cancel; the job is finished by whoever
    claims it next: here, a worker engine started after."""
    api = Engine(store, target, max_concurrent_jobs=0)
    await api.start()
    try:
        job = await create(api, "api-only")
        await asyncio.sleep(0.2)  # an API-only engine runs nothing: nothing may start
        assert target.steps_of(job.name) == []
        assert (await api.cancel(job.name)).state is State.CANCELLING
        worker = await lease_engine(store, target, ttl=5)
        try:
            done = await final(worker, job.name)
        finally:
            await worker.stop()
        assert done.state is State.CANCELLED
        assert target.steps_of(job.name) == []
        assert target.cleanup_calls == [job.name]
    finally:
        await api.stop()

