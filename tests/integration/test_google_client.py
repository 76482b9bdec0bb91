"""Google's own Python client (google-cloud-vm-migration) against a real server.

The Google surface (google.cloud.vmmigration.v1.VmMigration and
google.longrunning.Operations, served on the port of clonejob.v1) driven the way
a user of Google's library drives an emulator: an insecure channel handed to the
transport, no credentials. The generated clonejob.v1 stubs on the same address
watch the jobs, which also shows that a job is one job on both surfaces.

Most tests share one server (`google`, with holds in adapting_os); the tokens
tests share one with a tokens file (`tokens`), the WaitOperation tests one that
runs no job (`idle`), and the restart test kills a server of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from clonejob_rpc import (
    RPC_TIMEOUT,
    VM1,
    WATCH_TIMEOUT,
    ZONE,
    State,
    changes,
    disks_body,
    error_info,
    in_state,
    read_to_end,
    read_until,
    rpc_error,
    run_to_end,
    terminal,
    vm_body,
    watch,
)
from google.api_core import exceptions
from google.api_core import operation as lro
from google.cloud import vmmigration_v1 as gvm
from google.cloud.vmmigration_v1.services.vm_migration.transports import (
    VmMigrationGrpcAsyncIOTransport,
    VmMigrationGrpcTransport,
)
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from clonejob_grpc import clone_job_pb2 as pb
from clonejob_grpc import clone_job_service_pb2 as spb
from clonejob_grpc import clone_job_service_pb2_grpc as spb_grpc

if TYPE_CHECKING:
    from conftest import Server, ServerPool

DOMAIN = "clonejob.v1"
LOCATION = "projects/p1/locations/us-central1"
SOURCE = f"{LOCATION}/sources/s1"
VM2 = f"{SOURCE}/migratingVms/vm2"  # its jobs: the migrating VM view test's only
VM3 = f"{SOURCE}/migratingVms/vm3"  # its jobs: the list tests' only
VM4 = f"{SOURCE}/migratingVms/vm4"  # two completed cycles and one uploading, at known times
OTHER_SOURCE_VM = f"{LOCATION}/sources/s2/migratingVms/vm9"
# A location of its own, so that its operations are exactly the ones listed.
OPS_LOCATION = "projects/p1/locations/europe-west1"
OPS_VM = f"{OPS_LOCATION}/sources/s1/migratingVms/vm1"
UNKNOWN_VM = f"{SOURCE}/migratingVms/nobody"

# Jobs whose id starts with hold- wait in adapting_os until they are cancelled.
HOLDS = [{"match": "cloneJobs/hold-", "step": "adapting_os", "action": "hold"}]
SERVED = (
    "CreateCloneJob",
    "GetCloneJob",
    "ListCloneJobs",
    "CancelCloneJob",
    "GetMigratingVm",
    "ListMigratingVms",
)
OPERATION_NAME = re.compile(
    r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/operations/"
    r"operation-(?P<unix_ms>\d+)-(?P<hex>[0-9a-f]+)"
)
LRO_TIMEOUT = 60.0

GoogleState = gvm.CloneJob.State
Metadata = Sequence[tuple[str, str]]


# -- clients and calls --------------------------------------------------------------


def google_client(channel: grpc.Channel) -> gvm.VmMigrationClient:
    """Google's client on an insecure channel, as for an emulator (no credentials)."""
    return gvm.VmMigrationClient(transport=VmMigrationGrpcTransport(channel=channel))


def google_vm_body(vm_name: str) -> gvm.CloneJob:
    """A clone to a Compute Engine VM (the Google twin of clonejob_rpc.vm_body)."""
    return gvm.CloneJob(
        compute_engine_target_details=gvm.ComputeEngineTargetDetails(
            vm_name=vm_name, zone=ZONE, machine_type="n2-standard-2"
        )
    )


def google_disks_body() -> gvm.CloneJob:
    """A clone to disks only (its target details empty)."""
    return gvm.CloneJob(compute_engine_disks_target_details=gvm.ComputeEngineDisksTargetDetails())


def google_create(
    client: gvm.VmMigrationClient,
    job_id: str,
    body: gvm.CloneJob,
    *,
    parent: str = VM1,
    request_id: str = "",
    metadata: Metadata = (),
) -> lro.Operation:
    request = gvm.CreateCloneJobRequest(
        parent=parent, clone_job_id=job_id, clone_job=body, request_id=request_id
    )
    return client.create_clone_job(request=request, timeout=RPC_TIMEOUT, metadata=metadata)


def create_job(
    client: gvm.VmMigrationClient, job_id: str, body: gvm.CloneJob, parent: str = VM1
) -> str:
    """Create through Google's client and wait for the operation; the job's name."""
    job = google_create(client, job_id, body, parent=parent).result(timeout=LRO_TIMEOUT)
    return str(job.name)


def as_v1(job: gvm.CloneJob) -> pb.CloneJob:
    """A job of the Google surface as the clonejob.v1 message of the same bytes."""
    return pb.CloneJob.FromString(gvm.CloneJob.serialize(job))


def get_operation(
    client: gvm.VmMigrationClient, name: str, metadata: Metadata = ()
) -> operations_pb2.Operation:
    return client.get_operation({"name": name}, timeout=RPC_TIMEOUT, metadata=metadata)


def list_operations(
    client: gvm.VmMigrationClient, location: str, metadata: Metadata = (), **fields: Any
) -> operations_pb2.ListOperationsResponse:
    return client.list_operations(
        {"name": location, **fields}, timeout=RPC_TIMEOUT, metadata=metadata
    )


def wait_operation(
    channel: grpc.Channel, name: str, wait: float, metadata: Metadata = ()
) -> operations_pb2.Operation:
    """WaitOperation on the raw google.longrunning stub (the client has no such method)."""
    request = operations_pb2.WaitOperationRequest(
        name=name, timeout=duration_pb2.Duration(seconds=int(wait))
    )
    stub = operations_pb2_grpc.OperationsStub(channel)  # type: ignore[no-untyped-call]
    return stub.WaitOperation(request, timeout=wait + RPC_TIMEOUT, metadata=metadata)


def cancel_response(operation: operations_pb2.Operation) -> gvm.CancelCloneJobResponse:
    """The CancelCloneJobResponse of a done cancel operation."""
    assert operation.done, operation
    assert operation.WhichOneof("result") == "response", operation
    response = gvm.CancelCloneJobResponse.pb()()
    assert operation.response.Unpack(response), operation.response.type_url
    return gvm.CancelCloneJobResponse.wrap(response)


