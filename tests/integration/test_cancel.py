"""Cancel: in every step, while PENDING, twice, and after the job has ended."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from clonejob_rpc import (
    ADAPTING,
    INSTANTIATING,
    PREPARING,
    VM1,
    State,
    bad_fields,
    cancel,
    changes,
    create,
    disks_body,
    error_info,
    files_of_vm,
    get,
    job_name,
    read_to_end,
    read_until,
    rpc_error,
    run_to_end,
    running_step,
    step_running,
    tree,
    vm_body,
    watch,
)

if TYPE_CHECKING:
    from conftest import Server, ServerPool

HOLDS = [
    {"match": "cloneJobs/hold-prep", "step": PREPARING, "action": "hold"},
    {"match": "cloneJobs/hold-adapt", "step": ADAPTING, "action": "hold"},
    {"match": "cloneJobs/hold-inst", "step": INSTANTIATING, "action": "hold"},
]


def start(servers: ServerPool, data_dir: Path, sample_vm: Any, **options: Any) -> Server:
    sample_vm(data_dir)
    return servers.start(data_dir, fault_plan=HOLDS, **options)


@pytest.mark.parametrize(
    ("job_id", "step"),
    [("hold-prep", PREPARING), ("hold-adapt", ADAPTING), ("hold-inst", INSTANTIATING)],
)
def test_cancel_during_step_ends_cancelled_without_products(
    servers: ServerPool, data_dir: Path, sample_vm: Any, job_id: str, step: str
) -> None:
    server = start(servers, data_dir, sample_vm)
    stub = server.stub()
    vm_name = f"{job_id}-vm"
    job = create(stub, job_id, vm_body(vm_name))
    stream = watch(stub, job.name)
    held = read_until(stream, step_running(step))[-1]
    if step != PREPARING:  # the disks are there, so the cleanup has work to do
        assert files_of_vm(server.targets, vm_name)

    cancelling = cancel(stub, job.name)

    assert cancelling.state == State.CANCELLING
    assert cancelling.state_time.ToDatetime() >= held.clone_job.state_time.ToDatetime()
    rest = changes(read_to_end(stream))
    # Progress of the held step may still be committed before the cancel.
    progress = [m for m in rest if m.clone_job.state == held.clone_job.state]
    assert all(running_step(m.clone_job) == step for m in progress)
    assert [m.clone_job.state for m in rest[len(progress) :]] == [
        State.CANCELLING,
        State.CANCELLED,
    ]
    assert all(b.revision > a.revision for a, b in zip([held, *rest], rest, strict=False))
    final = rest[-1].clone_job
    assert final.HasField("end_time")
    assert all(s.HasField("end_time") for s in final.steps)
    assert final.steps[-1].WhichOneof("step") == step
    assert files_of_vm(server.targets, vm_name) == []
    assert get(stub, job.name) == final


def test_cancel_of_cancelled_job_returns_it_unchanged(
    servers: ServerPool, data_dir: Path, sample_vm: Any
) -> None:
    server = start(servers, data_dir, sample_vm)
    stub = server.stub()
    job = create(stub, "hold-adapt", vm_body("again-vm"))
    stream = watch(stub, job.name)
    read_until(stream, step_running(ADAPTING))
    cancel(stub, job.name)
    final = changes(read_to_end(stream))[-1].clone_job
    assert final.state == State.CANCELLED

    again = cancel(stub, job.name)

    assert again == final
    assert get(stub, job.name) == final
    assert changes(read_to_end(watch(stub, job.name)))[-1].clone_job == final


def test_cancel_of_pending_job_ends_cancelled(
    servers: ServerPool, data_dir: Path, sample_vm: Any
) -> None:
    server = start(servers, data_dir, sample_vm, max_concurrent_jobs=1)
    stub = server.stub()
    blocker = create(stub, "hold-prep", disks_body())
    blocker_stream = watch(stub, blocker.name)
    read_until(blocker_stream, step_running(PREPARING))
    queued = create(stub, "queued", vm_body("queued-vm"))
    stream = watch(stub, queued.name)
    assert next(stream).clone_job.state == State.PENDING

    assert cancel(stub, queued.name).state == State.CANCELLING

    rest = changes(read_to_end(stream))
    assert [m.clone_job.state for m in rest] == [State.CANCELLING, State.CANCELLED]
    assert not rest[-1].clone_job.steps
    assert files_of_vm(server.targets, "queued-vm") == []
    # The held job still holds the only slot: the cancelled job never ran.
    assert get(stub, blocker.name).state == State.ACTIVE
    blocker_stream.cancel()


def test_cancel_of_succeeded_job_is_failed_precondition(server: Server) -> None:
    stub = server.stub()
    job = create(stub, "done", disks_body())
    assert run_to_end(stub, job.name).state == State.SUCCEEDED

    error = rpc_error(cancel, stub, job.name)

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(error)
    assert info.reason == "CLONE_JOB_FINISHED"
    assert info.metadata["name"] == job.name


def test_cancel_of_succeeded_job_leaves_products(server: Server) -> None:
    stub = server.stub()
    job = create(stub, "keep", vm_body("keep-vm"))
    final = run_to_end(stub, job.name)
    assert final.state == State.SUCCEEDED
    products = tree(server.targets)
    assert len(files_of_vm(server.targets, "keep-vm")) == 2 + 2  # two disks, .json, .xml

    for _ in range(2):
        error = rpc_error(cancel, stub, job.name)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION

    assert tree(server.targets) == products
    assert get(stub, job.name) == final
    only = read_to_end(watch(stub, job.name))
    assert [m.clone_job for m in only] == [final]


def test_cancel_of_unknown_job_is_not_found(server: Server) -> None:
    error = rpc_error(cancel, server.stub(), job_name("nobody"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(error).reason == "CLONE_JOB_NOT_FOUND"


def test_cancel_with_malformed_name_is_invalid_argument(server: Server) -> None:
    error = rpc_error(cancel, server.stub(), f"{VM1}/cloneJobs/../x")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == ["name"]
    assert error_info(error).reason
