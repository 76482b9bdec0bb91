"""The Google surface from the server's side: reflection, the authorizer's method
table, WaitOperation's bounds, metrics by service, and operations across replicas.

Google's own clients against it are in test_google_client.py (Python) and
test_interop_node.py (Node).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from clonejob_rpc import VM1, bad_fields, create, disks_body, job_name, vm_body
from conftest import ServerPool, write_sample_vm
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import descriptor_pool, duration_pb2, message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client.parser import text_string_to_metric_families

from client.launcher import ServerProcess
from clonejob_grpc import clone_job_pb2 as pb
from clonejob_grpc import clone_job_service_pb2 as spb
from server.api import operations, vmmigration
from server.api.errors import ApiError
from server.security import READ_METHODS, WRITE_METHODS, Grant, TokenAuthorizer, digest
from tests.pg import temporary_database_sync

VMMIGRATION = "google.cloud.vmmigration.v1.VmMigration"
OPERATIONS = "google.longrunning.Operations"
CLONEJOB = "clonejob.v1.CloneJobService"
LOCATION = "projects/p1/locations/us-central1"
RPC_TIMEOUT = 20.0
HOLD = {"match": "cloneJobs/hold-", "step": "adapting_os", "action": "hold"}
State = pb.CloneJob.State


def _google(name: str) -> Any:
    return message_factory.GetMessageClass(
        descriptor_pool.Default().FindMessageTypeByName(f"google.cloud.vmmigration.v1.{name}")
    )


def google_call(channel: grpc.Channel, method: str, request: Message, response: Any) -> Any:
    call = channel.unary_unary(
        f"/{VMMIGRATION}/{method}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response.FromString,
    )
    return call(request, timeout=RPC_TIMEOUT)


def google_create(channel: grpc.Channel, job_id: str) -> operations_pb2.Operation:
    """CreateCloneJob on the Google surface, sent as Google's own request message."""
    request = _google("CreateCloneJobRequest").FromString(
        spb.CreateCloneJobRequest(
            parent=VM1, clone_job_id=job_id, clone_job=vm_body(f"vm-{job_id}")
        ).SerializeToString()
    )
    return google_call(channel, "CreateCloneJob", request, operations_pb2.Operation)


def google_cancel(channel: grpc.Channel, name: str) -> operations_pb2.Operation:
    request = _google("CancelCloneJobRequest")(name=name)
    return google_call(channel, "CancelCloneJob", request, operations_pb2.Operation)


def job_of(operation: operations_pb2.Operation) -> Any:
    job = _google("CloneJob")()
    assert operation.response.Unpack(job)
    return job


@pytest.fixture
def server(servers: ServerPool, data_dir: Path) -> ServerProcess:
    write_sample_vm(data_dir, disks=1, disk_size="1MiB")
    return servers.start(data_dir, fault_plan=[HOLD], metrics_listen="127.0.0.1:0")


# -- the method table --


def test_authorizer_names_every_served_method_and_refuses_others() -> None:
    served = {
        f"/{CLONEJOB}/{m.name}" for m in spb.DESCRIPTOR.services_by_name["CloneJobService"].methods
    }
    served |= {f"/{VMMIGRATION}/{name}" for name in vmmigration.REQUEST_TYPES}
    served |= {f"/{OPERATIONS}/{name}" for name in operations.REQUEST_TYPES}
    assert served == READ_METHODS | WRITE_METHODS
    assert not READ_METHODS & WRITE_METHODS
    token = "t-read"
    authorizer = TokenAuthorizer(
        [Grant(sha256=bytes.fromhex(digest(token)), projects=frozenset({"*"}), write=False)]
    )
    metadata = (("authorization", f"Bearer {token}"),)
    for method in sorted(READ_METHODS):
        authorizer.check(method, None, metadata)  # allowed: raises nothing
    for method in [*sorted(WRITE_METHODS), f"/{VMMIGRATION}/ListSources", "/x.Y/Z"]:
        with pytest.raises(ApiError) as denied:
            authorizer.check(method, None, metadata)
        assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED, method
        expected = "WRITE_ACCESS_REQUIRED" if method in WRITE_METHODS else "METHOD_NOT_ALLOWED"
        assert denied.value.reason == expected, method


# -- reflection --


