"""Client unit tests against a fake grpc.aio servicer on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from client import (
    Backoff,
    BlockingCloneJobClient,
    CallCancelledError,
    CloneJobClient,
    CloneJobError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    ResourceExhaustedError,
    RetryPolicy,
    UnavailableError,
    from_grpc_error,
)
from client.cli import main
from client.retry import WatchResume
from clonejob_grpc.clone_job_pb2 import (
    CloneJob,
    CloneStep,
    ComputeEngineTargetDetails,
    PreparingVMDisksStep,
)
from clonejob_grpc.clone_job_service_pb2 import (
    CreateCloneJobRequest,
    GetCloneJobRequest,
    ListCloneJobsRequest,
    ListCloneJobsResponse,
    StepProgress,
    WatchCloneJobRequest,
    WatchCloneJobResponse,
)
from clonejob_grpc.clone_job_service_pb2_grpc import (
    CloneJobServiceServicer,
    add_CloneJobServiceServicer_to_server,
)

PARENT = "projects/p/locations/l/sources/s/migratingVms/vm"
NAME = f"{PARENT}/cloneJobs/job-1"
BAD_NAME = f"{PARENT}/cloneJobs/BAD"
DOMAIN = "clonejob.example.com"
FAST = RetryPolicy(backoff=Backoff(initial=0.001, maximum=0.004), attempts=4)


def _job(state: CloneJob.State.ValueType = CloneJob.ACTIVE, name: str = NAME) -> CloneJob:
    job = CloneJob(
        name=name,
        state=state,
        create_time=Timestamp(seconds=1_700_000_000),
        compute_engine_target_details=ComputeEngineTargetDetails(
            vm_name="clone-vm", zone="us-central1-a", machine_type="n2-standard-4"
        ),
    )
    job.steps.append(
        CloneStep(
            preparing_vm_disks=PreparingVMDisksStep(),
            start_time=Timestamp(seconds=1_700_000_001),
            end_time=Timestamp(seconds=1_700_000_004),
        )
    )
    if state == CloneJob.FAILED:
        job.error.code = grpc.StatusCode.INTERNAL.value[0]
        job.error.message = "disk copy failed"
    return job


def _change(
    revision: int, state: CloneJob.State.ValueType = CloneJob.ACTIVE
) -> WatchCloneJobResponse:
    return WatchCloneJobResponse(
        clone_job=_job(state),
        revision=revision,
        progress=StepProgress(percent=50, bytes_done=32, bytes_total=64),
    )


def _heartbeat(revision: int) -> WatchCloneJobResponse:
    return WatchCloneJobResponse(heartbeat=True, revision=revision)


def _rich_status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: dict[str, str] | None = None,
    violations: Sequence[tuple[str, str]] = (),
) -> grpc.Status:
    details = []
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {}))
    details.append(info)
    if violations:
        bad = any_pb2.Any()
        bad.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in violations
                ]
            )
        )
        details.append(bad)
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    return rpc_status.to_status(status)


@dataclass
class WatchSession:
    """What one WatchCloneJob call sends: messages, then an optional abort."""

    messages: list[WatchCloneJobResponse]
    abort: tuple[grpc.StatusCode, str] | None = None


@dataclass
class FakeService(CloneJobServiceServicer):
    """A scripted servicer that records what the client sent."""

    get_failures: int = 0
    get_failure_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    get_calls: int = 0
    create_requests: list[CreateCloneJobRequest] = field(default_factory=list)
    list_requests: list[ListCloneJobsRequest] = field(default_factory=list)
    pages: dict[str, ListCloneJobsResponse] = field(default_factory=dict)
    watch_sessions: list[WatchSession] = field(default_factory=list)
    watch_after: list[int] = field(default_factory=list)

    async def _abort(self, context: grpc.aio.ServicerContext, status: grpc.Status) -> None:
        await context.abort(status.code, status.details, status.trailing_metadata)

    async def CreateCloneJob(
        self, request: CreateCloneJobRequest, context: grpc.aio.ServicerContext
    ) -> CloneJob:
        self.create_requests.append(request)
        return _job(CloneJob.PENDING, name=f"{request.parent}/cloneJobs/{request.clone_job_id}")

    async def GetCloneJob(
        self, request: GetCloneJobRequest, context: grpc.aio.ServicerContext
    ) -> CloneJob:
        self.get_calls += 1
        if request.name == BAD_NAME:
            await self._abort(
                context,
                _rich_status(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "the name is invalid",
                    "INVALID_NAME",
                    {"name": request.name},
                    [("name", "must end in a valid clone job id"), ("name.parent", "unknown")],
                ),
            )
        if request.name != NAME:
            await self._abort(
                context, _rich_status(grpc.StatusCode.NOT_FOUND, "no such job", "NOT_FOUND")
            )
        if self.get_failures:
            self.get_failures -= 1
            await context.abort(self.get_failure_code, "try again")
        return _job(CloneJob.SUCCEEDED)

    async def ListCloneJobs(
        self, request: ListCloneJobsRequest, context: grpc.aio.ServicerContext
    ) -> ListCloneJobsResponse:
        self.list_requests.append(request)
        return self.pages[request.page_token]

    async def WatchCloneJob(
        self, request: WatchCloneJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[WatchCloneJobResponse]:
        self.watch_after.append(request.after_revision)
        session = self.watch_sessions.pop(0)
        for message in session.messages:
            yield message
        if session.abort is not None:
            code, reason = session.abort
            await self._abort(context, _rich_status(code, f"stream ended: {reason}", reason))


@dataclass
class Fake:
    service: FakeService
    address: str


@pytest.fixture
async def fake() -> AsyncIterator[Fake]:
    server = grpc.aio.server()
    service = FakeService()
    add_CloneJobServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield Fake(service, f"127.0.0.1:{port}")
    finally:
        await server.stop(None)


@pytest.fixture
async def client(fake: Fake) -> AsyncIterator[CloneJobClient]:
    async with CloneJobClient(fake.address, timeout=5, retry=FAST) as c:
        yield c


def _three_pages() -> dict[str, ListCloneJobsResponse]:
    jobs = [_job(name=f"{PARENT}/cloneJobs/job-{i}") for i in range(5)]
    return {
        "": ListCloneJobsResponse(clone_jobs=jobs[0:2], next_page_token="t1"),
        "t1": ListCloneJobsResponse(clone_jobs=jobs[2:4], next_page_token="t2"),
        "t2": ListCloneJobsResponse(clone_jobs=jobs[4:5]),
    }


# --- errors ------------------------------------------------------------------


async def test_errors_rich_details_are_parsed(client: CloneJobClient, fake: Fake) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await client.get(BAD_NAME)
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == "the name is invalid"
    assert error.reason == "INVALID_NAME"
    assert error.domain == DOMAIN
    assert error.metadata == {"name": BAD_NAME}
    assert error.violations == [
        ("name", "must end in a valid clone job id"),
        ("name.parent", "unknown"),
    ]
    assert isinstance(error.__cause__, grpc.aio.AioRpcError)
    assert fake.service.get_calls == 1  # INVALID_ARGUMENT is never retried


class _SyncCallError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """Stands in for the sync client's error, which is also a grpc.Call."""

    def __init__(self, status: grpc.Status) -> None:
        self._status = status

    def code(self) -> grpc.StatusCode:
        return self._status.code

    def details(self) -> str:
        return str(self._status.details)

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return tuple(self._status.trailing_metadata)

    def initial_metadata(self) -> None: ...
    def is_active(self) -> bool: ...  # type: ignore[empty-body]
    def time_remaining(self) -> None: ...
    def cancel(self) -> None: ...
    def add_callback(self, callback: object) -> None: ...


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPreconditionError),
        (grpc.StatusCode.OUT_OF_RANGE, OutOfRangeError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.CANCELLED, CallCancelledError),
        (grpc.StatusCode.DATA_LOSS, CloneJobError),
    ],
)
def test_from_grpc_error_maps_sync_errors_by_code(
    code: grpc.StatusCode, cls: type[CloneJobError]
) -> None:
    original = _SyncCallError(_rich_status(code, "boom", "SOME_REASON", {"k": "v"}))
    error = from_grpc_error(original)
    assert type(error) is cls
    assert (error.code, error.message, error.reason) == (code, "boom", "SOME_REASON")
    assert error.metadata == {"k": "v"}
    assert error.violations == []
    assert error.__cause__ is original


