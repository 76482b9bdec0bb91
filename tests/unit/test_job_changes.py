"""JobChanges: one change of a job at a time in a replica."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from server.domain.job import CloneJob, Progress, StepKind, TargetKind, TargetSpec
from server.engine.broadcast import Hub
from server.engine.changes import JobChanges
from server.store import SqliteJobStore

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
NAME = "projects/p/locations/l/sources/s/migratingVms/vm/cloneJobs/j"


class OverlapStore(SqliteJobStore):
    """Counts the writes of one job under way at once; each takes a few loop turns."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.under_way = 0
        self.most = 0

    async def _slow(self) -> None:
        self.under_way += 1
        self.most = max(self.most, self.under_way)
        for _ in range(3):
            await asyncio.sleep(0)

    async def update(
        self, job: CloneJob, *, expected_revision: int, epoch: int | None = None
    ) -> None:
        await self._slow()
        try:
            await super().update(job, expected_revision=expected_revision, epoch=epoch)
        finally:
            self.under_way -= 1

    async def update_chain(
        self, jobs: Sequence[CloneJob], *, expected_revision: int, epoch: int | None = None
    ) -> None:
        await self._slow()
        try:
            await super().update_chain(jobs, expected_revision=expected_revision, epoch=epoch)
        finally:
            self.under_way -= 1


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[OverlapStore]:
    store = OverlapStore(tmp_path / "db.sqlite")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def clock() -> datetime:
    return T0


async def created(store: OverlapStore) -> tuple[JobChanges, CloneJob]:
    changes = JobChanges(store, Hub(), clock=clock)
    job = CloneJob.new(
        name=NAME,
        target=TargetSpec(kind=TargetKind.DISKS, project="p", zone="z"),
        source_cycle="cycle-1",
        now=T0,
    )
    await changes.create(job)
    return changes, job


def progress(percent: int) -> Callable[[CloneJob], CloneJob]:
    def apply(job: CloneJob) -> CloneJob:
        if job.running_step is None:
            return job
        return job.with_progress(Progress(percent=percent), T0 + timedelta(seconds=percent))

    return apply


async def test_job_changes_one_at_a_time_while_the_lock_changes_hands(
    store: OverlapStore,
) -> None:
    # A holds the job's lock, B waits for it; as A ends (B woken, not yet running)
    # C arrives. C must wait for B, not get a lock of its own beside it.
    changes, job = await created(store)
    await changes.change(NAME, lambda j: j.start_step(StepKind.PREPARING_VM_DISKS, T0))
    first = asyncio.ensure_future(changes.change(NAME, progress(1)))
    second = asyncio.ensure_future(changes.change(NAME, progress(2)))
    later: list[asyncio.Future[CloneJob]] = []
    first.add_done_callback(
        lambda _: later.append(asyncio.ensure_future(changes.change(NAME, progress(3))))
    )
    await asyncio.gather(first, second)
    await asyncio.gather(*later)
    assert store.most == 1
    stored = await store.get(NAME)
    assert stored is not None and stored.revision == job.revision + 4
    assert [j.progress.percent for j in await store.revisions(NAME, after=2) if j.progress] == [
        1,
        2,
        3,
    ]
