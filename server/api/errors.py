"""The one table from domain errors to gRPC status, with AIP-193 details.

Every error carries exactly one google.rpc.ErrorInfo (a stable reason, this
service's domain and the dynamic values as metadata); INVALID_ARGUMENT also
carries a google.rpc.BadRequest naming every bad field by its proto path.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from server.domain import errors as e
from server.domain.job import InvalidTransitionError
from server.domain.validation import Violation
from server.store.base import ConflictError, StoreError

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger("clonejob.api")

DOMAIN = "clonejob.v1"


@dataclass
class ApiError(Exception):
    """An error ready to send: code, reason, message, metadata and field violations."""

    code: grpc.StatusCode
    reason: str
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    violations: Sequence[Violation] = ()

    def __str__(self) -> str:
        return self.message

    def to_status(self) -> grpc.Status:
        details = []
        info = any_pb2.Any()
        info.Pack(
            error_details_pb2.ErrorInfo(
                reason=self.reason, domain=DOMAIN, metadata=dict(self.metadata)
            )
        )
        details.append(info)
        if self.violations:
            bad = any_pb2.Any()
            bad.Pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in self.violations
                    ]
                )
            )
            details.append(bad)
        status = status_pb2.Status(
            code=getattr(code_pb2, self.code.name),
            message=self.message,
            details=details,
        )
        return rpc_status.to_status(status)


# Rich details travel in a trailer, and clients refuse trailers over 8-16 KiB:
# the violations sent are capped so the error always arrives whole.
MAX_VIOLATIONS = 16
MAX_FIELD_CHARS = 160
MAX_DESCRIPTION_CHARS = 240


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def invalid_argument(violations: Sequence[Violation]) -> ApiError:
    total = len(violations)
    violations = [
        Violation(_short(v.field, MAX_FIELD_CHARS), _short(v.description, MAX_DESCRIPTION_CHARS))
        for v in violations[:MAX_VIOLATIONS]
    ]
    if total > MAX_VIOLATIONS:
        last = violations[-1]
        violations[-1] = Violation(
            last.field,
            _short(
                f"{last.description} ({total - MAX_VIOLATIONS + 1} more violations not listed:"
                " fix these and send again)",
                MAX_DESCRIPTION_CHARS + 80,
            ),
        )
    first = violations[0]
    more = f" (and {total - 1} more)" if total > 1 else ""
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        f"{first.field}: {first.description}{more}",
        {"field": first.field},
        violations,
    )


def from_exception(error: Exception) -> ApiError | None:
    """The status for a known error; None for a bug (the caller sends INTERNAL)."""
    s = grpc.StatusCode
    match error:
        case ApiError():
            return error
        case e.JobNotFoundError():
            return ApiError(s.NOT_FOUND, "CLONE_JOB_NOT_FOUND", str(error), {"name": error.name})
        case e.OperationNotFoundError():
            return ApiError(s.NOT_FOUND, "OPERATION_NOT_FOUND", str(error), {"name": error.name})
        case e.MigratingVmNotFoundError():
            return ApiError(
                s.NOT_FOUND, "MIGRATING_VM_NOT_FOUND", str(error), {"migrating_vm": error.name}
            )
        case e.NoCompletedCycleError():
            return ApiError(
                s.FAILED_PRECONDITION,
                "NO_COMPLETED_SNAPSHOT_CYCLE",
                str(error),
                {"migrating_vm": error.name},
            )
        case e.JobExistsError():
            return ApiError(
                s.ALREADY_EXISTS,
                "CLONE_JOB_ALREADY_EXISTS",
                str(error),
                {"name": error.existing.name},
            )
        case e.InstanceNameTakenError():
            return ApiError(
                s.ALREADY_EXISTS,
                "INSTANCE_NAME_TAKEN",
                str(error),
                {
                    "project": error.project,
                    "zone": error.zone,
                    "vm_name": error.vm_name,
                    **({"clone_job": error.owner} if error.owner else {}),
                },
            )
        case e.TargetStorageFullError():
            return ApiError(
                s.RESOURCE_EXHAUSTED,
                "TARGET_STORAGE_FULL",
                str(error),
                {"needed_bytes": str(error.needed), "available_bytes": str(error.available)},
            )
        case e.RequestIdReusedError():
            return ApiError(
                s.INVALID_ARGUMENT,
                "REQUEST_ID_REUSED",
                str(error),
                {"request_id": error.request_id, "name": error.existing.name},
                [Violation("request_id", "was already used for a different request")],
            )
        case e.JobFinishedError():
            return ApiError(
                s.FAILED_PRECONDITION,
                "CLONE_JOB_FINISHED",
                str(error),
                {"name": error.job.name, "state": error.job.state.name},
            )
        case e.RevisionOutOfRangeError():
            return ApiError(
                s.OUT_OF_RANGE,
                "REVISION_COMPACTED" if error.compacted else "REVISION_NOT_REACHED",
                str(error),
                {
                    "requested_revision": str(error.requested),
                    "oldest_revision": str(error.oldest),
                    "current_revision": str(error.current),
                },
            )
        case e.WatchClosedError():
            return ApiError(
                s.UNAVAILABLE, "SERVER_SHUTTING_DOWN", str(error) + "; resume the watch"
            )
        case e.WatcherTooSlowError():
            return ApiError(
                s.RESOURCE_EXHAUSTED,
                "WATCHER_TOO_SLOW",
                str(error),
                {"name": error.name, "buffered": str(error.buffered)},
            )
        case InvalidTransitionError():
            return ApiError(
                s.FAILED_PRECONDITION,
                "INVALID_STATE_TRANSITION",
                str(error),
                {"name": error.job.name, "state": error.job.state.name},
            )
        case ConflictError():
            return ApiError(s.ABORTED, "CONCURRENT_CHANGE", f"{error}; retry the call")
        case StoreError():
            return ApiError(s.UNAVAILABLE, "STORE_UNAVAILABLE", f"the job store failed: {error}")
    return None


async def abort(context: Context, error: Exception) -> NoReturn:
    """End the call with the status of `error`; INTERNAL (logged) for a bug."""
    api = from_exception(error)
    if api is None:
        log.exception("unexpected error", exc_info=error)
        api = ApiError(
            grpc.StatusCode.INTERNAL, "INTERNAL", "an internal error occurred; it was logged"
        )
    status = api.to_status()
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("abort returned")  # pragma: no cover
