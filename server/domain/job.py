"""The clone job, its states and the transitions between them.

State diagram (a VM target; a disks-only target skips the last two steps)::

    PENDING ──► ACTIVE (preparing_vm_disks) ──► ADAPTING_OS (adapting_os)
                                                      │
    SUCCEEDED ◄── ACTIVE (instantiating_migrated_vm) ◄┘

    any non-terminal state ──Cancel──► CANCELLING ──cleanup──► CANCELLED
    any running state ──step fails──► (cleanup) ──► FAILED

SUCCEEDED, FAILED and CANCELLED are terminal: nothing changes a terminal job.
Every change returns a new job whose revision is one more than its input's;
the store refuses a change whose input revision is no longer current.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class State(enum.IntEnum):
    """Numbers are those of google.cloud.vmmigration.v1.CloneJob.State."""

    PENDING = 1
    ACTIVE = 2
    FAILED = 3
    SUCCEEDED = 4
    CANCELLED = 5
    CANCELLING = 6
    ADAPTING_OS = 7

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})

# Which state a change may lead to from which; the store and the engine rely on it.
ALLOWED_TRANSITIONS: Mapping[State, frozenset[State]] = {
    State.PENDING: frozenset({State.ACTIVE, State.CANCELLING, State.FAILED}),
    State.ACTIVE: frozenset(
        {State.ACTIVE, State.ADAPTING_OS, State.SUCCEEDED, State.CANCELLING, State.FAILED}
    ),
    State.ADAPTING_OS: frozenset({State.ADAPTING_OS, State.ACTIVE, State.CANCELLING, State.FAILED}),
    State.CANCELLING: frozenset({State.CANCELLING, State.CANCELLED, State.FAILED}),
    State.SUCCEEDED: frozenset(),
    State.FAILED: frozenset(),
    State.CANCELLED: frozenset(),
}


class StepKind(enum.Enum):
    """The steps of a clone, named as the CloneStep oneof fields."""

    PREPARING_VM_DISKS = "preparing_vm_disks"
    ADAPTING_OS = "adapting_os"
    INSTANTIATING_MIGRATED_VM = "instantiating_migrated_vm"

    @property
    def state(self) -> State:
        """The job state while this step runs."""
        return State.ADAPTING_OS if self is StepKind.ADAPTING_OS else State.ACTIVE


class TargetKind(enum.Enum):
    VM = "vm"
    DISKS = "disks"

    @property
    def steps(self) -> tuple[StepKind, ...]:
        if self is TargetKind.DISKS:
            return (StepKind.PREPARING_VM_DISKS,)
        return (
            StepKind.PREPARING_VM_DISKS,
            StepKind.ADAPTING_OS,
            StepKind.INSTANTIATING_MIGRATED_VM,
        )


class ErrorCode(enum.IntEnum):
    """The canonical google.rpc.Code values the domain uses."""

    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15


class InvalidTransitionError(Exception):
    """A change that the state diagram does not allow from the job's state."""

    def __init__(self, job: CloneJob, wanted: State) -> None:
        super().__init__(f"{job.name} is {job.state.name}; it cannot become {wanted.name}")
        self.job = job
        self.wanted = wanted


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    kind: StepKind
    start_time: datetime
    end_time: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DiskProgress:
    """One disk's copy while disks are prepared: bytes of data (its allocated
    extents), with its virtual size, holes included, apart."""

    source_disk_number: int
    bytes_done: int = 0
    bytes_total: int = 0
    virtual_bytes: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """Progress of the running step. While disks are prepared, `bytes_done` of
    `bytes_total` count data (what the disks hold, holes left out) and `percent`
    is their ratio; `virtual_bytes` is the disks' size, and `disks` one row per
    disk in source disk order."""

    percent: int
    bytes_done: int = 0
    bytes_total: int = 0
    virtual_bytes: int = 0
    disks: tuple[DiskProgress, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class JobError:
    """Why a job failed: a canonical code, a stable reason and a message for people."""

    code: ErrorCode
    reason: str
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetSpec:
    """Where the clone goes.

    `details` is the client's target details in the protobuf JSON mapping with the
    proto field names, kept whole so that every field round-trips; the typed
    fields are the ones this service acts on.
    """

    kind: TargetKind
    project: str
    zone: str
    vm_name: str = ""
    machine_type: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetResult:
    """What the target reported while the job ran (output-only target fields)."""

    boot_option: str = ""  # "EFI" or "BIOS"
    license_type: str = ""  # "NONE", "PAYG" or "BYOL"
    disk_uris: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CloneJob:
    name: str
    target: TargetSpec
    source_cycle: str
    create_time: datetime
    state: State = State.PENDING
    state_time: datetime
    end_time: datetime | None = None
    steps: tuple[Step, ...] = ()
    error: JobError | None = None
    progress: Progress | None = None
    result: TargetResult = field(default_factory=TargetResult)
    request_id: str = ""
    request_hash: str = ""
    revision: int = 1

    @classmethod
    def new(
        cls,
        *,
        name: str,
        target: TargetSpec,
        source_cycle: str,
        now: datetime,
        request_id: str = "",
        request_hash: str = "",
    ) -> CloneJob:
        return cls(
            name=name,
            target=target,
            source_cycle=source_cycle,
            create_time=now,
            state_time=now,
            request_id=request_id,
            request_hash=request_hash,
        )

    @property
    def running_step(self) -> Step | None:
        if self.steps and self.steps[-1].end_time is None and not self.state.terminal:
            return self.steps[-1]
        return None

    def next_step(self) -> StepKind | None:
        """The step to run now: the unfinished one (after a restart) or the next."""
        plan = self.target.kind.steps
        if self.running_step is not None:
            return self.running_step.kind
        done = len(self.steps)
        return plan[done] if done < len(plan) else None

    # -- transitions: each returns a new job, revision + 1 --

    def _to(self, state: State, now: datetime, **changes: Any) -> CloneJob:
        if state not in ALLOWED_TRANSITIONS[self.state]:
            raise InvalidTransitionError(self, state)
        if state != self.state:
            changes["state_time"] = now
        if state.terminal:
            changes["end_time"] = now
            changes["progress"] = None
            changes.setdefault("steps", self._steps_ended(now))
        return dataclasses.replace(self, state=state, revision=self.revision + 1, **changes)

    def _steps_ended(self, now: datetime) -> tuple[Step, ...]:
        if self.steps and self.steps[-1].end_time is None:
            return (*self.steps[:-1], dataclasses.replace(self.steps[-1], end_time=now))
        return self.steps

    def start_step(self, kind: StepKind, now: datetime) -> CloneJob:
        """Begin `kind`, or continue it when it is the unfinished step (resume)."""
        if self.running_step is not None and self.running_step.kind is kind:
            return self
        if self.next_step() is not kind:
            raise InvalidTransitionError(self, kind.state)
        steps = (*self.steps, Step(kind=kind, start_time=now))
        return self._to(kind.state, now, steps=steps, progress=Progress(percent=0))

    def finish_step(self, now: datetime, result: TargetResult | None = None) -> CloneJob:
        """End the running step, recording what the target reported."""
        if self.running_step is None:
            raise InvalidTransitionError(self, self.state)
        return self._to(
            self.state,
            now,
            steps=self._steps_ended(now),
            progress=None,
            result=result if result is not None else self.result,
        )

    def finish_step_and_go_on(self, now: datetime, result: TargetResult) -> CloneJob:
        """End the running step and, in the same change (one revision), start the
        next step of the plan or, after the last, succeed: a watcher still sees the
        step's end, the next one's start and every state."""
        ended = self.finish_step(now, result)
        kind = ended.next_step()
        after = ended.succeed(now) if kind is None else ended.start_step(kind, now)
        return dataclasses.replace(after, revision=self.revision + 1)

    def with_progress(self, progress: Progress, now: datetime) -> CloneJob:
        if self.running_step is None:
            raise InvalidTransitionError(self, self.state)
        return self._to(self.state, now, progress=progress)

    def succeed(self, now: datetime) -> CloneJob:
        if self.running_step is not None or self.next_step() is not None:
            raise InvalidTransitionError(self, State.SUCCEEDED)
        return self._to(State.SUCCEEDED, now)

    def request_cancel(self, now: datetime) -> CloneJob:
        """CANCELLING from any non-terminal state; unchanged when already cancelling."""
        if self.state in (State.CANCELLING, State.CANCELLED):
            return self
        return self._to(State.CANCELLING, now, progress=None)

    def cancelled(self, now: datetime) -> CloneJob:
        return self._to(State.CANCELLED, now)

    def fail(self, error: JobError, now: datetime) -> CloneJob:
        return self._to(State.FAILED, now, error=error)
