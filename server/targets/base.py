"""The Target protocol: where clones are made. The engine knows only this."""

from __future__ import annotations

import threading
from typing import Protocol

from server.domain.job import CloneJob, DiskProgress, TargetResult
from server.domain.migrating_vm import MigratingVm
from server.domain.names import MigratingVmName, SourceName


class ProgressFn(Protocol):
    """How prepare_disks reports, from a worker thread: `done` of `total` bytes of
    data (what the disks hold, their allocated extents; holes are not counted),
    the disks' virtual size, and each disk's row in source disk order."""

    def __call__(
        self,
        done: int,
        total: int,
        /,
        *,
        virtual_bytes: int = 0,
        disks: tuple[DiskProgress, ...] = (),
    ) -> None: ...


class Fence(Protocol):
    """The lease a step runs under. Several replicas may run the same step of one
    job one after another (a takeover), and an old runner may wake up late: what
    a step writes goes to names of its own `epoch`, and it puts them in place only
    after `check` says the lease is still its own."""

    @property
    def epoch(self) -> int: ...

    def check(self) -> None:
        """Raise LeaseLostError unless the lease is still held. Blocks: call it
        from a worker thread."""


class NoFence:
    """The fence of a target used outside any lease (epoch 0, always held)."""

    epoch = 0

    def check(self) -> None:
        return None


class Target(Protocol):
    """Each step must be safe to run again after a crash part-way through it.

    Steps raise StepFailedError (with a JobError for the job's `error`) when
    they cannot be done, StepCancelledError when `cancelled` is set, and
    LeaseLostError when the fence says the lease is gone.
    """

    async def latest_cycle(self, migrating_vm: MigratingVmName) -> str:
        """The latest completed replication cycle; MigratingVmNotFoundError or
        NoCompletedCycleError when there is none."""

    async def migrating_vm(self, name: MigratingVmName) -> MigratingVm:
        """The migrating VM, from its replication cycles; MigratingVmNotFoundError
        when it has none."""

    async def migrating_vms(self, source: SourceName) -> list[MigratingVm]:
        """The source's migrating VMs that have replication cycles, by name."""

    async def preflight(self, job: CloneJob) -> None:
        """Every check a job can pass before its long copy, against the target as it
        is now: the instance name still free in the target project and zone
        (InstanceNameTakenError), room for the data to copy (TargetStorageFullError),
        the job's replication cycle readable (StepFailedError is not raised here:
        NoCompletedCycleError / MigratingVmNotFoundError). Changes nothing. The
        steps check again, since the target can change while a job runs."""

    async def prepare_disks(
        self, job: CloneJob, progress: ProgressFn, cancelled: threading.Event, fence: Fence
    ) -> TargetResult: ...

    async def adapt_os(
        self, job: CloneJob, cancelled: threading.Event, fence: Fence
    ) -> TargetResult: ...

    async def instantiate(
        self, job: CloneJob, cancelled: threading.Event, fence: Fence
    ) -> TargetResult: ...

    async def cleanup(self, job: CloneJob) -> None:
        """Delete exactly what this job created, and nothing else."""
