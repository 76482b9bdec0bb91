"""Tests for server.domain.job: states, the allowed transitions and the step sequence."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from google.cloud.vmmigration_v1 import types

from server.domain.job import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATES,
    CloneJob,
    ErrorCode,
    InvalidTransitionError,
    JobError,
    Progress,
    State,
    StepKind,
    TargetKind,
    TargetResult,
    TargetSpec,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
NAME = "projects/p/locations/l/sources/s/migratingVms/vm/cloneJobs/job-1"
ERROR = JobError(code=ErrorCode.INTERNAL, reason="BOOM", message="it broke")
VM_PLAN = (StepKind.PREPARING_VM_DISKS, StepKind.ADAPTING_OS, StepKind.INSTANTIATING_MIGRATED_VM)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def new_job(kind: TargetKind = TargetKind.VM) -> CloneJob:
    target = TargetSpec(kind=kind, project="p", zone="z", vm_name="vm", machine_type="n2")
    return CloneJob.new(name=NAME, target=target, source_cycle="cycle-1", now=T0)


def variants() -> dict[State, list[CloneJob]]:
    """Jobs in every state, in every position of the plan that state can be in."""
    vm = new_job()
    disks = new_job(TargetKind.DISKS)
    prep_running = vm.start_step(StepKind.PREPARING_VM_DISKS, at(1))
    prep_done = prep_running.finish_step(at(2))
    adapt_running = prep_done.start_step(StepKind.ADAPTING_OS, at(3))
    adapt_done = adapt_running.finish_step(at(4))
    inst_running = adapt_done.start_step(StepKind.INSTANTIATING_MIGRATED_VM, at(5))
    inst_done = inst_running.finish_step(at(6))
    disks_done = disks.start_step(StepKind.PREPARING_VM_DISKS, at(1)).finish_step(at(2))
    cancellable = [vm, prep_running, prep_done, adapt_running, adapt_done, inst_done, disks_done]
    cancelling = [job.request_cancel(at(10)) for job in cancellable]
    return {
        State.PENDING: [vm, disks],
        State.ACTIVE: [prep_running, prep_done, inst_running, inst_done, disks_done],
        State.ADAPTING_OS: [adapt_running, adapt_done],
        State.CANCELLING: cancelling,
        State.SUCCEEDED: [inst_done.succeed(at(7)), disks_done.succeed(at(3))],
        State.FAILED: [vm.fail(ERROR, at(1)), adapt_running.fail(ERROR, at(4))],
        State.CANCELLED: [job.cancelled(at(11)) for job in cancelling],
    }


Attempt = tuple[str, State, Callable[[], CloneJob]]


def attempts(job: CloneJob) -> list[Attempt]:
    """Every public change on `job`, with the state it asks for."""
    now = at(20)
    return [
        *(
            (f"start_step({kind.value})", kind.state, functools.partial(job.start_step, kind, now))
            for kind in StepKind
        ),
        ("finish_step", job.state, functools.partial(job.finish_step, now)),
        (
            "with_progress",
            job.state,
            functools.partial(job.with_progress, Progress(percent=5), now),
        ),
        ("succeed", State.SUCCEEDED, functools.partial(job.succeed, now)),
        ("request_cancel", State.CANCELLING, functools.partial(job.request_cancel, now)),
        ("cancelled", State.CANCELLED, functools.partial(job.cancelled, now)),
        ("fail", State.FAILED, functools.partial(job.fail, ERROR, now)),
    ]


@pytest.mark.parametrize(("source", "wanted"), list(itertools.product(State, State)))
def test_job_transition_possible_exactly_when_allowed(source: State, wanted: State) -> None:
    reached = False
    for job in variants()[source]:
        assert job.state is source
        for label, aimed, call in attempts(job):
            if aimed is not wanted:
                continue
            try:
                new = call()
            except InvalidTransitionError as error:
                assert error.job is job, label
                assert error.wanted is wanted, label
                continue
            if new is job:  # a resume or a repeated cancel: no change at all
                continue
            assert wanted in ALLOWED_TRANSITIONS[source], (
                f"{label} made {source.name}→{wanted.name}"
            )
            assert new.state is wanted, label
            assert new.revision == job.revision + 1, label
            reached = True
    assert reached == (wanted in ALLOWED_TRANSITIONS[source])


@pytest.mark.parametrize("source", list(State))
def test_job_changes_lead_only_to_allowed_states(source: State) -> None:
    for job in variants()[source]:
        for label, _aimed, call in attempts(job):
            try:
                new = call()
            except InvalidTransitionError:
                continue
            if new is job:
                resume = (
                    label.startswith("start_step")
                    and job.running_step is not None
                    and label == f"start_step({job.running_step.kind.value})"
                )
                repeat_cancel = label == "request_cancel" and source in (
                    State.CANCELLING,
                    State.CANCELLED,
                )
                assert resume or repeat_cancel, f"{label} on {source.name} changed nothing"
                continue
            assert new.state in ALLOWED_TRANSITIONS[source], label


@pytest.mark.parametrize("source", sorted(TERMINAL_STATES))
def test_job_terminal_state_allows_no_change(source: State) -> None:
    assert ALLOWED_TRANSITIONS[source] == frozenset()
    assert source.terminal
    for job in variants()[source]:
        assert job.running_step is None
        for label, _aimed, call in attempts(job):
            if label == "request_cancel" and source is State.CANCELLED:
                assert call() is job
                continue
            with pytest.raises(InvalidTransitionError):
                call()


@pytest.mark.parametrize("source", [State.SUCCEEDED, State.FAILED])
def test_job_request_cancel_of_ended_job_raises(source: State) -> None:
    for job in variants()[source]:
        with pytest.raises(InvalidTransitionError) as caught:
            job.request_cancel(at(30))
        assert caught.value.wanted is State.CANCELLING


@pytest.mark.parametrize("source", [State.CANCELLING, State.CANCELLED])
def test_job_request_cancel_when_cancelling_or_cancelled_returns_same_job(source: State) -> None:
    for job in variants()[source]:
        assert job.request_cancel(at(30)) is job


@pytest.mark.parametrize(
    "source", [s for s in State if not s.terminal and s is not State.CANCELLING]
)
def test_job_request_cancel_from_running_state_is_cancelling(source: State) -> None:
    for job in variants()[source]:
        new = job.request_cancel(at(30))
        assert new.state is State.CANCELLING
        assert new.state_time == at(30)
        assert new.progress is None
        assert new.end_time is None
        assert new.revision == job.revision + 1


def test_job_vm_step_sequence_states_revisions_and_times() -> None:
    job = new_job()
    assert (job.state, job.revision, job.state_time, job.create_time) == (
        State.PENDING,
        1,
        T0,
        T0,
    )
    assert job.end_time is None
    assert job.next_step() is StepKind.PREPARING_VM_DISKS

    history = [job]
    results = {
        StepKind.PREPARING_VM_DISKS: TargetResult(boot_option="EFI", disk_uris=((0, "d0"),)),
        StepKind.ADAPTING_OS: None,  # keeps what the target reported before
        StepKind.INSTANTIATING_MIGRATED_VM: TargetResult(
            boot_option="EFI", license_type="PAYG", disk_uris=((0, "d0"),)
        ),
    }
    clock = itertools.count(1)
    for kind in VM_PLAN:
        started_at = at(next(clock))
        before = history[-1]
        started = before.start_step(kind, started_at)
        assert started.state is kind.state
        assert started.running_step is not None
        assert started.running_step.kind is kind
        assert started.steps[-1].start_time == started_at
        assert started.steps[-1].end_time is None
        assert started.progress == Progress(percent=0)
        if kind.state is before.state:
            assert started.state_time == before.state_time
        else:
            assert started.state_time == started_at
        ended_at = at(next(clock))
        finished = started.finish_step(ended_at, results[kind])
        assert finished.state is started.state
        assert finished.state_time == started.state_time
        assert finished.steps[-1].start_time == started_at
        assert finished.steps[-1].end_time == ended_at
        assert finished.running_step is None
        assert finished.progress is None
        assert finished.result == (results[kind] or before.result)
        assert finished.end_time is None
        history += [started, finished]
    assert history[-1].next_step() is None
    done_at = at(next(clock))
    done = history[-1].succeed(done_at)
    history.append(done)

    assert [j.revision for j in history] == list(range(1, len(history) + 1))
    states = [history[0].state]
    for job in history[1:]:
        if job.state is not states[-1]:
            states.append(job.state)
    assert states == [
        State.PENDING,
        State.ACTIVE,
        State.ADAPTING_OS,
        State.ACTIVE,
        State.SUCCEEDED,
    ]
    for before, after in itertools.pairwise(history):
        moved = after.state_time != before.state_time
        assert moved == (after.state is not before.state)
    assert [s.kind for s in done.steps] == list(VM_PLAN)
    assert all(s.end_time is not None for s in done.steps)
    assert done.end_time == done_at
    assert done.state_time == done_at
    assert done.result == results[StepKind.INSTANTIATING_MIGRATED_VM]
    assert all(j.end_time is None for j in history[:-1])


def test_job_disks_only_plan_has_one_step() -> None:
    assert TargetKind.DISKS.steps == (StepKind.PREPARING_VM_DISKS,)
    assert TargetKind.VM.steps == VM_PLAN
    job = new_job(TargetKind.DISKS).start_step(StepKind.PREPARING_VM_DISKS, at(1))
    job = job.finish_step(at(2))
    assert job.next_step() is None
    with pytest.raises(InvalidTransitionError):
        job.start_step(StepKind.ADAPTING_OS, at(3))
    done = job.succeed(at(3))
    assert done.state is State.SUCCEEDED
    assert [s.kind for s in done.steps] == [StepKind.PREPARING_VM_DISKS]


def test_job_succeed_before_last_step_raises() -> None:
    job = new_job().start_step(StepKind.PREPARING_VM_DISKS, at(1))
    with pytest.raises(InvalidTransitionError):
        job.succeed(at(2))  # step still running
    with pytest.raises(InvalidTransitionError):
        job.finish_step(at(2)).succeed(at(3))  # steps left


@pytest.mark.parametrize("kind", list(StepKind))
def test_job_start_step_of_running_step_returns_same_job(kind: StepKind) -> None:
    job = new_job()
    for earlier in VM_PLAN[: VM_PLAN.index(kind)]:
        job = job.start_step(earlier, at(1)).finish_step(at(2))
    running = job.start_step(kind, at(3))
    assert running.start_step(kind, at(4)) is running
    assert running.next_step() is kind
    cancelling = running.request_cancel(at(5))
    assert cancelling.next_step() is kind
    assert cancelling.start_step(kind, at(6)) is cancelling


@pytest.mark.parametrize("kind", list(StepKind))
def test_job_start_step_out_of_order_raises(kind: StepKind) -> None:
    job = new_job()
    for other in StepKind:
        if other is not kind and other is not StepKind.PREPARING_VM_DISKS:
            with pytest.raises(InvalidTransitionError):
                job.start_step(other, at(1))
    job = job.start_step(StepKind.PREPARING_VM_DISKS, at(1))
    if kind is not StepKind.PREPARING_VM_DISKS:
        with pytest.raises(InvalidTransitionError):
            job.start_step(kind, at(2))  # the running step has not finished


@pytest.mark.parametrize("kind", list(StepKind))
def test_job_with_progress_while_step_runs(kind: StepKind) -> None:
    job = new_job()
    for earlier in VM_PLAN[: VM_PLAN.index(kind)]:
        job = job.start_step(earlier, at(1)).finish_step(at(2))
    running = job.start_step(kind, at(3))
    progress = Progress(percent=42, bytes_done=42, bytes_total=100)
    new = running.with_progress(progress, at(4))
    assert new.progress == progress
    assert new.state is running.state
    assert new.state_time == running.state_time
    assert new.revision == running.revision + 1
    with pytest.raises(InvalidTransitionError):
        new.finish_step(at(5)).with_progress(progress, at(6))


@pytest.mark.parametrize(
    "job",
    [j for state in State for j in variants()[state] if j.running_step is None],
    ids=lambda j: f"{j.state.name}-{len(j.steps)}steps",
)
def test_job_with_progress_without_running_step_raises(job: CloneJob) -> None:
    with pytest.raises(InvalidTransitionError):
        job.with_progress(Progress(percent=1), at(30))


@pytest.mark.parametrize("kind", list(StepKind))
@pytest.mark.parametrize("ending", ["fail", "cancelled"])
def test_job_terminal_ends_running_step(kind: StepKind, ending: str) -> None:
    job = new_job()
    for earlier in VM_PLAN[: VM_PLAN.index(kind)]:
        job = job.start_step(earlier, at(1)).finish_step(at(2))
    job = job.start_step(kind, at(3)).with_progress(Progress(percent=50), at(4))
    if ending == "fail":
        ended = job.fail(ERROR, at(9))
        assert ended.state is State.FAILED
        assert ended.error == ERROR
    else:
        ended = job.request_cancel(at(5)).cancelled(at(9))
        assert ended.state is State.CANCELLED
        assert ended.error is None
    assert ended.steps[-1].kind is kind
    assert ended.steps[-1].end_time == at(9)
    assert ended.steps[:-1] == job.steps[:-1]
    assert ended.end_time == at(9)
    assert ended.state_time == at(9)
    assert ended.progress is None
    assert ended.running_step is None


def test_job_cancelled_from_pending_has_no_steps() -> None:
    ended = new_job().request_cancel(at(1)).cancelled(at(2))
    assert ended.state is State.CANCELLED
    assert ended.steps == ()
    assert ended.end_time == at(2)
    assert ended.revision == 3


@pytest.mark.parametrize("state", list(State))
def test_job_state_numbers_match_public_enum(state: State) -> None:
    assert int(state) == int(types.CloneJob.State[state.name])  # type: ignore[misc]


def test_job_state_numbers_cover_public_enum() -> None:
    public = {
        m.name: int(m)
        for m in types.CloneJob.State  # type: ignore[attr-defined]
        if m.name != "STATE_UNSPECIFIED"
    }
    assert {s.name: int(s) for s in State} == public
    assert (State.PENDING, State.ADAPTING_OS) == (1, 7)


def test_job_terminal_states_are_succeeded_failed_cancelled() -> None:
    assert {s for s in State if s.terminal} == {State.SUCCEEDED, State.FAILED, State.CANCELLED}
    assert set(ALLOWED_TRANSITIONS) == set(State)


@pytest.mark.parametrize("kind", list(StepKind))
def test_step_kind_state_while_running(kind: StepKind) -> None:
    expected = State.ADAPTING_OS if kind is StepKind.ADAPTING_OS else State.ACTIVE
    assert kind.state is expected
