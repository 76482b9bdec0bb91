"""Fault injection for the local target, for tests and drills.

A fault plan is a JSON file (`--fault-plan FILE`)::

    {"faults": [{"match": "cloneJobs/hold-", "step": "adapting_os", "action": "hold"}]}

Each fault applies to jobs whose full name contains `match`, in `step`:
- `hold`: the step waits until the job is cancelled (during preparing_vm_disks,
  after the first disk is copied, so that there is something to clean up);
- `fail`: the step fails with `message`;
- `enospc`: the step fails as if the target file system were full;
- `delay`: the step waits `seconds` at its start, every time it runs (a re-run
  after a takeover waits again), and stops at once if the job is cancelled —
  for tests and drills of takeover::

    {"match": "...", "step": "preparing_vm_disks", "action": "delay", "seconds": 6}
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

ACTIONS = ("hold", "fail", "enospc", "delay")


class FaultPlanError(ValueError):
    """The fault plan file cannot be used; the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    match: str
    step: StepKind
    action: str
    message: str = "injected failure"
    seconds: float = 0.0


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
                seconds = float(item.get("seconds", 0))
                if item["action"] == "delay" and not 0 < seconds <= 86_400:
                    raise FaultPlanError(
                        f"a delay fault needs seconds between 0 and 86400, not {seconds}"
                    )
                faults.append(
                    Fault(
                        match=str(item["match"]),
                        step=StepKind(item["step"]),
                        action=item["action"],
                        message=str(item.get("message", "injected failure")),
                        seconds=seconds,
                    )
                )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise FaultPlanError(f"--fault-plan {path}: {error}") from None
        return cls(faults=tuple(faults))

    def delay(self, job: CloneJob, step: StepKind, cancelled: threading.Event) -> None:
        """Wait out every delay planned for this job and step (blocking; a thread)."""
        for fault in self.faults:
            if fault.action == "delay" and fault.step is step and fault.match in job.name:
                if cancelled.wait(fault.seconds):
                    raise StepCancelledError()

    def apply(self, job: CloneJob, step: StepKind, cancelled: threading.Event) -> None:
        """Act out the first fault planned for this job and step, if any (delays aside)."""
        for fault in self.faults:
            if fault.step is not step or fault.match not in job.name or fault.action == "delay":
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