def metadata_of(operation: operations_pb2.Operation) -> gvm.OperationMetadata:
    raw = gvm.OperationMetadata.pb()()
    assert operation.metadata.Unpack(raw), operation.metadata.type_url
    return gvm.OperationMetadata.wrap(raw)


def google_error(
    kind: type[exceptions.GoogleAPICallError], call: Callable[..., Any], *args: Any, **kw: Any
) -> exceptions.GoogleAPICallError:
    """The error of `kind` a call of Google's client raises, with its ErrorInfo checked."""
    with pytest.raises(kind) as caught:
        call(*args, **kw)
    error = caught.value
    assert error.domain == DOMAIN, error.details
    infos = [d for d in error.details if isinstance(d, error_details_pb2.ErrorInfo)]
    assert len(infos) == 1, error.details
    return error


def violations(error: exceptions.GoogleAPICallError) -> list[str]:
    """The field paths of the one BadRequest of an error."""
    found = [d for d in error.details if isinstance(d, error_details_pb2.BadRequest)]
    assert len(found) == 1, error.details
    return [v.field for v in found[0].field_violations]


def now() -> datetime:
    return datetime.now(UTC)


def floor_ms(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


# -- the shared server --------------------------------------------------------------


@dataclass
class Google:
    server: Server
    channel: grpc.Channel
    client: gvm.VmMigrationClient

    @property
    def stub(self) -> spb_grpc.CloneJobServiceStub:
        return self.server.stub()


def write_vm(data_dir: Path, name: str) -> None:
    from conftest import write_sample_vm

    write_sample_vm(data_dir, name, disks=1, disk_size="1MiB")


# When VM4's cycles were written: the snapshot store's time of a cycle is its manifest's.
CYCLE_TIMES = [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=d) for d in (0, 7, 14)]


def write_cycles(data_dir: Path) -> None:
    """VM4: two completed cycles and a third still uploading, at CYCLE_TIMES."""
    write_vm(data_dir, VM4)
    write_vm(data_dir, VM4)
    cycles = data_dir / "snapshots" / VM4 / "cycles"
    uploading = cycles / "3"
    uploading.mkdir()
    (uploading / "manifest.json").write_text(
        json.dumps({"state": "RUNNING", "cycle": 3, "disks": []})
    )
    for number, moment in enumerate(CYCLE_TIMES, start=1):
        os.utime(cycles / str(number) / "manifest.json", (moment.timestamp(),) * 2)


@pytest.fixture(scope="module")
def google(
    module_servers: ServerPool, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Google]:
    data_dir = tmp_path_factory.mktemp("google") / "data"
    data_dir.mkdir()
    for name in (VM1, VM2, VM3, OTHER_SOURCE_VM, OPS_VM):
        write_vm(data_dir, name)
    write_cycles(data_dir)
    server = module_servers.start(data_dir, fault_plan=HOLDS)
    channel = grpc.insecure_channel(server.address)
    try:
        yield Google(server, channel, google_client(channel))
    finally:
        channel.close()


def finish(google: Google, name: str) -> None:
    """Cancel the job through clonejob.v1 unless it has ended, and watch it end."""
    job = google.stub.GetCloneJob(spb.GetCloneJobRequest(name=name), timeout=RPC_TIMEOUT)
    if job.state not in (State.SUCCEEDED, State.FAILED, State.CANCELLED):
        google.stub.CancelCloneJob(spb.CancelCloneJobRequest(name=name), timeout=RPC_TIMEOUT)
        run_to_end(google.stub, name)


@dataclass
class Held:
    name: str
    operation: lro.Operation  # its create operation
    stream: Any  # its clonejob.v1 watch, past ADAPTING_OS


@contextmanager
def held(google: Google, job_id: str, parent: str = VM1) -> Iterator[Held]:
    """A job created through Google's client and held in ADAPTING_OS. On exit,
    cancelled (through clonejob.v1) unless it has ended, so that it frees its slot."""
    assert job_id.startswith("hold-")
    operation = google_create(google.client, job_id, google_vm_body(f"{job_id}-vm"), parent=parent)
    name = operation.result(timeout=LRO_TIMEOUT).name
    stream = watch(google.stub, name)
    try:
        read_until(stream, in_state(State.ADAPTING_OS))
        yield Held(name, operation, stream)
    finally:
        stream.cancel()
        finish(google, name)


# -- CreateCloneJob -----------------------------------------------------------------


@dataclass(frozen=True)
class Created:
    operation: lro.Operation
    job: gvm.CloneJob
    before: datetime
    after: datetime


@pytest.fixture(scope="module")
def created(google: Google) -> Created:
    before = now()
    operation = google_create(google.client, "created", google_vm_body("created-vm"))
    after = now()
    return Created(operation, operation.result(timeout=LRO_TIMEOUT), before, after)


def test_create_clone_job_result_is_the_pending_job(created: Created) -> None:
    assert created.operation.operation.done
    assert created.job.name == f"{VM1}/cloneJobs/created"
    assert created.job.state == GoogleState.PENDING
    assert created.job.compute_engine_target_details.vm_name == "created-vm"
    assert floor_ms(created.before) <= created.job.create_time <= created.after


def test_create_clone_job_metadata_describes_the_operation(created: Created) -> None:
    metadata = created.operation.metadata
    assert isinstance(metadata, gvm.OperationMetadata)
    assert metadata.target == created.job.name
    assert metadata.verb == "create"
    assert metadata.api_version == "v1"
    assert not metadata.requested_cancellation
    assert floor_ms(created.before) <= metadata.create_time <= metadata.end_time <= created.after


def test_create_clone_job_operation_is_named_in_the_parents_location(created: Created) -> None:
    found = OPERATION_NAME.fullmatch(created.operation.operation.name)
    assert found, created.operation.operation.name
    assert (found["project"], found["location"]) == ("p1", "us-central1")
    before_ms = int(created.before.timestamp() * 1000)
    assert before_ms <= int(found["unix_ms"]) <= created.after.timestamp() * 1000


def test_create_clone_job_invalid_vm_name_is_invalid_argument(google: Google) -> None:
    error = google_error(
        exceptions.InvalidArgument,
        google_create,
        google.client,
        "bad-vm-name",
        google_vm_body(""),
    )
    assert error.reason == "INVALID_ARGUMENT"
    assert violations(error) == ["clone_job.compute_engine_target_details.vm_name"]
    google_error(
        exceptions.NotFound,
        google.client.get_clone_job,
        name=f"{VM1}/cloneJobs/bad-vm-name",
        timeout=RPC_TIMEOUT,
    )


