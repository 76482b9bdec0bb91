"""Metrics, health, reflection and structured logs of a real server.

Most tests run `server.app.App` in the test's own event loop on 127.0.0.1:0
with a metrics endpoint on port 0, and talk to it over real sockets: gRPC with
the generated async stub, /metrics with plain HTTP (in a thread, as any
blocking client must be here). The log test runs `python -m server` (through
client.launcher) with `--log-format json` and reads its log.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from clonejob_rpc import (
    MIB,
    RPC_TIMEOUT,
    VM1,
    WATCH_TIMEOUT,
    State,
    get,
    job_name,
    read_to_end,
    rpc_error,
    vm_body,
)
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client.parser import text_string_to_metric_families

from client.launcher import ServerProcess
from clonejob_grpc import clone_job_service_pb2 as spb
from clonejob_grpc import clone_job_service_pb2_grpc as spb_grpc
from server.app import App
from server.config import Config
from server.domain.names import MigratingVmName
from server.targets.disk_image import data_bytes
from server.targets.local import LocalTarget

SERVICE = "clonejob.v1.CloneJobService"
STEPS = ("preparing_vm_disks", "adapting_os", "instantiating_migrated_vm")
DISK_SIZE = 4 * MIB
Serving = health_pb2.HealthCheckResponse


# -- an in-process server --


class Running:
    """An App started in this event loop; `stop` may be called by the test itself."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.stopped = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.app.port}"

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.app.stop()


def write_vm(data_dir: Path) -> None:
    LocalTarget(data_dir).write_sample_vm(MigratingVmName.parse(VM1), disks=1, disk_size=DISK_SIZE)


def vm_data(data_dir: Path) -> int:
    """The data the sample VM's disk holds (holes left out): what a clone copies."""
    return data_bytes(data_dir / "snapshots" / VM1 / "cycles" / "1" / "disk-0.img")


async def start_app(data_dir: Path, **options: Any) -> Running:
    config = Config(
        listen="127.0.0.1:0",
        data_dir=data_dir,
        metrics_listen="127.0.0.1:0",
        shutdown_grace=5.0,
        **options,
    )
    app = App(config)
    await app.start()
    assert app.metrics_port != 0
    return Running(app)


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    data_dir = tmp_path / "data"
    write_vm(data_dir)
    server = await start_app(data_dir)
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def stub(running: Running) -> AsyncIterator[spb_grpc.CloneJobServiceStub]:
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield spb_grpc.CloneJobServiceStub(channel)


# -- /metrics --

Samples = Mapping[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(server: Running) -> Samples:
    url = f"http://127.0.0.1:{server.app.metrics_port}/metrics"

    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=RPC_TIMEOUT) as response:
            assert response.status == 200
            return str(response.read().decode())

    text = await asyncio.to_thread(fetch)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a labelled series not created yet."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def rpcs(samples: Samples, method: str, code: str) -> float:
    return value(samples, "clonejob_rpcs_total", service=SERVICE, method=method, code=code)


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """For gauges that change on the engine's own time, with no event to wait on."""
    deadline = time.monotonic() + RPC_TIMEOUT
    while not await check():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.02)


async def create_vm_job(stub: spb_grpc.CloneJobServiceStub, job_id: str) -> str:
    job = await stub.CreateCloneJob(
        spb.CreateCloneJobRequest(
            parent=VM1, clone_job_id=job_id, clone_job=vm_body("vm-" + job_id)
        ),
        timeout=RPC_TIMEOUT,
    )
    return str(job.name)


async def read_all(call: Any) -> list[spb.WatchCloneJobResponse]:
    messages = []
    while (message := await call.read()) is not grpc.aio.EOF:
        messages.append(message)
    return messages


