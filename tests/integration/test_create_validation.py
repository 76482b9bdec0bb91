"""Create's errors, field by field, and output-only fields sent by a client."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from clonejob_rpc import (
    RPC_TIMEOUT,
    VM1,
    State,
    bad_fields,
    create,
    disks_body,
    error_info,
    get,
    job_name,
    rpc_error,
    run_to_end,
    tree,
    vm_body,
)

from clonejob_grpc import clone_job_pb2 as pb
from clonejob_grpc import clone_job_service_pb2 as spb

if TYPE_CHECKING:
    from conftest import Server, ServerPool

VM_FIELD = "clone_job.compute_engine_target_details"
NO_CYCLE = "projects/p1/locations/us-central1/sources/s1/migratingVms/uploading"
# Every bad value contains "pwned", so a file written from one would be found.
UNSAFE_NAMES = {
    "dotdot": "../../pwned",
    "slash": "a/pwned",
    "nul": "pwned\0x",
    "non-ascii": "pwned-é",
    "long": "pwned" * 60,
    "64 chars": "pwned" + "a" * 59,
}


def request(
    *,
    parent: str = VM1,
    clone_job_id: str = "valid-job",
    body: pb.CloneJob | None = None,
    request_id: str = "",
) -> spb.CreateCloneJobRequest:
    return spb.CreateCloneJobRequest(
        parent=parent,
        clone_job_id=clone_job_id,
        clone_job=vm_body("valid-vm") if body is None else body,
        request_id=request_id,
    )


def both_targets() -> pb.CloneJob:
    body = vm_body("both-vm")
    body.compute_engine_disks_target_details.SetInParent()
    return body


def without_body() -> spb.CreateCloneJobRequest:
    bare = request()
    bare.ClearField("clone_job")
    return bare


# case → (request, the field paths every violation must name)
INVALID: dict[str, tuple[Callable[[], spb.CreateCloneJobRequest], list[str]]] = {
    "parent too short": (lambda: request(parent="projects/p1/locations/us-central1"), ["parent"]),
    "parent dotdot": (
        lambda: request(parent="projects/../locations/us-central1/sources/s1/migratingVms/vm1"),
        ["parent"],
    ),
    "parent empty": (lambda: request(parent=""), ["parent"]),
    "parent wrong collection": (
        lambda: request(parent=VM1.replace("migratingVms", "vms")),
        ["parent"],
    ),
    "id upper case": (lambda: request(clone_job_id="Upper"), ["clone_job_id"]),
    "id trailing hyphen": (lambda: request(clone_job_id="trailing-"), ["clone_job_id"]),
    "id 64 chars": (lambda: request(clone_job_id="a" * 64), ["clone_job_id"]),
    "id leading digit": (lambda: request(clone_job_id="1job"), ["clone_job_id"]),
    "id empty": (lambda: request(clone_job_id=""), ["clone_job_id"]),
    "id dotdot": (lambda: request(clone_job_id=".."), ["clone_job_id"]),
    "request_id not uuid": (lambda: request(request_id="pwned-not-a-uuid"), ["request_id"]),
    "request_id zero uuid": (lambda: request(request_id=str(uuid.UUID(int=0))), ["request_id"]),
    "vm_name empty": (lambda: request(body=vm_body("")), [f"{VM_FIELD}.vm_name"]),
    "zone empty": (lambda: request(body=vm_body("z-vm", zone="")), [f"{VM_FIELD}.zone"]),
    **{
        f"vm_name {case}": (
            lambda value=value: request(body=vm_body(value)),
            [f"{VM_FIELD}.vm_name"],
        )
        for case, value in UNSAFE_NAMES.items()
    },
    **{
        f"zone {case}": (
            lambda value=value: request(body=vm_body("z-vm", zone=value)),
            [f"{VM_FIELD}.zone"],
        )
        for case, value in UNSAFE_NAMES.items()
    },
    **{
        f"project {case}": (
            lambda value=value: request(body=vm_body("p-vm", project=value)),
            [f"{VM_FIELD}.project"],
        )
        for case, value in UNSAFE_NAMES.items()
    },
    "three bad fields": (
        lambda: request(
            clone_job_id="Bad-",
            request_id="nope",
            body=vm_body("../pwned"),
        ),
        ["clone_job_id", "request_id", f"{VM_FIELD}.vm_name"],
    ),
    "five bad fields": (
        lambda: request(
            parent="projects/p1",
            clone_job_id="",
            request_id=str(uuid.UUID(int=0)),
            body=vm_body("pwned/x", zone="../pwned"),
        ),
        ["parent", "clone_job_id", "request_id", f"{VM_FIELD}.vm_name", f"{VM_FIELD}.zone"],
    ),
}

# Requests without exactly one kind of target details: the server picks which field to name.
NO_ONE_TARGET: dict[str, Callable[[], spb.CreateCloneJobRequest]] = {
    "no target details": lambda: request(body=pb.CloneJob()),
    "both target details": lambda: request(body=both_targets()),
    "no clone_job": without_body,
}
TARGET_FIELDS = {
    "clone_job",
    VM_FIELD,
    "clone_job.compute_engine_disks_target_details",
}


@pytest.fixture(scope="module")
def checked_server(module_servers: ServerPool, tmp_path_factory: pytest.TempPathFactory) -> Server:
    from conftest import write_sample_vm

    data_dir = tmp_path_factory.mktemp("validation") / "data"
    data_dir.mkdir()
    write_sample_vm(data_dir)
    return module_servers.start(data_dir)


def send(server: Server, req: spb.CreateCloneJobRequest) -> grpc.RpcError:
    return rpc_error(server.stub().CreateCloneJob, req, timeout=RPC_TIMEOUT)


@pytest.mark.parametrize("case", sorted(INVALID))
def test_create_invalid_field_is_invalid_argument(checked_server: Server, case: str) -> None:
    make, fields = INVALID[case]

    error = send(checked_server, make())

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert sorted(bad_fields(error)) == sorted(fields)
    info = error_info(error)
    assert info.domain
    assert "\0" not in error.details()  # values are quoted, never echoed raw


@pytest.mark.parametrize("case", sorted(NO_ONE_TARGET))
def test_create_without_exactly_one_target_is_invalid_argument(
    checked_server: Server, case: str
) -> None:
    error = send(checked_server, NO_ONE_TARGET[case]())

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = bad_fields(error)
    assert len(fields) == 1 and fields[0] in TARGET_FIELDS, fields
    assert error_info(error).reason


def test_create_for_unknown_migrating_vm_is_not_found(checked_server: Server) -> None:
    parent = "projects/p1/locations/us-central1/sources/s1/migratingVms/ghost"
    error = send(checked_server, request(parent=parent))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(error)
    assert info.reason == "MIGRATING_VM_NOT_FOUND"
    assert info.metadata["migrating_vm"] == parent


def write_uploading_vm(data_dir: Path) -> None:
    cycle = data_dir / "snapshots" / NO_CYCLE / "cycles" / "1"
    cycle.mkdir(parents=True)
    (cycle / "manifest.json").write_text(json.dumps({"state": "RUNNING", "cycle": 1, "disks": []}))


def test_create_without_completed_cycle_is_failed_precondition(checked_server: Server) -> None:
    write_uploading_vm(checked_server.data_dir)
    error = send(checked_server, request(parent=NO_CYCLE))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(error).reason == "NO_COMPLETED_SNAPSHOT_CYCLE"


def test_create_get_of_unknown_job_is_not_found(checked_server: Server) -> None:
    error = rpc_error(get, checked_server.stub(), job_name("never-created"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(error)
    assert info.reason == "CLONE_JOB_NOT_FOUND"
    assert info.metadata["name"] == job_name("never-created")


@pytest.mark.parametrize(
    "name", ["", "cloneJobs/x", f"{VM1}/cloneJobs/../x", f"{VM1}/cloneJobs/X", f"{VM1}/x/y"]
)
def test_create_get_with_malformed_name_is_invalid_argument(
    checked_server: Server, name: str
) -> None:
    error = rpc_error(get, checked_server.stub(), name)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == ["name"]
    assert error_info(error).reason


def test_create_invalid_requests_write_nothing_outside_data_dir(
    servers: ServerPool, tmp_path: Path, sample_vm: Any
) -> None:
    data_dir = tmp_path / "data"
    sample_vm(data_dir)
    write_uploading_vm(data_dir)
    server = servers.start(data_dir)
    requests = [make() for make, _ in INVALID.values()]
    requests += [make() for make in NO_ONE_TARGET.values()]
    ghost = "projects/p1/locations/us-central1/sources/s1/migratingVms/pwned"
    requests += [request(parent=ghost), request(parent=NO_CYCLE)]
    for req in requests:
        assert send(server, req).code() != grpc.StatusCode.OK

    assert [p.name for p in tmp_path.iterdir()] == ["data"]
    assert tree(server.targets) == {}
    assert [p for p in tmp_path.parent.rglob("*pwned*")] == []
    assert [p for p in data_dir.rglob("*") if "pwned" in str(p)] == []
    # And the server still serves.
    stub = server.stub()
    assert run_to_end(stub, create(stub, "after-all", disks_body()).name).state == (State.SUCCEEDED)


def test_create_ignores_output_only_fields(server: Server) -> None:
    stub = server.stub()
    long_ago = datetime(2001, 1, 1, tzinfo=UTC)
    body = vm_body(
        "honest-vm",
        boot_option=pb.COMPUTE_ENGINE_BOOT_OPTION_BIOS,
        applied_license=pb.AppliedLicense(type=pb.AppliedLicense.BYOL, os_license="stolen"),
    )
    body.name = "projects/evil/locations/x/sources/y/migratingVms/z/cloneJobs/other"
    body.state = State.SUCCEEDED
    body.create_time.FromDatetime(long_ago)
    body.state_time.FromDatetime(long_ago)
    body.end_time.FromDatetime(long_ago)
    body.error.code = 13
    body.error.message = "fake"
    body.steps.add().adapting_os.SetInParent()

    created = create(stub, "honest", body)

    assert created.name == job_name("honest")
    assert created.state == State.PENDING
    assert created.create_time.ToDatetime().year > 2020
    assert not created.steps and not created.HasField("end_time")
    assert not created.HasField("error")
    final = run_to_end(stub, created.name)
    assert final.state == State.SUCCEEDED
    details = final.compute_engine_target_details
    assert details.boot_option == pb.COMPUTE_ENGINE_BOOT_OPTION_EFI
    assert details.applied_license.type != pb.AppliedLicense.BYOL
    assert details.applied_license.os_license != "stolen"


def test_create_ignores_output_only_disks_of_disks_target(server: Server) -> None:
    stub = server.stub()
    body = disks_body()
    body.compute_engine_disks_target_details.disks.add(source_disk_number=7, disk_uri="evil")

    final = run_to_end(stub, create(stub, "honest-disks", body).name)

    uris = [d.disk_uri for d in final.compute_engine_disks_target_details.disks]
    assert final.state == State.SUCCEEDED
    assert "evil" not in uris
    assert sorted(
        d.source_disk_number for d in final.compute_engine_disks_target_details.disks
    ) == [
        0,
        1,
    ]


def test_create_retry_with_other_output_only_fields_is_the_same_request(server: Server) -> None:
    stub = server.stub()
    request_id = str(uuid.uuid4())
    first = create(stub, "retry-oo", vm_body("retry-oo-vm"), request_id=request_id)
    body = vm_body("retry-oo-vm", boot_option=pb.COMPUTE_ENGINE_BOOT_OPTION_BIOS)
    body.state = State.FAILED

    again = create(stub, "retry-oo", body, request_id=request_id)

    assert (again.name, again.create_time) == (first.name, first.create_time)


def test_create_ignores_output_only_vm_uri_of_disks_target(server: Server) -> None:
    stub = server.stub()
    body = disks_body()
    body.compute_engine_disks_target_details.vm_target_details.vm_uri = "projects/evil/vm"

    created = create(stub, "honest-uri", body)
    final = run_to_end(stub, created.name)

    for job in (created, final):
        details = job.compute_engine_disks_target_details
        assert details.vm_target_details.vm_uri != "projects/evil/vm"