def test_create_clone_job_existing_id_is_already_exists(google: Google) -> None:
    create_job(google.client, "twice", google_disks_body())

    error = google_error(
        exceptions.AlreadyExists, google_create, google.client, "twice", google_disks_body()
    )

    assert error.reason == "CLONE_JOB_ALREADY_EXISTS"


def test_create_clone_job_of_unknown_migrating_vm_is_not_found(google: Google) -> None:
    error = google_error(
        exceptions.NotFound,
        google_create,
        google.client,
        "orphan",
        google_disks_body(),
        parent=UNKNOWN_VM,
    )
    assert error.reason == "MIGRATING_VM_NOT_FOUND"


# -- GetCloneJob, ListCloneJobs, and the job running ---------------------------------


def test_get_clone_job_returns_the_created_job(google: Google, created: Created) -> None:
    job = google.client.get_clone_job(name=created.job.name, timeout=RPC_TIMEOUT)
    assert job.name == created.job.name
    assert job.create_time == created.job.create_time
    assert job.compute_engine_target_details.vm_name == "created-vm"


def test_get_clone_job_unknown_is_not_found(google: Google) -> None:
    error = google_error(
        exceptions.NotFound,
        google.client.get_clone_job,
        name=f"{VM1}/cloneJobs/nobody",
        timeout=RPC_TIMEOUT,
    )
    assert error.reason == "CLONE_JOB_NOT_FOUND"


def test_clone_job_runs_to_succeeded_as_one_job_on_both_surfaces(google: Google) -> None:
    name = create_job(google.client, "runs", google_vm_body("runs-vm"))

    final = run_to_end(google.stub, name)

    assert final.state == State.SUCCEEDED
    job = google.client.get_clone_job(name=name, timeout=RPC_TIMEOUT)
    assert job.state == GoogleState.SUCCEEDED
    assert as_v1(job) == final


@pytest.fixture(scope="module")
def listed(google: Google) -> list[str]:
    """Three jobs of VM3, in creation order."""
    return [
        create_job(google.client, job_id, google_disks_body(), VM3)
        for job_id in ("list-c", "list-a", "list-b")
    ]


def list_request(page_size: int) -> gvm.ListCloneJobsRequest:
    return gvm.ListCloneJobsRequest(parent=VM3, page_size=page_size, order_by="create_time")


def test_list_clone_jobs_pager_goes_through_every_page(google: Google, listed: list[str]) -> None:
    pager = google.client.list_clone_jobs(request=list_request(1), timeout=RPC_TIMEOUT)
    assert [job.name for job in pager] == listed


def test_list_clone_jobs_pages_hold_page_size_jobs(google: Google, listed: list[str]) -> None:
    pager = google.client.list_clone_jobs(request=list_request(1), timeout=RPC_TIMEOUT)
    pages = list(pager.pages)
    assert [[job.name for job in page.clone_jobs] for page in pages] == [[n] for n in listed]
    assert [bool(page.next_page_token) for page in pages] == [True, True, False]


def test_list_clone_jobs_filter_and_order(google: Google, listed: list[str]) -> None:
    for name in listed:
        assert run_to_end(google.stub, name).state == State.SUCCEEDED
    request = gvm.ListCloneJobsRequest(
        parent=VM3, filter="state = SUCCEEDED", order_by="create_time desc"
    )
    pager = google.client.list_clone_jobs(request=request, timeout=RPC_TIMEOUT)
    assert [job.name for job in pager] == listed[::-1]
    request.filter = "state = FAILED"
    assert list(google.client.list_clone_jobs(request=request, timeout=RPC_TIMEOUT)) == []


# -- CancelCloneJob -----------------------------------------------------------------


def test_cancel_clone_job_result_once_the_job_is_cancelled(google: Google) -> None:
    with held(google, "hold-cancel") as job:
        operation = google.client.cancel_clone_job(name=job.name, timeout=RPC_TIMEOUT)
        metadata = operation.metadata
        assert (metadata.verb, metadata.target) == ("cancel", job.name)
        assert metadata.requested_cancellation

        response = operation.result(timeout=LRO_TIMEOUT)

        assert isinstance(response, gvm.CancelCloneJobResponse)
        assert operation.metadata.end_time >= operation.metadata.create_time
        assert changes(read_to_end(job.stream))[-1].clone_job.state == State.CANCELLED
        after = google.client.get_clone_job(name=job.name, timeout=RPC_TIMEOUT)
        assert after.state == GoogleState.CANCELLED


def test_cancel_clone_job_again_returns_the_same_operation(google: Google) -> None:
    with held(google, "hold-again") as job:
        first = google.client.cancel_clone_job(name=job.name, timeout=RPC_TIMEOUT)
        assert read_until(job.stream, terminal)[-1].clone_job.state == State.CANCELLED

        again = google.client.cancel_clone_job(name=job.name, timeout=RPC_TIMEOUT)

        assert again.operation.name == first.operation.name
        assert again.operation.done


def test_cancel_clone_job_of_succeeded_job_is_failed_precondition(google: Google) -> None:
    name = create_job(google.client, "finished", google_disks_body())
    assert run_to_end(google.stub, name).state == State.SUCCEEDED

    error = google_error(
        exceptions.FailedPrecondition,
        google.client.cancel_clone_job,
        name=name,
        timeout=RPC_TIMEOUT,
    )

    assert error.reason == "CLONE_JOB_FINISHED"
    assert google.client.get_clone_job(name=name, timeout=RPC_TIMEOUT).state == (
        GoogleState.SUCCEEDED
    )


# -- google.longrunning.Operations --------------------------------------------------


def test_get_operation_returns_the_create_operation(google: Google, created: Created) -> None:
    name = created.operation.operation.name
    assert get_operation(google.client, name) == created.operation.operation
    operations_client = google.client.transport.operations_client
    assert operations_client.get_operation(name, timeout=RPC_TIMEOUT) == (
        created.operation.operation
    )


@pytest.fixture(scope="module")
def operations_in_location(google: Google) -> list[str]:
    """The names of three create operations, the only ones in OPS_LOCATION, oldest first."""
    return [
        google_create(google.client, job_id, google_disks_body(), parent=OPS_VM).operation.name
        for job_id in ("op-one", "op-two", "op-three")
    ]


def test_list_operations_newest_first(google: Google, operations_in_location: list[str]) -> None:
    response = list_operations(google.client, OPS_LOCATION)
    assert [op.name for op in response.operations] == operations_in_location[::-1]
    assert response.next_page_token == ""
    pager = google.client.transport.operations_client.list_operations(
        OPS_LOCATION, "", timeout=RPC_TIMEOUT
    )
    assert [op.name for op in pager] == operations_in_location[::-1]