async def test_metrics_count_a_clone_job_from_create_to_succeeded(
    running: Running, stub: spb_grpc.CloneJobServiceStub
) -> None:
    before = await scrape(running)
    assert value(before, "clonejob_open_watch_streams") == 0
    name = await create_vm_job(stub, "clone-1")
    call = stub.WatchCloneJob(spb.WatchCloneJobRequest(name=name), timeout=WATCH_TIMEOUT)
    first = await call.read()
    assert first is not grpc.aio.EOF
    # The server counts the watch before it sends the first message.
    assert value(await scrape(running), "clonejob_open_watch_streams") == 1
    rest = await read_all(call)
    assert await call.code() == grpc.StatusCode.OK
    assert rest[-1].clone_job.state == State.SUCCEEDED

    after = await scrape(running)
    assert rpcs(after, "CreateCloneJob", "OK") == rpcs(before, "CreateCloneJob", "OK") + 1
    # A stream is counted when it ends, with its final code.
    assert rpcs(after, "WatchCloneJob", "OK") == rpcs(before, "WatchCloneJob", "OK") + 1
    assert value(after, "clonejob_open_watch_streams") == 0
    for method in ("CreateCloneJob", "WatchCloneJob"):
        count = "clonejob_rpc_duration_seconds_count"
        assert (
            value(after, count, service=SERVICE, method=method)
            == value(before, count, service=SERVICE, method=method) + 1
        )
    jobs = "clonejob_jobs"
    assert value(after, jobs, state="SUCCEEDED") == value(before, jobs, state="SUCCEEDED") + 1
    for state in ("PENDING", "ACTIVE", "ADAPTING_OS", "CANCELLING"):
        assert value(after, jobs, state=state) == value(before, jobs, state=state) == 0
    for step in STEPS:
        count = "clonejob_step_duration_seconds_count"
        assert value(after, count, step=step) == value(before, count, step=step) + 1
    copied = "clonejob_bytes_copied_total"
    assert value(after, copied) == value(before, copied) + vm_data(running.app.config.data_dir)
    assert value(after, "clonejob_engine_queue_depth") == 0
    assert ("clonejob_engine_running_jobs", frozenset()) in after


