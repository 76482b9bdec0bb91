"""Create with request_id (AIP-155) and duplicate clone job ids."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import grpc
import pytest
from clonejob_rpc import (
    VM1,
    bad_fields,
    create,
    disks_body,
    error_info,
    list_jobs,
    rpc_error,
    run_to_end,
    vm_body,
)

if TYPE_CHECKING:
    from conftest import Server, ServerPool


@pytest.fixture(scope="module")
def idem_server(module_servers: ServerPool, tmp_path_factory: pytest.TempPathFactory) -> Server:
    from conftest import write_sample_vm

    data_dir = tmp_path_factory.mktemp("idem") / "data"
    data_dir.mkdir()
    write_sample_vm(data_dir)
    return module_servers.start(data_dir)


def test_create_same_request_id_returns_the_same_job(idem_server: Server) -> None:
    stub = idem_server.stub()
    request_id = str(uuid.uuid4())
    first = create(stub, "retried", vm_body("retried-vm"), request_id=request_id)

    again = create(stub, "retried", vm_body("retried-vm"), request_id=request_id)

    assert again.name == first.name
    assert again.create_time == first.create_time
    names = [j.name for j in list_jobs(stub).clone_jobs]
    assert names.count(first.name) == 1


def test_create_same_request_id_after_job_finished_returns_it(idem_server: Server) -> None:
    stub = idem_server.stub()
    request_id = str(uuid.uuid4())
    first = create(stub, "retried-late", disks_body(), request_id=request_id)
    final = run_to_end(stub, first.name)

    again = create(stub, "retried-late", disks_body(), request_id=request_id)

    assert again == final


def test_create_same_request_id_in_upper_case_returns_the_same_job(idem_server: Server) -> None:
    stub = idem_server.stub()
    request_id = str(uuid.uuid4())
    first = create(stub, "retried-upper", disks_body(), request_id=request_id)

    again = create(stub, "retried-upper", disks_body(), request_id=request_id.upper())

    assert (again.name, again.create_time) == (first.name, first.create_time)


@pytest.mark.parametrize("second_request_id", ["other", "none"])
def test_create_same_clone_job_id_is_already_exists(
    idem_server: Server, second_request_id: str
) -> None:
    stub = idem_server.stub()
    job_id = f"dup-{second_request_id}"
    first = create(stub, job_id, disks_body(), request_id=str(uuid.uuid4()))
    request_id = str(uuid.uuid4()) if second_request_id == "other" else ""

    error = rpc_error(create, stub, job_id, disks_body(), request_id=request_id)

    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    info = error_info(error)
    assert info.reason == "CLONE_JOB_ALREADY_EXISTS"
    assert info.metadata["name"] == first.name


def test_create_same_request_id_with_other_body_is_invalid_argument(idem_server: Server) -> None:
    stub = idem_server.stub()
    request_id = str(uuid.uuid4())
    create(stub, "reused", vm_body("reused-vm"), request_id=request_id)

    error = rpc_error(create, stub, "reused", vm_body("other-vm"), request_id=request_id)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).reason == "REQUEST_ID_REUSED"
    assert bad_fields(error) == ["request_id"]


def test_create_same_request_id_with_other_clone_job_id_is_invalid_argument(
    idem_server: Server,
) -> None:
    stub = idem_server.stub()
    request_id = str(uuid.uuid4())
    create(stub, "reused-a", disks_body(), request_id=request_id)

    error = rpc_error(create, stub, "reused-b", disks_body(), request_id=request_id)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).reason == "REQUEST_ID_REUSED"
    names = [j.name for j in list_jobs(stub).clone_jobs]
    assert f"{VM1}/cloneJobs/reused-b" not in names
