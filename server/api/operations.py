"""google.longrunning.Operations: the operations that Create and Cancel return on
the Google surface (AIP-151), read from the store and from the jobs they act on.

- `GetOperation`: the operation as it is now (NOT_FOUND, reason
  OPERATION_NOT_FOUND, for an unknown one).
- `ListOperations` on `projects/{project}/locations/{location}`: newest first,
  paged as ListCloneJobs is; `filter` must be empty.
- `DeleteOperation`: forgets the operation, never its job.
- `CancelOperation`: changes nothing, and says so in its documentation rather
  than with an error: a create operation is done as soon as it is returned (to
  stop the job, cancel the clone job), and a cancel operation is a cancellation
  already under way.
- `WaitOperation`: the operation once done, or as it is when its `timeout`
  passes, and never later than just before the call's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import grpc
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, descriptor_pool, empty_pb2, message_factory
from google.rpc import code_pb2, status_pb2

from server.api import mapping
from server.api.errors import abort, invalid_argument
from server.api.page_tokens import PageTokens
from server.domain.job import CloneJob, State
from server.domain.listing import Cursor
from server.domain.names import LocationName, OperationName
from server.domain.operation import Operation, Verb
from server.domain.validation import Violation, check_name, check_page_size
from server.engine import Engine, Heartbeat
from server.store.records import to_us

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

SERVICE = operations_pb2.DESCRIPTOR.services_by_name["Operations"]
REQUEST_TYPES = {m.name: getattr(operations_pb2, m.input_type.name) for m in SERVICE.methods}

# How long WaitOperation waits when neither its timeout nor a deadline bounds it.
MAX_WAIT = 600.0
# WaitOperation answers before the call's deadline, so the answer arrives: a fifth of
# the time left, at least 0.1 s and at most 1 s, early.
DEADLINE_MARGIN = (0.2, 0.1, 1.0)
TYPE_PREFIX = "type.googleapis.com/"
_V1 = "google.cloud.vmmigration.v1"


def _google(name: str) -> Any:
    """A google.cloud.vmmigration.v1 message class, from the descriptors that
    Google's package put in the default pool."""
    return message_factory.GetMessageClass(
        descriptor_pool.Default().FindMessageTypeByName(f"{_V1}.{name}")
    )


def _packed(type_name: str, value: bytes) -> any_pb2.Any:
    return any_pb2.Any(type_url=TYPE_PREFIX + type_name, value=value)


def operation_proto(operation: Operation, job: CloneJob | None) -> operations_pb2.Operation:
    """The operation as Google's clients read it; `job` is its clone job now (a
    cancel operation's outcome is the job's), None when not needed."""
    metadata = _google("OperationMetadata")(
        create_time=mapping.timestamp(operation.create_time),
        target=operation.target,
        verb=operation.verb.value,
        api_version="v1",
    )
    out = operations_pb2.Operation(name=operation.name)
    if operation.verb is Verb.CREATE:
        created = operation.job if operation.job is not None else job
        metadata.end_time.CopyFrom(mapping.timestamp(operation.create_time))
        out.done = True
        if created is not None:
            out.response.CopyFrom(_packed(f"{_V1}.CloneJob", mapping.job_bytes(created)))
    else:
        metadata.requested_cancellation = True
        if job is not None and job.state.terminal:
            out.done = True
            metadata.end_time.CopyFrom(mapping.timestamp(job.end_time or job.state_time))
            if job.state is State.CANCELLED:
                out.response.CopyFrom(_packed(f"{_V1}.CancelCloneJobResponse", b""))
            elif job.error is not None:
                out.error.CopyFrom(
                    status_pb2.Status.FromString(
                        mapping.error_status(job.error).SerializeToString()
                    )
                )
            else:  # not reachable from CANCELLING, kept for a job that ended otherwise
                out.error.CopyFrom(
                    status_pb2.Status(
                        code=code_pb2.FAILED_PRECONDITION,
                        message=f"clone job {job.name!r} ended {job.state.name}, not cancelled",
                    )
                )
    out.metadata.CopyFrom(_packed(f"{_V1}.OperationMetadata", metadata.SerializeToString()))
    return out


