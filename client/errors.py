"""The client's one exception tree, mapped from gRPC status codes.

Every failed call surfaces as a `CloneJobError` subclass chosen by the status
code, carrying the rich details the service attaches (AIP-193): the ErrorInfo
`reason`, `domain` and `metadata`, and the BadRequest field violations. The
original `grpc.RpcError` is kept as `__cause__`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "CallCancelledError",
    "CloneJobError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "from_grpc_error",
    "to_status",
]

STATUS_DETAILS_KEY = "grpc-status-details-bin"


class CloneJobError(Exception):
    """A failed call to the CloneJob service.

    `code` is the gRPC status code; `reason`, `domain` and `metadata` come from
    the error's `google.rpc.ErrorInfo` (empty when the server sent none), and
    `violations` lists the `(field, description)` pairs of a `BadRequest`.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        violations: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.violations: list[tuple[str, str]] = list(violations)

    @property
    def code_name(self) -> str:
        """The status code's name, e.g. `NOT_FOUND`."""
        return str(self.code.name)

    def __str__(self) -> str:
        text = f"{self.code_name}: {self.message}"
        if self.reason:
            text += f" [{self.reason}]"
        return text


class InvalidArgumentError(CloneJobError):
    """The request is bad whatever the state; see `violations`."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(CloneJobError):
    """The named resource does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(CloneJobError):
    """A resource with that name exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPreconditionError(CloneJobError):
    """The resource's state is wrong for this call."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class OutOfRangeError(CloneJobError):
    """A revision or position outside the valid range (e.g. REVISION_COMPACTED)."""

    code = grpc.StatusCode.OUT_OF_RANGE


class PermissionDeniedError(CloneJobError):
    """The caller may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class UnauthenticatedError(CloneJobError):
    """The caller's credentials are missing or invalid."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhaustedError(CloneJobError):
    """A quota or buffer ran out (e.g. WATCHER_TOO_SLOW)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(CloneJobError):
    """The service cannot be reached right now; the same call may be retried."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(CloneJobError):
    """The call's deadline passed before it completed."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class CallCancelledError(CloneJobError):
    """The call was cancelled (gRPC CANCELLED; not `asyncio.CancelledError`)."""

    code = grpc.StatusCode.CANCELLED


class AbortedError(CloneJobError):
    """A concurrency conflict."""

    code = grpc.StatusCode.ABORTED


class InternalError(CloneJobError):
    """The service broke an invariant."""

    code = grpc.StatusCode.INTERNAL


class UnimplementedError(CloneJobError):
    """The service does not implement this method."""

    code = grpc.StatusCode.UNIMPLEMENTED


_BY_CODE: dict[grpc.StatusCode, type[CloneJobError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        FailedPreconditionError,
        OutOfRangeError,
        PermissionDeniedError,
        UnauthenticatedError,
        ResourceExhaustedError,
        UnavailableError,
        DeadlineExceededError,
        CallCancelledError,
        AbortedError,
        InternalError,
        UnimplementedError,
    )
}


def from_grpc_error(err: grpc.RpcError) -> CloneJobError:
    """The `CloneJobError` for a failed call, rich details included.

    Works with `grpc.aio.AioRpcError` and with the sync `grpc.RpcError` that
    is also a `grpc.Call`; a bare `RpcError` becomes a plain UNKNOWN error.
    The caller raises it `from err`.
    """
    code = _call_attr(err, "code")
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    message = _call_attr(err, "details")
    if not isinstance(message, str):
        message = str(err) or code.name
    status = _rich_status(_call_attr(err, "trailing_metadata"))
    reason, domain, metadata = "", "", {}
    violations: list[tuple[str, str]] = []
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            bad_request = error_details_pb2.BadRequest()
            if detail.Unpack(info):
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Unpack(bad_request):
                violations.extend((v.field, v.description) for v in bad_request.field_violations)
    cls = _BY_CODE.get(code, CloneJobError)
    error = cls(
        message,
        code=code,
        reason=reason,
        domain=domain,
        metadata=metadata,
        violations=violations,
    )
    error.__cause__ = err
    return error


def to_status(error: CloneJobError) -> status_pb2.Status:
    """The `google.rpc.Status` of an error: the one the server sent, every detail
    included, when there is one; else one made of its code, message, ErrorInfo
    and BadRequest."""
    cause = error.__cause__
    if isinstance(cause, grpc.RpcError):
        sent = _rich_status(_call_attr(cause, "trailing_metadata"))
        if sent is not None:
            return sent
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    if error.reason:
        status.details.add().Pack(
            error_details_pb2.ErrorInfo(
                reason=error.reason, domain=error.domain, metadata=error.metadata
            )
        )
    if error.violations:
        status.details.add().Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in error.violations
                ]
            )
        )
    return status


def _call_attr(err: grpc.RpcError, name: str) -> Any:
    """Call `err.<name>()` if the error is also a Call; None otherwise."""
    method = getattr(err, name, None)
    if not callable(method):
        return None
    try:
        return method()
    except Exception:  # a half-built call object must not hide the original error
        return None


def _rich_status(trailing: Any) -> Any:
    """The google.rpc.Status in the trailing metadata, or None."""
    if not trailing:
        return None
    for key, value in trailing:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                return None
    return None
