"""Operations as Google's clients read them: done, response, error and metadata,
from the operation record and the job it acts on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.cloud.vmmigration_v1 import types
from google.rpc import error_details_pb2

from server.api.operations import operation_proto
from server.domain.job import CloneJob, ErrorCode, JobError, State, TargetKind, TargetSpec
from server.domain.names import InvalidNameError, OperationName
from server.domain.operation import Operation, Verb

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
JOB = "projects/p/locations/l/sources/s/migratingVms/vm/cloneJobs/j"


def job() -> CloneJob:
    target = TargetSpec(
        kind=TargetKind.VM, project="p", zone="z", vm_name="v", machine_type="n2", details={}
    )
    return CloneJob.new(name=JOB, target=target, source_cycle="1", now=T0)


def metadata(proto: object) -> types.OperationMetadata:
    raw = types.OperationMetadata.pb()()
    assert proto.metadata.Unpack(raw)  # type: ignore[attr-defined]
    return types.OperationMetadata.wrap(raw)


def test_operation_new_is_named_in_the_jobs_location() -> None:
    operation = Operation.new(target=JOB, verb=Verb.CANCEL, now=T0)
    name = OperationName.parse(operation.name)
    assert str(name.location) == "projects/p/locations/l"
    assert name.operation_id.startswith(f"operation-{int(T0.timestamp() * 1000)}-")
    assert Operation.new(target=JOB, verb=Verb.CANCEL, now=T0).name != operation.name


@pytest.mark.parametrize(
    "bad", ["", "projects/p/locations/l", "projects/p/locations/l/operations/../x", "a/b/c/d/e/f"]
)
def test_operation_name_parse_refuses_other_shapes(bad: str) -> None:
    with pytest.raises(InvalidNameError):
        OperationName.parse(bad)


def test_create_operation_is_done_with_the_job_as_created() -> None:
    created = job()
    later = created.start_step(created.next_step(), T0 + timedelta(seconds=1))  # type: ignore[arg-type]
    operation = Operation.new(target=JOB, verb=Verb.CREATE, now=T0, job=created)
    proto = operation_proto(operation, later)
    assert proto.done and not proto.HasField("error")
    response = types.CloneJob.pb()()
    assert proto.response.Unpack(response)
    assert response.name == JOB and response.state == State.PENDING
    meta = metadata(proto)
    assert (meta.verb, meta.target, meta.api_version) == ("create", JOB, "v1")
    assert meta.end_time == meta.create_time


def test_cancel_operation_is_undone_until_the_job_ends() -> None:
    cancelling = job().request_cancel(T0 + timedelta(seconds=1))
    operation = Operation.new(target=JOB, verb=Verb.CANCEL, now=T0)
    proto = operation_proto(operation, cancelling)
    assert not proto.done and not proto.HasField("response") and not proto.HasField("error")
    meta = metadata(proto)
    assert meta.verb == "cancel" and meta.requested_cancellation
    assert not meta.end_time


def test_cancel_operation_succeeds_when_the_job_is_cancelled() -> None:
    ended = job().request_cancel(T0).cancelled(T0 + timedelta(seconds=2))
    proto = operation_proto(Operation.new(target=JOB, verb=Verb.CANCEL, now=T0), ended)
    assert proto.done
    assert proto.response.Is(types.CancelCloneJobResponse.pb().DESCRIPTOR)
    assert metadata(proto).end_time == T0 + timedelta(seconds=2)


def test_cancel_operation_fails_with_the_jobs_error_when_the_job_fails() -> None:
    error = JobError(
        code=ErrorCode.INTERNAL, reason="CLEANUP_FAILED", message="cleanup failed", metadata={}
    )
    failed = job().request_cancel(T0).fail(error, T0 + timedelta(seconds=3))
    assert failed.state is State.FAILED
    proto = operation_proto(Operation.new(target=JOB, verb=Verb.CANCEL, now=T0), failed)
    assert proto.done and not proto.HasField("response")
    assert proto.error.code == int(ErrorCode.INTERNAL)
    assert proto.error.message == "cleanup failed"
    info = error_details_pb2.ErrorInfo()
    assert proto.error.details[0].Unpack(info) and info.reason == "CLEANUP_FAILED"
