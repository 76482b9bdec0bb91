"""The store contract: every JobStore must pass TestJobStoreContract.

To add a store, add a parameter to the `backend` fixture that makes stores on
one fresh database for each test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from server.domain.job import (
    CloneJob,
    ErrorCode,
    JobError,
    Progress,
    State,
    Step,
    StepKind,
    TargetKind,
    TargetResult,
    TargetSpec,
)
from server.domain.listing import (
    Cursor,
    Field,
    ListQuery,
    OrderBy,
    parse_filter,
    parse_order_by,
)
from server.store import records
from server.store.base import ConflictError, DuplicateJobError, JobStore, StoreError
from server.store.sqlite import SqliteJobStore, migrations

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
PARENT_A = "projects/p/locations/l/sources/s/migratingVms/vm-a"
PARENT_B = "projects/p/locations/l/sources/s/migratingVms/vm-b"
PARENT_A_PREFIX = "projects/p/locations/l/sources/s/migratingVms/vm"  # a prefix of PARENT_A


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make_job(
    job_id: str,
    *,
    parent: str = PARENT_A,
    created: datetime = T0,
    request_id: str = "",
    kind: TargetKind = TargetKind.VM,
) -> CloneJob:
    target = TargetSpec(
        kind=kind,
        project="p",
        zone="z",
        vm_name="vm" if kind is TargetKind.VM else "",
        machine_type="n2" if kind is TargetKind.VM else "",
        details={"labels": {"a": "b"}, "network_tags": ["x", "y"], "project": "p"},
    )
    return CloneJob.new(
        name=f"{parent}/cloneJobs/{job_id}",
        target=target,
        source_cycle="cycle-3",
        now=created,
        request_id=request_id,
        request_hash="hash-" + request_id if request_id else "",
    )


def full_job() -> CloneJob:
    """A job with every field set to something other than its default."""
    job = make_job("full", request_id="6f1c2a3e-8b4d-4c5e-9f60-7a8b9c0d1e2f")
    offset = timezone(timedelta(hours=-5))
    return dataclasses.replace(
        job,
        target=dataclasses.replace(
            job.target,
            details={
                "vm_name": "vm",
                "labels": {"k": "v"},
                "metadata": {"startup": "é\0\n\"'"},
                "network_interfaces": [{"network": "default", "internal_ip": "10.0.0.2"}],
                "disk_type": 99,
                "nested": {"deep": [1, 2.5, True, None]},
            },
        ),
        state=State.ACTIVE,
        state_time=at(5).astimezone(offset),
        end_time=at(99),
        steps=(
            Step(kind=StepKind.PREPARING_VM_DISKS, start_time=at(1), end_time=at(2)),
            Step(kind=StepKind.ADAPTING_OS, start_time=at(3)),
        ),
        error=JobError(
            code=ErrorCode.RESOURCE_EXHAUSTED,
            reason="TARGET_STORAGE_FULL",
            message="full ✓",
            metadata={"step": "adapting_os"},
        ),
        progress=Progress(percent=37, bytes_done=37 << 30, bytes_total=100 << 30),
        result=TargetResult(
            boot_option="EFI", license_type="BYOL", disk_uris=((0, "uri-0"), (3, "uri-3"))
        ),
        revision=17,
    )


def advance(job: CloneJob, to: State) -> list[CloneJob]:
    """The revisions that take a new job to `to`, after the first."""
    steps: list[CloneJob] = []

    def push(new: CloneJob) -> None:
        steps.append(new)

    current = job
    if to is State.PENDING:
        return steps
    if to in (State.CANCELLING, State.CANCELLED):
        current = current.request_cancel(at(10))
        push(current)
        if to is State.CANCELLED:
            push(current.cancelled(at(11)))
        return steps
    if to is State.FAILED:
        push(current.fail(JobError(code=ErrorCode.INTERNAL, reason="R", message="m"), at(10)))
        return steps
    for kind in current.target.kind.steps:
        current = current.start_step(kind, at(10))
        push(current)
        if to is kind.state and to is not State.ACTIVE:
            return steps
        if to is State.ACTIVE and kind is StepKind.PREPARING_VM_DISKS:
            return steps
        current = current.finish_step(at(11))
        push(current)
    push(current.succeed(at(12)))
    assert steps[-1].state is to
    return steps


class Backend:
    """Makes stores on one database and closes every store it made."""

    def __init__(self, make: Callable[[], JobStore]) -> None:
        self._make = make
        self._stores: list[JobStore] = []

    def new(self) -> JobStore:
        store = self._make()
        self._stores.append(store)
        return store

    async def open(self) -> JobStore:
        store = self.new()
        await store.open()
        return store

    async def close(self, store: JobStore) -> None:
        self._stores.remove(store)
        await store.close()

    async def close_all(self) -> None:
        while self._stores:
            await self._stores.pop().close()


@pytest.fixture(params=["sqlite"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        made = Backend(lambda: SqliteJobStore(tmp_path / "db.sqlite"))
    else:  # pragma: no cover - a new store adds its branch here
        raise AssertionError(request.param)
    try:
        yield made
    finally:
        await made.close_all()


@pytest.fixture
async def store(backend: Backend) -> JobStore:
    return await backend.open()


async def stored(store: JobStore, job: CloneJob, to: State) -> CloneJob:
    await store.create(job)
    for new in advance(job, to):
        await store.update(new, expected_revision=new.revision - 1)
        job = new
    return job


class TestJobStoreContract:
    async def test_store_create_get_round_trips_every_field(self, store: JobStore) -> None:
        job = full_job()
        await store.create(job)
        loaded = await store.get(job.name)
        assert loaded == job
        assert await store.get_by_request_id(job.request_id) == job
        assert await store.revisions(job.name, after=0) == [job]

    @pytest.mark.parametrize("state", list(State))
    async def test_store_round_trips_job_in_every_state(
        self, store: JobStore, state: State
    ) -> None:
        job = await stored(store, make_job("j"), state)
        assert job.state is state
        assert await store.get(job.name) == job

    async def test_store_get_missing_is_none(self, store: JobStore) -> None:
        assert await store.get(f"{PARENT_A}/cloneJobs/none") is None
        assert await store.get_by_request_id("6f1c2a3e-8b4d-4c5e-9f60-7a8b9c0d1e2f") is None
        assert await store.revisions(f"{PARENT_A}/cloneJobs/none", after=0) == []
        assert await store.oldest_revision(f"{PARENT_A}/cloneJobs/none") == 0

    async def test_store_create_without_request_id_does_not_collide(self, store: JobStore) -> None:
        await store.create(make_job("a"))
        await store.create(make_job("b"))
        assert await store.get_by_request_id("") is None

    async def test_store_duplicate_name_raises_with_existing(self, store: JobStore) -> None:
        first = make_job("dup", request_id="11111111-1111-4111-8111-111111111111")
        await store.create(first)
        second = make_job("dup", created=at(1))
        with pytest.raises(DuplicateJobError) as caught:
            await store.create(second)
        assert caught.value.existing == first
        assert await store.get(first.name) == first
        assert await store.revisions(first.name, after=0) == [first]

    async def test_store_duplicate_request_id_raises_with_existing(self, store: JobStore) -> None:
        request_id = "22222222-2222-4222-8222-222222222222"
        first = make_job("one", request_id=request_id)
        await store.create(first)
        second = make_job("two", request_id=request_id, created=at(1))
        with pytest.raises(DuplicateJobError) as caught:
            await store.create(second)
        assert caught.value.existing == first
        assert await store.get(second.name) is None
        assert await store.get_by_request_id(request_id) == first

    async def test_store_update_with_expected_revision_keeps_old(self, store: JobStore) -> None:
        job = make_job("u")
        await store.create(job)
        started = job.start_step(StepKind.PREPARING_VM_DISKS, at(1))
        await store.update(started, expected_revision=1)
        assert await store.get(job.name) == started
        assert await store.revisions(job.name, after=0) == [job, started]
        assert await store.oldest_revision(job.name) == 1

    @pytest.mark.parametrize("expected", [0, 2, 3])
    async def test_store_update_wrong_revision_conflicts_and_changes_nothing(
        self, store: JobStore, expected: int
    ) -> None:
        job = make_job("c")
        await store.create(job)
        started = job.start_step(StepKind.PREPARING_VM_DISKS, at(1))
        await store.update(started, expected_revision=1)
        stale = job.request_cancel(at(2))  # computed from revision 1, also numbered 2
        with pytest.raises(ConflictError):
            await store.update(stale, expected_revision=1)
        newer = started.with_progress(Progress(percent=3), at(2))
        if expected != 2:
            with pytest.raises(ConflictError):
                await store.update(newer, expected_revision=expected)
            assert await store.get(job.name) == started
            assert await store.revisions(job.name, after=0) == [job, started]
        else:
            await store.update(newer, expected_revision=expected)
            assert await store.get(job.name) == newer

    async def test_store_update_of_missing_job_conflicts(self, store: JobStore) -> None:
        job = make_job("ghost").start_step(StepKind.PREPARING_VM_DISKS, at(1))
        with pytest.raises(ConflictError):
            await store.update(job, expected_revision=1)
        assert await store.get(job.name) is None

    async def test_store_revisions_after_returns_later_ones_in_order(self, store: JobStore) -> None:
        job = make_job("r")
        history = [job, *advance(job, State.SUCCEEDED)]
        await stored(store, job, State.SUCCEEDED)
        assert [j.revision for j in history] == list(range(1, len(history) + 1))
        for after in range(len(history) + 2):
            assert await store.revisions(job.name, after=after) == history[after:]

    async def test_store_revisions_are_per_job(self, store: JobStore) -> None:
        a = await stored(store, make_job("a"), State.ACTIVE)
        b = make_job("b")
        await store.create(b)
        assert [j.name for j in await store.revisions(b.name, after=0)] == [b.name]
        assert {j.name for j in await store.revisions(a.name, after=0)} == {a.name}

    async def test_store_unfinished_returns_only_non_terminal_oldest_first(
        self, store: JobStore
    ) -> None:
        expected = []
        for i, state in enumerate(reversed(list(State))):
            job = await stored(
                store, make_job(f"s{i}", created=at(-i), parent=[PARENT_A, PARENT_B][i % 2]), state
            )
            if not state.terminal:
                expected.append(job)
        unfinished = await store.unfinished()
        assert list(unfinished) == sorted(expected, key=lambda j: j.create_time)
        assert {j.state for j in unfinished} == {s for s in State if not s.terminal}

    async def test_store_list_isolates_parents(self, store: JobStore) -> None:
        for parent in (PARENT_A, PARENT_B, PARENT_A_PREFIX):
            for i in range(3):
                await store.create(make_job(f"j{i}", parent=parent, created=at(i)))
        for parent in (PARENT_A, PARENT_B, PARENT_A_PREFIX):
            listed = await store.list(ListQuery(parent=parent))
            assert [j.name for j in listed] == [f"{parent}/cloneJobs/j{i}" for i in range(3)]
        assert await store.list(ListQuery(parent=PARENT_A + "x")) == []

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("state = ACTIVE", {"active"}),
            ("state != SUCCEEDED", {"pending", "active", "adapting", "failed", "cancelled"}),
            ("state = FAILED OR state = CANCELLED", {"failed", "cancelled"}),
            ("state = PENDING OR state = ADAPTING_OS", {"pending", "adapting"}),
            ('create_time > "2026-03-01T12:00:02.123456Z"', {"failed", "cancelled", "done"}),
            (
                'create_time >= "2026-03-01T07:00:02.123456-05:00"',
                {"adapting", "failed", "cancelled", "done"},
            ),
            ('create_time < "2026-03-01T12:00:01.123456Z"', {"pending"}),
            ('create_time = "2026-03-01T12:00:01.123456Z"', {"active"}),
            (
                'state != FAILED AND create_time <= "2026-03-01T12:00:03.123456Z"',
                {"pending", "active", "adapting"},
            ),
            (
                'state = ACTIVE OR state = SUCCEEDED AND create_time > "2026-03-01T12:00:00Z"',
                {"active", "done"},
            ),
            (f'name = "{PARENT_A}/cloneJobs/done"', {"done"}),
            (
                f'name != "{PARENT_A}/cloneJobs/done" AND state != PENDING',
                {"active", "adapting", "failed", "cancelled"},
            ),
            ("state = CANCELLING", set()),
        ],
    )
    async def test_store_list_filters(self, store: JobStore, text: str, expected: set[str]) -> None:
        layout = [
            ("pending", State.PENDING),
            ("active", State.ACTIVE),
            ("adapting", State.ADAPTING_OS),
            ("failed", State.FAILED),
            ("cancelled", State.CANCELLED),
            ("done", State.SUCCEEDED),
        ]
        for i, (job_id, state) in enumerate(layout):
            await stored(store, make_job(job_id, created=at(i)), state)
            await stored(store, make_job(job_id, created=at(i), parent=PARENT_B), state)
        listed = await store.list(ListQuery(parent=PARENT_A, filter=parse_filter(text)))
        assert {j.name.rpartition("/")[2] for j in listed} == expected
        assert all(j.name.startswith(PARENT_A + "/") for j in listed)

    @pytest.mark.parametrize("order_text", ["create_time", "create_time desc", "name", "name desc"])
    async def test_store_list_orders(self, store: JobStore, order_text: str) -> None:
        jobs = await self._ordering_jobs(store)
        order = parse_order_by(order_text)
        listed = await store.list(ListQuery(parent=PARENT_A, order_by=order))
        assert [j.name for j in listed] == [j.name for j in _sorted(jobs, order)]

    @pytest.mark.parametrize("order_text", ["create_time", "create_time desc", "name", "name desc"])
    @pytest.mark.parametrize("page_size", [1, 2, 3, 11, 12])
    @pytest.mark.parametrize("filter_text", ["", "state != FAILED"])
    async def test_store_list_keyset_pages_cover_every_job_once(
        self, store: JobStore, order_text: str, page_size: int, filter_text: str
    ) -> None:
        jobs = await self._ordering_jobs(store)
        order = parse_order_by(order_text)
        query_filter = parse_filter(filter_text)
        wanted = [j for j in _sorted(jobs, order) if not filter_text or j.state is not State.FAILED]
        seen: list[CloneJob] = []
        after: Cursor | None = None
        for _ in range(len(jobs) + 2):
            page = await store.list(
                ListQuery(
                    parent=PARENT_A,
                    filter=query_filter,
                    order_by=order,
                    after=after,
                    limit=page_size,
                )
            )
            assert len(page) <= page_size
            seen.extend(page)
            if len(page) < page_size:
                break
            last = page[-1]
            after = Cursor(create_time_us=records.to_us(last.create_time), name=last.name)
        assert [j.name for j in seen] == [j.name for j in wanted]

    @staticmethod
    async def _ordering_jobs(store: JobStore) -> list[CloneJob]:
        # Ties in create_time, and names whose order differs from creation order.
        created = [3, 1, 1, 1, 2, 5, 0, 4, 4, 2, 6]
        jobs = []
        for i, offset in enumerate(created):
            job_id = f"{'zyxwvutsrqp'[i]}-{i}"
            state = State.FAILED if i % 3 == 0 else State.PENDING
            jobs.append(await stored(store, make_job(job_id, created=at(offset)), state))
            await store.create(make_job(job_id, created=at(offset), parent=PARENT_B))
        return jobs

    async def test_store_persists_across_close_and_reopen(self, backend: Backend) -> None:
        first = await backend.open()
        job = full_job()
        await first.create(job)
        other = await stored(first, make_job("other"), State.SUCCEEDED)
        history = await first.revisions(other.name, after=0)
        await backend.close(first)
        second = await backend.open()
        assert await second.get(job.name) == job
        assert await second.get(other.name) == other
        assert await second.revisions(other.name, after=0) == history
        assert await second.get_by_request_id(job.request_id) == job
        with pytest.raises(DuplicateJobError):
            await second.create(job)

    async def test_store_second_open_while_in_use_raises(self, backend: Backend) -> None:
        first = await backend.open()
        second = backend.new()
        with pytest.raises(StoreError) as caught:
            await second.open()
        assert "in use" in str(caught.value)
        job = make_job("still-works")
        await first.create(job)
        assert await first.get(job.name) == job
        await backend.close(second)
        await backend.close(first)
        third = await backend.open()  # the lock went with the first store
        assert await third.get(job.name) == job

    async def test_store_closed_raises_store_error(self, backend: Backend) -> None:
        store = backend.new()
        with pytest.raises(StoreError):
            await store.get("x")  # never opened


def _sorted(jobs: list[CloneJob], order: OrderBy) -> list[CloneJob]:
    if order.field is Field.NAME:
        return sorted(jobs, key=lambda j: j.name, reverse=order.descending)
    return sorted(jobs, key=lambda j: (j.create_time, j.name), reverse=order.descending)


class TestSqliteJobStore:
    """What only the SQLite store does: its file, its lock and its schema version."""

    async def _open_fails(self, path: Path) -> StoreError:
        store = SqliteJobStore(path)
        try:
            with pytest.raises(StoreError) as caught:
                await store.open()
        finally:
            await store.close()
        return caught.value

    async def test_sqlite_store_group_commit_fails_only_the_bad_change(
        self, tmp_path: Path
    ) -> None:
        store = SqliteJobStore(tmp_path / "db.sqlite")
        await store.open()
        try:
            jobs = [make_job(f"job-{i}") for i in range(40)]
            twin = make_job("job-7")  # the same name as one of them, in the same burst
            outcomes = await asyncio.gather(
                *(store.create(j) for j in [*jobs[:20], twin, *jobs[20:]]),
                return_exceptions=True,
            )
            failures = [o for o in outcomes if o is not None]
            assert len(failures) == 1 and isinstance(failures[0], DuplicateJobError)
            assert failures[0].existing.name == twin.name
            for job in jobs:
                assert await store.get(job.name) == job
            stale = dataclasses.replace(jobs[0], revision=jobs[0].revision + 1)
            results = await asyncio.gather(
                store.update(stale, expected_revision=jobs[0].revision),
                store.update(stale, expected_revision=jobs[0].revision),  # now stale
                return_exceptions=True,
            )
            assert results[0] is None and isinstance(results[1], ConflictError)
        finally:
            await store.close()

    async def test_sqlite_store_corrupt_file_raises_store_error(self, tmp_path: Path) -> None:
        path = tmp_path / "db.sqlite"
        path.write_bytes(random.Random(7).randbytes(64 * 1024))
        error = await self._open_fails(path)
        assert str(path) in str(error)
        assert "corrupt" in str(error)

    async def test_sqlite_store_newer_schema_raises_store_error(self, tmp_path: Path) -> None:
        path = tmp_path / "db.sqlite"
        with sqlite3.connect(path) as conn:
            conn.execute(f"PRAGMA user_version = {len(migrations()) + 1}")
        conn.close()
        error = await self._open_fails(path)
        assert "newer" in str(error)
        with sqlite3.connect(path) as conn:  # left as it was
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        conn.close()
        assert version == len(migrations()) + 1

    async def test_sqlite_store_upgrades_a_version_1_database_keeping_its_jobs(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "db.sqlite"
        job = make_job("kept")
        with sqlite3.connect(path) as conn:  # a database made by the first release
            for statement in migrations()[0].split(";"):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO clone_jobs (name, parent, request_id, state, create_time_us,"
                " revision, record) VALUES (?, ?, NULL, ?, ?, ?, ?)",
                (job.name, PARENT_A, int(job.state), 0, job.revision, records.dump(job)),
            )
            conn.execute("PRAGMA user_version = 1")
        conn.close()
        store = SqliteJobStore(path)
        await store.open()
        try:
            assert await store.get(job.name) == job
        finally:
            await store.close()
        conn = sqlite3.connect(path)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            indexes = {row[1] for row in conn.execute("PRAGMA index_list(clone_jobs)")}
        finally:
            conn.close()
        assert version == len(migrations()) >= 2
        assert "clone_jobs_parent_state_create_time" in indexes

    async def test_sqlite_store_migrations_set_user_version(self, tmp_path: Path) -> None:
        path = tmp_path / "sub" / "db.sqlite"
        store = SqliteJobStore(path)
        try:
            await store.open()
        finally:
            await store.close()
        assert len(migrations()) >= 1
        conn = sqlite3.connect(path)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        finally:
            conn.close()
        assert version == len(migrations())
        assert {"clone_jobs", "clone_job_revisions"} <= tables
        assert mode == "wal"

    async def test_sqlite_store_reopen_keeps_schema_version(self, tmp_path: Path) -> None:
        path = tmp_path / "db.sqlite"
        for _ in range(2):
            store = SqliteJobStore(path)
            try:
                await store.open()
            finally:
                await store.close()
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == len(migrations())
        finally:
            conn.close()


def test_records_round_trip_full_job() -> None:
    job = full_job()
    assert records.load(records.dump(job)) == job


@pytest.mark.parametrize(
    "when",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 3, 1, 7, 0, 0, 1, tzinfo=timezone(timedelta(hours=-5))),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
def test_records_microseconds_round_trip(when: datetime) -> None:
    assert records.from_us(records.to_us(when)) == when
