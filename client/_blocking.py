"""The blocking client, over a sync `grpc` channel."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import grpc

from client import _base
from client._base import ClientBase
from client.retry import ReconnectHook, RetryPolicy, WatchResume
from clonejob_grpc.clone_job_pb2 import CloneJob
from clonejob_grpc.clone_job_service_pb2 import (
    ListCloneJobsResponse,
    WatchCloneJobResponse,
)

__all__ = ["BlockingCloneJobClient"]

_Response = TypeVar("_Response")


class BlockingCloneJobClient(ClientBase):
    """A blocking client of the CloneJob service, with the same methods,
    deadlines, retries and errors as `CloneJobClient`; `list` and `watch`
    return plain iterators. Use as `with BlockingCloneJobClient(...)`, or call
    `close()`."""

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 30.0,
        metadata: Sequence[tuple[str, str]] = (),
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(
            grpc,
            target,
            credentials=credentials,
            timeout=timeout,
            metadata=metadata,
            retry=retry,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def create(
        self,
        parent: str,
        clone_job_id: str,
        clone_job: CloneJob,
        *,
        request_id: str | None = None,
        validate_only: bool = False,
    ) -> CloneJob:
        """Create a clone job; a fresh request_id is sent when none is given.
        With `validate_only`, the server makes every check and returns the job
        as it would be created, creating nothing."""
        request = _base.create(parent, clone_job_id, clone_job, request_id, validate_only)
        return self._unary(self._stub.CreateCloneJob, request, CloneJob)

    def get(self, name: str) -> CloneJob:
        """The clone job called `name`."""
        return self._unary(self._stub.GetCloneJob, _base.get(name), CloneJob)

    def cancel(self, name: str) -> CloneJob:
        """Start cancelling a clone job; returns it."""
        return self._unary(self._stub.CancelCloneJob, _base.cancel(name), CloneJob)

    def list_page(
        self,
        parent: str,
        *,
        filter: str = "",
        order_by: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> ListCloneJobsResponse:
        """One page of the clone jobs of `parent`."""
        request = _base.list_page(
            parent, filter=filter, order_by=order_by, page_size=page_size, page_token=page_token
        )
        return self._unary(self._stub.ListCloneJobs, request, ListCloneJobsResponse)

    def list(
        self, parent: str, *, filter: str = "", order_by: str = "", page_size: int = 0
    ) -> Iterator[CloneJob]:
        """Every clone job of `parent`, fetching pages as needed."""
        page_token = None
        while page_token != "":
            page = self.list_page(
                parent,
                filter=filter,
                order_by=order_by,
                page_size=page_size,
                page_token=page_token or "",
            )
            yield from page.clone_jobs
            page_token = page.next_page_token

    def watch(
        self,
        name: str,
        *,
        after_revision: int = 0,
        max_reconnect_time: float | None = None,
        on_reconnect: ReconnectHook | None = None,
    ) -> Iterator[WatchCloneJobResponse]:
        """Each change of the job once, resuming by itself; see `CloneJobClient.watch`."""
        resume = self._retry.watch(
            name,
            after_revision=after_revision,
            max_reconnect_time=max_reconnect_time,
            on_reconnect=on_reconnect,
        )
        while not resume.done:
            try:
                yield from self._stream(resume)
                return
            except grpc.RpcError as error:
                time.sleep(resume.backoff_after(error))

    def _stream(self, resume: WatchResume) -> Iterator[WatchCloneJobResponse]:
        """One WatchCloneJob call: what `resume` accepts, until it is done."""
        call = self._stub.WatchCloneJob(resume.request(), metadata=self._metadata)
        try:
            for response in call:
                if resume.accept(response):
                    yield response
                    if resume.done:
                        return
        finally:
            call.cancel()

    def _unary(
        self,
        method: Callable[..., Any],
        request: object,
        response_type: type[_Response],
    ) -> _Response:
        retry = self._retry.unary(idempotent=True)  # every unary call here is safe to repeat
        while True:
            try:
                response = method(
                    request, timeout=retry.attempt_timeout(self._timeout), metadata=self._metadata
                )
            except grpc.RpcError as error:
                time.sleep(retry.backoff_after(error))
            else:
                return cast(_Response, response)
