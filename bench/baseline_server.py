"""The bare grpc.aio server every service figure is compared against.

It serves the CloneJobService method paths with no logic: Get and Create return
a pre-built serialized CloneJob (the real server's job, saved by the benchmark,
so the reply has the same size); Watch sends one pre-built message, then waits
on an asyncio.Event for its job name and sends one more; Cancel sets that event
(the trigger). Same server options as the real server (server.app.SERVER_OPTIONS).

    python -m bench.baseline_server --message-file F --port-file P
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from clonejob_grpc import clone_job_pb2, clone_job_service_pb2
from server.app import SERVER_OPTIONS

SERVICE = "clonejob.v1.CloneJobService"


class BareService:
    def __init__(self, job: bytes) -> None:
        self.job = job
        parsed = clone_job_pb2.CloneJob.FromString(job)
        self.first = clone_job_service_pb2.WatchCloneJobResponse(
            clone_job=parsed, revision=3
        ).SerializeToString()
        self.event = clone_job_service_pb2.WatchCloneJobResponse(
            clone_job=parsed, revision=4
        ).SerializeToString()
        self.events: dict[str, asyncio.Event] = {}

    def _event(self, name: str) -> asyncio.Event:
        event = self.events.get(name)
        if event is None:
            event = self.events[name] = asyncio.Event()
        return event

    async def unary(self, request: bytes, context: Any) -> bytes:
        return self.job

    async def cancel(self, request: bytes, context: Any) -> bytes:
        name = clone_job_service_pb2.CancelCloneJobRequest.FromString(request).name
        self._event(name).set()
        return self.job

    async def watch(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        name = clone_job_service_pb2.WatchCloneJobRequest.FromString(request).name
        event = self._event(name)
        yield self.first
        await event.wait()
        yield self.event

    def handler(self) -> grpc.GenericRpcHandler:
        unary = grpc.unary_unary_rpc_method_handler
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "GetCloneJob": unary(self.unary),
                "CreateCloneJob": unary(self.unary),
                "CancelCloneJob": unary(self.cancel),
                "WatchCloneJob": grpc.unary_stream_rpc_method_handler(self.watch),
            },
        )


async def serve(job: bytes, port_file: Path) -> None:
    service = BareService(job)
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((service.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await server.start()
    try:
        tmp = port_file.with_name(port_file.name + ".tmp")
        await asyncio.to_thread(tmp.write_text, f"{port}\n")
        await asyncio.to_thread(tmp.replace, port_file)
        await stopping.wait()
    finally:
        await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_server")
    parser.add_argument("--message-file", type=Path, required=True)
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.message_file.read_bytes(), args.port_file))


if __name__ == "__main__":
    main()
