"""Typed Python client of the CloneJob service: asyncio and blocking.

    async with CloneJobClient("127.0.0.1:50051") as client:
        job = await client.get(name)
        async for change in client.watch(name):
            ...

Every failed call raises a `CloneJobError` subclass (see `client.errors`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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

# Imported on first use (PEP 562), not here: `clonejob --help` runs this file too,
# and must not pay for grpc (see bench/cli_startup.py).
_HOMES = {
    "CloneJobClient": "client._async",
    "BlockingCloneJobClient": "client._blocking",
    "Backoff": "client.retry",
    "RetryPolicy": "client.retry",
}


def __getattr__(name: str) -> object:
    if name not in __all__:
        raise AttributeError(f"module 'client' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES.get(name, "client.errors")), name)
    globals()[name] = value
    return value
