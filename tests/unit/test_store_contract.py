"""The store contract: every JobStore must pass TestJobStoreContract.

To add a store, add a parameter to the `backend` fixture that makes stores on
one fresh database for each test. The PostgreSQL store runs on a new database
of the server at $CLONEJOB_TEST_POSTGRES (see tests/pg.py); without one, its
tests are skipped (failed in CI).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import random
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest

from server.domain.job import (
    TERMINAL_STATES,
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
from server.domain.operation import Operation, Verb
from server.store import (
    PostgresJobStore,
    SqliteJobStore,
    is_postgres_url,
    open_store,
    records,
    schema,
)
from server.store import sqlite as sqlite_store
from server.store.base import (
    ClaimResult,
    ConflictError,
    DuplicateJobError,
    JobStore,
    Lease,
    LeaseLostError,
    StoreError,
    StoreUnavailableError,
)
from server.store.listing import UNFINISHED_STATES
from server.store.postgres import APPLICATION_NAME, LISTEN_APPLICATION_NAME
from server.store.records import to_us
from server.store.sqlite import CLAIM_SQL, migrations
from tests import pg

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

    def __init__(self, kind: str, make: Callable[[], JobStore], *, url: str = "") -> None:
        self.kind = kind
        self.url = url  # PostgreSQL: the database's URL
        self._make = make
        self._stores: list[JobStore] = []

    @property
    def shared(self) -> bool:
        """Whether several stores (servers) may have the database open at once."""
        return self.kind == "postgres"

    def new(self) -> JobStore:
        store = self._make()
        self._stores.append(store)
        return store

    async def open(self) -> JobStore:
        store = self.new()
        await store.open()
        return store

    async def peer(self, store: JobStore) -> JobStore:
        """Another server's store on the same database, or `store` itself when the
        database serves one server only."""
        return await self.open() if self.shared else store

    async def close(self, store: JobStore) -> None:
        self._stores.remove(store)
        await store.close()

    async def close_all(self) -> None:
        while self._stores:
            await self._stores.pop().close()


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "sqlite":
            made = Backend("sqlite", lambda: SqliteJobStore(tmp_path / "db.sqlite"))
        elif request.param == "postgres":
            url = await stack.enter_async_context(pg.temporary_database())
            made = Backend("postgres", lambda: PostgresJobStore(url), url=url)
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


# Leases for tests that never see them expire, and for those that wait until they do.
TTL = 30.0
SHORT_TTL = 0.3
PAGE_TOKEN_KEY_BYTES = 32


async def expire(store: JobStore, name: str, epoch: int) -> None:
    """Wait until a SHORT_TTL lease is past its expiry (the behaviour under test)."""
    await asyncio.sleep(SHORT_TTL * 1.5)
    assert not await store.holds(name, epoch)


Event = tuple[object, ...]


class Recorder:
    """A ChangeListener that queues what it is told, for the test to await."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[Event] = asyncio.Queue()

    def on_change(self, name: str, revision: int, claimable: bool) -> None:
        self.events.put_nowait(("change", name, revision, claimable))

    def on_resync(self) -> None:
        self.events.put_nowait(("resync",))

    def on_available(self, available: bool) -> None:
        self.events.put_nowait(("available", available))

    async def next(self) -> Event:
        async with asyncio.timeout(10):
            return await self.events.get()


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

    async def test_store_duplicate_of_both_raises_with_the_request_ids_job(
        self, store: JobStore
    ) -> None:
        # The engine tells a retry from a taken name by the job the insert reports.
        request_id = "33333333-3333-4333-8333-333333333333"
        retried = make_job("first", request_id=request_id)
        taken = make_job("second")
        await store.create(retried)
        await store.create(taken)
        both = make_job("second", request_id=request_id, created=at(1))
        with pytest.raises(DuplicateJobError) as caught:
            await store.create(both)
        assert caught.value.existing == retried

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

    async def test_store_update_chain_commits_every_revision(self, store: JobStore) -> None:
        job = make_job("chain")
        await store.create(job)
        started = job.start_step(StepKind.PREPARING_VM_DISKS, at(1))
        await store.update(started, expected_revision=1)
        moved = started.with_progress(Progress(percent=100), at(2))
        ended = moved.finish_step_and_go_on(at(2), TargetResult())
        await store.update_chain([moved, ended], expected_revision=2)
        assert await store.get(job.name) == ended
        assert await store.revisions(job.name, after=0) == [job, started, moved, ended]

    async def test_store_update_chain_over_another_writers_revision_writes_nothing(
        self, store: JobStore
    ) -> None:
        # A Cancel took revision 3; a chain computed from revision 2 numbers its
        # changes 3 and 4. Its second change expects 3 and must not land over the
        # Cancel's 3: the whole chain is refused, the job stays CANCELLING.
        job = make_job("race")
        await store.create(job)
        started = job.start_step(StepKind.PREPARING_VM_DISKS, at(1))
        await store.update(started, expected_revision=1)
        cancelling = started.request_cancel(at(2))
        await store.update(cancelling, expected_revision=2)
        moved = started.with_progress(Progress(percent=100), at(2))
        ended = moved.finish_step_and_go_on(at(2), TargetResult())
        assert moved.revision == cancelling.revision and ended.revision == 4
        with pytest.raises(ConflictError):
            await store.update_chain([moved, ended], expected_revision=2)
        assert await store.get(job.name) == cancelling
        assert await store.revisions(job.name, after=0) == [job, started, cancelling]

    async def test_store_update_chain_under_a_lost_lease_writes_nothing(
        self, store: JobStore
    ) -> None:
        job = make_job("lost-chain")
        await store.create(job)
        (lease,) = (await store.claim("a", limit=1, ttl=30)).leases
        started = job.start_step(StepKind.PREPARING_VM_DISKS, at(1))
        moved = started.with_progress(Progress(percent=100), at(2))
        with pytest.raises(LeaseLostError):
            await store.update_chain([started, moved], expected_revision=1, epoch=lease.epoch + 1)
        assert await store.get(job.name) == job
        await store.update_chain([started, moved], expected_revision=1, epoch=lease.epoch)
        assert await store.get(job.name) == moved

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
        ("parent", "expected"),
        [
            (
                "projects/-/locations/-/sources/-/migratingVms/-",
                {"a1", "a2", "b1", "x1", "u1", "q1"},
            ),
            ("projects/p/locations/-/sources/-/migratingVms/-", {"a1", "a2", "b1", "u1"}),
            ("projects/p/locations/l/sources/s/migratingVms/-", {"a1", "a2", "b1"}),
            ("projects/-/locations/l/sources/s/migratingVms/vm-a", {"a1", "a2", "x1"}),
            ("projects/p/locations/-/sources/s_1/migratingVms/-", {"u1"}),  # `_` is no wildcard
            ("projects/P/locations/-/sources/-/migratingVms/-", {"q1"}),  # ids are case-sensitive
            ("projects/p%/locations/-/sources/-/migratingVms/-", set()),  # `%` neither
        ],
    )
    async def test_store_list_across_collections_with_wildcards(
        self, store: JobStore, parent: str, expected: set[str]
    ) -> None:
        layout = {
            "a1": PARENT_A,
            "a2": PARENT_A,
            "b1": PARENT_B,
            "x1": "projects/x/locations/l/sources/s/migratingVms/vm-a",
            "u1": "projects/p/locations/m/sources/s_1/migratingVms/vm-u",
            "q1": "projects/P/locations/l/sources/sx1/migratingVms/vm-a",
        }
        for i, (job_id, job_parent) in enumerate(layout.items()):
            await store.create(make_job(job_id, parent=job_parent, created=at(i)))
        listed = await store.list(ListQuery(parent=parent))
        assert {j.name.rpartition("/")[2] for j in listed} == expected
        assert [j.create_time for j in listed] == sorted(j.create_time for j in listed)

    async def test_store_list_keeps_to_the_readable_projects(self, store: JobStore) -> None:
        for i, project in enumerate(["p", "x", "y", "p_"]):
            parent = f"projects/{project}/locations/l/sources/s/migratingVms/vm"
            await store.create(make_job(f"j{i}", parent=parent, created=at(i)))
        everywhere = "projects/-/locations/-/sources/-/migratingVms/-"
        listed = await store.list(ListQuery(parent=everywhere, projects=frozenset({"p", "y"})))
        assert [j.name.split("/")[1] for j in listed] == ["p", "y"]
        assert await store.list(ListQuery(parent=everywhere, projects=frozenset())) == []
        paged = await store.list(
            ListQuery(
                parent=everywhere,
                projects=frozenset({"p", "x", "y"}),
                order_by=parse_order_by("name desc"),
                limit=2,
            )
        )
        assert [j.name.split("/")[1] for j in paged] == ["y", "x"]

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

    async def test_store_closed_raises_store_error(self, backend: Backend) -> None:
        store = backend.new()
        with pytest.raises(StoreError):
            await store.get("x")  # never opened

    # -- leases --

    async def test_store_claim_leases_oldest_unfinished_first_up_to_limit(
        self, store: JobStore
    ) -> None:
        jobs = [
            await stored(store, make_job(f"s{i}", created=at(10 - i)), state)
            for i, state in enumerate(State)
        ]
        unfinished = sorted((j for j in jobs if not j.state.terminal), key=lambda j: j.create_time)
        assert len(unfinished) == 4
        first = await store.claim("a", limit=2, ttl=TTL)
        assert [lease.job for lease in first.leases] == unfinished[:2]
        assert [lease.epoch for lease in first.leases] == [1, 1]
        # Held leases are not taken again; terminal jobs never.
        second = await store.claim("b", limit=10, ttl=TTL)
        assert [lease.job for lease in second.leases] == unfinished[2:]
        assert (await store.claim("c", limit=10, ttl=TTL)).leases == []
        assert list(await store.unfinished()) == unfinished  # leased jobs are still unfinished

    async def test_store_claim_cancelling_takes_only_cancelling_jobs(self, store: JobStore) -> None:
        jobs = {
            state: await stored(store, make_job(f"s{i}", created=at(10 - i)), state)
            for i, state in enumerate(State)
        }
        other = await stored(store, make_job("other-cancel", created=at(20)), State.CANCELLING)
        cancelling = await store.claim("a", limit=10, ttl=TTL, cancelling=True)
        assert [lease.job for lease in cancelling.leases] == [jobs[State.CANCELLING], other]
        assert (await store.claim("b", limit=10, ttl=TTL, cancelling=True)).leases == []
        rest = await store.claim("c", limit=10, ttl=TTL)
        assert {lease.job.state for lease in rest.leases} == {
            State.PENDING,
            State.ACTIVE,
            State.ADAPTING_OS,
        }

    async def test_store_describe_names_the_database(
        self, backend: Backend, tmp_path: Path
    ) -> None:
        where = backend.new().describe()
        if backend.kind == "sqlite":
            assert where == str(tmp_path / "db.sqlite")
        else:
            assert where == f"postgresql://{pg.where()}/{backend.url.rpartition('/')[2]}"

    async def test_store_claim_limit_zero_takes_nothing(self, store: JobStore) -> None:
        await store.create(make_job("z"))
        assert (await store.claim("a", limit=0, ttl=TTL)).leases == []
        assert len((await store.claim("a", limit=1, ttl=TTL)).leases) == 1

    async def test_store_claim_next_expiry_is_the_earliest_live_lease(
        self, store: JobStore
    ) -> None:
        assert await store.claim("a", limit=1, ttl=TTL) == ClaimResult(leases=[])
        older, newer = make_job("older", created=at(0)), make_job("newer", created=at(1))
        await store.create(older)
        await store.create(newer)
        first = await store.claim("a", limit=1, ttl=TTL)
        assert first.next_expiry is not None and 0 < first.next_expiry <= TTL
        second = await store.claim("b", limit=1, ttl=4 * TTL)  # newer, until later
        assert second.next_expiry is not None and 0 < second.next_expiry <= TTL
        none_left = await store.claim("c", limit=1, ttl=TTL)
        assert none_left.leases == []
        assert none_left.next_expiry is not None and 0 < none_left.next_expiry <= TTL
        (older_lease,) = first.leases
        await store.release(older.name, older_lease.epoch)
        (again,) = (await store.claim("d", limit=1, ttl=TTL)).leases
        done = older.fail(JobError(code=ErrorCode.INTERNAL, reason="R", message="m"), at(2))
        await store.update(done, expected_revision=older.revision, epoch=again.epoch)
        # Only the newer job's lease is left: it expires in about 4 * TTL.
        last = await store.claim("e", limit=1, ttl=TTL)
        assert last.next_expiry is not None and TTL < last.next_expiry <= 4 * TTL

    async def test_store_claim_epochs_strictly_grow(self, store: JobStore) -> None:
        job = make_job("e")
        await store.create(job)
        epochs = []
        for owner in "abc":
            (lease,) = (await store.claim(owner, limit=1, ttl=TTL)).leases
            epochs.append(lease.epoch)
            await store.release(job.name, lease.epoch)
        (short,) = (await store.claim("d", limit=1, ttl=SHORT_TTL)).leases
        epochs.append(short.epoch)
        await expire(store, job.name, short.epoch)
        (after_expiry,) = (await store.claim("e", limit=1, ttl=TTL)).leases
        epochs.append(after_expiry.epoch)
        assert epochs == [1, 2, 3, 4, 5]

    async def test_store_concurrent_claims_never_take_the_same_job(self, backend: Backend) -> None:
        first = await backend.open()
        second = await backend.peer(first)
        jobs = [make_job(f"c{i:02}", created=at(i)) for i in range(20)]
        for job in jobs:
            await first.create(job)
        results = await asyncio.gather(
            *(s.claim(f"w{k}", limit=3, ttl=TTL) for k, s in enumerate([first, second] * 3))
        )
        rest = await first.claim("last", limit=100, ttl=TTL)
        names = [lease.job.name for r in [*results, rest] for lease in r.leases]
        assert sorted(names) == [j.name for j in jobs]  # every job once, none twice

    async def test_store_renew_and_holds_while_held_then_not_once_lost(
        self, store: JobStore
    ) -> None:
        job = make_job("h")
        await store.create(job)
        (lease,) = (await store.claim("a", limit=1, ttl=SHORT_TTL)).leases
        assert await store.holds(job.name, lease.epoch)
        assert not await store.holds(job.name, lease.epoch + 1)
        assert not await store.holds(f"{PARENT_A}/cloneJobs/none", lease.epoch)
        assert await store.renew(job.name, lease.epoch, ttl=SHORT_TTL)
        await expire(store, job.name, lease.epoch)
        assert not await store.renew(job.name, lease.epoch, ttl=TTL)  # too late
        (other,) = (await store.claim("b", limit=1, ttl=TTL)).leases
        assert other.epoch > lease.epoch
        assert await store.holds(job.name, other.epoch)
        assert not await store.holds(job.name, lease.epoch)
        assert not await store.renew(job.name, lease.epoch, ttl=TTL)
        assert await store.renew(job.name, other.epoch, ttl=TTL)

    async def test_store_renew_extends_the_lease(self, store: JobStore) -> None:
        job = make_job("x")
        await store.create(job)
        (lease,) = (await store.claim("a", limit=1, ttl=SHORT_TTL)).leases
        assert await store.renew(job.name, lease.epoch, ttl=TTL)
        await asyncio.sleep(SHORT_TTL * 2)  # past the first expiry: the lease's clock is the test
        assert await store.holds(job.name, lease.epoch)
        assert (await store.claim("b", limit=1, ttl=TTL)).leases == []

    async def test_store_fenced_update_with_stale_epoch_writes_nothing(
        self, store: JobStore
    ) -> None:
        job = make_job("f")
        await store.create(job)
        (old,) = (await store.claim("a", limit=1, ttl=TTL)).leases
        await store.release(job.name, old.epoch)
        (lease,) = (await store.claim("b", limit=1, ttl=TTL)).leases
        started = job.start_step(StepKind.PREPARING_VM_DISKS, at(1))
        with pytest.raises(LeaseLostError):
            await store.update(started, expected_revision=1, epoch=old.epoch)
        with pytest.raises(LeaseLostError):  # the lease is checked before the revision
            await store.update(started, expected_revision=7, epoch=old.epoch)
        with pytest.raises(LeaseLostError):  # never claimed at that epoch
            await store.update(started, expected_revision=1, epoch=lease.epoch + 1)
        assert await store.get(job.name) == job
        assert await store.revisions(job.name, after=0) == [job]
        with pytest.raises(ConflictError):  # the live lease, but a stale revision
            await store.update(started, expected_revision=7, epoch=lease.epoch)
        await store.update(started, expected_revision=1, epoch=lease.epoch)
        assert await store.get(job.name) == started
        assert await store.holds(job.name, lease.epoch)  # a running job keeps its lease

    async def test_store_fenced_update_of_missing_job_loses_the_lease(
        self, store: JobStore
    ) -> None:
        job = make_job("ghost").start_step(StepKind.PREPARING_VM_DISKS, at(1))
        with pytest.raises(LeaseLostError):
            await store.update(job, expected_revision=1, epoch=1)
        assert await store.get(job.name) is None

    async def test_store_fenced_update_after_expiry_writes_nothing(self, store: JobStore) -> None:
        job = make_job("late")
        await store.create(job)
        (lease,) = (await store.claim("a", limit=1, ttl=SHORT_TTL)).leases
        await expire(store, job.name, lease.epoch)
        started = job.start_step(StepKind.PREPARING_VM_DISKS, at(1))
        with pytest.raises(LeaseLostError):
            await store.update(started, expected_revision=1, epoch=lease.epoch)
        assert await store.get(job.name) == job
        assert await store.revisions(job.name, after=0) == [job]

    @pytest.mark.parametrize("state", sorted(TERMINAL_STATES))
    async def test_store_terminal_update_under_a_lease_releases_it(
        self, store: JobStore, state: State
    ) -> None:
        job = make_job("t")
        await store.create(job)
        (lease,) = (await store.claim("a", limit=1, ttl=TTL)).leases
        for new in advance(job, state):
            await store.update(new, expected_revision=new.revision - 1, epoch=lease.epoch)
        assert not await store.holds(job.name, lease.epoch)
        assert not await store.renew(job.name, lease.epoch, ttl=TTL)
        assert (await store.claim("b", limit=1, ttl=TTL)).leases == []
        assert (await store.claim("b", limit=1, ttl=TTL)).next_expiry is None

    async def test_store_release_lets_another_owner_claim_at_once(self, store: JobStore) -> None:
        job = make_job("r")
        await store.create(job)
        (lease,) = (await store.claim("a", limit=1, ttl=TTL)).leases
        await store.release(job.name, lease.epoch)
        assert not await store.holds(job.name, lease.epoch)
        (again,) = (await store.claim("b", limit=1, ttl=TTL)).leases
        assert again.job == job and again.epoch > lease.epoch
        await store.release(job.name, lease.epoch)  # a stale release frees nothing
        assert await store.holds(job.name, again.epoch)
        assert (await store.claim("c", limit=1, ttl=TTL)).leases == []

    async def test_store_lease_changes_write_no_revision(self, store: JobStore) -> None:
        job = await stored(store, make_job("n"), State.ADAPTING_OS)
        history = list(await store.revisions(job.name, after=0))
        (lease,) = (await store.claim("a", limit=1, ttl=TTL)).leases
        assert lease.job == job
        assert await store.renew(job.name, lease.epoch, ttl=TTL)
        await store.release(job.name, lease.epoch)
        (again,) = (await store.claim("b", limit=1, ttl=TTL)).leases
        assert again.job == job
        assert await store.get(job.name) == job
        assert list(await store.revisions(job.name, after=0)) == history
        assert await store.oldest_revision(job.name) == 1

    # -- settings and the change feed --

    async def test_store_page_token_key_is_made_once_and_kept(self, backend: Backend) -> None:
        first = await backend.open()
        second = await backend.peer(first)
        keys = await asyncio.gather(
            *(s.page_token_key(PAGE_TOKEN_KEY_BYTES) for s in [first, second, first, second])
        )
        assert len(keys[0]) == PAGE_TOKEN_KEY_BYTES
        assert set(keys) == {keys[0]}
        if second is not first:
            await backend.close(second)
        await backend.close(first)
        reopened = await backend.open()
        assert await reopened.page_token_key(PAGE_TOKEN_KEY_BYTES) == keys[0]
        with pytest.raises(StoreError) as caught:  # a key of another size is refused
            await reopened.page_token_key(PAGE_TOKEN_KEY_BYTES // 2)
        assert "delete" in str(caught.value)

    async def test_store_listen_reports_the_feed_available(self, store: JobStore) -> None:
        listener = Recorder()
        await store.listen(listener)
        assert await listener.next() == ("available", True)

    # -- operations --

    async def test_store_create_with_operation_commits_both(self, store: JobStore) -> None:
        job = make_job("j")
        operation = Operation.new(target=job.name, verb=Verb.CREATE, now=T0, job=job)
        await store.create(job, operation=operation)
        assert await store.get(job.name) == job
        assert await store.get_operation(operation.name) == operation

    async def test_store_create_duplicate_stores_no_operation(self, store: JobStore) -> None:
        job = make_job("j")
        await store.create(job)
        operation = Operation.new(target=job.name, verb=Verb.CREATE, now=T0, job=job)
        with pytest.raises(DuplicateJobError):
            await store.create(job, operation=operation)
        assert await store.get_operation(operation.name) is None

    async def test_store_add_operation_keeps_one_per_job_and_verb(self, store: JobStore) -> None:
        job = await stored(store, make_job("j"), State.ACTIVE)
        first = Operation.new(target=job.name, verb=Verb.CANCEL, now=at(1))
        again = Operation.new(target=job.name, verb=Verb.CANCEL, now=at(2))
        assert await store.add_operation(first) == first
        assert await store.add_operation(again) == first
        assert await store.get_operation(again.name) is None
        created = Operation.new(target=job.name, verb=Verb.CREATE, now=at(3), job=job)
        assert await store.add_operation(created) == created

    async def test_store_operations_are_seen_by_every_server(self, backend: Backend) -> None:
        store = await backend.open()
        peer = await backend.peer(store)
        job = make_job("j")
        operation = Operation.new(target=job.name, verb=Verb.CREATE, now=T0, job=job)
        await store.create(job, operation=operation)
        assert await peer.get_operation(operation.name) == operation
        raced = Operation.new(target=job.name, verb=Verb.CREATE, now=at(1), job=job)
        assert await peer.add_operation(raced) == operation

    async def test_store_list_operations_newest_first_by_location(self, store: JobStore) -> None:
        made = []
        for i in range(5):
            job = make_job(f"j{i}")
            operation = Operation.new(target=job.name, verb=Verb.CREATE, now=at(i % 3), job=job)
            await store.create(job, operation=operation)
            made.append(operation)
        elsewhere = make_job("far", parent="projects/p/locations/m/sources/s/migratingVms/vm")
        await store.create(
            elsewhere,
            operation=Operation.new(target=elsewhere.name, verb=Verb.CREATE, now=T0, job=elsewhere),
        )
        expected = sorted(made, key=lambda o: (o.create_time, o.name), reverse=True)
        assert await store.list_operations("projects/p/locations/l", limit=10) == expected
        pages: list[Operation] = []
        after: Cursor | None = None
        while True:
            page = await store.list_operations("projects/p/locations/l", limit=2, after=after)
            pages.extend(page)
            if len(page) < 2:
                break
            after = Cursor(create_time_us=to_us(page[-1].create_time), name=page[-1].name)
        assert pages == expected

    async def test_store_delete_operation_keeps_the_job(self, store: JobStore) -> None:
        job = make_job("j")
        operation = Operation.new(target=job.name, verb=Verb.CREATE, now=T0, job=job)
        await store.create(job, operation=operation)
        assert await store.delete_operation(operation.name) is True
        assert await store.delete_operation(operation.name) is False
        assert await store.get_operation(operation.name) is None
        assert await store.get(job.name) == job
        # Forgotten, a job may get a new operation of the same verb.
        again = Operation.new(target=job.name, verb=Verb.CREATE, now=at(1), job=job)
        assert await store.add_operation(again) == again


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

    async def test_sqlite_store_second_open_while_in_use_raises(self, tmp_path: Path) -> None:
        # Only SQLite: one server per database (PostgreSQL serves any number).
        backend = Backend("sqlite", lambda: SqliteJobStore(tmp_path / "db.sqlite"))
        try:
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
        finally:
            await backend.close_all()

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

    async def test_sqlite_store_group_commit_lingers_only_when_changes_queue_behind(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = SqliteJobStore(tmp_path / "db.sqlite")
        await store.open()
        lingers: list[float] = []
        real_sleep = asyncio.sleep

        async def sleep(delay: float) -> None:
            lingers.append(delay)
            await real_sleep(0)

        monkeypatch.setattr(
            sqlite_store, "asyncio", SimpleNamespace(**{**vars(asyncio), "sleep": sleep})
        )
        try:
            # A lone writer: each change commits at once.
            for i in range(3):
                await store.create(make_job(f"alone-{i}"))
            assert lingers == []
            # Changes that queue while a transaction runs: the next batch lingers once
            # for more, then commits them together.
            held, release = threading.Event(), threading.Event()

            def hold() -> None:
                held.set()
                release.wait(10)

            blocker = store._writer.run(hold)
            first = asyncio.ensure_future(store.create(make_job("first")))
            await asyncio.to_thread(held.wait, 10)
            await real_sleep(0)  # the first change's transaction waits behind the blocker
            behind = [
                asyncio.ensure_future(store.create(make_job(f"behind-{i}"))) for i in range(5)
            ]
            await real_sleep(0)
            release.set()
            await blocker
            await asyncio.gather(first, *behind)
            assert lingers == [sqlite_store.LINGER]
            for i in range(5):
                assert await store.get(make_job(f"behind-{i}").name) is not None
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

    async def test_sqlite_store_upgrades_a_version_2_database_to_leases(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "db.sqlite"
        job = make_job("kept")
        with sqlite3.connect(path) as conn:  # a database made by the release before leases
            for sql in migrations()[:2]:
                for statement in sql.split(";"):
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO clone_jobs (name, parent, request_id, state, create_time_us,"
                " revision, record) VALUES (?, ?, NULL, ?, ?, ?, ?)",
                (job.name, PARENT_A, int(job.state), 0, job.revision, records.dump(job)),
            )
            conn.execute("PRAGMA user_version = 2")
        conn.close()
        store = SqliteJobStore(path)
        await store.open()
        try:
            assert await store.get(job.name) == job
            (lease,) = (await store.claim("a", limit=1, ttl=TTL)).leases
            assert lease == Lease(job=job, epoch=1)
        finally:
            await store.close()
        conn = sqlite3.connect(path)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            columns = {row[1] for row in conn.execute("PRAGMA table_info(clone_jobs)")}
            indexes = {row[1] for row in conn.execute("PRAGMA index_list(clone_jobs)")}
        finally:
            conn.close()
        assert version == len(migrations()) == 4
        assert {"lease_owner", "lease_epoch", "lease_expires"} <= columns
        assert "clone_jobs_claim" in indexes

    async def test_sqlite_store_claim_uses_the_claim_index(self, tmp_path: Path) -> None:
        path = tmp_path / "db.sqlite"
        store = SqliteJobStore(path)
        try:
            await store.open()
        finally:
            await store.close()
        conn = sqlite3.connect(path)
        try:
            plan = conn.execute("EXPLAIN QUERY PLAN " + CLAIM_SQL, ("a", 1.0, 0.0, 5)).fetchall()
        finally:
            conn.close()
        details = [str(row[3]) for row in plan]
        assert any("USING INDEX clone_jobs_claim" in d for d in details), details
        assert not any("TEMP B-TREE" in d for d in details), details

    async def test_sqlite_store_open_clears_the_leases_of_a_crashed_server(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "db.sqlite"
        job = make_job("resume")
        first = SqliteJobStore(path)
        await first.open()
        try:
            await first.create(job)
            (lease,) = (await first.claim("crashed", limit=1, ttl=3600)).leases
        finally:
            await first.close()  # as a crash would, it never released
        second = SqliteJobStore(path)
        await second.open()
        try:
            assert not await second.holds(job.name, lease.epoch)
            (again,) = (await second.claim("next", limit=1, ttl=TTL)).leases
            assert again.job == job and again.epoch == lease.epoch + 1
        finally:
            await second.close()

    async def test_sqlite_store_page_token_key_is_a_file_beside_the_database(
        self, tmp_path: Path
    ) -> None:
        store = SqliteJobStore(tmp_path / "clonejob.db")
        await store.open()
        try:
            key = await store.page_token_key(PAGE_TOKEN_KEY_BYTES)
            assert (tmp_path / "page-token.key").read_bytes() == key
            assert [n for n in os.listdir(tmp_path) if n.startswith("page-token")] == [
                "page-token.key"
            ]
        finally:
            await store.close()

    async def test_sqlite_store_page_token_key_of_the_wrong_length_raises(
        self, tmp_path: Path
    ) -> None:
        (tmp_path / "page-token.key").write_bytes(b"")  # as a crash mid-write could leave
        store = SqliteJobStore(tmp_path / "clonejob.db")
        await store.open()
        try:
            with pytest.raises(StoreError) as caught:
                await store.page_token_key(PAGE_TOKEN_KEY_BYTES)
        finally:
            await store.close()
        assert str(tmp_path / "page-token.key") in str(caught.value)
        assert "delete it" in str(caught.value)

    async def test_sqlite_store_group_commit_fails_only_the_lost_lease(
        self, tmp_path: Path
    ) -> None:
        store = SqliteJobStore(tmp_path / "db.sqlite")
        await store.open()
        try:
            jobs = [make_job(f"job-{i}", created=at(i)) for i in range(3)]
            for job in jobs:
                await store.create(job)
            leases = (await store.claim("a", limit=3, ttl=TTL)).leases
            started = [j.start_step(StepKind.PREPARING_VM_DISKS, at(5)) for j in jobs]
            outcomes = await asyncio.gather(
                store.update(started[0], expected_revision=1, epoch=leases[0].epoch),
                store.update(started[1], expected_revision=1, epoch=leases[1].epoch + 1),
                store.update(started[2], expected_revision=1, epoch=leases[2].epoch),
                return_exceptions=True,
            )
            assert outcomes[0] is None and outcomes[2] is None
            assert isinstance(outcomes[1], LeaseLostError)
            assert [await store.get(j.name) for j in jobs] == [started[0], jobs[1], started[2]]
        finally:
            await store.close()


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("CREATE TABLE a (x); CREATE TABLE b (y);", ["CREATE TABLE a (x);", "CREATE TABLE b (y);"]),
        (
            "-- a comment; with a semicolon\nCREATE TABLE a (x);\n-- trailing\n",
            ["-- a comment; with a semicolon\nCREATE TABLE a (x);"],
        ),
        (
            "CREATE TRIGGER t AFTER INSERT ON a BEGIN\n"
            "  INSERT INTO b VALUES (';');\n  UPDATE b SET y = 1;\nEND;\nSELECT 1",
            [
                "CREATE TRIGGER t AFTER INSERT ON a BEGIN\n"
                "  INSERT INTO b VALUES (';');\n  UPDATE b SET y = 1;\nEND;",
                "SELECT 1",
            ],
        ),
        ("\n-- only comments\n", []),
    ],
)
def test_sqlite_statements_split_whole_statements(script: str, expected: list[str]) -> None:
    assert schema.sqlite_statements(script) == expected


def test_sqlite_migrations_run_whole_including_triggers(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db.sqlite")
    try:
        for sql in migrations():
            for statement in schema.sqlite_statements(sql):
                conn.execute(statement)
        script = (
            "CREATE TABLE audit (name TEXT);"
            "CREATE TRIGGER audited AFTER INSERT ON clone_jobs BEGIN"
            " INSERT INTO audit VALUES (NEW.name); INSERT INTO audit VALUES ('x;y'); END;"
        )
        for statement in schema.sqlite_statements(script):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO clone_jobs (name, parent, state, create_time_us, revision, record)"
            " VALUES ('n', 'p', 1, 0, 1, '{}')"
        )
        assert conn.execute("SELECT name FROM audit").fetchall() == [("n",), ("x;y",)]
    finally:
        conn.close()


# -- PostgreSQL only --


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with pg.temporary_database() as url:
        yield url


async def admin_execute(url: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    """Run `sql` on the test database, on a connection of its own."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(sql, args or None)
        return await cursor.fetchall() if cursor.description else []


async def terminate(url: str, application_name: str) -> int:
    """Kill the store's connections to the test database, and wait until they
    are gone; how many there were."""
    rows = await admin_execute(
        url,
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = %s"
        " AND pid <> pg_backend_pid()",
        application_name,
    )
    pids = [row[0] for row in rows]
    await admin_execute(url, "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", pids)
    for _ in range(1000):  # a backend exits a moment after it is told to
        if not await admin_execute(url, "SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s)", pids):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError(f"backends {pids} did not exit")
    return len(pids)


class TestPostgresJobStore:
    """What only the PostgreSQL store does: many servers, the change feed, recovery."""

    @staticmethod
    @contextlib.asynccontextmanager
    async def opened(url: str, *, pool_size: int = 8) -> AsyncIterator[PostgresJobStore]:
        store = PostgresJobStore(url, pool_size=pool_size)
        try:
            await store.open()
            yield store
        finally:
            await store.close()

    async def test_postgres_change_feed_tells_changes_by_any_server_in_order(
        self, pg_url: str
    ) -> None:
        async with self.opened(pg_url) as watcher, self.opened(pg_url) as writer:
            listener = Recorder()
            await watcher.listen(listener)
            assert await listener.next() == ("available", True)
            job = make_job("fed")
            await writer.create(job)
            history = advance(job, State.CANCELLED)  # CANCELLING (claimable), then CANCELLED
            for new in history:
                await writer.update(new, expected_revision=new.revision - 1)
            assert await listener.next() == ("change", job.name, 1, True)
            assert await listener.next() == ("change", job.name, 2, True)
            assert await listener.next() == ("change", job.name, 3, False)
            other = make_job("other")
            await writer.create(other)
            (lease,) = (await writer.claim("w", limit=1, ttl=TTL)).leases  # no revision: silent
            assert await writer.renew(other.name, lease.epoch, ttl=TTL)
            started = other.start_step(StepKind.PREPARING_VM_DISKS, at(1))
            await writer.update(started, expected_revision=1, epoch=lease.epoch)
            await writer.release(other.name, lease.epoch)  # released: claimable again
            await watcher.create(make_job("own"))  # a server hears its own commits too
            assert await listener.next() == ("change", other.name, 1, True)
            assert await listener.next() == ("change", other.name, 2, False)
            assert await listener.next() == ("change", other.name, 2, True)
            assert await listener.next() == ("change", f"{PARENT_A}/cloneJobs/own", 1, True)
            assert listener.events.empty()

    async def test_postgres_change_feed_reconnects_and_resyncs_when_killed(
        self, pg_url: str
    ) -> None:
        async with self.opened(pg_url) as watcher, self.opened(pg_url) as writer:
            listener = Recorder()
            await watcher.listen(listener)
            assert await listener.next() == ("available", True)
            assert await terminate(pg_url, LISTEN_APPLICATION_NAME) == 1  # one per store
            assert await listener.next() == ("available", False)
            assert await listener.next() == ("resync",)
            assert await listener.next() == ("available", True)
            job = make_job("after")
            await writer.create(job)
            assert await listener.next() == ("change", job.name, 1, True)
            assert await terminate(pg_url, LISTEN_APPLICATION_NAME) == 1
            assert [await listener.next() for _ in range(3)] == [
                ("available", False),
                ("resync",),
                ("available", True),
            ]
            await writer.update(job.request_cancel(at(1)), expected_revision=1)
            assert await listener.next() == ("change", job.name, 2, True)

    async def test_postgres_calls_while_connections_are_killed_fail_unavailable_then_work(
        self, pg_url: str
    ) -> None:
        async with self.opened(pg_url, pool_size=4) as store:
            job = make_job("k").start_step(StepKind.PREPARING_VM_DISKS, at(0))
            await store.create(job)
            outcomes: list[str] = []
            created: list[str] = []
            stop = asyncio.Event()

            async def outcome(call: Awaitable[object]) -> str:
                try:
                    await call
                except StoreUnavailableError:
                    return "unavailable"
                return "ok"

            async def traffic() -> None:
                for round_ in itertools.count():
                    if stop.is_set():
                        return
                    names = [f"k{round_}-{i}" for i in range(3)]
                    calls: list[Awaitable[object]] = [
                        store.get(job.name),
                        store.list(ListQuery(parent=PARENT_A)),
                        store.claim("a", limit=1, ttl=TTL),
                        store.holds(job.name, 1),
                        store.page_token_key(PAGE_TOKEN_KEY_BYTES),
                        *(store.create(make_job(n)) for n in names),
                    ]
                    got = await asyncio.gather(*(outcome(c) for c in calls))
                    outcomes.extend(got)
                    created.extend(n for n, o in zip(names, got[-3:], strict=True) if o == "ok")

            running = asyncio.ensure_future(traffic())
            try:
                for _ in range(5):  # kill them while calls run on them
                    assert await terminate(pg_url, APPLICATION_NAME) >= 1
            finally:
                stop.set()
                await running
            assert set(outcomes) <= {"ok", "unavailable"}
            assert "ok" in outcomes
            # Killed while idle in the pool: found out and replaced, no call fails.
            assert await terminate(pg_url, APPLICATION_NAME) >= 1
            results = await asyncio.gather(*(store.get(job.name) for _ in range(8)))
            assert results == [job] * 8
            await store.create(make_job("after"))
            listed = {
                j.name.rpartition("/")[2] for j in await store.list(ListQuery(parent=PARENT_A))
            }
            # A create that failed unavailable may have committed before its answer was lost.
            assert {"k", "after", *created} <= listed

    async def test_postgres_servers_starting_at_once_migrate_once(self, pg_url: str) -> None:
        stores = [PostgresJobStore(pg_url) for _ in range(3)]
        try:
            await asyncio.gather(*(s.open() for s in stores))
            job = make_job("m")
            await stores[0].create(job)
            assert [await s.get(job.name) for s in stores] == [job] * 3
        finally:
            await asyncio.gather(*(s.close() for s in stores))
        rows = await admin_execute(pg_url, "SELECT version FROM schema_version ORDER BY version")
        steps = schema.migrations("postgres")
        assert [r[0] for r in rows] == list(range(1, len(steps) + 1))

    async def test_postgres_newer_schema_raises_store_error(self, pg_url: str) -> None:
        async with self.opened(pg_url):
            pass
        newer = len(schema.migrations("postgres")) + 1
        await admin_execute(pg_url, "INSERT INTO schema_version (version) VALUES (%s)", newer)
        store = PostgresJobStore(pg_url)
        try:
            with pytest.raises(StoreError) as caught:
                await store.open()
        finally:
            await store.close()
        assert f"schema version {newer}, newer" in str(caught.value)
        assert "run a newer clonejob-server" in str(caught.value)
        rows = await admin_execute(pg_url, "SELECT max(version) FROM schema_version")
        assert rows == [(newer,)]

    async def test_postgres_claim_uses_the_claim_index(self, pg_url: str) -> None:
        async with self.opened(pg_url):
            pass
        async with await psycopg.AsyncConnection.connect(pg_url) as conn:
            await conn.execute("SET enable_seqscan = off")  # an empty table would scan anyway
            cursor = await conn.execute(
                "EXPLAIN SELECT name FROM clone_jobs"
                f" WHERE state IN {UNFINISHED_STATES}"
                " AND (lease_expires IS NULL OR lease_expires <= now())"
                " ORDER BY create_time_us, name LIMIT 5 FOR UPDATE SKIP LOCKED"
            )
            plan = " ".join(str(row[0]) for row in await cursor.fetchall())
        assert "clone_jobs_claim" in plan, plan

    @pytest.mark.parametrize(
        ("url", "says"),
        [
            ("postgresql://u:sekret@127.0.0.1:5432/db?nonsense=1", "not valid"),
            ("postgresql://u:sekret@[::1/db", "not valid"),
            ("postgresql://u:sekret@127.0.0.1:port/db", "port 'port' is not a number"),
        ],
    )
    async def test_postgres_bad_url_raises_store_error(self, url: str, says: str) -> None:
        store = PostgresJobStore(url, connect_timeout=1)
        with pytest.raises(StoreError) as caught:
            await store.open()
        await store.close()
        assert says in str(caught.value)
        assert "sekret" not in str(caught.value)

    def test_postgres_describe_never_shows_the_user_or_password(self) -> None:
        store = PostgresJobStore("postgresql://u:sekret@db.example:5433/jobs")
        assert store.describe() == "postgresql://db.example:5433/jobs"

    async def test_postgres_unreachable_database_raises_after_connect_timeout(self) -> None:
        store = PostgresJobStore("postgresql://u:sekret@127.0.0.1:1/jobs", connect_timeout=0.5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(StoreError) as caught:
            await store.open()
        await store.close()
        assert 0.4 <= loop.time() - started < 10
        assert str(caught.value).startswith("cannot reach PostgreSQL at 127.0.0.1:1/jobs: ")
        assert "sekret" not in str(caught.value)

    async def test_postgres_missing_database_raises_at_once(self, pg_url: str) -> None:
        missing = pg_url.rpartition("/")[0] + "/clonejob_test_missing"
        store = PostgresJobStore(missing, connect_timeout=30)
        with pytest.raises(StoreError) as caught:
            await asyncio.wait_for(store.open(), 10)  # no retrying for 30 s
        await store.close()
        assert "does not exist" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://u@h/db", True),
        ("postgres://u@h/db", True),
        ("POSTGRESQL://u@h/db", True),
        ("mysql://u@h/db", False),
        ("/var/lib/clonejob/clonejob.db", False),
        ("", False),
    ],
)
def test_is_postgres_url(text: str, expected: bool) -> None:
    assert is_postgres_url(text) is expected


def test_open_store_picks_the_store_by_url(tmp_path: Path) -> None:
    default = open_store(None, tmp_path, revision_retention=5, connect_timeout=1)
    assert isinstance(default, SqliteJobStore)
    assert default.path == tmp_path / "clonejob.db" and default.revision_retention == 5
    pg = open_store("postgres://u@h/db", tmp_path, revision_retention=5, connect_timeout=2)
    assert isinstance(pg, PostgresJobStore)
    assert pg.revision_retention == 5 and pg.connect_timeout == 2
    with pytest.raises(StoreError) as caught:
        open_store("mysql://u:sekret@h/db", tmp_path, revision_retention=5, connect_timeout=1)
    assert str(caught.value) == "--store: mysql://u:***@h/db is not a postgresql:// URL"


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