async def test_metrics_count_a_not_found_get_with_its_code(
    running: Running, stub: spb_grpc.CloneJobServiceStub
) -> None:
    before = await scrape(running)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetCloneJob(
            spb.GetCloneJobRequest(name=job_name("missing")), timeout=RPC_TIMEOUT
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND

    # grpc.aio sends an abort's status before the handler's AbortError reaches the
    # observer, so the client may hear NOT_FOUND a moment before it is counted.
    async def counted() -> bool:
        samples = await scrape(running)
        return (
            rpcs(samples, "GetCloneJob", "NOT_FOUND")
            == rpcs(before, "GetCloneJob", "NOT_FOUND") + 1
        )

    await eventually(counted, "the NOT_FOUND Get is counted")
    after = await scrape(running)
    assert rpcs(after, "GetCloneJob", "NOT_FOUND") == rpcs(before, "GetCloneJob", "NOT_FOUND") + 1
    assert rpcs(after, "GetCloneJob", "OK") == rpcs(before, "GetCloneJob", "OK")
    count = "clonejob_rpc_duration_seconds_count"
    assert (
        value(after, count, service=SERVICE, method="GetCloneJob")
        == value(before, count, service=SERVICE, method="GetCloneJob") + 1
    )


async def test_metrics_job_gauges_start_from_the_store(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_vm(data_dir)
    first = await start_app(data_dir)
    try:
        async with grpc.aio.insecure_channel(first.address) as channel:
            stub = spb_grpc.CloneJobServiceStub(channel)
            name = await create_vm_job(stub, "clone-1")
            call = stub.WatchCloneJob(spb.WatchCloneJobRequest(name=name), timeout=WATCH_TIMEOUT)
            assert (await read_all(call))[-1].clone_job.state == State.SUCCEEDED
    finally:
        await first.stop()
    second = await start_app(data_dir)
    try:
        samples = await scrape(second)
        assert value(samples, "clonejob_jobs", state="SUCCEEDED") == 1
        assert value(samples, "clonejob_jobs", state="PENDING") == 0
        # A new process has served no RPCs yet.
        assert rpcs(samples, "CreateCloneJob", "OK") == 0
    finally:
        await second.stop()


async def test_metrics_engine_queue_depth_and_running_jobs(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_vm(data_dir)
    plan = tmp_path / "faults.json"
    hold = {"match": "cloneJobs/hold-", "step": "adapting_os", "action": "hold"}
    plan.write_text(json.dumps({"faults": [hold]}))
    server = await start_app(data_dir, max_concurrent_jobs=1, fault_plan=plan)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = spb_grpc.CloneJobServiceStub(channel)
            held = await create_vm_job(stub, "hold-a")
            call = stub.WatchCloneJob(spb.WatchCloneJobRequest(name=held), timeout=WATCH_TIMEOUT)
            while (message := await call.read()).clone_job.state != State.ADAPTING_OS:
                assert message is not grpc.aio.EOF
            call.cancel()
            await create_vm_job(stub, "waits-b")

            async def queued() -> bool:
                samples = await scrape(server)
                return value(samples, "clonejob_engine_queue_depth") == 1

            await eventually(queued, "job b waits for the one slot")
            samples = await scrape(server)
            assert value(samples, "clonejob_engine_running_jobs") == 1
            assert value(samples, "clonejob_jobs", state="PENDING") == 1
            assert value(samples, "clonejob_jobs", state="ADAPTING_OS") == 1
    finally:
        await server.stop()
    assert server.app.engine.queued_jobs == 0
    assert server.app.engine.slots_in_use == 0


async def test_metrics_count_a_failed_step_and_a_cancelled_watch(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_vm(data_dir)
    plan = tmp_path / "faults.json"
    fail = {"match": "cloneJobs/fail-", "step": "adapting_os", "action": "fail"}
    hold = {"match": "cloneJobs/hold-", "step": "adapting_os", "action": "hold"}
    plan.write_text(json.dumps({"faults": [fail, hold]}))
    server = await start_app(data_dir, fault_plan=plan)
    try:
        before = await scrape(server)
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = spb_grpc.CloneJobServiceStub(channel)
            name = await create_vm_job(stub, "fail-1")
            call = stub.WatchCloneJob(spb.WatchCloneJobRequest(name=name), timeout=WATCH_TIMEOUT)
            assert (await read_all(call))[-1].clone_job.state == State.FAILED
            after = await scrape(server)
            jobs, count = "clonejob_jobs", "clonejob_step_duration_seconds_count"
            assert value(after, jobs, state="FAILED") == value(before, jobs, state="FAILED") + 1
            # The step that failed ended too; the one never started was not observed.
            for step, more in zip(STEPS, (1, 1, 0), strict=True):
                assert value(after, count, step=step) == value(before, count, step=step) + more
            copied = "clonejob_bytes_copied_total"
            assert value(after, copied) == value(before, copied) + vm_data(data_dir)

            # A watch the client cancels is counted CANCELLED once the server sees it.
            held = await create_vm_job(stub, "hold-1")
            open_call = stub.WatchCloneJob(
                spb.WatchCloneJobRequest(name=held), timeout=WATCH_TIMEOUT
            )
            await open_call.read()
            open_call.cancel()

            async def counted() -> bool:
                samples = await scrape(server)
                return (
                    rpcs(samples, "WatchCloneJob", "CANCELLED")
                    == rpcs(before, "WatchCloneJob", "CANCELLED") + 1
                    and value(samples, "clonejob_open_watch_streams") == 0
                )

            await eventually(counted, "the cancelled watch is counted and closed")
    finally:
        await server.stop()


async def test_metrics_endpoint_stops_with_the_server(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_vm(data_dir)
    server = await start_app(data_dir)
    await scrape(server)
    await server.stop()
    with pytest.raises(OSError):
        await scrape(server)


# -- health --


async def test_health_serving_once_started_and_not_serving_once_stopping(
    running: Running,
) -> None:
    async with grpc.aio.insecure_channel(running.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE):
            reply = await health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT
            )
            assert reply.status == Serving.SERVING, service
        watch_call = health.Watch(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=WATCH_TIMEOUT
        )
        assert (await watch_call.read()).status == Serving.SERVING
        # Stop's first step flips health, and the open watch hears it before the
        # server stops taking calls (it gets the grace period).
        stopping = asyncio.create_task(running.stop())
        try:
            assert (await watch_call.read()).status == Serving.NOT_SERVING
        finally:
            watch_call.cancel()
            await stopping
    for service in ("", SERVICE):
        reply = await running.app.health.Check(health_pb2.HealthCheckRequest(service=service), None)
        assert reply.status == Serving.NOT_SERVING, service


# -- reflection --


def reflect_and_get(address: str, name: str) -> tuple[list[str], Any, type[Any]]:
    """With no generated code: list services, build GetCloneJob's types, call it."""
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = list(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        method = pool.FindServiceByName(SERVICE).methods_by_name["GetCloneJob"]
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(
            f"/{SERVICE}/GetCloneJob",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        return services, call(request_class(name=name), timeout=RPC_TIMEOUT), request_class


async def test_reflection_lists_the_service_and_serves_a_dynamic_client(
    running: Running, stub: spb_grpc.CloneJobServiceStub
) -> None:
    name = await create_vm_job(stub, "clone-1")
    services, job, request_class = await asyncio.to_thread(reflect_and_get, running.address, name)
    assert SERVICE in services
    assert "grpc.health.v1.Health" in services
    assert request_class is not spb.GetCloneJobRequest  # built from fetched descriptors
    assert job.name == name
    assert job.DESCRIPTOR.full_name == "clonejob.v1.CloneJob"
    assert job.compute_engine_target_details.vm_name == "vm-clone-1"


# -- structured logs --


def test_logs_json_one_line_per_rpc_and_no_token(tmp_path: Path) -> None:
    data_dir, run_dir = tmp_path / "data", tmp_path / "run"
    run_dir.mkdir()
    write_vm(data_dir)
    token = "tok-" + secrets.token_hex(16)
    tokens_file = tmp_path / "tokens.json"
    digest = hashlib.sha256(token.encode()).hexdigest()
    tokens_file.write_text(
        json.dumps({"tokens": [{"sha256": digest, "projects": ["p1"], "access": "write"}]})
    )
    server = ServerProcess(
        data_dir,
        run_dir,
        tokens_file=tokens_file,
        log_format="json",
        metrics_listen="127.0.0.1:0",
    )
    try:
        server.start()
        auth = (("authorization", f"Bearer {token}"),)
        with server.channel() as channel:
            stub = spb_grpc.CloneJobServiceStub(channel)
            job = stub.CreateCloneJob(
                spb.CreateCloneJobRequest(
                    parent=VM1, clone_job_id="clone-1", clone_job=vm_body("vm-1")
                ),
                metadata=auth,
                timeout=RPC_TIMEOUT,
            )
            read_to_end(
                stub.WatchCloneJob(
                    spb.WatchCloneJobRequest(name=job.name), metadata=auth, timeout=WATCH_TIMEOUT
                )
            )
            stub.GetCloneJob(
                spb.GetCloneJobRequest(name=job.name), metadata=auth, timeout=RPC_TIMEOUT
            )
            missing = rpc_error(
                stub.GetCloneJob,
                spb.GetCloneJobRequest(name=job_name("missing")),
                metadata=auth,
                timeout=RPC_TIMEOUT,
            )
            assert missing.code() == grpc.StatusCode.NOT_FOUND
            unauthenticated = rpc_error(get, stub, job.name)  # no token at all
            assert unauthenticated.code() == grpc.StatusCode.UNAUTHENTICATED
        assert server.stop() == 0
    finally:
        server.close()
    output = server.log_path.read_text()
    assert token not in output
    assert "Bearer" not in output
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    for line in lines:
        assert {"ts", "level", "logger", "msg"} <= line.keys(), line

    started = [line for line in lines if "listening on" in line["msg"]]
    assert len(started) == 1 and "metrics http://127.0.0.1:" in started[0]["msg"]

    calls = [
        (line["method"], line["code"], line["job"])
        for line in lines
        if line["logger"] == "clonejob.rpc"
    ]
    # Sorted: an aborted call's line may follow the next call's (see the NOT_FOUND test).
    assert sorted(calls) == sorted(
        [
            ("CreateCloneJob", "OK", VM1),
            ("WatchCloneJob", "OK", job.name),
            ("GetCloneJob", "OK", job.name),
            ("GetCloneJob", "NOT_FOUND", job_name("missing")),
            ("GetCloneJob", "UNAUTHENTICATED", job.name),
        ]
    )
    for line in lines:
        if line["logger"] == "clonejob.rpc":
            assert isinstance(line["duration_ms"], int | float) and line["duration_ms"] >= 0
            assert line["peer"].startswith("ipv4:127.0.0.1:")
            assert line["service"] == SERVICE
            assert "vm-1" not in json.dumps(line)  # nothing of the request body

    transitions = [
        (line["old_state"], line["new_state"], line["revision"])
        for line in lines
        if line["logger"] == "clonejob.engine" and "new_state" in line
    ]
    assert [(old, new) for old, new, _ in transitions] == [
        ("none", "PENDING"),
        ("PENDING", "ACTIVE"),
        ("ACTIVE", "ADAPTING_OS"),
        ("ADAPTING_OS", "ACTIVE"),
        ("ACTIVE", "SUCCEEDED"),
    ]
    revisions = [revision for _, _, revision in transitions]
    assert revisions == sorted(revisions) and revisions[0] == 1