def test_from_grpc_error_handles_a_bare_rpc_error() -> None:
    error = from_grpc_error(grpc.RpcError("bare"))
    assert type(error) is CloneJobError
    assert error.code == grpc.StatusCode.UNKNOWN
    assert error.reason == ""


# --- unary calls -------------------------------------------------------------


async def test_list_follows_next_page_token_across_three_pages(
    client: CloneJobClient, fake: Fake
) -> None:
    fake.service.pages = _three_pages()
    names = [job.name async for job in client.list(PARENT, filter="state = ACTIVE", page_size=2)]
    assert names == [f"{PARENT}/cloneJobs/job-{i}" for i in range(5)]
    assert [r.page_token for r in fake.service.list_requests] == ["", "t1", "t2"]
    assert {(r.parent, r.filter, r.page_size) for r in fake.service.list_requests} == {
        (PARENT, "state = ACTIVE", 2)
    }


async def test_list_page_returns_one_page(client: CloneJobClient, fake: Fake) -> None:
    fake.service.pages = _three_pages()
    page = await client.list_page(PARENT, page_token="t1")
    assert len(page.clone_jobs) == 2
    assert page.next_page_token == "t2"


async def test_get_retries_unavailable_then_succeeds(client: CloneJobClient, fake: Fake) -> None:
    fake.service.get_failures = 2
    job = await client.get(NAME)
    assert job.state == CloneJob.SUCCEEDED
    assert fake.service.get_calls == 3


