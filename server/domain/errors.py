"""Domain errors: each maps to one status code and ErrorInfo reason in server/api."""

from __future__ import annotations

from dataclasses import dataclass

from server.domain.job import CloneJob, JobError


class DomainError(Exception):
    """Base of the errors a caller can act on."""


class JobNotFoundError(DomainError):
    def __init__(self, name: str) -> None:
        super().__init__(f"clone job {name!r} was not found")
        self.name = name


class OperationNotFoundError(DomainError):
    def __init__(self, name: str) -> None:
        super().__init__(f"operation {name!r} was not found")
        self.name = name


class MigratingVmNotFoundError(DomainError):
    def __init__(self, name: str) -> None:
        super().__init__(f"migrating VM {name!r} was not found")
        self.name = name


class NoCompletedCycleError(DomainError):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"migrating VM {name!r} has no completed replication cycle yet;"
            " a clone needs uploaded snapshots"
        )
        self.name = name


class JobExistsError(DomainError):
    def __init__(self, existing: CloneJob) -> None:
        super().__init__(f"clone job {existing.name!r} already exists")
        self.existing = existing


class InstanceNameTakenError(DomainError):
    """The target already has an instance of this name (found before any copy)."""

    def __init__(self, *, project: str, zone: str, vm_name: str, owner: str | None) -> None:
        by = f", made by clone job {owner!r}" if owner else ""
        super().__init__(
            f"an instance named {vm_name!r} already exists in project {project!r},"
            f" zone {zone!r}{by}; choose another vm_name"
        )
        self.project = project
        self.zone = zone
        self.vm_name = vm_name
        self.owner = owner


class TargetStorageFullError(DomainError):
    """The target has no room for the data the job would copy (found before any copy)."""

    def __init__(self, *, needed: int, available: int) -> None:
        super().__init__(
            f"the target needs {needed} bytes for the disks' data but has {available} free;"
            " free some space or choose a smaller cycle"
        )
        self.needed = needed
        self.available = available


class RequestIdReusedError(DomainError):
    def __init__(self, request_id: str, existing: CloneJob) -> None:
        super().__init__(
            f"request_id {request_id!r} was used for a different request"
            f" (it created {existing.name!r})"
        )
        self.request_id = request_id
        self.existing = existing


class JobFinishedError(DomainError):
    """The change needs a running job, and this one has ended."""

    def __init__(self, job: CloneJob) -> None:
        super().__init__(f"clone job {job.name!r} has already ended in state {job.state.name}")
        self.job = job


@dataclass
class RevisionOutOfRangeError(DomainError):
    """A watch asked to resume from a revision the server cannot serve."""

    name: str
    requested: int
    oldest: int
    current: int

    def __str__(self) -> str:
        if self.requested > self.current:
            return (
                f"after_revision {self.requested} is ahead of clone job {self.name!r},"
                f" whose current revision is {self.current}"
            )
        return (
            f"revision {self.requested} of clone job {self.name!r} is no longer kept;"
            f" the oldest kept is {self.oldest}: get the job and watch afresh"
        )

    @property
    def compacted(self) -> bool:
        return self.requested <= self.current


class WatchClosedError(DomainError):
    """The server is shutting down; the watcher should resume elsewhere."""


class WatcherTooSlowError(DomainError):
    """The watcher fell too far behind; it may resume from its last revision."""

    def __init__(self, name: str, buffered: int) -> None:
        super().__init__(
            f"the watch on {name!r} fell more than {buffered} changes behind;"
            " resume from the last revision received"
        )
        self.name = name
        self.buffered = buffered


class StepFailedError(Exception):
    """A step could not be done; `error` says why, for the job's `error` field."""

    def __init__(self, error: JobError) -> None:
        super().__init__(error.message)
        self.error = error


class StepCancelledError(Exception):
    """The step stopped because the job is being cancelled."""


class LeaseLostError(Exception):
    """The fencing epoch is no longer the job's current lease: another replica
    claimed it, or the lease expired. Nothing was written under it."""
