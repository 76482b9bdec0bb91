"""RPC observation: one log line and one metrics sample per finished call.

The server wraps each method handler with `RpcObserver.wrap` when it registers
it (no grpc.aio interceptor runs on the calls, which would cost every call an
extra await). Wrapping the handler rather than the call, so that it sees how the
call ended: the returned response (OK, or the code set on the context), an
abort (the code given to `context.abort`, kept by the context), an unexpected
exception (UNKNOWN, as grpc.aio answers it), or cancellation (CANCELLED; the
`CancelledError` keeps propagating). A stream is counted once, when it ends,
with the stream's lifetime as its duration.

What is logged: service, method, the request's `name` or `parent` (a resource
name; never any other field), code, duration_ms and peer. Never the request
body, never metadata (it carries `authorization`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import Message

from server.observability.logs import log_rpc
from server.observability.metrics import Metrics

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]

log = logging.getLogger("clonejob.rpc")

MAX_LOGGED_NAME = 512  # a resource name is far shorter; a hostile one is cut
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _code(value: object) -> grpc.StatusCode | None:
    """grpc.aio keeps the code as a StatusCode or as its number, depending on the path."""
    if isinstance(value, grpc.StatusCode):
        return value
    if isinstance(value, int):
        return _CODES.get(value, grpc.StatusCode.UNKNOWN)
    return None


def _final_code(context: Context, error: BaseException | None) -> grpc.StatusCode:
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    code = _code(context.code())
    if isinstance(error, grpc.aio.AbortError):
        return code or grpc.StatusCode.UNKNOWN
    if error is not None:
        return grpc.StatusCode.UNKNOWN  # what grpc.aio answers for an unexpected exception
    return code or grpc.StatusCode.OK


def _resource(request: object) -> str:
    """The request's `name` or `parent`; nothing else of the request is ever read."""
    if not isinstance(request, Message):
        return ""  # a malformed request, or a client stream
    fields = request.DESCRIPTOR.fields_by_name
    for field in ("name", "parent"):
        if field in fields:
            value = getattr(request, field)
            if isinstance(value, str) and value:
                value = value[:MAX_LOGGED_NAME]
                # Unvalidated input: no newline or control character may forge a log line.
                return value if value.isprintable() else value.encode("unicode_escape").decode()
    return ""


class _Call:
    """One call's facts, from its start to its record."""

    __slots__ = ("method", "peer", "service", "started")

    def __init__(self, names: tuple[str, str], context: Context) -> None:
        self.service, self.method = names
        # Read now: once a cancelled call is gone, context.peer() reads freed
        # memory in the C core (a segfault seen with grpcio 1.85).
        self.peer = str(context.peer())
        self.started = time.perf_counter()


# Each kind of handler, and how to make one of that kind around a new behaviour.
_KINDS: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


class RpcObserver:
    """Logs and counts every RPC when it ends; see the module docstring."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._metrics = metrics

    def wrap(self, path: str, handler: Handler) -> Handler:
        """`handler` (of the method at `path`), logged and counted when each call ends."""
        service, _, method = path.lstrip("/").rpartition("/")
        for kind, make in _KINDS:
            behaviour: Any = getattr(handler, kind)
            if behaviour is None:
                continue
            if not (
                inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)
            ):
                return handler  # a sync handler runs on grpc's thread pool: not wrapped
            # Async generators yield responses; coroutines return one or use context.write.
            wrapped: Callable[[Any, Context], Any]
            if inspect.isasyncgenfunction(behaviour):
                wrapped = self._stream((service, method), behaviour)
            else:
                wrapped = self._unary((service, method), behaviour)
            new: Handler = make(
                wrapped,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
            return new
        return handler

    def _unary(
        self, names: tuple[str, str], behaviour: Callable[[Any, Context], Awaitable[Any]]
    ) -> Callable[[Any, Context], Awaitable[Any]]:
        async def handler(request: Any, context: Context) -> Any:
            call = _Call(names, context)
            error: BaseException | None = None
            try:
                return await behaviour(request, context)
            except BaseException as caught:
                error = caught
                raise
            finally:
                self._record(call, request, context, error)

        return handler

    def _stream(
        self, names: tuple[str, str], behaviour: Callable[[Any, Context], AsyncIterator[Any]]
    ) -> Callable[[Any, Context], AsyncIterator[Any]]:
        async def handler(request: Any, context: Context) -> AsyncIterator[Any]:
            call = _Call(names, context)
            error: BaseException | None = None
            responses = behaviour(request, context)
            try:
                async for response in responses:
                    yield response
            except BaseException as caught:
                error = caught
                raise
            finally:
                try:
                    # Closed here, not whenever it is collected: its own `finally`
                    # (unsubscribing a watch) runs before the call is recorded.
                    aclose = getattr(responses, "aclose", None)
                    if aclose is not None:
                        await aclose()
                finally:
                    self._record(call, request, context, error)

        return handler

    def _record(
        self, call: _Call, request: object, context: Context, error: BaseException | None
    ) -> None:
        try:
            seconds = time.perf_counter() - call.started
            code = _final_code(context, error)
            if self._metrics is not None:
                self._metrics.observe_rpc(call.service, call.method, code.name, seconds)
            job = _resource(request)
            duration_ms = round(seconds * 1000, 3)
            log_rpc(
                "%s/%s %s %s %.1f ms %s",
                (call.service, call.method, code.name, job or "-", duration_ms, call.peer),
                {
                    "service": call.service,
                    "method": call.method,
                    "job": job,
                    "code": code.name,
                    "duration_ms": duration_ms,
                    "peer": call.peer,
                },
            )
        except Exception:  # observing a call must never change its outcome
            log.exception("recording %s failed", call.method)