def test_reflection_describes_and_calls_the_google_services(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.address) as channel:
        made = google_create(channel, "reflected")
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {CLONEJOB, VMMIGRATION, OPERATIONS} <= services
        pool = descriptor_pool.DescriptorPool(database)
        described = pool.FindServiceByName(VMMIGRATION)
        assert {
            m.name: (m.input_type.full_name, m.output_type.full_name) for m in described.methods
        } == {
            name: (request.lstrip("."), response.lstrip("."))
            for name, request, response in vmmigration.METHODS
        }
        # GetOperation built only from what reflection sent.
        method = pool.FindServiceByName(OPERATIONS).methods_by_name["GetOperation"]
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        assert request_class is not operations_pb2.GetOperationRequest
        call = channel.unary_unary(
            f"/{OPERATIONS}/GetOperation",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        got = call(request_class(name=made.name), timeout=RPC_TIMEOUT)
        assert got.name == made.name and got.done


# -- WaitOperation --


def test_wait_operation_returns_the_undone_operation_when_its_timeout_passes(
    servers: ServerPool, data_dir: Path
) -> None:
    write_sample_vm(data_dir, disks=1, disk_size="1MiB")
    # An API-only server: the cancelled job stays CANCELLING, its operation undone.
    server = servers.start(data_dir, max_concurrent_jobs=0)
    with grpc.insecure_channel(server.address) as channel:
        made = job_of(google_create(channel, "waits"))
        cancel_op = google_cancel(channel, made.name)
        assert not cancel_op.done
        stub = operations_pb2_grpc.OperationsStub(channel)
        started = time.monotonic()
        waited = stub.WaitOperation(
            operations_pb2.WaitOperationRequest(
                name=cancel_op.name, timeout=duration_pb2.Duration(nanos=300_000_000)
            ),
            timeout=RPC_TIMEOUT,
        )
        assert not waited.done and waited.name == cancel_op.name
        assert 0.3 <= time.monotonic() - started < RPC_TIMEOUT / 2
        # No timeout: the call's deadline bounds the wait, and the answer beats it.
        waited = stub.WaitOperation(
            operations_pb2.WaitOperationRequest(name=cancel_op.name), timeout=1.0
        )
        assert not waited.done
        # A create operation is done at once: WaitOperation returns it at once.
        create_op = stub.ListOperations(
            operations_pb2.ListOperationsRequest(name=LOCATION), timeout=RPC_TIMEOUT
        ).operations[-1]
        assert create_op.done
        assert stub.WaitOperation(
            operations_pb2.WaitOperationRequest(name=create_op.name), timeout=RPC_TIMEOUT
        ).done


def test_wait_operation_returns_once_the_cancel_is_done(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.address) as channel:
        made = job_of(google_create(channel, "hold-waited"))
        stub = operations_pb2_grpc.OperationsStub(channel)
        cancel_op = google_cancel(channel, made.name)
        waited = stub.WaitOperation(
            operations_pb2.WaitOperationRequest(
                name=cancel_op.name, timeout=duration_pb2.Duration(seconds=15)
            ),
            timeout=RPC_TIMEOUT,
        )
        assert waited.done and waited.response.type_url.endswith("CancelCloneJobResponse")
        metadata = _google("OperationMetadata")()
        assert waited.metadata.Unpack(metadata)
        assert metadata.verb == "cancel" and metadata.requested_cancellation
        assert metadata.HasField("end_time")


# -- metrics --


def scrape(server: ServerProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    port = server.metrics_port
    assert port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=RPC_TIMEOUT) as r:
        text = r.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_each_surface_under_its_service(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.address) as channel:
        made = job_of(google_create(channel, "counted"))
        google_call(
            channel,
            "GetCloneJob",
            _google("GetCloneJobRequest")(name=made.name),
            _google("CloneJob"),
        )
        server.stub().GetCloneJob(spb.GetCloneJobRequest(name=made.name), timeout=RPC_TIMEOUT)

    def count(service: str, method: str, code: str = "OK") -> float:
        key = (
            "clonejob_rpcs_total",
            frozenset({"service": service, "method": method, "code": code}.items()),
        )
        return scrape(server).get(key, 0.0)

    deadline = time.monotonic() + RPC_TIMEOUT
    while count(CLONEJOB, "GetCloneJob") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # a call is counted just after its answer is sent
    assert count(VMMIGRATION, "CreateCloneJob") == 1
    assert count(VMMIGRATION, "GetCloneJob") == 1
    assert count(CLONEJOB, "GetCloneJob") == 1
    assert count(CLONEJOB, "CreateCloneJob") == 0


# -- replicas --


@pytest.fixture
def store_url() -> Iterator[str]:
    with temporary_database_sync() as url:
        yield url


@pytest.mark.slow
def test_operations_are_the_same_on_every_replica(
    servers: ServerPool, tmp_path: Path, store_url: str
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    write_sample_vm(shared, disks=1, disk_size="1MiB")
    fleet = servers.replicas(3, shared, store=store_url, fault_plan=[HOLD], lease_ttl=2)
    channels = [grpc.insecure_channel(replica.address) for replica in fleet]
    try:
        created = google_create(channels[0], "hold-across")
        name = job_of(created).name
        stubs = [operations_pb2_grpc.OperationsStub(c) for c in channels]
        for stub in stubs:
            assert (
                stub.GetOperation(
                    operations_pb2.GetOperationRequest(name=created.name), timeout=RPC_TIMEOUT
                )
                == created
            )
        cancel_op = google_cancel(channels[1], name)
        # Retried on another replica, the cancel is the same operation.
        assert google_cancel(channels[2], name).name == cancel_op.name
        waited = stubs[2].WaitOperation(
            operations_pb2.WaitOperationRequest(
                name=cancel_op.name, timeout=duration_pb2.Duration(seconds=15)
            ),
            timeout=RPC_TIMEOUT,
        )
        assert waited.done and not waited.HasField("error")
        assert server_state(fleet[0], name) == State.CANCELLED
        listed = stubs[1].ListOperations(
            operations_pb2.ListOperationsRequest(name=LOCATION), timeout=RPC_TIMEOUT
        )
        assert [o.name for o in listed.operations] == [cancel_op.name, created.name]
    finally:
        for channel in channels:
            channel.close()


def server_state(server: ServerProcess, name: str) -> int:
    return int(
        server.stub().GetCloneJob(spb.GetCloneJobRequest(name=name), timeout=RPC_TIMEOUT).state
    )


def test_google_and_clonejob_creates_share_request_ids(server: ServerProcess) -> None:
    """The same request id through both surfaces is one job (and one operation)."""
    request_id = "8a3c4c1e-2b6f-4f0e-9d1a-5c7b3e2f1a90"
    first = create(server.stub(), "twice", vm_body("vm-twice"), request_id=request_id)
    with grpc.insecure_channel(server.address) as channel:
        request = _google("CreateCloneJobRequest").FromString(
            spb.CreateCloneJobRequest(
                parent=VM1,
                clone_job_id="twice",
                clone_job=vm_body("vm-twice"),
                request_id=request_id,
            ).SerializeToString()
        )
        op1 = google_call(channel, "CreateCloneJob", request, operations_pb2.Operation)
        op2 = google_call(channel, "CreateCloneJob", request, operations_pb2.Operation)
    assert job_of(op1).name == first.name == job_name("twice")
    assert op1.name == op2.name
    assert job_of(op1).state == State.PENDING


# -- the README's snippet --

README = Path(__file__).resolve().parents[2] / "README.md"
SNIPPET_MARK = "<!-- google-python-snippet -->"
README_VM = "projects/acme/locations/us-central1/sources/vsphere/migratingVms/web-1"


def readme_snippet() -> str:
    text = README.read_text()
    assert SNIPPET_MARK in text, "the README lost its Google client snippet"
    block = text.split(SNIPPET_MARK, 1)[1].lstrip()
    assert block.startswith("```python\n")
    return block.removeprefix("```python\n").split("\n```", 1)[0]


def test_readme_google_client_snippet_runs_as_written(servers: ServerPool, data_dir: Path) -> None:
    write_sample_vm(data_dir, README_VM, disks=1, disk_size="1MiB")
    server = servers.start(data_dir)
    done = subprocess.run(
        [sys.executable, "-c", readme_snippet()],
        env={**os.environ, "CLONEJOB_ENDPOINT": server.address},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    created, finished, listed = done.stdout.strip().splitlines()
    operation, verb, name, state = created.split()
    assert operation.startswith("projects/acme/locations/us-central1/operations/")
    assert (verb, state) == ("create", "PENDING")
    assert name.startswith(f"{README_VM}/cloneJobs/check-")
    assert finished == f"{name} SUCCEEDED"
    assert listed == f"{name} SUCCEEDED"


def test_google_create_with_both_kinds_of_target_is_invalid(server: ServerProcess) -> None:
    """Google's `oneof` would keep only the last of the two; parsed as clonejob.v1's
    message, the request keeps both and is refused naming the field."""
    body = vm_body("vm-both")
    both = pb.CloneJob.FromString(body.SerializeToString() + disks_body().SerializeToString())
    assert both.HasField("compute_engine_target_details")
    assert both.HasField("compute_engine_disks_target_details")
    data = spb.CreateCloneJobRequest(
        parent=VM1, clone_job_id="both", clone_job=both
    ).SerializeToString()
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary(f"/{VMMIGRATION}/CreateCloneJob")
        with pytest.raises(grpc.RpcError) as raised:
            call(data, timeout=RPC_TIMEOUT)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(raised.value) == ["clone_job.compute_engine_disks_target_details"]


def test_health_serves_each_surface(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", CLONEJOB, VMMIGRATION, OPERATIONS):
            status = health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT
            ).status
            assert status == health_pb2.HealthCheckResponse.SERVING, service
