"""The engine: the job service one replica offers, over parts that each do one thing.

- `changes.JobChanges`: every change is computed from the stored job, committed
  (conditional on its revision; a runner's also on its lease epoch), and only
  then published and answered, so no one sees a change a crash could take back;
  a change that loses a race with another replica is re-read and retried.
- `worker.Worker`: claims PENDING jobs and jobs whose lease expired, up to the
  replica's slots, and runs each with a `runner.Runner` under its lease.
- `feed.ChangeFeed`: other replicas' commits reach this replica's watchers,
  cache and runners (a Cancel taken elsewhere stops the step running here).
- `watch.watch`: a job's history after a revision, then its live changes.

With one SQLite server, the same parts run with one replica: its worker takes
up at start every job a previous process left unfinished, re-running the
interrupted step (each step is safe to repeat) or finishing a cancellation.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from datetime import UTC, datetime

from server.domain.errors import (
    JobExistsError,
    JobFinishedError,
    MigratingVmNotFoundError,
    NoCompletedCycleError,
    OperationNotFoundError,
    RequestIdReusedError,
)
from server.domain.job import CloneJob, State, TargetSpec
from server.domain.listing import Cursor, ListQuery
from server.domain.migrating_vm import MigratingVm
from server.domain.names import CloneJobName, MigratingVmName, SourceName
from server.domain.operation import Operation, Verb
from server.engine.broadcast import Hub
from server.engine.changes import ChangeObserver, JobChanges
from server.engine.feed import ChangeFeed
from server.engine.runner import Runner
from server.engine.watch import Heartbeat, watch
from server.engine.worker import Worker
from server.store.base import DuplicateJobError, JobStore, Lease
from server.targets.base import Target

log = logging.getLogger("clonejob.engine")

DEFAULT_LEASE_TTL = 15.0
# The lease of a store this server writes alone (SQLite, behind its lock file): no
# other replica can take a job over, so a lease lasts as long as the process (the
# store clears leases at open) and is never renewed — no commit every TTL/3.
EXCLUSIVE_LEASE_TTL = 10 * 365 * 86_400.0


def utcnow() -> datetime:
    return datetime.now(UTC)


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
        lease_ttl: float = DEFAULT_LEASE_TTL,
        owner: str | None = None,
        on_store_available: Callable[[bool], None] = lambda available: None,
    ) -> None:
        self.store = store
        self.target = target
        self.hub = hub or Hub()
        self._clock = clock
        self.changes = JobChanges(store, self.hub, clock=clock, observers=observers)
        if store.exclusive:
            lease_ttl = EXCLUSIVE_LEASE_TTL
        self.worker = Worker(
            store, self._runner, slots=max_concurrent_jobs, ttl=lease_ttl, owner=owner
        )
        self.feed = ChangeFeed(self.changes, self.worker, on_available=on_store_available)
        self.changes.on_commit(self._committed)
        self._lease_ttl = lease_ttl
        self._running = False
        self.queued_seen = 0  # PENDING jobs of the fleet, as last counted (metrics)

    def _runner(self, lease: Lease) -> Runner:
        self.changes.remember(lease.job)
        return Runner(
            self.changes,
            self.target,
            lease,
            ttl=self._lease_ttl,
            renew=not self.store.exclusive,
        )

    # -- lifecycle --

    async def start(self) -> int:
        """Listen to the change feed and take up the jobs waiting for a worker;
        returns how many this replica took up at once."""
        self.feed.start()
        await self.store.listen(self.feed)
        self._running = True
        claimed = await self.worker.start()
        if claimed:
            log.info("took up %d unfinished jobs", claimed)
        return claimed

    async def stop(self) -> None:
        """Stop running jobs where they are and give their leases back; the next
        owner (another replica, or this one restarted) re-runs their steps."""
        self._running = False
        self.hub.close()
        await self.worker.stop()
        await self.feed.stop()
        # Changes being committed finish (and are published) before the store closes.
        await self.changes.drain()

    @property
    def queued_jobs(self) -> int:
        """Jobs waiting for a free slot (the fleet's PENDING jobs, as last counted)."""
        return self.queued_seen if self._running else 0

    @property
    def slots_in_use(self) -> int:
        """Jobs holding a slot here: running their steps."""
        return self.worker.slots_in_use

    # -- the calls --

    async def create(
        self,
        *,
        name: CloneJobName,
        target: TargetSpec,
        request_id: str = "",
        request_hash: str = "",
        validate_only: bool = False,
    ) -> CloneJob:
        """Store a new job; a worker then runs it. A retry with the same request id
        gets the original, whichever replica took either call. With `validate_only`,
        every check is made and the job returned as it would be created, unstored."""
        job, _ = await self._create(
            name, target, request_id, request_hash, operation=False, validate_only=validate_only
        )
        return job

    async def create_with_operation(
        self,
        *,
        name: CloneJobName,
        target: TargetSpec,
        request_id: str = "",
        request_hash: str = "",
    ) -> tuple[CloneJob, Operation]:
        """`create`, and the job's create operation, committed with the job. A retry
        gets the original job and its operation (made now if the job was created
        without one, through clonejob.v1)."""
        job, operation = await self._create(name, target, request_id, request_hash, operation=True)
        if operation is None:
            operation = await self._operation_of_created(job)
        return job, operation

    async def _create(
        self,
        name: CloneJobName,
        target: TargetSpec,
        request_id: str,
        request_hash: str,
        *,
        operation: bool,
        validate_only: bool = False,
    ) -> tuple[CloneJob, Operation | None]:
        """The job, and its create operation when this call made both.

        A retry (the same request id) and a taken name are told by the insert: the
        store's unique name and request id guard it, so no lookup comes first. They
        answer before any check failure, as ever: when a check fails, the earlier
        job is looked for then; and `validate_only`, which inserts nothing, looks
        first."""
        if validate_only:
            earlier = await self._earlier(name, request_id, request_hash)
            if earlier is not None:
                return earlier, None
        try:
            job = await self._checked(name, target, request_id, request_hash)
        except Exception:
            if not validate_only:
                earlier = await self._earlier(name, request_id, request_hash)
                if earlier is not None:
                    return earlier, None
            raise
        if validate_only:
            return job, None
        made = (
            Operation.new(target=job.name, verb=Verb.CREATE, now=job.create_time, job=job)
            if operation
            else None
        )
        try:
            # Logged once, as the commit's "none -> PENDING" line (JobChanges).
            await self.changes.create(job, operation=made)
        except DuplicateJobError as dup:  # the name or the request id is taken
            if request_id and dup.existing.request_id == request_id:
                return self._same_request(request_id, request_hash, dup.existing), None
            raise JobExistsError(self.changes.remember(dup.existing)) from None
        return job, made

    async def _checked(
        self, name: CloneJobName, target: TargetSpec, request_id: str, request_hash: str
    ) -> CloneJob:
        """The new job on the migrating VM's latest cycle, past the checks that would
        otherwise fail hours into the copy: the instance name taken, no room for the
        data (the steps check again later)."""
        cycle = await self.target.latest_cycle(name.parent)
        job = CloneJob.new(
            name=str(name),
            target=target,
            source_cycle=cycle,
            now=self._clock(),
            request_id=request_id,
            request_hash=request_hash,
        )
        await self.target.preflight(job)
        return job

    async def _earlier(
        self, name: CloneJobName, request_id: str, request_hash: str
    ) -> CloneJob | None:
        """The job this call is a retry of (RequestIdReusedError when its id was used
        for another request); JobExistsError when the name is another job's; None
        when neither."""
        if request_id:
            existing = await self.store.get_by_request_id(request_id)
            if existing is not None:
                return self._same_request(request_id, request_hash, existing)
        existing = await self.store.get(str(name))
        if existing is None:
            return None
        if request_id and existing.request_id == request_id:
            # The same request, committed by another replica since the lookup above.
            return self._same_request(request_id, request_hash, existing)
        raise JobExistsError(self.changes.remember(existing))

    async def _operation_of_created(self, job: CloneJob) -> Operation:
        """The create operation of an existing job: the one stored, or a new one
        whose response is the job as first committed (if that revision is kept)."""
        first = next(iter(await self.store.revisions(job.name, after=0)), None)
        created = first if first is not None and first.revision == 1 else job
        return await self.store.add_operation(
            Operation.new(target=job.name, verb=Verb.CREATE, now=created.create_time, job=created)
        )

    async def migrating_vm_exists(self, name: MigratingVmName) -> bool:
        try:
            await self.target.latest_cycle(name)
        except MigratingVmNotFoundError:
            return False
        except NoCompletedCycleError:
            return True
        return True

    async def migrating_vm(self, name: MigratingVmName) -> MigratingVm:
        return await self.target.migrating_vm(name)

    async def migrating_vms(self, source: SourceName) -> list[MigratingVm]:
        return await self.target.migrating_vms(source)

    @staticmethod
    def _same_request(request_id: str, request_hash: str, existing: CloneJob) -> CloneJob:
        if existing.request_hash != request_hash:
            raise RequestIdReusedError(request_id, existing)
        return existing

    async def get(self, name: str) -> CloneJob:
        """The job as last committed, as far as this replica knows: its cache is fed
        by the change feed, and never goes back behind a revision it has sent."""
        return await self.changes.get(name)

    def current(self, name: str) -> CloneJob | None:
        """The job from this replica's cache when that is sure to be current (see
        `JobChanges.current`); None means: ask `get`."""
        return self.changes.current(name)

    async def list(self, query: ListQuery) -> Sequence[CloneJob]:
        return await self.store.list(query)

    async def cancel(self, name: str) -> CloneJob:
        """CANCELLING at once; the job's runner, wherever it is, then cleans up and
        ends it CANCELLED (a job no one runs yet is claimed to finish it)."""

        def request(job: CloneJob) -> CloneJob:
            if job.state in (State.SUCCEEDED, State.FAILED):
                raise JobFinishedError(job)
            return job.request_cancel(self._clock())

        return await self.changes.change(name, request)

    async def cancel_with_operation(self, name: str) -> tuple[CloneJob, Operation]:
        """`cancel`, and the job's cancel operation (the one made by an earlier
        Cancel, if any: a repeated Cancel is the same cancellation)."""
        job = await self.cancel(name)
        operation = await self.store.add_operation(
            Operation.new(target=job.name, verb=Verb.CANCEL, now=self._clock())
        )
        return job, operation

    # -- operations --

    async def get_operation(self, name: str) -> Operation:
        operation = await self.store.get_operation(name)
        if operation is None:
            raise OperationNotFoundError(name)
        return operation

    async def list_operations(
        self, location: str, *, limit: int, after: Cursor | None = None
    ) -> Sequence[Operation]:
        return await self.store.list_operations(location, limit=limit, after=after)

    async def delete_operation(self, name: str) -> None:
        if not await self.store.delete_operation(name):
            raise OperationNotFoundError(name)

    def watch(
        self, name: str, *, after_revision: int, heartbeat_interval: float
    ) -> AsyncGenerator[CloneJob | Heartbeat, None]:
        """Every committed change after `after_revision`, once and in order (see
        `server.engine.watch`)."""
        return watch(
            self.changes, name, after_revision=after_revision, heartbeat_interval=heartbeat_interval
        )

    # -- what a commit here sets going --

    def _committed(self, old: CloneJob | None, new: CloneJob) -> None:
        if new.state is State.CANCELLING:
            runner = self.worker.runner(new.name)
            if runner is not None:  # the running step stops promptly
                runner.cancel_step()
        if old is None or (new.state is State.CANCELLING and old.state is not State.CANCELLING):
            self.worker.poke()  # a job for some worker: maybe this replica's