def operation_name(value: str) -> OperationName:
    out: list[Violation] = []
    name = check_name(value, "name", OperationName.parse, out)
    if name is None:
        raise invalid_argument(out)
    return name


class OperationsService:
    def __init__(self, engine: Engine, page_tokens: PageTokens) -> None:
        self._engine = engine
        self._tokens = page_tokens

    async def read(self, operation: Operation) -> operations_pb2.Operation:
        """The operation now, with its job's outcome for a cancel operation."""
        job = None if operation.verb is Verb.CREATE else await self._engine.get(operation.target)
        return operation_proto(operation, job)

    async def GetOperation(
        self, request: operations_pb2.GetOperationRequest, context: Context
    ) -> operations_pb2.Operation:
        try:
            name = operation_name(request.name)
            return await self.read(await self._engine.get_operation(str(name)))
        except Exception as error:
            await abort(context, error)

    async def DeleteOperation(
        self, request: operations_pb2.DeleteOperationRequest, context: Context
    ) -> empty_pb2.Empty:
        try:
            await self._engine.delete_operation(str(operation_name(request.name)))
        except Exception as error:
            await abort(context, error)
        return empty_pb2.Empty()

    async def CancelOperation(
        self, request: operations_pb2.CancelOperationRequest, context: Context
    ) -> empty_pb2.Empty:
        try:
            # Nothing to do for either kind (see the module docstring); only an
            # unknown operation is an error.
            await self._engine.get_operation(str(operation_name(request.name)))
        except Exception as error:
            await abort(context, error)
        return empty_pb2.Empty()

    async def WaitOperation(
        self, request: operations_pb2.WaitOperationRequest, context: Context
    ) -> operations_pb2.Operation:
        try:
            out: list[Violation] = []
            if request.timeout.seconds < 0 or request.timeout.nanos < 0:
                out.append(Violation("timeout", "is negative"))
            name = check_name(request.name, "name", OperationName.parse, out)
            if out or name is None:
                raise invalid_argument(out)
            operation = await self._engine.get_operation(str(name))
            current = await self.read(operation)
            if current.done:
                return current
            wait = MAX_WAIT
            if request.HasField("timeout"):  # (no timedelta: a huge Duration overflows it)
                wait = min(wait, request.timeout.seconds + request.timeout.nanos / 1e9)
            remaining = context.time_remaining()
            if remaining is not None:
                share, least, most = DEADLINE_MARGIN
                wait = min(wait, remaining - min(most, max(least, share * remaining)))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.0)):
                    await self._until_finished(operation.target)
            return await self.read(operation)
        except Exception as error:
            await abort(context, error)

    async def _until_finished(self, name: str) -> None:
        changes = self._engine.watch(name, after_revision=0, heartbeat_interval=30.0)
        async with contextlib.aclosing(changes):
            async for item in changes:
                if not isinstance(item, Heartbeat) and item.state.terminal:
                    return

    async def ListOperations(
        self, request: operations_pb2.ListOperationsRequest, context: Context
    ) -> operations_pb2.ListOperationsResponse:
        try:
            return await self._list(request)
        except Exception as error:
            await abort(context, error)

    async def _list(
        self, request: operations_pb2.ListOperationsRequest
    ) -> operations_pb2.ListOperationsResponse:
        out: list[Violation] = []
        location = check_name(request.name, "name", LocationName.parse, out)
        if request.filter:
            out.append(Violation("filter", "is not supported here: leave it empty"))
        page_size = check_page_size(request.page_size, out)
        query = "operations:" + request.name
        cursor = self._tokens.read(request.page_token, out, parent=query)
        if out or location is None:
            raise invalid_argument(out)
        found = list(
            await self._engine.list_operations(str(location), limit=page_size + 1, after=cursor)
        )
        response = operations_pb2.ListOperationsResponse()
        for operation in found[:page_size]:
            response.operations.append(await self.read(operation))
        if len(found) > page_size:
            last = found[page_size - 1]
            response.next_page_token = self._tokens.encode(
                Cursor(create_time_us=to_us(last.create_time), name=last.name),
                parent=query,
                filter_text="",
                order_by="",
            )
        return response