def test_list_operations_pages(google: Google, operations_in_location: list[str]) -> None:
    pages: list[list[str]] = []
    token = ""
    while len(pages) < 5:
        response = list_operations(google.client, OPS_LOCATION, page_size=1, page_token=token)
        pages.append([op.name for op in response.operations])
        token = response.next_page_token
        if not token:
            break
    assert pages == [[name] for name in operations_in_location[::-1]]


def test_delete_operation_forgets_it_and_keeps_the_job(google: Google) -> None:
    operation = google_create(google.client, "forgotten", google_disks_body())
    name = operation.operation.name

    assert google.client.delete_operation({"name": name}, timeout=RPC_TIMEOUT) is None

    error = google_error(exceptions.NotFound, get_operation, google.client, name)
    assert error.reason == "OPERATION_NOT_FOUND"
    job = google.client.get_clone_job(
        name=operation.result(timeout=LRO_TIMEOUT).name, timeout=RPC_TIMEOUT
    )
    assert job.name == f"{VM1}/cloneJobs/forgotten"


def test_wait_operation_returns_a_done_operation_at_once(google: Google, created: Created) -> None:
    started = time.monotonic()
    operation = wait_operation(google.channel, created.operation.operation.name, 30)
    assert operation == created.operation.operation
    assert time.monotonic() - started < 10  # not the 30 s of `timeout`


def test_wait_operation_returns_the_cancel_operation_once_the_job_is_cancelled(
    google: Google,
) -> None:
    with held(google, "hold-wait") as job:
        cancelling = google.client.cancel_clone_job(name=job.name, timeout=RPC_TIMEOUT)

        operation = wait_operation(google.channel, cancelling.operation.name, LRO_TIMEOUT)

        assert isinstance(cancel_response(operation), gvm.CancelCloneJobResponse)
        assert metadata_of(operation).end_time >= metadata_of(operation).create_time
        assert google.client.get_clone_job(name=job.name, timeout=RPC_TIMEOUT).state == (
            GoogleState.CANCELLED
        )


def test_cancel_operation_changes_nothing(google: Google) -> None:
    with held(google, "hold-cancel-op") as job:
        name = job.operation.operation.name
        before = get_operation(google.client, name)

        assert google.client.cancel_operation({"name": name}, timeout=RPC_TIMEOUT) is None

        assert get_operation(google.client, name) == before
        after = google.client.get_clone_job(name=job.name, timeout=RPC_TIMEOUT)
        assert after.state == GoogleState.ADAPTING_OS


UNKNOWN_OPERATION = f"{LOCATION}/operations/operation-1-00"
# case → (method, request, the field of the BadRequest)
BAD_OPERATION_REQUESTS: dict[str, tuple[str, dict[str, Any], str]] = {
    "get bad name": ("get_operation", {"name": "operations/x"}, "name"),
    "list bad name": ("list_operations", {"name": "projects/p1"}, "name"),
    "list with a filter": ("list_operations", {"name": LOCATION, "filter": "done"}, "filter"),
    "list negative page size": (
        "list_operations",
        {"name": LOCATION, "page_size": -1},
        "page_size",
    ),
    "list foreign page token": (
        "list_operations",
        {"name": LOCATION, "page_token": "not-a-token"},
        "page_token",
    ),
}


@pytest.mark.parametrize("case", list(BAD_OPERATION_REQUESTS))
def test_operations_bad_request_is_invalid_argument(google: Google, case: str) -> None:
    method, request, field = BAD_OPERATION_REQUESTS[case]
    error = google_error(
        exceptions.InvalidArgument, getattr(google.client, method), request, timeout=RPC_TIMEOUT
    )
    assert error.reason == "INVALID_ARGUMENT"
    assert violations(error) == [field]


@pytest.mark.parametrize("method", ["get_operation", "cancel_operation", "delete_operation"])
def test_operations_unknown_operation_is_not_found(google: Google, method: str) -> None:
    error = google_error(
        exceptions.NotFound,
        getattr(google.client, method),
        {"name": UNKNOWN_OPERATION},
        timeout=RPC_TIMEOUT,
    )
    assert error.reason == "OPERATION_NOT_FOUND"


@dataclass(frozen=True)
class Idle:
    """A server that runs no job, so that a cancel stays CANCELLING: its cancel
    operation is never done."""

    channel: grpc.Channel
    client: gvm.VmMigrationClient
    cancel_operation: str


@pytest.fixture(scope="module")
def idle(module_servers: ServerPool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idle]:
    data_dir = tmp_path_factory.mktemp("google-idle") / "data"
    data_dir.mkdir()
    write_vm(data_dir, VM1)
    server = module_servers.start(data_dir, max_concurrent_jobs=0)
    with server.channel() as channel:
        client = google_client(channel)
        name = create_job(client, "stays", google_disks_body())
        cancelling = client.cancel_clone_job(name=name, timeout=RPC_TIMEOUT)
        yield Idle(channel, client, cancelling.operation.name)


def test_wait_operation_returns_the_operation_as_it_is_when_the_timeout_passes(
    idle: Idle,
) -> None:
    started = time.monotonic()

    operation = wait_operation(idle.channel, idle.cancel_operation, 1)

    waited = time.monotonic() - started
    assert not operation.done
    assert operation.name == idle.cancel_operation
    assert metadata_of(operation).verb == "cancel"
    assert 0.9 <= waited < 10


def test_wait_operation_answers_before_the_calls_deadline(idle: Idle) -> None:
    request = operations_pb2.WaitOperationRequest(
        name=idle.cancel_operation, timeout=duration_pb2.Duration(seconds=60)
    )
    stub = operations_pb2_grpc.OperationsStub(idle.channel)  # type: ignore[no-untyped-call]
    started = time.monotonic()

    operation = stub.WaitOperation(request, timeout=2.0)  # an answer, not DEADLINE_EXCEEDED

    assert not operation.done
    assert operation.name == idle.cancel_operation
    assert 1.0 <= time.monotonic() - started < 2.0


def test_cancel_clone_job_while_cancelling_returns_the_same_operation(idle: Idle) -> None:
    target = metadata_of(get_operation(idle.client, idle.cancel_operation)).target

    again = idle.client.cancel_clone_job(name=target, timeout=RPC_TIMEOUT)

    assert again.operation.name == idle.cancel_operation
    assert not again.operation.done
    job = idle.client.get_clone_job(name=target, timeout=RPC_TIMEOUT)
    assert job.state == GoogleState.CANCELLING


