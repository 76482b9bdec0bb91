"""Failures: injected faults, a full disk, a lost snapshot, an instance name taken."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from clonejob_rpc import (
    INSTANTIATING,
    PREPARING,
    State,
    cancel,
    create,
    disks_body,
    error_info,
    files_of_vm,
    get,
    job_error_info,
    rpc_error,
    run_to_end,
    tree,
    vm_body,
)

from clonejob_grpc import clone_job_pb2 as pb

if TYPE_CHECKING:
    from conftest import Server, ServerPool

FAULTS = [
    {
        "match": "cloneJobs/fail-inst",
        "step": INSTANTIATING,
        "action": "fail",
        "message": "the hypervisor refused the VM",
    },
    {"match": "cloneJobs/enospc-prep", "step": PREPARING, "action": "enospc"},
]
OK, ABORTED, RESOURCE_EXHAUSTED, ALREADY_EXISTS = 0, 10, 8, 6


def start(servers: ServerPool, data_dir: Path, sample_vm: Any) -> Server:
    sample_vm(data_dir)
    return servers.start(data_dir, fault_plan=FAULTS)


def assert_failed_shape(job: pb.CloneJob) -> None:
    assert job.state == State.FAILED
    assert job.HasField("end_time") and job.end_time == job.state_time
    assert all(s.HasField("end_time") for s in job.steps)
    assert job.error.code != OK and job.error.message
    assert job_error_info(job).reason


def test_failure_in_instantiating_fails_job_with_message(
    servers: ServerPool, data_dir: Path, sample_vm: Any
) -> None:
    server = start(servers, data_dir, sample_vm)
    stub = server.stub()
    job = create(stub, "fail-inst", vm_body("fail-vm"))

    final = run_to_end(stub, job.name)

    assert_failed_shape(final)
    assert final.error.code == ABORTED
    assert "the hypervisor refused the VM" in final.error.message
    assert final.steps[-1].WhichOneof("step") == INSTANTIATING
    assert files_of_vm(server.targets, "fail-vm") == []
    assert get(stub, job.name) == final


def test_failure_enospc_in_preparing_reports_storage_full(
    servers: ServerPool, data_dir: Path, sample_vm: Any
) -> None:
    server = start(servers, data_dir, sample_vm)
    stub = server.stub()
    job = create(stub, "enospc-prep", vm_body("full-vm"))

    final = run_to_end(stub, job.name)

    assert_failed_shape(final)
    assert final.error.code == RESOURCE_EXHAUSTED
    assert "full" in final.error.message.lower()
    assert [s.WhichOneof("step") for s in final.steps] == [PREPARING]
    assert files_of_vm(server.targets, "full-vm") == []


def test_failure_missing_snapshot_disk_fails_job_with_reason(
    servers: ServerPool, data_dir: Path, sample_vm: Any
) -> None:
    snapshot = sample_vm(data_dir)
    (snapshot / "disk-1.img").unlink()  # found before any disk is copied
    server = servers.start(data_dir)
    stub = server.stub()
    job = create(stub, "lost-disk", vm_body("lost-vm"))

    final = run_to_end(stub, job.name)

    assert_failed_shape(final)
    info = job_error_info(final)
    assert info.reason and info.reason == info.reason.upper()
    assert info.domain
    assert tree(server.targets) == {}


def test_failure_instance_name_taken_fails_the_create(server: Server) -> None:
    """Found before the long copy: the Create itself fails, and nothing is stored."""
    stub = server.stub()
    first = run_to_end(stub, create(stub, "first", vm_body("web")).name)
    assert first.state == State.SUCCEEDED
    before = tree(server.targets)

    error = rpc_error(create, stub, "second", vm_body("web"))

    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    info = error_info(error)
    assert info.reason == "INSTANCE_NAME_TAKEN"
    assert info.metadata["vm_name"] == "web" and info.metadata["clone_job"] == first.name
    assert "web" in str(error.details())
    assert rpc_error(get, stub, first.name.replace("/first", "/second")).code() == (
        grpc.StatusCode.NOT_FOUND
    )
    # The first job's disks and instance are untouched.
    assert tree(server.targets) == before
    assert get(stub, first.name) == first


def test_failure_instance_name_taken_while_running_fails_the_job(
    servers: ServerPool, data_dir: Path, sample_vm: Any
) -> None:
    """Two jobs created for one name before either made it: the step's own check
    fails the one that comes second, and the first instance stays."""
    sample_vm(data_dir)
    delayed = {"match": "cloneJobs/late", "step": PREPARING, "action": "delay", "seconds": 2}
    server = servers.start(data_dir, fault_plan=[delayed])
    stub = server.stub()
    late = create(stub, "late", vm_body("web"))
    early = create(stub, "early", vm_body("web"))

    finals = [run_to_end(stub, late.name), run_to_end(stub, early.name)]

    states = sorted(State.Name(job.state) for job in finals)
    assert states == ["FAILED", "SUCCEEDED"]
    (failed,) = [job for job in finals if job.state == State.FAILED]
    (won,) = [job for job in finals if job.state == State.SUCCEEDED]
    assert_failed_shape(failed)
    assert failed.error.code == ALREADY_EXISTS
    assert "web" in failed.error.message
    # Nothing of the failed job is left; the winner's instance is whole.
    assert len(files_of_vm(server.targets, "web")) == 2 + 2
    assert get(stub, won.name) == won


def test_failure_same_vm_name_in_another_zone_succeeds(server: Server) -> None:
    stub = server.stub()
    first = run_to_end(stub, create(stub, "first", vm_body("web")).name)
    other = run_to_end(stub, create(stub, "other", vm_body("web", zone="europe-west1-b")).name)
    assert (first.state, other.state) == (State.SUCCEEDED, State.SUCCEEDED)


def test_failure_cancel_of_failed_job_is_failed_precondition(
    servers: ServerPool, data_dir: Path, sample_vm: Any
) -> None:
    server = start(servers, data_dir, sample_vm)
    stub = server.stub()
    final = run_to_end(stub, create(stub, "enospc-prep", disks_body()).name)
    assert final.state == State.FAILED

    error = rpc_error(cancel, stub, final.name)

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(error).reason == "CLONE_JOB_FINISHED"
    assert get(stub, final.name) == final


def test_failure_frees_the_instance_name(
    servers: ServerPool, data_dir: Path, sample_vm: Any
) -> None:
    server = start(servers, data_dir, sample_vm)
    stub = server.stub()
    failed = run_to_end(stub, create(stub, "fail-inst", vm_body("reused-name")).name)
    assert failed.state == State.FAILED

    second = run_to_end(stub, create(stub, "second", vm_body("reused-name")).name)

    assert second.state == State.SUCCEEDED
    assert len(files_of_vm(server.targets, "reused-name")) == 2 + 2  # two disks, .json, .xml
