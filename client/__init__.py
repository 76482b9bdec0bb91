"""Typed Python client of the CloneJob service: asyncio and blocking.

    async with CloneJobClient("127.0.0.1:50051") as client:
        job = await client.get(name)
        async for change in client.watch(name):
            ...

Every failed call raises a `CloneJobError` subclass (see `client.errors`).
"""

from __future__ import annotations

from client._async import CloneJobClient
from client._blocking import BlockingCloneJobClient
from client.errors import (
    AbortedError,
    AlreadyExistsError,
    CallCancelledError,
    CloneJobError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    from_grpc_error,
)
from client.retry import Backoff, RetryPolicy

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "Backoff",
    "BlockingCloneJobClient",
    "CallCancelledError",
    "CloneJobClient",
    "CloneJobError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "RetryPolicy",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "from_grpc_error",
]
