"""The servicer without a network, through grpcio-testing.

grpc_testing drives synchronous servicers; ours is a grpc.aio one, so a thin
adapter runs each handler on an event loop owned by the test and turns the
handler's `await context.abort(...)` into grpc_testing's `abort`. Everything
behind the servicer is real: the engine, the SQLite store and the local target.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc_testing
import pytest
from google.rpc import error_details_pb2, status_pb2

from clonejob_grpc import clone_job_pb2 as pb
from clonejob_grpc import clone_job_service_pb2 as spb
from server.api.page_tokens import PageTokens
from server.api.servicer import CloneJobService
from server.domain.names import MigratingVmName
from server.engine import Engine
from server.store import SqliteJobStore
from server.targets.local import LocalTarget

SERVICE = spb.DESCRIPTOR.services_by_name["CloneJobService"]
PARENT = "projects/acme/locations/us-central1/sources/src/migratingVms/vm-1"


class _Aborted(Exception):
    """The handler aborted; its status is already set on the context."""


class _AsyncContext:
    """What the grpc.aio handlers use of their context, over grpc_testing's.

    grpc_testing's own `abort` drops trailing metadata (where the rich error
    details travel), so the status is set on the context and the call ends."""

    def __init__(self, context: Any) -> None:
        self._context = context

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()) -> None:
        self._context.set_trailing_metadata(trailing_metadata)
        self._context.set_code(code)
        self._context.set_details(details)
        raise _Aborted()

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()


class _SyncServicer:
    """Each RPC of the aio servicer, run to completion on the test's loop."""

    def __init__(self, servicer: CloneJobService, loop: asyncio.AbstractEventLoop) -> None:
        self._servicer = servicer
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        handler = getattr(self._servicer, name)

        def call(request: Any, context: Any) -> Any:
            try:
                result = self._loop.run_until_complete(handler(request, _AsyncContext(context)))
            except _Aborted:
                return None
            # The servicer answers with the serialized revision; grpc_testing hands
            # responses over without serializing, so parse it as a client would.
            return pb.CloneJob.FromString(result) if isinstance(result, bytes) else result

        return call


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    store = SqliteJobStore(tmp_path / "clonejob.db")
    target = LocalTarget(tmp_path)
    target.write_sample_vm(MigratingVmName.parse(PARENT), disks=1, disk_size=1024 * 1024)
    loop.run_until_complete(store.open())
    engine = Engine(store, target, max_concurrent_jobs=1)
    servicer = CloneJobService(engine, PageTokens(b"k" * 32))
    yield grpc_testing.server_from_dictionary(
        {SERVICE: _SyncServicer(servicer, loop)}, grpc_testing.strict_real_time()
    )
    loop.run_until_complete(engine.stop())
    loop.run_until_complete(store.close())
    loop.close()


def _unary(server: Any, method: str, request: Any) -> tuple[Any, Any, grpc.StatusCode, str]:
    rpc = server.invoke_unary_unary(SERVICE.methods_by_name[method], (), request, None)
    response, trailing_metadata, code, details = rpc.termination()
    return response, trailing_metadata, code, details


def _status(trailing_metadata: Any) -> status_pb2.Status:
    raw = dict(trailing_metadata)["grpc-status-details-bin"]
    return status_pb2.Status.FromString(raw)


def test_servicer_create_then_get_returns_the_stored_job(server: Any) -> None:
    body = pb.CloneJob(
        compute_engine_target_details=pb.ComputeEngineTargetDetails(
            vm_name="clone-1", zone="us-central1-a", machine_type="n2-standard-2"
        )
    )
    created, _, code, details = _unary(
        server,
        "CreateCloneJob",
        spb.CreateCloneJobRequest(parent=PARENT, clone_job_id="c1", clone_job=body),
    )
    assert code == grpc.StatusCode.OK, details
    assert created.name == f"{PARENT}/cloneJobs/c1"
    assert created.state == pb.CloneJob.PENDING
    assert created.compute_engine_target_details.project == "acme"  # defaulted

    got, _, code, _ = _unary(server, "GetCloneJob", spb.GetCloneJobRequest(name=created.name))
    assert code == grpc.StatusCode.OK
    assert got.name == created.name
    assert got.create_time == created.create_time


def test_servicer_create_reports_every_bad_field_at_once(server: Any) -> None:
    body = pb.CloneJob(
        compute_engine_target_details=pb.ComputeEngineTargetDetails(
            vm_name="../etc", zone="", machine_type="N2"
        )
    )
    _, trailing, code, _ = _unary(
        server,
        "CreateCloneJob",
        spb.CreateCloneJobRequest(parent=PARENT, clone_job_id="Bad-", clone_job=body),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    details = _status(trailing).details
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in details)
    fields = {v.field for v in bad.field_violations}
    base = "clone_job.compute_engine_target_details"
    assert fields == {"clone_job_id", f"{base}.vm_name", f"{base}.zone", f"{base}.machine_type"}


def test_servicer_get_unknown_job_is_not_found_with_its_reason(server: Any) -> None:
    _, trailing, code, _ = _unary(
        server, "GetCloneJob", spb.GetCloneJobRequest(name=f"{PARENT}/cloneJobs/nope")
    )
    assert code == grpc.StatusCode.NOT_FOUND
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in _status(trailing).details)
    assert info.reason == "CLONE_JOB_NOT_FOUND"
    assert info.domain == "clonejob.v1"