def test_operations_survive_kill_and_restart(servers: ServerPool, data_dir: Path) -> None:
    write_vm(data_dir, VM1)
    server = servers.start(data_dir, max_concurrent_jobs=0)  # the cancel stays open
    with server.channel() as channel:
        client = google_client(channel)
        create = google_create(client, "survivor", google_vm_body("survivor-vm"))
        name = create.result(timeout=LRO_TIMEOUT).name
        cancel_name = client.cancel_clone_job(name=name, timeout=RPC_TIMEOUT).operation.name
        before = {op.name: op for op in list_operations(client, LOCATION).operations}
    assert list(before) == [cancel_name, create.operation.name]
    assert not before[cancel_name].done

    server.kill()
    server.restart(max_concurrent_jobs=None)  # the default: cancels are finished

    with server.channel() as channel:
        client = google_client(channel)
        assert get_operation(client, create.operation.name) == before[create.operation.name]
        listed = list_operations(client, LOCATION).operations
        assert [op.name for op in listed] == list(before)
        done = wait_operation(channel, cancel_name, LRO_TIMEOUT)
        assert isinstance(cancel_response(done), gvm.CancelCloneJobResponse)
        assert client.get_clone_job(name=name, timeout=RPC_TIMEOUT).state == (GoogleState.CANCELLED)


# -- migrating VMs ------------------------------------------------------------------


def test_get_migrating_vm_describes_its_replication_cycles(google: Google) -> None:
    vm = google.client.get_migrating_vm(name=VM4, timeout=RPC_TIMEOUT)
    assert vm.name == VM4
    assert vm.state == gvm.MigratingVm.State.ACTIVE
    assert vm.source_vm_id == "vm4"  # a sample VM has no id of its own in a source
    assert vm.create_time == CYCLE_TIMES[0]
    assert vm.last_sync.last_sync_time == CYCLE_TIMES[1]  # cycle 3 is still uploading
    assert not vm.recent_clone_jobs  # the basic view


def test_get_migrating_vm_unknown_is_not_found(google: Google) -> None:
    error = google_error(
        exceptions.NotFound,
        google.client.get_migrating_vm,
        name=UNKNOWN_VM,
        timeout=RPC_TIMEOUT,
    )
    assert error.reason == "MIGRATING_VM_NOT_FOUND"


def test_list_migrating_vms_of_a_source_by_name(google: Google) -> None:
    pager = google.client.list_migrating_vms(
        request=gvm.ListMigratingVmsRequest(parent=SOURCE, page_size=1), timeout=RPC_TIMEOUT
    )
    pages = [[vm.name for vm in page.migrating_vms] for page in pager.pages]
    assert pages == [[VM1], [VM2], [VM3], [VM4]]
    every = list(google.client.list_migrating_vms(parent=SOURCE, timeout=RPC_TIMEOUT))
    assert [vm.name for vm in every] == [VM1, VM2, VM3, VM4]
    assert {vm.state for vm in every} == {gvm.MigratingVm.State.ACTIVE}


def test_list_migrating_vms_full_view_has_recent_clone_jobs(google: Google) -> None:
    finished = []
    for job_id in ("vm2-first", "vm2-latest"):
        name = create_job(google.client, job_id, google_disks_body(), VM2)
        assert run_to_end(google.stub, name).state == State.SUCCEEDED
        finished.append(name)
    with held(google, "hold-vm2", parent=VM2) as job:
        running = job.name
        request = gvm.ListMigratingVmsRequest(
            parent=SOURCE, view=gvm.MigratingVmView.MIGRATING_VM_VIEW_FULL
        )
        vms = {
            vm.name: vm
            for vm in google.client.list_migrating_vms(request=request, timeout=RPC_TIMEOUT)
        }
        full = google.client.get_migrating_vm(
            request=gvm.GetMigratingVmRequest(
                name=VM2, view=gvm.MigratingVmView.MIGRATING_VM_VIEW_FULL
            ),
            timeout=RPC_TIMEOUT,
        )

        recent = {job.name: job.state for job in vms[VM2].recent_clone_jobs}
        assert recent == {running: GoogleState.ADAPTING_OS, finished[-1]: GoogleState.SUCCEEDED}
        assert {job.name for job in full.recent_clone_jobs} == set(recent)
        basic = google.client.list_migrating_vms(parent=SOURCE, timeout=RPC_TIMEOUT)
        assert [list(vm.recent_clone_jobs) for vm in basic] == [[], [], [], []]


# -- what is not served -------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "rpc", "request_"),
    [
        ("list_sources", "ListSources", {"parent": LOCATION}),
        ("get_source", "GetSource", {"name": SOURCE}),
        ("create_cutover_job", "CreateCutoverJob", {"parent": VM1, "cutover_job_id": "c"}),
    ],
)
def test_unserved_method_is_method_not_implemented(
    google: Google, method: str, rpc: str, request_: dict[str, str]
) -> None:
    with pytest.raises(exceptions.MethodNotImplemented) as caught:
        getattr(google.client, method)(request=request_, timeout=RPC_TIMEOUT)
    message = caught.value.message
    assert rpc in message
    assert all(served in message for served in SERVED), message


# -- request_id across the surfaces -------------------------------------------------


def test_create_retried_from_clonejob_v1_to_google_returns_the_same_job(google: Google) -> None:
    request_id = str(uuid.uuid4())
    first = google.stub.CreateCloneJob(
        spb.CreateCloneJobRequest(
            parent=VM1,
            clone_job_id="idem-v1",
            clone_job=vm_body("idem-v1-vm"),
            request_id=request_id,
        ),
        timeout=RPC_TIMEOUT,
    )

    retried = google_create(
        google.client, "idem-v1", google_vm_body("idem-v1-vm"), request_id=request_id
    )
    again = google_create(
        google.client, "idem-v1", google_vm_body("idem-v1-vm"), request_id=request_id
    )

    job = retried.result(timeout=LRO_TIMEOUT)
    assert (job.name, as_v1(job).create_time) == (first.name, first.create_time)
    assert again.operation.name == retried.operation.name
    assert again.result(timeout=LRO_TIMEOUT).name == first.name


