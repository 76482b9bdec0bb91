"""Registers servicers with request parsing that cannot crash a call.

The generated `add_CloneJobServiceServicer_to_server` parses requests with
`FromString`, and a request that is not valid protobuf (random bytes, invalid
UTF-8 in a string) then fails with UNKNOWN. Here such a request reaches no
handler: it gets INVALID_ARGUMENT with reason MALFORMED_REQUEST. When tokens are
configured, the caller is authorized here too, by the method's full path and
from the parsed request's name, before the handler looks anything up.
Responses that are already bytes (watch events serialized once for every
watcher) are sent as they are.

One function registers any service from its descriptor, with the class each
method's request is parsed with: clonejob.v1, Google's VmMigration (whose
clone-job requests are parsed with clonejob.v1's wire-compatible classes) and
google.longrunning.Operations all go through the same guard. `add_unserved`
answers every other method of a service UNIMPLEMENTED, naming what is served.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    Sequence,
    Set,
)
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from clonejob_grpc import clone_job_pb2, clone_job_service_pb2
from server.api import access
from server.api.errors import ApiError

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

SERVICE = clone_job_service_pb2.DESCRIPTOR.services_by_name["CloneJobService"]


@dataclass(frozen=True, slots=True)
class MalformedRequest:
    message_type: str
    error: str


def _parser(cls: type[Message]) -> Callable[[bytes], Message | MalformedRequest]:
    def parse(data: bytes) -> Message | MalformedRequest:
        try:
            return cls.FromString(data)
        except (DecodeError, ValueError) as error:
            return MalformedRequest(cls.DESCRIPTOR.full_name, str(error))

    return parse


def _serialize(message: Message | bytes) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


def _malformed(request: MalformedRequest) -> grpc.Status:
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
        f"the request is not a valid serialized {request.message_type}",
        {"message_type": request.message_type},
    ).to_status()


class Observer(Protocol):
    def wrap(
        self, path: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """`handler`, logged and counted when each call ends."""


class Authorizer(Protocol):
    def check(
        self, method: str, request: Any, metadata: Sequence[tuple[str, Any]]
    ) -> frozenset[str] | None:
        """Raise ApiError unless the caller may make this call (`method` is the
        full path, `/package.Service/Method`); the projects it may read (None:
        every project)."""

    def authenticate(self, metadata: Sequence[tuple[str, Any]]) -> None:
        """Raise ApiError unless the caller has a valid token."""


async def _admit(name: str, request: Any, context: Context, authorizer: Authorizer | None) -> None:
    """Abort a call whose request is malformed or whose caller may not make it."""
    malformed = isinstance(request, MalformedRequest)
    if authorizer is not None:  # before parsing errors: no token, no information
        try:
            projects = authorizer.check(
                name, None if malformed else request, tuple(context.invocation_metadata() or ())
            )
            access.readable_projects.set(projects)
        except ApiError as denied:
            status = denied.to_status()
            await context.abort(status.code, status.details, status.trailing_metadata)
    if malformed:
        status = _malformed(request)
        await context.abort(status.code, status.details, status.trailing_metadata)


def _guard_unary(
    name: str, method: Callable[[Any, Context], Awaitable[Any]], authorizer: Authorizer | None
) -> Callable[[Any, Context], Awaitable[Any]]:
    @functools.wraps(method)
    async def handler(request: Any, context: Context) -> Any:
        await _admit(name, request, context, authorizer)
        return await method(request, context)

    return handler


def _guard_stream(
    name: str,
    method: Callable[[Any, Context], AsyncGenerator[Any, None]],
    authorizer: Authorizer | None,
) -> Callable[[Any, Context], AsyncIterator[Any]]:
    @functools.wraps(method)
    async def handler(request: Any, context: Context) -> AsyncIterator[Any]:
        await _admit(name, request, context, authorizer)
        # Closed as soon as the call ends (not when collected): the watch's own
        # `finally` releases its subscription at once.
        async with contextlib.aclosing(method(request, context)) as responses:
            async for response in responses:
                yield response

    return handler


def _message_class(name: str) -> type[Message]:
    for module in (clone_job_service_pb2, clone_job_pb2):
        cls = getattr(module, name, None)
        if cls is not None:
            return cls  # type: ignore[no-any-return]
    raise LookupError(name)


def add_to_server(
    servicer: object,
    server: grpc.aio.Server,
    authorizer: Authorizer | None = None,
    observer: Observer | None = None,
) -> None:
    """Register clonejob.v1.CloneJobService."""
    add_service(
        server,
        SERVICE,
        servicer,
        {method.name: _message_class(method.input_type.name) for method in SERVICE.methods},
        authorizer,
        observer,
    )


def add_service(
    server: grpc.aio.Server,
    service: ServiceDescriptor,
    servicer: object,
    request_types: Mapping[str, type[Message]],
    authorizer: Authorizer | None = None,
    observer: Observer | None = None,
) -> None:
    """Register each method of `service` that `request_types` names: its handler is
    the servicer's method of that name, its request parsed with that class."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        if method.name not in request_types:
            continue
        impl = getattr(servicer, method.name)
        path = f"/{service.full_name}/{method.name}"
        parse = _parser(request_types[method.name])
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _guard_stream(path, impl, authorizer),
                request_deserializer=parse,
                response_serializer=_serialize,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _guard_unary(path, impl, authorizer),
                request_deserializer=parse,
                response_serializer=_serialize,
            )
    _register(server, service.full_name, handlers, observer)