async def test_get_retries_a_bare_cancelled_from_a_stopping_server(
    client: CloneJobClient, fake: Fake
) -> None:
    # gRPC's core answers CANCELLED, with no details, to calls reaching a server
    # as it shuts down (grpc/grpc#41785): for a safe call that means "retry".
    fake.service.get_failure_code = grpc.StatusCode.CANCELLED
    fake.service.get_failures = 1
    job = await client.get(NAME)
    assert job.state == CloneJob.SUCCEEDED
    assert fake.service.get_calls == 2


async def test_get_gives_up_after_the_policy_attempts(client: CloneJobClient, fake: Fake) -> None:
    fake.service.get_failures = 100
    with pytest.raises(UnavailableError):
        await client.get(NAME)
    assert fake.service.get_calls == FAST.attempts


async def test_get_does_not_retry_not_found(client: CloneJobClient, fake: Fake) -> None:
    with pytest.raises(NotFoundError) as caught:
        await client.get(f"{PARENT}/cloneJobs/missing")
    assert caught.value.reason == "NOT_FOUND"
    assert fake.service.get_calls == 1


async def test_create_always_sends_a_request_id(client: CloneJobClient, fake: Fake) -> None:
    body = CloneJob(compute_engine_target_details=ComputeEngineTargetDetails(vm_name="v"))
    first = await client.create(PARENT, "job-a", body)
    await client.create(PARENT, "job-b", body)
    await client.create(PARENT, "job-c", body, request_id="8a3c1cf2-5b7e-4d39-9c43-0c1e0f1d2a6b")
    ids = [r.request_id for r in fake.service.create_requests]
    assert all(ids)
    assert uuid.UUID(ids[0]).version == 4
    assert ids[0] != ids[1]
    assert ids[2] == "8a3c1cf2-5b7e-4d39-9c43-0c1e0f1d2a6b"
    assert first.name == f"{PARENT}/cloneJobs/job-a"


# --- watch -------------------------------------------------------------------


async def _revisions(client: CloneJobClient, after: int = 0) -> list[int]:
    return [change.revision async for change in client.watch(NAME, after_revision=after)]


async def test_watch_resumes_after_unavailable_skipping_duplicates_and_heartbeats(
    client: CloneJobClient, fake: Fake
) -> None:
    fake.service.watch_sessions = [
        WatchSession(
            [_change(1), _heartbeat(1), _change(2)],
            (grpc.StatusCode.UNAVAILABLE, "SERVER_SHUTTING_DOWN"),
        ),
        WatchSession([_change(2), _heartbeat(2), _change(3), _change(4, CloneJob.SUCCEEDED)]),
    ]
    assert await _revisions(client) == [1, 2, 3, 4]
    assert fake.service.watch_after == [0, 2]