def test_create_retried_from_google_to_clonejob_v1_returns_the_same_job(google: Google) -> None:
    request_id = str(uuid.uuid4())
    first = google_create(
        google.client, "idem-google", google_vm_body("idem-google-vm"), request_id=request_id
    )
    job = first.result(timeout=LRO_TIMEOUT)

    retried = google.stub.CreateCloneJob(
        spb.CreateCloneJobRequest(
            parent=VM1,
            clone_job_id="idem-google",
            clone_job=vm_body("idem-google-vm"),
            request_id=request_id,
        ),
        timeout=RPC_TIMEOUT,
    )
    again = google_create(
        google.client, "idem-google", google_vm_body("idem-google-vm"), request_id=request_id
    )

    assert (retried.name, retried.create_time) == (job.name, as_v1(job).create_time)
    assert again.operation.name == first.operation.name
    listed = google.stub.ListCloneJobs(spb.ListCloneJobsRequest(parent=VM1), timeout=RPC_TIMEOUT)
    assert [j.name for j in listed.clone_jobs].count(job.name) == 1


# -- tokens -------------------------------------------------------------------------

ACME_LOCATION = "projects/acme/locations/us-central1"
ACME_SOURCE = f"{ACME_LOCATION}/sources/s"
ACME_VM = f"{ACME_SOURCE}/migratingVms/vm1"
OTHER_LOCATION = "projects/other/locations/us-central1"
OTHER_SOURCE = f"{OTHER_LOCATION}/sources/s"
OTHER_VM = f"{OTHER_SOURCE}/migratingVms/vm1"
# Where the write-token test writes: apart from what the read tests list.
ACME_WRITE_VM = "projects/acme/locations/europe-west1/sources/s/migratingVms/vm1"
TOKEN_GRANTS = {
    "acme-write": (["acme"], "write"),
    "acme-read": (["acme"], "read"),
    "other-write": (["other"], "write"),
}


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@dataclass
class Tokens:
    server: Server
    channel: grpc.Channel
    client: gvm.VmMigrationClient
    tokens: dict[str, str]  # role → token
    acme_job: str  # held in ADAPTING_OS, created by acme-write through Google
    acme_operation: str  # its create operation
    other_job: str  # held in ADAPTING_OS, created by other-write through Google
    other_operation: str

    @property
    def stub(self) -> spb_grpc.CloneJobServiceStub:
        return spb_grpc.CloneJobServiceStub(self.channel)  # type: ignore[no-untyped-call]

    def as_role(self, role: str) -> list[tuple[str, str]]:
        return bearer(self.tokens[role])


def hold_with_token(
    client: gvm.VmMigrationClient,
    stub: spb_grpc.CloneJobServiceStub,
    parent: str,
    job_id: str,
    metadata: Metadata,
) -> tuple[str, str]:
    """A job created through Google, held in ADAPTING_OS: its name and its create operation."""
    operation = google_create(
        client, job_id, google_vm_body(f"{job_id}-vm"), parent=parent, metadata=metadata
    )
    name = f"{parent}/cloneJobs/{job_id}"
    stream = stub.WatchCloneJob(
        spb.WatchCloneJobRequest(name=name), timeout=WATCH_TIMEOUT, metadata=metadata
    )
    read_until(stream, in_state(State.ADAPTING_OS))
    stream.cancel()
    return name, operation.operation.name


@pytest.fixture(scope="module")
def tokens(
    module_servers: ServerPool, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Tokens]:
    data_dir = tmp_path_factory.mktemp("google-tokens") / "data"
    data_dir.mkdir()
    write_vm(data_dir, ACME_VM)
    write_vm(data_dir, OTHER_VM)
    write_vm(data_dir, ACME_WRITE_VM)
    secret = {role: f"cj-{role}-{secrets.token_urlsafe(24)}" for role in TOKEN_GRANTS}
    entries = [
        {"sha256": hashlib.sha256(secret[role].encode()).hexdigest(), "projects": p, "access": a}
        for role, (p, a) in TOKEN_GRANTS.items()
    ]
    tokens_file = data_dir / "tokens.json"
    tokens_file.write_text(json.dumps({"tokens": entries}))
    server = module_servers.start(data_dir, tokens_file=tokens_file, fault_plan=HOLDS)
    channel = grpc.insecure_channel(server.address)
    try:
        client = google_client(channel)
        stub = spb_grpc.CloneJobServiceStub(channel)  # type: ignore[no-untyped-call]
        acme = hold_with_token(client, stub, ACME_VM, "hold-acme", bearer(secret["acme-write"]))
        other = hold_with_token(client, stub, OTHER_VM, "hold-other", bearer(secret["other-write"]))
        yield Tokens(server, channel, client, secret, *acme, *other)
    finally:
        channel.close()


def refusal(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    """The status code and ErrorInfo reason a call of either surface fails with."""
    try:
        result = call()
    except exceptions.GoogleAPICallError as error:
        assert error.domain == DOMAIN, error.details
        return error.grpc_status_code, error.reason
    except grpc.RpcError as error:
        return error.code(), error_info(error).reason  # type: ignore[attr-defined]
    raise AssertionError(f"expected a refusal, got {result!r}")


# mutating method → (the call as `role`, a check that it changed nothing)
def mutating_calls(t: Tokens, role: str) -> dict[str, tuple[Callable[[], Any], Callable[[], None]]]:
    md = t.as_role(role)
    writer = t.as_role("acme-write")
    denied_v1 = f"{ACME_VM}/cloneJobs/denied-v1"
    denied_google = f"{ACME_VM}/cloneJobs/denied-google"

    def not_created(name: str) -> Callable[[], None]:
        def check() -> None:
            error = rpc_error(
                t.stub.GetCloneJob,
                spb.GetCloneJobRequest(name=name),
                timeout=RPC_TIMEOUT,
                metadata=writer,
            )
            assert error.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]

        return check

    def still_held() -> None:
        job = t.stub.GetCloneJob(
            spb.GetCloneJobRequest(name=t.acme_job), timeout=RPC_TIMEOUT, metadata=writer
        )
        assert job.state == State.ADAPTING_OS

    def operation_kept() -> None:
        assert get_operation(t.client, t.acme_operation, writer).name == t.acme_operation

    return {
        "clonejob.v1 CreateCloneJob": (
            lambda: t.stub.CreateCloneJob(
                spb.CreateCloneJobRequest(
                    parent=ACME_VM, clone_job_id="denied-v1", clone_job=disks_body()
                ),
                timeout=RPC_TIMEOUT,
                metadata=md,
            ),
            not_created(denied_v1),
        ),
        "clonejob.v1 CancelCloneJob": (
            lambda: t.stub.CancelCloneJob(
                spb.CancelCloneJobRequest(name=t.acme_job), timeout=RPC_TIMEOUT, metadata=md
            ),
            still_held,
        ),
        "VmMigration CreateCloneJob": (
            lambda: google_create(
                t.client, "denied-google", google_disks_body(), parent=ACME_VM, metadata=md
            ),
            not_created(denied_google),
        ),
        "VmMigration CancelCloneJob": (
            lambda: t.client.cancel_clone_job(name=t.acme_job, timeout=RPC_TIMEOUT, metadata=md),
            still_held,
        ),
        "Operations DeleteOperation": (
            lambda: t.client.delete_operation(
                {"name": t.acme_operation}, timeout=RPC_TIMEOUT, metadata=md
            ),
            operation_kept,
        ),
        "Operations CancelOperation": (
            lambda: t.client.cancel_operation(
                {"name": t.acme_operation}, timeout=RPC_TIMEOUT, metadata=md
            ),
            operation_kept,
        ),
    }


