"""The asyncio client, over a `grpc.aio` channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import grpc
import grpc.aio

from client import _base
from client._base import ClientBase
from client.retry import ReconnectHook, RetryPolicy
from clonejob_grpc.clone_job_pb2 import CloneJob
from clonejob_grpc.clone_job_service_pb2 import (
    ListCloneJobsResponse,
    WatchCloneJobResponse,
)

__all__ = ["CloneJobClient"]

_Response = TypeVar("_Response")


class CloneJobClient(ClientBase):
    """An asyncio client of the CloneJob service.

    Every unary call has a deadline of `timeout` seconds and is retried on
    UNAVAILABLE when it is safe to repeat; every failure is raised as a
    `client.errors.CloneJobError`. Use as `async with CloneJobClient(...)`, or
    call `close()`.
    """

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
            grpc.aio,
            target,
            credentials=credentials,
            timeout=timeout,
            metadata=metadata,
            retry=retry,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def create(
        self,
        parent: str,
        clone_job_id: str,
        clone_job: CloneJob,
        *,
        request_id: str | None = None,
        validate_only: bool = False,
    ) -> CloneJob:
        """Create a clone job under the migrating VM `parent`.

        Without a `request_id` a fresh UUID is sent, so that retries after
        UNAVAILABLE return the job created first instead of a second one.
        With `validate_only`, the server makes every check and returns the job
        as it would be created, creating nothing (AIP-163).
        """
        request = _base.create(parent, clone_job_id, clone_job, request_id, validate_only)
        return await self._unary(self._stub.CreateCloneJob, request, CloneJob)

    async def get(self, name: str) -> CloneJob:
        """The clone job called `name`."""
        return await self._unary(self._stub.GetCloneJob, _base.get(name), CloneJob)

    async def cancel(self, name: str) -> CloneJob:
        """Start cancelling a clone job; returns it (CANCELLING, or unchanged)."""
        return await self._unary(self._stub.CancelCloneJob, _base.cancel(name), CloneJob)

    async def list_page(
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
        return await self._unary(self._stub.ListCloneJobs, request, ListCloneJobsResponse)

    async def list(
        self, parent: str, *, filter: str = "", order_by: str = "", page_size: int = 0
    ) -> AsyncIterator[CloneJob]:
        """Every clone job of `parent`, fetching pages as needed."""
        page_token = ""
        while True:
            page = await self.list_page(
                parent,
                filter=filter,
                order_by=order_by,
                page_size=page_size,
                page_token=page_token,
            )
            for job in page.clone_jobs:
                yield job
            page_token = page.next_page_token
            if not page_token:
                return

    async def watch(
        self,
        name: str,
        *,
        after_revision: int = 0,
        max_reconnect_time: float | None = None,
        on_reconnect: ReconnectHook | None = None,
    ) -> AsyncIterator[WatchCloneJobResponse]:
        """Each change of the job once, in order, until it reaches a terminal state.

        Heartbeats are not yielded. The stream resumes by itself from the last
        revision yielded after UNAVAILABLE or WATCHER_TOO_SLOW, and starts
        afresh after REVISION_COMPACTED; it gives up (raising the last error)
        once reconnecting has taken `max_reconnect_time` seconds (default: the
        retry policy's). `on_reconnect` is told when the stream drops and is
        being resumed (with the error) and when it answers again (with None).
        """
        resume = self._retry.watch(
            name,
            after_revision=after_revision,
            max_reconnect_time=max_reconnect_time,
            on_reconnect=on_reconnect,
        )
        while not resume.done:
            call = self._stub.WatchCloneJob(resume.request(), metadata=self._metadata)
            try:
                async for response in call:
                    if resume.accept(response):
                        yield response
                        if resume.done:
                            return
                return
            except grpc.RpcError as error:
                delay = resume.backoff_after(error)
            finally:
                call.cancel()
            await asyncio.sleep(delay)

    async def _unary(
        self,
        method: Callable[..., Awaitable[Any]],
        request: object,
        response_type: type[_Response],
    ) -> _Response:
        # All four unary calls are safe to repeat (Create carries a request_id).
        retry = self._retry.unary(idempotent=True)
        while True:
            try:
                response = await method(
                    request, timeout=retry.attempt_timeout(self._timeout), metadata=self._metadata
                )
                return cast(_Response, response)
            except grpc.RpcError as error:
                delay = retry.backoff_after(error)
            await asyncio.sleep(delay)
