"""The Target protocol: where clones are made. The engine knows only this."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from server.domain.job import CloneJob, TargetResult
from server.domain.names import MigratingVmName

# Called from a worker thread with (bytes done, bytes total).
ProgressFn = Callable[[int, int], None]


class Target(Protocol):
    """Each step must be safe to run again after a crash part-way through it.

    Steps raise StepFailedError (with a JobError for the job's `error`) when
    they cannot be done, and StepCancelledError when `cancelled` is set.
    """

    async def latest_cycle(self, migrating_vm: MigratingVmName) -> str:
        """The latest completed replication cycle; MigratingVmNotFoundError or
        NoCompletedCycleError when there is none."""

    async def prepare_disks(
        self, job: CloneJob, progress: ProgressFn, cancelled: threading.Event
    ) -> TargetResult: ...

    async def adapt_os(self, job: CloneJob, cancelled: threading.Event) -> TargetResult: ...

    async def instantiate(self, job: CloneJob, cancelled: threading.Event) -> TargetResult: ...

    async def cleanup(self, job: CloneJob) -> None:
        """Delete exactly what this job created, and nothing else."""