def _register(
    server: grpc.aio.Server,
    service: str,
    handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]],
    observer: Observer | None,
) -> None:
    if observer is not None:
        handlers = {
            name: observer.wrap(f"/{service}/{name}", handler) for name, handler in handlers.items()
        }
    generic = grpc.method_handlers_generic_handler(service, dict(handlers))
    server.add_generic_rpc_handlers((generic,))
    server.add_registered_method_handlers(service, dict(handlers))  # type: ignore[attr-defined]


class _Collected:
    """Stands in for the server while a generated `add_…_to_server` (health,
    reflection) registers its handlers, so that they can be observed too."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same handlers come by name through add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.services[service] = dict(handlers)


def add_generated(
    server: grpc.aio.Server,
    add: Callable[[Any], None],
    observer: Observer | None = None,
) -> None:
    """Register what a generated `add_…_to_server(servicer, server)` registers (called
    as `add(server)`), each handler observed."""
    collected = _Collected()
    add(collected)
    if not collected.services:
        raise LookupError("the registration added no handlers by name")
    for service, handlers in collected.services.items():
        _register(server, service, handlers, observer)


class _Unserved(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """UNIMPLEMENTED, with what is served instead, for the other methods of a service.

    Only the service's known methods get this answer (and a metrics label): any
    other path gets grpc's own UNIMPLEMENTED, so no client can mint labels."""

    def __init__(
        self,
        service: str,
        methods: Set[str],
        served: str,
        authorizer: Authorizer | None,
        observer: Observer | None,
    ) -> None:
        self._prefix = f"/{service}/"
        self._methods = methods
        self._served = served
        self._authorizer = authorizer
        self._observer = observer
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        path = str(handler_call_details.method)
        method = path[len(self._prefix) :]
        if not path.startswith(self._prefix) or method not in self._methods:
            return None
        made = self._handlers.get(method)
        if made is None:
            made = self._handlers[method] = self._handler(method)
        return made

    def _handler(self, method: str) -> grpc.RpcMethodHandler[Any, Any]:

        async def unserved(request: bytes, context: Context) -> bytes:
            if self._authorizer is not None:  # no token, no information
                try:
                    self._authorizer.authenticate(tuple(context.invocation_metadata() or ()))
                except ApiError as denied:
                    status = denied.to_status()
                    await context.abort(status.code, status.details, status.trailing_metadata)
            status = ApiError(
                grpc.StatusCode.UNIMPLEMENTED,
                "METHOD_NOT_SERVED",
                f"{self._prefix[1:]}{method} is not served here; this service serves"
                f" {self._served}",
                {"method": self._prefix + method},
            ).to_status()
            await context.abort(status.code, status.details, status.trailing_metadata)
            raise AssertionError("abort returned")  # pragma: no cover

        handler = grpc.unary_unary_rpc_method_handler(unserved)
        if self._observer is not None:
            handler = self._observer.wrap(self._prefix + method, handler)
        return handler


def add_unserved(
    server: grpc.aio.Server,
    service: str,
    methods: Set[str],
    served: str,
    authorizer: Authorizer | None = None,
    observer: Observer | None = None,
) -> None:
    """Answer the `methods` of `service` that no handler serves with UNIMPLEMENTED;
    register it after the service's own handlers."""
    server.add_generic_rpc_handlers(
        (_Unserved(service, methods, served, authorizer, observer),)
    )
