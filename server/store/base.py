"""The store protocol: what the engine needs from any database.

Two stores implement it: SQLite (embedded, one process, the default) and
PostgreSQL (any number of replicas sharing one database). Beside the jobs and
their revisions, the store keeps each job's *lease*: which replica runs it,
until when (judged by the store's own clock), and a fencing *epoch* that grows
with every claim. A runner's writes are conditional on its epoch, so a runner
that lost its lease can commit nothing more. Leases are not changes of the
job: claiming, renewing or releasing one writes no revision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from server.domain.errors import LeaseLostError
from server.domain.job import CloneJob, State
from server.domain.listing import Cursor, ListQuery
from server.domain.operation import Operation

__all__ = [
    "ChangeListener",
    "ClaimResult",
    "ConflictError",
    "DuplicateJobError",
    "JobStore",
    "Lease",
    "LeaseLostError",
    "StoreError",
    "StoreUnavailableError",
]


class StoreError(Exception):
    """The store cannot be used (locked, corrupt, from a newer version, …)."""


class StoreUnavailableError(StoreError):
    """The database cannot be reached right now (connection lost, restarting, …);
    the same call may succeed later."""


class DuplicateJobError(Exception):
    """A job with this name, or this request id, exists already."""

    def __init__(self, existing: CloneJob) -> None:
        super().__init__(existing.name)
        self.existing = existing


class ConflictError(Exception):
    """The job changed since the revision the update was computed from."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    """A claim on running one job: `epoch` fences every write made under it."""

    job: CloneJob
    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimResult:
    leases: Sequence[Lease]
    # Seconds until the earliest live lease of an unfinished job (held by anyone)
    # expires, so that a worker with free slots can wake then; None when there is none.
    next_expiry: float | None = None


class ChangeListener(Protocol):
    """Told of committed changes by the store's change feed; must not block or raise."""

    def on_change(self, name: str, revision: int, claimable: bool) -> None:
        """`name` reached `revision`. `claimable` when the job may need a worker:
        just created, asked to cancel, or its lease released."""

    def on_resync(self) -> None:
        """The feed (re)connected: changes may have been missed since the last
        `on_change`; listeners re-read what they follow."""

    def on_available(self, available: bool) -> None:
        """The store became reachable (True) or unreachable (False)."""


class JobStore(Protocol):
    """Every write commits durably before it returns."""

    # True when this server is the store's only writer (SQLite's lock file): what it
    # cached of a job stays right without asking the store again.
    exclusive: bool

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def describe(self) -> str:
        """Where the jobs are, for people (never a password): a path or host/db."""

    async def create(self, job: CloneJob, *, operation: Operation | None = None) -> None:
        """Insert a new job; DuplicateJobError when the name or request id is taken.
        With `operation`, the operation is inserted in the same commit."""

    async def update(
        self, job: CloneJob, *, expected_revision: int, epoch: int | None = None
    ) -> None:
        """Replace the job if its stored revision is `expected_revision`, else ConflictError.

        With `epoch`, only while that epoch is the job's live (unexpired) lease,
        else LeaseLostError (checked before the revision). A job reaching a
        terminal state under a lease releases it in the same commit.
        """

    async def update_chain(
        self, jobs: Sequence[CloneJob], *, expected_revision: int, epoch: int | None = None
    ) -> None:
        """`update` of each of `jobs` in turn, each expecting the revision of the one
        before it (the first, `expected_revision`), all in one commit or none of them:
        a later change is never committed over a revision its predecessor did not write.
        """

    async def get(self, name: str) -> CloneJob | None: ...

    async def get_by_request_id(self, request_id: str) -> CloneJob | None: ...

    async def revision(self, name: str) -> int | None:
        """The job's current revision, None when there is no such job: a cheap
        check of a copy kept in memory."""

    async def list(self, query: ListQuery) -> Sequence[CloneJob]:
        """Up to `query.limit` jobs of the parent matching the query, in its order."""

    async def revisions(self, name: str, *, after: int) -> Sequence[CloneJob]:
        """The job as it was at each revision greater than `after`, oldest first."""

    async def oldest_revision(self, name: str) -> int:
        """The oldest revision still kept for the job (0 when there is none)."""

    async def unfinished(self) -> Sequence[CloneJob]:
        """Every job not yet in a terminal state, oldest first."""

    async def count_by_state(self) -> Mapping[State, int]:
        """How many jobs are in each state (states with none may be left out)."""

    # -- leases --

    async def claim(
        self, owner: str, *, limit: int, ttl: float, cancelling: bool = False
    ) -> ClaimResult:
        """Lease up to `limit` unfinished jobs that no live lease holds, oldest
        first, to `owner` for `ttl` seconds, each with a new, higher epoch.
        Concurrent claims never block one another nor take the same job.
        With `cancelling`, only jobs in CANCELLING (finishing a cancel needs no
        slot: a worker takes them even when its slots are full)."""

    async def renew(self, name: str, epoch: int, *, ttl: float) -> bool:
        """Extend the lease to `ttl` seconds from now; False when it is lost."""

    async def release(self, name: str, epoch: int) -> None:
        """Give the lease up (if still held) so that any worker may claim the job."""

    async def holds(self, name: str, epoch: int) -> bool:
        """Whether `epoch` is still the job's live lease (the fenced check)."""

    # -- operations (records beside the jobs; no revisions, no change feed) --

    async def add_operation(self, operation: Operation) -> Operation:
        """Insert the operation unless its job already has one of its verb; the one
        stored either way."""

    async def get_operation(self, name: str) -> Operation | None: ...

    async def list_operations(
        self, location: str, *, limit: int, after: Cursor | None = None
    ) -> Sequence[Operation]:
        """Up to `limit` operations of the location, newest first, after the cursor."""

    async def delete_operation(self, name: str) -> bool:
        """Forget the operation (never its job); False when there was none."""

    # -- shared settings and the change feed --

    async def page_token_key(self, size: int) -> bytes:
        """The key that signs page tokens: made once (`size` random bytes), kept
        with the jobs, the same for every server on this store."""

    async def listen(self, listener: ChangeListener) -> None:
        """Start telling `listener` of changes committed by any server on this
        store (a store with one server may tell nothing). Returns once listening."""