async def test_watch_resumes_after_watcher_too_slow(client: CloneJobClient, fake: Fake) -> None:
    fake.service.watch_sessions = [
        WatchSession([_change(7)], (grpc.StatusCode.RESOURCE_EXHAUSTED, "WATCHER_TOO_SLOW")),
        WatchSession([_change(8, CloneJob.CANCELLED)]),
    ]
    assert await _revisions(client, after=6) == [7, 8]
    assert fake.service.watch_after == [6, 7]


async def test_watch_does_not_resume_other_resource_exhausted(
    client: CloneJobClient, fake: Fake
) -> None:
    fake.service.watch_sessions = [
        WatchSession([], (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_WATCHES")),
    ]
    with pytest.raises(ResourceExhaustedError) as caught:
        await _revisions(client)
    assert caught.value.reason == "TOO_MANY_WATCHES"
    assert fake.service.watch_after == [0]


async def test_watch_restarts_from_zero_after_revision_compacted(
    client: CloneJobClient, fake: Fake
) -> None:
    fake.service.watch_sessions = [
        WatchSession(
            [_change(3), _change(4)], (grpc.StatusCode.OUT_OF_RANGE, "REVISION_COMPACTED")
        ),
        WatchSession([_change(4), _change(5, CloneJob.FAILED)]),
    ]
    assert await _revisions(client, after=2) == [3, 4, 5]
    assert fake.service.watch_after == [2, 0]


async def test_watch_gives_up_after_max_reconnect_time(client: CloneJobClient, fake: Fake) -> None:
    fake.service.watch_sessions = [WatchSession([], (grpc.StatusCode.UNAVAILABLE, "DOWN"))]
    with pytest.raises(UnavailableError):
        async for _ in client.watch(NAME, max_reconnect_time=0):
            pass
    assert fake.service.watch_after == [0]


async def test_watch_stops_after_a_terminal_state(client: CloneJobClient, fake: Fake) -> None:
    # The stream would go on; the client stops at SUCCEEDED without asking again.
    fake.service.watch_sessions = [
        WatchSession([_change(1, CloneJob.SUCCEEDED), _change(2)], None),
    ]
    assert await _revisions(client) == [1]
    assert fake.service.watch_after == [0]


def test_watch_resume_gives_up_only_after_max_reconnect_time() -> None:
    now = [100.0]
    policy = RetryPolicy(backoff=Backoff(initial=1, maximum=1))
    resume = WatchResume(
        "n", after_revision=0, policy=policy, max_reconnect_time=2.5, clock=lambda: now[0]
    )
    unavailable = _SyncCallError(_rich_status(grpc.StatusCode.UNAVAILABLE, "down", "DOWN"))
    assert 0.5 <= resume.backoff_after(unavailable) <= 1
    now[0] += 1.0
    assert 0.5 <= resume.backoff_after(unavailable) <= 1
    now[0] += 1.6
    with pytest.raises(UnavailableError):
        resume.backoff_after(unavailable)


def test_watch_resume_tells_on_reconnect_of_each_drop_and_of_the_return() -> None:
    heard: list[str | None] = []
    resume = WatchResume(
        "n",
        after_revision=0,
        policy=RetryPolicy(backoff=Backoff(initial=0.001, maximum=0.001)),
        on_reconnect=lambda error: heard.append(error.reason if error else None),
    )
    assert resume.accept(_change(1))
    assert heard == []  # a stream that never dropped
    unavailable = _SyncCallError(_rich_status(grpc.StatusCode.UNAVAILABLE, "down", "DOWN"))
    resume.backoff_after(unavailable)
    resume.backoff_after(unavailable)
    assert heard == ["DOWN", "DOWN"]
    assert not resume.accept(_heartbeat(1))  # a heartbeat is not yielded, but it is the return
    assert heard == ["DOWN", "DOWN", None]
    assert resume.accept(_change(2))
    assert heard == ["DOWN", "DOWN", None]


def test_backoff_delays_grow_and_stay_bounded() -> None:
    delays = Backoff(initial=0.1, maximum=5.0).delays()
    taken = [next(delays) for _ in range(12)]
    assert 0.05 <= taken[0] <= 0.1
    assert all(2.5 <= d <= 5.0 for d in taken[7:])
    assert max(taken) <= 5.0


# --- blocking client ---------------------------------------------------------


async def test_blocking_client_gets_and_watches(fake: Fake) -> None:
    fake.service.get_failures = 1
    fake.service.watch_sessions = [
        WatchSession([_change(1), _heartbeat(1)], (grpc.StatusCode.UNAVAILABLE, "DOWN")),
        WatchSession([_change(1), _change(2, CloneJob.SUCCEEDED)]),
    ]

    def run() -> tuple[CloneJob, list[int]]:
        with BlockingCloneJobClient(fake.address, timeout=5, retry=FAST) as blocking:
            return blocking.get(NAME), [c.revision for c in blocking.watch(NAME)]

    job, revisions = await asyncio.to_thread(run)
    assert job.name == NAME
    assert fake.service.get_calls == 2
    assert revisions == [1, 2]
    assert fake.service.watch_after == [0, 1]


async def test_blocking_client_watch_tells_on_reconnect(fake: Fake) -> None:
    fake.service.watch_sessions = [
        WatchSession([_change(1)], (grpc.StatusCode.UNAVAILABLE, "DOWN")),
        WatchSession([_change(2, CloneJob.SUCCEEDED)]),
    ]
    heard: list[str | None] = []

    def run() -> list[int]:
        with BlockingCloneJobClient(fake.address, timeout=5, retry=FAST) as blocking:
            changes = blocking.watch(
                NAME, on_reconnect=lambda e: heard.append(e.code_name if e else None)
            )
            return [c.revision for c in changes]

    assert await asyncio.to_thread(run) == [1, 2]
    assert heard == ["UNAVAILABLE", None]


async def test_blocking_client_raises_mapped_errors(fake: Fake) -> None:
    def run() -> None:
        with BlockingCloneJobClient(fake.address, timeout=5, retry=FAST) as blocking:
            blocking.get(BAD_NAME)

    with pytest.raises(InvalidArgumentError) as caught:
        await asyncio.to_thread(run)
    assert caught.value.reason == "INVALID_NAME"
    assert len(caught.value.violations) == 2


# --- CLI ---------------------------------------------------------------------


async def _cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def test_cli_get_prints_a_summary(fake: Fake, capsys: pytest.CaptureFixture[str]) -> None:
    assert await _cli("--server", fake.address, "get", NAME) == 0
    out = capsys.readouterr().out
    assert f"name:     {NAME}" in out
    assert "state:    SUCCEEDED" in out
    assert "preparing_vm_disks" in out
    assert "3.0s" in out  # the step's duration
    assert "vm_name: clone-vm" in out


async def test_cli_get_json_uses_the_camel_case_mapping(
    fake: Fake, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await _cli("--server", fake.address, "get", NAME, "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name"] == NAME
    assert data["state"] == "SUCCEEDED"
    assert data["computeEngineTargetDetails"]["vmName"] == "clone-vm"


async def test_cli_list_prints_a_table_of_every_page(
    fake: Fake, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.service.pages = _three_pages()
    assert await _cli("--server", fake.address, "list", PARENT, "--page-size", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "STATE", "TARGET", "CREATED", "ENDED", "REASON"]
    assert [line.split()[0] for line in lines[1:]] == [f"job-{i}" for i in range(5)]
    assert all("ACTIVE" in line for line in lines[1:])


async def test_cli_list_json_merges_the_pages(
    fake: Fake, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.service.pages = _three_pages()
    assert await _cli("--server", fake.address, "--json", "list", PARENT) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["cloneJobs"]) == 5


async def test_cli_error_exits_3_with_the_message_on_stderr(
    fake: Fake, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await _cli("--server", fake.address, "get", BAD_NAME) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "error: INVALID_ARGUMENT INVALID_NAME: the name is invalid",
        "  name: must end in a valid clone job id",
        "  name.parent: unknown",
    ]


async def test_cli_watch_exit_code_follows_the_final_state(
    fake: Fake, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.service.watch_sessions = [WatchSession([_change(1), _change(2, CloneJob.FAILED)])]
    assert await _cli("--server", fake.address, "watch", NAME) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].startswith("rev 1  ACTIVE")
    assert "disk copy failed" in captured.err


def test_cli_connection_failure_hints_at_server(capsys: pytest.CaptureFixture[str]) -> None:
    # Port 1 on localhost refuses connections.
    assert main(["--server", "127.0.0.1:1", "--timeout", "2", "get", NAME]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: UNAVAILABLE:")
    assert "--server" in err
