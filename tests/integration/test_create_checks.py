"""Checks before the long copy: `validate_only` (AIP-163) and the same checks at Create
(an instance name taken, no room on the target), so that a job that could not work
fails its Create rather than hours later."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from clonejob_rpc import (
    VM1,
    create,
    disks_body,
    error_info,
    get,
    job_name,
    list_jobs,
    rpc_error,
    run_to_end,
    tree,
    vm_body,
)
from conftest import ServerPool

from client.launcher import ServerProcess
from clonejob_grpc import clone_job_pb2 as pb
from clonejob_grpc import clone_job_service_pb2 as spb

State = pb.CloneJob.State
REQUEST_ID = "3f0b2c5e-7d1a-4b8e-9c6f-2a4d8e1b7c30"
RPC_TIMEOUT = 20.0


@pytest.fixture
def server(servers: ServerPool, data_dir: Path, sample_vm: Callable[..., Path]) -> ServerProcess:
    sample_vm(data_dir, VM1, disks=1, disk_size="1MiB")
    return servers.start(data_dir)


def validate(stub: object, job_id: str, body: pb.CloneJob, **fields: object) -> pb.CloneJob:
    request = spb.CreateCloneJobRequest(
        parent=VM1, clone_job_id=job_id, clone_job=body, validate_only=True, **fields
    )
    return stub.CreateCloneJob(request, timeout=RPC_TIMEOUT)  # type: ignore[attr-defined, no-any-return]


def test_validate_only_answers_the_job_and_stores_nothing(server: ServerProcess) -> None:
    stub = server.stub()
    before = tree(server.targets)
    job = validate(stub, "dry", vm_body("dry-vm"), request_id=REQUEST_ID)
    assert job.name == job_name("dry")
    assert job.state == State.PENDING
    assert job.compute_engine_target_details.vm_name == "dry-vm"
    assert rpc_error(get, stub, job.name).code() == grpc.StatusCode.NOT_FOUND
    assert list(list_jobs(stub).clone_jobs) == []
    assert tree(server.targets) == before
    # No request id was recorded: the same id now creates a different job, not a reuse.
    made = create(stub, "real", vm_body("real-vm"), request_id=REQUEST_ID)
    assert made.name == job_name("real")


def test_validate_only_reports_what_create_would(server: ServerProcess) -> None:
    stub = server.stub()
    first = run_to_end(stub, create(stub, "first", vm_body("web")).name)
    assert first.state == State.SUCCEEDED

    taken = rpc_error(validate, stub, "second", vm_body("web"))
    assert taken.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_info(taken).reason == "INSTANCE_NAME_TAKEN"

    same_id = rpc_error(validate, stub, "first", vm_body("other"))
    assert same_id.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_info(same_id).reason == "CLONE_JOB_ALREADY_EXISTS"

    bad = rpc_error(validate, stub, "bad", vm_body("Not_A_Name"))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT

    missing = spb.CreateCloneJobRequest(
        parent=VM1.replace("/vm1", "/nowhere"),
        clone_job_id="x",
        clone_job=disks_body(),
        validate_only=True,
    )
    error = rpc_error(stub.CreateCloneJob, missing, timeout=RPC_TIMEOUT)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(error).reason == "MIGRATING_VM_NOT_FOUND"


def test_validate_only_needs_a_completed_cycle(
    servers: ServerPool, data_dir: Path, sample_vm: Callable[..., Path]
) -> None:
    cycle = sample_vm(data_dir, VM1, disks=1, disk_size="1MiB")
    (cycle / "manifest.json").unlink()  # an upload still under way
    server = servers.start(data_dir)
    error = rpc_error(validate, server.stub(), "early", disks_body())
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(error).reason == "NO_COMPLETED_SNAPSHOT_CYCLE"


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[None]:
    """A tmpfs of `size` mounted at `path` (needs root, which CI's machine has)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_create_with_no_room_on_the_target_fails_the_create(
    servers: ServerPool, data_dir: Path, sample_vm: Callable[..., Path]
) -> None:
    # Two 64 MiB disks holding about 16 MiB of data each, a target of 4 MiB.
    sample_vm(data_dir, VM1, disks=2, disk_size="64MiB")
    with small_filesystem(data_dir / "targets", "4m"):
        server = servers.start(data_dir)
        stub = server.stub()
        for call in (validate, create):
            error = rpc_error(call, stub, "big", vm_body("big-vm"))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, call
            info = error_info(error)
            assert info.reason == "TARGET_STORAGE_FULL"
            assert int(info.metadata["needed_bytes"]) > int(info.metadata["available_bytes"])
        assert list(list_jobs(stub).clone_jobs) == []
        server.stop()
