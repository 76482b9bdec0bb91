"""The store protocol: what the engine needs from any database."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from server.domain.job import CloneJob, State
from server.domain.listing import ListQuery


class StoreError(Exception):
    """The store cannot be used (locked, corrupt, from a newer version, …)."""


class DuplicateJobError(Exception):
    """A job with this name, or this request id, exists already."""

    def __init__(self, existing: CloneJob) -> None:
        super().__init__(existing.name)
        self.existing = existing


class ConflictError(Exception):
    """The job changed since the revision the update was computed from."""


class JobStore(Protocol):
    """Every method commits durably before it returns."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def create(self, job: CloneJob) -> None:
        """Insert a new job; DuplicateJobError when the name or request id is taken."""

    async def update(self, job: CloneJob, *, expected_revision: int) -> None:
        """Replace the job if its stored revision is `expected_revision`, else ConflictError."""

    async def get(self, name: str) -> CloneJob | None: ...

    async def get_by_request_id(self, request_id: str) -> CloneJob | None: ...

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