MUTATING = (
    "clonejob.v1 CreateCloneJob",
    "clonejob.v1 CancelCloneJob",
    "VmMigration CreateCloneJob",
    "VmMigration CancelCloneJob",
    "Operations DeleteOperation",
    "Operations CancelOperation",
)


@pytest.mark.parametrize("method", MUTATING)
def test_read_token_is_refused_on_every_mutating_method(tokens: Tokens, method: str) -> None:
    call, unchanged = mutating_calls(tokens, "acme-read")[method]

    assert refusal(call) == (grpc.StatusCode.PERMISSION_DENIED, "WRITE_ACCESS_REQUIRED")

    unchanged()


# read method → (the call with the acme-read token, what it returns)
def read_calls(t: Tokens) -> dict[str, tuple[Callable[[], Any], Any]]:
    md = t.as_role("acme-read")

    def watch_first() -> str:
        stream = t.stub.WatchCloneJob(
            spb.WatchCloneJobRequest(name=t.acme_job), timeout=RPC_TIMEOUT, metadata=md
        )
        try:
            return str(next(iter(stream)).clone_job.name)
        finally:
            stream.cancel()

    def v1_get() -> str:
        request = spb.GetCloneJobRequest(name=t.acme_job)
        return str(t.stub.GetCloneJob(request, timeout=RPC_TIMEOUT, metadata=md).name)

    def v1_list() -> list[str]:
        request = spb.ListCloneJobsRequest(parent=ACME_VM)
        response = t.stub.ListCloneJobs(request, timeout=RPC_TIMEOUT, metadata=md)
        return [j.name for j in response.clone_jobs]

    def google_list_jobs() -> list[str]:
        pager = t.client.list_clone_jobs(parent=ACME_VM, timeout=RPC_TIMEOUT, metadata=md)
        return [j.name for j in pager]

    def google_list_vms() -> list[str]:
        pager = t.client.list_migrating_vms(parent=ACME_SOURCE, timeout=RPC_TIMEOUT, metadata=md)
        return [vm.name for vm in pager]

    def list_operation_names() -> list[str]:
        return [op.name for op in list_operations(t.client, ACME_LOCATION, md).operations]

    return {
        "clonejob.v1 GetCloneJob": (v1_get, t.acme_job),
        "clonejob.v1 ListCloneJobs": (v1_list, [t.acme_job]),
        "clonejob.v1 WatchCloneJob": (watch_first, t.acme_job),
        "VmMigration GetCloneJob": (
            lambda: t.client.get_clone_job(name=t.acme_job, timeout=RPC_TIMEOUT, metadata=md).name,
            t.acme_job,
        ),
        "VmMigration ListCloneJobs": (google_list_jobs, [t.acme_job]),
        "VmMigration GetMigratingVm": (
            lambda: t.client.get_migrating_vm(name=ACME_VM, timeout=RPC_TIMEOUT, metadata=md).name,
            ACME_VM,
        ),
        "VmMigration ListMigratingVms": (google_list_vms, [ACME_VM]),
        "Operations GetOperation": (
            lambda: get_operation(t.client, t.acme_operation, md).name,
            t.acme_operation,
        ),
        "Operations ListOperations": (list_operation_names, [t.acme_operation]),
        "Operations WaitOperation": (
            lambda: wait_operation(t.channel, t.acme_operation, 1, md).name,
            t.acme_operation,
        ),
    }


READS = (
    "clonejob.v1 GetCloneJob",
    "clonejob.v1 ListCloneJobs",
    "clonejob.v1 WatchCloneJob",
    "VmMigration GetCloneJob",
    "VmMigration ListCloneJobs",
    "VmMigration GetMigratingVm",
    "VmMigration ListMigratingVms",
    "Operations GetOperation",
    "Operations ListOperations",
    "Operations WaitOperation",
)


@pytest.mark.parametrize("method", READS)
def test_read_token_is_allowed_on_every_read_method(tokens: Tokens, method: str) -> None:
    call, expected = read_calls(tokens)[method]
    assert call() == expected


def other_project_calls(
    t: Tokens, role: str, operation: str, job: str
) -> dict[str, Callable[[], Any]]:
    """Calls as `role` on `operation` and `job` of the project `other`."""
    md = t.as_role(role)
    return {
        "GetOperation": lambda: get_operation(t.client, operation, md),
        "WaitOperation": lambda: wait_operation(t.channel, operation, 1, md),
        "ListOperations": lambda: list_operations(t.client, OTHER_LOCATION, md),
        "DeleteOperation": lambda: t.client.delete_operation(
            {"name": operation}, timeout=RPC_TIMEOUT, metadata=md
        ),
        "CancelOperation": lambda: t.client.cancel_operation(
            {"name": operation}, timeout=RPC_TIMEOUT, metadata=md
        ),
        "GetMigratingVm": lambda: t.client.get_migrating_vm(
            name=OTHER_VM, timeout=RPC_TIMEOUT, metadata=md
        ),
        "ListMigratingVms": lambda: list(
            t.client.list_migrating_vms(parent=OTHER_SOURCE, timeout=RPC_TIMEOUT, metadata=md)
        ),
        "GetCloneJob": lambda: t.client.get_clone_job(name=job, timeout=RPC_TIMEOUT, metadata=md),
        "CancelCloneJob": lambda: t.client.cancel_clone_job(
            name=job, timeout=RPC_TIMEOUT, metadata=md
        ),
    }


OTHER_PROJECT_READS = (
    "GetOperation",
    "WaitOperation",
    "ListOperations",
    "GetMigratingVm",
    "ListMigratingVms",
    "GetCloneJob",
)
OTHER_PROJECT_WRITES = ("DeleteOperation", "CancelOperation", "CancelCloneJob")


