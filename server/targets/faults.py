"""Fault injection for the local target, for tests and drills.

A fault plan is a JSON file (`--fault-plan FILE`)::

    {"faults": [{"match": "cloneJobs/hold-", "step": "adapting_os", "action": "hold"}]}

Each fault applies to jobs whose full name contains `match`, in `step`:
- `hold`: the step waits until the job is cancelled (during preparing_vm_disks,
  after the first disk is copied, so that there is something to clean up);
- `fail`: the step fails with `message`;
- `enospc`: the step fails as if the target file system were full.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from server.domain.errors import StepCancelledError, StepFailedError
from server.domain.job import CloneJob, ErrorCode, JobError, StepKind

ACTIONS = ("hold", "fail", "enospc")


class FaultPlanError(ValueError):
    """The fault plan file cannot be used; the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    match: str
    step: StepKind
    action: str
    message: str = "injected failure"


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultPlan:
    faults: tuple[Fault, ...] = ()

    @classmethod
    def load(cls, path: Path) -> FaultPlan:
        try:
            raw = json.loads(path.read_text())
            faults = []
            for item in raw.get("faults", []):
                if item["action"] not in ACTIONS:
                    raise FaultPlanError(
                        f"unknown fault action {item['action']!r}; use one of {ACTIONS}"
                    )
                faults.append(
                    Fault(
                        match=str(item["match"]),
                        step=StepKind(item["step"]),
                        action=item["action"],
                        message=str(item.get("message", "injected failure")),
                    )
                )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise FaultPlanError(f"--fault-plan {path}: {error}") from None
        return cls(faults=tuple(faults))

    def apply(self, job: CloneJob, step: StepKind, cancelled: threading.Event) -> None:
        """Act out the first fault planned for this job and step, if any."""
        for fault in self.faults:
            if fault.step is not step or fault.match not in job.name:
                continue
            if fault.action == "hold":
                cancelled.wait()
                raise StepCancelledError()
            if fault.action == "enospc":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise StepFailedError(
                JobError(
                    code=ErrorCode.ABORTED,
                    reason="INJECTED_FAULT",
                    message=fault.message,
                    metadata={"step": step.value},
                )
            )
