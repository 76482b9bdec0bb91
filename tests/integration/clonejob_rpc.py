"""Wire-level helpers for the integration tests: requests, watches, rich errors, files.

The tests talk to the server through the generated stubs only (the typed
client in client/ is tested on its own).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from clonejob_grpc import clone_job_pb2 as pb
from clonejob_grpc import clone_job_service_pb2 as spb
from clonejob_grpc import clone_job_service_pb2_grpc as spb_grpc

VM1 = "projects/p1/locations/us-central1/sources/s1/migratingVms/vm1"
PROJECT = "p1"
ZONE = "us-central1-a"
DISKS_ZONE = "us-central1"  # a disks-only clone goes to a zone named after the location
MIB = 1024 * 1024

RPC_TIMEOUT = 30.0
WATCH_TIMEOUT = 90.0

State = pb.CloneJob.State
TERMINAL = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})
PREPARING = "preparing_vm_disks"
ADAPTING = "adapting_os"
INSTANTIATING = "instantiating_migrated_vm"

Stub = spb_grpc.CloneJobServiceStub


# -- requests --


def vm_body(vm_name: str, **details: Any) -> pb.CloneJob:
    """A CloneJob body with compute_engine_target_details."""
    fields: dict[str, Any] = {"vm_name": vm_name, "zone": ZONE, "machine_type": "n2-standard-2"}
    fields.update(details)
    return pb.CloneJob(compute_engine_target_details=pb.ComputeEngineTargetDetails(**fields))


def disks_body() -> pb.CloneJob:
    """A CloneJob body with (empty) compute_engine_disks_target_details."""
    return pb.CloneJob(compute_engine_disks_target_details=pb.ComputeEngineDisksTargetDetails())


def create(
    stub: Stub, job_id: str, body: pb.CloneJob, *, parent: str = VM1, request_id: str = ""
) -> pb.CloneJob:
    return stub.CreateCloneJob(
        spb.CreateCloneJobRequest(
            parent=parent, clone_job_id=job_id, clone_job=body, request_id=request_id
        ),
        timeout=RPC_TIMEOUT,
    )


def job_name(job_id: str, parent: str = VM1) -> str:
    return f"{parent}/cloneJobs/{job_id}"


def get(stub: Stub, name: str) -> pb.CloneJob:
    return stub.GetCloneJob(spb.GetCloneJobRequest(name=name), timeout=RPC_TIMEOUT)


def cancel(stub: Stub, name: str) -> pb.CloneJob:
    return stub.CancelCloneJob(spb.CancelCloneJobRequest(name=name), timeout=RPC_TIMEOUT)


def list_jobs(stub: Stub, parent: str = VM1, **fields: Any) -> spb.ListCloneJobsResponse:
    return stub.ListCloneJobs(
        spb.ListCloneJobsRequest(parent=parent, **fields), timeout=RPC_TIMEOUT
    )


# -- watches --

Stream = Any  # the grpc call object: an iterator of WatchCloneJobResponse and a grpc.Call


def watch(stub: Stub, name: str, after_revision: int = 0) -> Stream:
    return stub.WatchCloneJob(
        spb.WatchCloneJobRequest(name=name, after_revision=after_revision),
        timeout=WATCH_TIMEOUT,
    )


def read_until(
    stream: Stream, done: Callable[[spb.WatchCloneJobResponse], bool]
) -> list[spb.WatchCloneJobResponse]:
    """Messages up to and including the first for which `done` is true.

    A message that never comes ends in the stream's deadline (DEADLINE_EXCEEDED).
    """
    seen: list[spb.WatchCloneJobResponse] = []
    for message in stream:
        seen.append(message)
        if done(message):
            return seen
    raise AssertionError(
        f"the watch ended ({stream.code()}) before the awaited message; saw {describe(seen)}"
    )


def read_to_end(stream: Stream) -> list[spb.WatchCloneJobResponse]:
    """Every message until the stream ends, which must be with OK."""
    seen = list(stream)
    assert stream.code() == grpc.StatusCode.OK, stream.details()
    return seen


def changes(messages: Iterable[spb.WatchCloneJobResponse]) -> list[spb.WatchCloneJobResponse]:
    """The messages that carry a job (no heartbeats)."""
    return [m for m in messages if not m.heartbeat]


def revisions(messages: Iterable[spb.WatchCloneJobResponse]) -> list[int]:
    return [m.revision for m in changes(messages)]


def running_step(job: pb.CloneJob) -> str | None:
    """The kind of the step that runs now, if any."""
    if job.state in TERMINAL or not job.steps or job.steps[-1].HasField("end_time"):
        return None
    return job.steps[-1].WhichOneof("step")


def step_running(kind: str) -> Callable[[spb.WatchCloneJobResponse], bool]:
    return lambda m: not m.heartbeat and running_step(m.clone_job) == kind


def in_state(*states: int) -> Callable[[spb.WatchCloneJobResponse], bool]:
    return lambda m: not m.heartbeat and m.clone_job.state in states


def terminal(m: spb.WatchCloneJobResponse) -> bool:
    return not m.heartbeat and m.clone_job.state in TERMINAL


def run_to_end(stub: Stub, name: str) -> pb.CloneJob:
    """Watch the job until its terminal state; the final job."""
    messages = read_to_end(watch(stub, name))
    final = changes(messages)[-1].clone_job
    assert final.state in TERMINAL, describe(messages)
    return final


def describe(messages: Sequence[spb.WatchCloneJobResponse]) -> str:
    def one(m: spb.WatchCloneJobResponse) -> str:
        if m.heartbeat:
            return f"heartbeat@{m.revision}"
        step = running_step(m.clone_job) or "-"
        return f"{State.Name(m.clone_job.state)}/{step}@{m.revision}"

    return ", ".join(one(m) for m in messages)


# -- errors --


def rpc_error(call: Callable[..., Any], *args: Any, **kwargs: Any) -> grpc.RpcError:
    """The RpcError a call raises (AssertionError when it succeeds)."""
    try:
        result = call(*args, **kwargs)
    except grpc.RpcError as error:
        return error
    raise AssertionError(f"expected an RPC error, got {result!r}")


def stream_error(stream: Stream) -> tuple[grpc.RpcError, list[spb.WatchCloneJobResponse]]:
    """The error that ends a stream, and the messages before it."""
    seen: list[spb.WatchCloneJobResponse] = []
    try:
        for message in stream:
            seen.append(message)
    except grpc.RpcError as error:
        return error, seen
    raise AssertionError(f"the stream ended with OK; saw {describe(seen)}")


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The one ErrorInfo of a rich error."""
    infos = [d for d in _details(error) if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert len(infos) == 1, f"expected exactly one ErrorInfo in {error}"
    info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(info)
    assert info.reason, "ErrorInfo without a reason"
    return info


def bad_fields(error: grpc.RpcError) -> list[str]:
    """The field paths of the BadRequest violations (one BadRequest at most)."""
    found = [d for d in _details(error) if d.Is(error_details_pb2.BadRequest.DESCRIPTOR)]
    assert len(found) <= 1
    if not found:
        return []
    bad = error_details_pb2.BadRequest()
    found[0].Unpack(bad)
    return [v.field for v in bad.field_violations]


def _details(error: grpc.RpcError) -> list[Any]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"no rich status in {error}"
    assert status.code == error.code().value[0]  # type: ignore[attr-defined]
    return list(status.details)


def job_error_info(job: pb.CloneJob) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo inside a failed job's `error.details`."""
    infos = [d for d in job.error.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert len(infos) == 1, f"expected one ErrorInfo in {job.error}"
    info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(info)
    return info


# -- files --


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree(root: Path) -> dict[str, str]:
    """Every file below `root` (relative path → sha256); empty when root is missing."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): sha256(p) for p in sorted(root.rglob("*")) if not p.is_dir()}


def files_of_vm(targets: Path, vm_name: str) -> list[str]:
    """Files below targets/ made for a VM clone named `vm_name` (its disks and instance)."""
    found = []
    for path in targets.rglob("*"):
        if path.is_dir():
            continue
        name = path.name
        if (
            name.startswith(f"{vm_name}-disk")
            or name in (f"{vm_name}.json", f"{vm_name}.xml")
            or name.startswith(f".{vm_name}.")
        ):
            found.append(str(path.relative_to(targets)))
    return sorted(found)