# A read token on a mutating method of another project may be refused for either
# reason: those are tried with the write token only.
OTHER_PROJECT_CASES = [
    *[(method, role) for method in OTHER_PROJECT_READS for role in ("acme-read", "acme-write")],
    *[(method, "acme-write") for method in OTHER_PROJECT_WRITES],
]


@pytest.mark.parametrize(("method", "role"), OTHER_PROJECT_CASES)
def test_token_of_another_project_is_denied_on_the_google_surface(
    tokens: Tokens, method: str, role: str
) -> None:
    existing = other_project_calls(tokens, role, tokens.other_operation, tokens.other_job)
    missing = other_project_calls(
        tokens, role, f"{OTHER_LOCATION}/operations/operation-1-00", f"{OTHER_VM}/cloneJobs/nope"
    )

    denied = (grpc.StatusCode.PERMISSION_DENIED, "PROJECT_ACCESS_DENIED")
    assert refusal(existing[method]) == denied
    assert refusal(missing[method]) == denied  # what exists there is not told apart
    owner = tokens.as_role("other-write")
    assert get_operation(tokens.client, tokens.other_operation, owner).name == (
        tokens.other_operation
    )
    job = tokens.client.get_clone_job(name=tokens.other_job, timeout=RPC_TIMEOUT, metadata=owner)
    assert job.state == GoogleState.ADAPTING_OS


def test_write_token_creates_cancels_and_deletes_through_google(tokens: Tokens) -> None:
    md = tokens.as_role("acme-write")
    name, create_name = hold_with_token(
        tokens.client, tokens.stub, ACME_WRITE_VM, "hold-written", md
    )

    cancelling = tokens.client.cancel_clone_job(name=name, timeout=RPC_TIMEOUT, metadata=md)
    done = wait_operation(tokens.channel, cancelling.operation.name, LRO_TIMEOUT, md)
    tokens.client.delete_operation({"name": create_name}, timeout=RPC_TIMEOUT, metadata=md)

    assert isinstance(cancel_response(done), gvm.CancelCloneJobResponse)
    error = google_error(exceptions.NotFound, get_operation, tokens.client, create_name, md)
    assert error.reason == "OPERATION_NOT_FOUND"
    job = tokens.client.get_clone_job(name=name, timeout=RPC_TIMEOUT, metadata=md)
    assert job.state == GoogleState.CANCELLED


@pytest.mark.parametrize("method", ["GetCloneJob", "GetOperation", "ListMigratingVms"])
def test_google_surface_without_token_is_unauthenticated(tokens: Tokens, method: str) -> None:
    calls: dict[str, Callable[[], Any]] = {
        "GetCloneJob": lambda: tokens.client.get_clone_job(
            name=tokens.acme_job, timeout=RPC_TIMEOUT
        ),
        "GetOperation": lambda: get_operation(tokens.client, tokens.acme_operation),
        "ListMigratingVms": lambda: list(
            tokens.client.list_migrating_vms(parent=ACME_SOURCE, timeout=RPC_TIMEOUT)
        ),
    }
    assert refusal(calls[method]) == (grpc.StatusCode.UNAUTHENTICATED, "MISSING_CREDENTIALS")


# -- the async client ---------------------------------------------------------------


@pytest.fixture
async def async_client(google: Google) -> AsyncIterator[gvm.VmMigrationAsyncClient]:
    channel = grpc.aio.insecure_channel(google.server.address)
    try:
        yield gvm.VmMigrationAsyncClient(transport=VmMigrationGrpcAsyncIOTransport(channel=channel))
    finally:
        await channel.close()


async def read_until_async(
    stream: Any, done: Callable[[spb.WatchCloneJobResponse], bool]
) -> spb.WatchCloneJobResponse:
    """The first message of a grpc.aio watch for which `done` is true."""
    async for message in stream:
        if done(message):
            return message
    raise AssertionError(f"the watch ended ({await stream.code()}) before the awaited message")


async def test_async_create_clone_job_result_is_the_pending_job(
    async_client: gvm.VmMigrationAsyncClient,
) -> None:
    operation = await async_client.create_clone_job(
        request=gvm.CreateCloneJobRequest(
            parent=VM1, clone_job_id="async-created", clone_job=google_disks_body()
        ),
        timeout=RPC_TIMEOUT,
    )

    job = await operation.result(timeout=LRO_TIMEOUT)

    assert job.name == f"{VM1}/cloneJobs/async-created"
    assert job.state == GoogleState.PENDING
    assert operation.metadata.verb == "create"


async def test_async_get_clone_job_returns_the_job(
    async_client: gvm.VmMigrationAsyncClient, created: Created
) -> None:
    job = await async_client.get_clone_job(name=created.job.name, timeout=RPC_TIMEOUT)
    assert (job.name, job.create_time) == (created.job.name, created.job.create_time)


async def test_async_list_clone_jobs_pager_goes_through_every_page(
    async_client: gvm.VmMigrationAsyncClient, listed: list[str]
) -> None:
    pager = await async_client.list_clone_jobs(request=list_request(1), timeout=RPC_TIMEOUT)
    assert [job.name async for job in pager] == listed
    pages = await async_client.list_clone_jobs(request=list_request(2), timeout=RPC_TIMEOUT)
    sizes = [len(page.clone_jobs) async for page in pages.pages]
    assert sizes == [2, 1]


async def test_async_cancel_clone_job_result_once_the_job_is_cancelled(
    google: Google, async_client: gvm.VmMigrationAsyncClient
) -> None:
    operation = await async_client.create_clone_job(
        request=gvm.CreateCloneJobRequest(
            parent=VM1, clone_job_id="hold-async", clone_job=google_vm_body("hold-async-vm")
        ),
        timeout=RPC_TIMEOUT,
    )
    name = (await operation.result(timeout=LRO_TIMEOUT)).name
    try:
        async with grpc.aio.insecure_channel(google.server.address) as channel:
            stub = spb_grpc.CloneJobServiceStub(channel)  # type: ignore[no-untyped-call]
            stream = stub.WatchCloneJob(spb.WatchCloneJobRequest(name=name), timeout=WATCH_TIMEOUT)
            await read_until_async(stream, in_state(State.ADAPTING_OS))
            stream.cancel()

            cancelling = await async_client.cancel_clone_job(name=name, timeout=RPC_TIMEOUT)
            response = await cancelling.result(timeout=LRO_TIMEOUT)

            assert isinstance(response, gvm.CancelCloneJobResponse)
            assert cancelling.metadata.verb == "cancel"
            job = await async_client.get_clone_job(name=name, timeout=RPC_TIMEOUT)
            assert job.state == GoogleState.CANCELLED
    finally:
        await asyncio.to_thread(finish, google, name)
