"""What the async and the blocking client share: the channel, the stub,
call options and request building. Only the I/O differs between the two."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import grpc

from client.retry import RetryPolicy
from clonejob_grpc.clone_job_pb2 import CloneJob
from clonejob_grpc.clone_job_service_pb2 import (
    CancelCloneJobRequest,
    CreateCloneJobRequest,
    GetCloneJobRequest,
    ListCloneJobsRequest,
)
from clonejob_grpc.clone_job_service_pb2_grpc import CloneJobServiceStub

# Keepalive pings find a dead connection under a quiet watch (it then ends with
# UNAVAILABLE and resumes). The server allows pings every 60 s or more and
# closes connections that ping more often, so keep a margin above 60 s.
CHANNEL_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.keepalive_time_ms", 90_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
)


def create(
    parent: str,
    clone_job_id: str,
    clone_job: CloneJob,
    request_id: str | None,
    validate_only: bool = False,
) -> CreateCloneJobRequest:
    """A Create request that is always safe to retry: it carries a request_id."""
    return CreateCloneJobRequest(
        parent=parent,
        clone_job_id=clone_job_id,
        clone_job=clone_job,
        request_id=request_id or str(uuid.uuid4()),
        validate_only=validate_only,
    )


def get(name: str) -> GetCloneJobRequest:
    """A Get request."""
    return GetCloneJobRequest(name=name)


def cancel(name: str) -> CancelCloneJobRequest:
    """A Cancel request."""
    return CancelCloneJobRequest(name=name)


def list_page(
    parent: str, *, filter: str, order_by: str, page_size: int, page_token: str
) -> ListCloneJobsRequest:
    """One List request."""
    return ListCloneJobsRequest(
        parent=parent,
        filter=filter,
        order_by=order_by,
        page_size=page_size,
        page_token=page_token,
    )


class ClientBase:
    """The state both clients keep; `transport` is `grpc` or `grpc.aio`."""

    def __init__(
        self,
        transport: ModuleType,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None,
        timeout: float,
        metadata: Sequence[tuple[str, str]],
        retry: RetryPolicy | None,
    ) -> None:
        if credentials is None:
            channel = transport.insecure_channel(target, options=CHANNEL_OPTIONS)
        else:
            channel = transport.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
        self._channel: Any = channel
        self._stub = CloneJobServiceStub(channel)  # type: ignore[no-untyped-call]
        self._timeout = timeout
        self._metadata = tuple(metadata)
        self._retry = retry or RetryPolicy()
        self.target = target
