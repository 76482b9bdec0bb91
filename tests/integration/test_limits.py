"""Limits and deadlines: request size, labels and metadata, page size, watch caps.

Each limit is checked at its boundary (the largest value accepted, the smallest
refused) against a real server process, and after each refusal the server
keeps serving. Watch caps and deadlines prove that a cancelled or expired watch
frees its server slot at once: with `--max-watches 1` a new watch is admitted
right after, and the open-streams gauge of /metrics returns to 0.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from clonejob_rpc import (
    ADAPTING,
    VM1,
    bad_fields,
    create,
    disks_body,
    error_info,
    get,
    job_name,
    list_jobs,
    read_until,
    rpc_error,
    step_running,
    stream_error,
    vm_body,
)

from clonejob_grpc import clone_job_pb2 as pb
from clonejob_grpc import clone_job_service_pb2 as spb

if TYPE_CHECKING:
    from conftest import Server, ServerPool

MIB = 1024 * 1024
MAX_REQUEST = 4 * MIB  # grpc.max_receive_message_length in server/app.py
VM2 = "projects/p1/locations/us-central1/sources/s1/migratingVms/vm2"
VM3 = "projects/p1/locations/us-central1/sources/s1/migratingVms/vm3"
HOLD = [{"match": "cloneJobs/hold", "step": ADAPTING, "action": "hold"}]
VM_DETAILS = "clone_job.compute_engine_target_details"
RPC_TIMEOUT = 30.0
SLOT_FREED_WITHIN = 5.0  # seconds for the server to notice a cancelled watch


def metrics_url(server: Server) -> str | None:
    """The /metrics address of the server, if it serves metrics."""
    port = server.metrics_port
    return None if port is None else f"http://127.0.0.1:{port}/metrics"


def open_watch_streams(url: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found = re.search(r"^clonejob_open_watch_streams ([0-9.e+-]+)$", text, re.MULTILINE)
    assert found, "no clonejob_open_watch_streams in /metrics"
    return float(found.group(1))


def eventually(check: Callable[[], bool], what: str, within: float = SLOT_FREED_WITHIN) -> float:
    """Poll another process's state until `check` holds; the seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            raise AssertionError(f"not within {within} s: {what}")
        time.sleep(0.02)
    return time.monotonic() - started


def open_watch(server: Server, name: str, timeout: float = RPC_TIMEOUT) -> Any:
    """A watch whose first message was read: the server counts it as open."""
    call = server.stub().WatchCloneJob(spb.WatchCloneJobRequest(name=name), timeout=timeout)
    first = next(call)
    assert first.clone_job.name == name
    return call


def admitted(server: Server, name: str, opened: list[Any]) -> Callable[[], bool]:
    """A check that opens a watch; true once the server admits one."""

    def check() -> bool:
        try:
            opened.append(open_watch(server, name, timeout=10))
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            assert error_info(error).reason == "TOO_MANY_WATCHES"
            return False
        return True

    return check


# -- the server of this module --


@dataclass
class Limits:
    server: Server
    held: str  # holds the one job slot: every other job stays PENDING


@pytest.fixture(scope="module")
def limits(module_servers: ServerPool, tmp_path_factory: pytest.TempPathFactory) -> Limits:
    from conftest import write_sample_vm

    data_dir = tmp_path_factory.mktemp("limits") / "data"
    data_dir.mkdir()
    for vm in (VM1, VM2, VM3):
        write_sample_vm(data_dir, vm, disks=1, disk_size="1MiB")
    server = module_servers.start(
        data_dir,
        fault_plan=HOLD,
        max_concurrent_jobs=1,
        max_watches=3,
        metrics_listen="127.0.0.1:0",
    )
    stub = server.stub()
    held = create(stub, "hold-1", vm_body("hold-vm")).name
    call = stub.WatchCloneJob(spb.WatchCloneJobRequest(name=held), timeout=RPC_TIMEOUT)
    read_until(call, step_running(ADAPTING))
    call.cancel()
    return Limits(server, held)


def assert_serving(limits: Limits) -> None:
    process = limits.server.process
    assert process is not None and process.poll() is None
    assert get(limits.server.stub(), limits.held).name == limits.held


# -- request size --

BIG = "x" * (MAX_REQUEST + 1024)
JUST_BELOW = "x" * (MAX_REQUEST - 64 * 1024)
OVERSIZED: dict[str, Callable[[str], Any]] = {
    "CreateCloneJob": lambda text: spb.CreateCloneJobRequest(
        parent=VM1, clone_job_id="big", clone_job=vm_body("big-vm", storage_pool=text)
    ),
    "GetCloneJob": lambda text: spb.GetCloneJobRequest(name=text),
    "ListCloneJobs": lambda text: spb.ListCloneJobsRequest(parent=VM1, filter=text),
    "CancelCloneJob": lambda text: spb.CancelCloneJobRequest(name=text),
    "WatchCloneJob": lambda text: spb.WatchCloneJobRequest(name=text),
}


def call_method(server: Server, method: str, request: Any) -> Any:
    stub = server.stub()
    if method == "WatchCloneJob":
        return list(stub.WatchCloneJob(request, timeout=RPC_TIMEOUT))
    return getattr(stub, method)(request, timeout=RPC_TIMEOUT)


@pytest.mark.parametrize("method", sorted(OVERSIZED))
def test_limits_request_over_max_size_is_resource_exhausted(limits: Limits, method: str) -> None:
    request = OVERSIZED[method](BIG)
    assert request.ByteSize() > MAX_REQUEST
    error = rpc_error(call_method, limits.server, method, request)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    assert_serving(limits)


@pytest.mark.parametrize("method", ["GetCloneJob", "ListCloneJobs", "WatchCloneJob"])
def test_limits_request_just_below_max_size_is_read(limits: Limits, method: str) -> None:
    """Just below the limit the request is parsed and judged on its content."""
    request = OVERSIZED[method](JUST_BELOW)
    assert request.ByteSize() < MAX_REQUEST
    error = rpc_error(call_method, limits.server, method, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert_serving(limits)


# -- labels and metadata --

SIXTY_FOUR_LABELS = {f"k{i}": f"v{i}" for i in range(64)}


@pytest.mark.parametrize(
    ("details", "field"),
    [
        ({"labels": {f"k{i}": "v" for i in range(65)}}, f"{VM_DETAILS}.labels"),
        ({"labels": {f"k{i}": "v" for i in range(3000)}}, f"{VM_DETAILS}.labels"),
        ({"metadata": {f"k{i}": "v" for i in range(129)}}, f"{VM_DETAILS}.metadata"),
        ({"metadata": {"a": "x" * (512 * 1024)}}, f"{VM_DETAILS}.metadata"),
        (
            {"metadata": {f"k{i:03}": "x" * (4096 - 4) for i in range(128)} | {"k000": "x" * 4093}},
            f"{VM_DETAILS}.metadata",
        ),
    ],
    ids=["65-labels", "3000-labels", "129-metadata", "metadata-512KiB+1", "128-metadata-512KiB+1"],
)
def test_limits_labels_and_metadata_over_limit_are_invalid(
    limits: Limits, details: dict[str, Any], field: str
) -> None:
    size = sum(len(k) + len(v) for k, v in details.get("metadata", {}).items())
    assert size == 0 or size == 512 * 1024 + 1 or len(details["metadata"]) > 128
    error = rpc_error(create, limits.server.stub(), "over", vm_body("over-vm", **details))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == [field]
    info = error_info(error)
    assert info.reason == "INVALID_ARGUMENT"
    assert info.metadata["field"] == field
    assert_serving(limits)


@pytest.mark.parametrize(
    "details",
    [
        {"labels": SIXTY_FOUR_LABELS},
        {"metadata": {f"k{i}": "v" for i in range(128)}},
        {"metadata": {"a": "x" * (512 * 1024 - 1)}},
        {"metadata": {f"k{i:03}": "x" * (4096 - 4) for i in range(128)}},
        {"labels": SIXTY_FOUR_LABELS, "metadata": {f"k{i:03}": "x" * 4092 for i in range(128)}},
    ],
    ids=["64-labels", "128-metadata", "metadata-512KiB", "128-metadata-512KiB", "both-at-limit"],
)
def test_limits_labels_and_metadata_at_limit_are_accepted(
    limits: Limits, details: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    job_id = "at-" + re.sub(r"[^a-z0-9]+", "-", request.node.callspec.id.lower())
    job = create(limits.server.stub(), job_id, vm_body(job_id + "-vm", **details))
    target = job.compute_engine_target_details
    assert dict(target.labels) == details.get("labels", {})
    assert dict(target.metadata) == details.get("metadata", {})


def test_limits_many_violations_still_reach_the_client_as_invalid_argument(
    limits: Limits,
) -> None:
    bad = "B" * 100
    body = vm_body(
        "many-bad-vm",
        network_tags=[f"{bad}{i}" for i in range(64)],
        additional_licenses=[f"!{bad}{i}" for i in range(64)],
        labels={f"{bad}{i}": "v" for i in range(64)},
        metadata={f"!{bad}{i}": "v" for i in range(128)},
    )
    error = rpc_error(create, limits.server.stub(), "many-bad", body)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert error_info(error).reason == "INVALID_ARGUMENT"
    assert f"{VM_DETAILS}.network_tags[0]" in bad_fields(error)


# -- page size --


def create_many(server: Server, parent: str, count: int) -> None:
    """`count` disks-only jobs, many calls in flight at once."""
    stub = server.stub()
    for start in range(0, count, 200):
        futures = [
            stub.CreateCloneJob.future(
                spb.CreateCloneJobRequest(
                    parent=parent, clone_job_id=f"j{i:05}", clone_job=disks_body()
                ),
                timeout=120,
            )
            for i in range(start, min(start + 200, count))
        ]
        for future in futures:
            assert future.result().state == pb.CloneJob.State.PENDING


@pytest.mark.timeout(300)
def test_limits_page_size_above_maximum_is_coerced_to_1000(limits: Limits) -> None:
    create_many(limits.server, VM2, 1001)
    stub = limits.server.stub()
    for page_size in (1001, 5000, 2**31 - 1):
        first = list_jobs(stub, VM2, page_size=page_size)
        assert len(first.clone_jobs) == 1000
        assert first.next_page_token
    rest = list_jobs(stub, VM2, page_size=2**31 - 1, page_token=first.next_page_token)
    assert len(rest.clone_jobs) == 1
    assert rest.next_page_token == ""
    names = {j.name for j in first.clone_jobs} | {j.name for j in rest.clone_jobs}
    assert names == {job_name(f"j{i:05}", VM2) for i in range(1001)}
    default = list_jobs(stub, VM2)
    assert len(default.clone_jobs) == 500
    assert_serving(limits)


# -- responses over the default message size --


def test_limits_list_of_jobs_at_their_metadata_limit_stays_readable(limits: Limits) -> None:
    stub = limits.server.stub()
    metadata = {f"k{i:03}": "x" * 4092 for i in range(128)}  # 523,776 bytes: valid
    for i in range(9):
        create(stub, f"meta-{i}", vm_body(f"meta-{i}-vm", metadata=metadata), parent=VM3)
    seen = 0
    token = ""
    while True:
        page = list_jobs(stub, VM3, page_token=token)
        seen += len(page.clone_jobs)
        token = page.next_page_token
        if not token:
            break
    assert seen == 9


def request_of_size(size: int) -> spb.CreateCloneJobRequest:
    """A valid Create (but for an unbounded storage_pool) of exactly `size` bytes."""
    request = spb.CreateCloneJobRequest(
        parent=VM3, clone_job_id="huge", clone_job=vm_body("huge-vm", storage_pool="")
    )
    pool = size - request.ByteSize()
    while True:
        request.clone_job.compute_engine_target_details.storage_pool = "p" * pool
        if request.ByteSize() <= size:
            break
        pool -= request.ByteSize() - size
    assert request.ByteSize() == size
    return request


def test_limits_a_job_accepted_just_below_max_request_size_stays_readable(
    limits: Limits,
) -> None:
    stub = limits.server.stub()
    request = request_of_size(MAX_REQUEST - 16)
    try:
        stub.CreateCloneJob(request, timeout=RPC_TIMEOUT)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:  # refused: fine
            assert f"{VM_DETAILS}.storage_pool" in bad_fields(error)
            return
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    name = job_name("huge", VM3)
    assert get(stub, name).name == name


# -- watch caps --


def test_limits_watches_over_max_are_resource_exhausted_until_one_is_cancelled(
    limits: Limits,
) -> None:
    """--max-watches 3: the 4th gets TOO_MANY_WATCHES; cancelling one frees its slot."""
    server = limits.server
    url = metrics_url(server)
    opened = [open_watch(server, limits.held) for _ in range(3)]
    try:
        if url is not None:
            assert open_watch_streams(url) == 3
        fourth = server.stub().WatchCloneJob(
            spb.WatchCloneJobRequest(name=limits.held), timeout=RPC_TIMEOUT
        )
        error, seen = stream_error(fourth)
        assert seen == []
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info = error_info(error)
        assert info.reason == "TOO_MANY_WATCHES"
        assert info.metadata["limit"] == "3"
        opened.pop(0).cancel()
        eventually(admitted(server, limits.held, opened), "a watch admitted after a cancel")
        assert len(opened) == 3
    finally:
        for call in opened:
            call.cancel()
    if url is not None:
        eventually(lambda: open_watch_streams(url) == 0, "open watch streams back to 0")
    assert_serving(limits)


# -- deadlines --


@pytest.fixture
def single(servers: ServerPool, tmp_path: Path) -> Iterator[Limits]:
    """A server with --max-watches 1 and a held job."""
    from conftest import write_sample_vm

    write_sample_vm(tmp_path / "data", VM1, disks=1, disk_size="1MiB")
    server = servers.start(
        tmp_path / "data",
        fault_plan=HOLD,
        max_watches=1,
        metrics_listen="127.0.0.1:0",
    )
    held = create(server.stub(), "hold-1", vm_body("hold-vm")).name
    yield Limits(server, held)


def test_deadline_watch_on_held_job_ends_deadline_exceeded_in_time(single: Limits) -> None:
    started = time.monotonic()
    call = single.server.stub().WatchCloneJob(
        spb.WatchCloneJobRequest(name=single.held), timeout=0.5
    )
    error, seen = stream_error(call)
    elapsed = time.monotonic() - started
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert seen and seen[0].clone_job.name == single.held
    assert 0.4 < elapsed < 5.0


@pytest.mark.parametrize("ending", ["deadline", "cancel"])
def test_deadline_ended_watch_frees_its_slot_at_once(single: Limits, ending: str) -> None:
    """--max-watches 1: once the one watch ends by deadline or client cancel, a new
    watch is admitted, and the open-streams gauge returns to 0."""
    server = single.server
    url = metrics_url(server)
    first = open_watch(server, single.held, timeout=1.0 if ending == "deadline" else RPC_TIMEOUT)
    opened: list[Any] = []
    try:
        if url is not None:
            assert open_watch_streams(url) == 1
        assert not admitted(server, single.held, opened)()
        if ending == "cancel":
            first.cancel()
        else:
            error, _ = stream_error(first)
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        eventually(admitted(server, single.held, opened), f"a watch admitted after a {ending}")
    finally:
        first.cancel()
        for call in opened:
            call.cancel()
    if url is None:
        pytest.skip("the server serves no /metrics: the gauge was not checked")
    eventually(lambda: open_watch_streams(url) == 0, "open watch streams back to 0")


@pytest.mark.parametrize("method", ["GetCloneJob", "ListCloneJobs", "CancelCloneJob"])
def test_deadline_unary_calls_answer_within_a_short_deadline(single: Limits, method: str) -> None:
    requests = {
        "GetCloneJob": spb.GetCloneJobRequest(name=single.held),
        "ListCloneJobs": spb.ListCloneJobsRequest(parent=VM1),
        "CancelCloneJob": spb.CancelCloneJobRequest(name=job_name("missing")),
    }
    started = time.monotonic()
    try:
        getattr(single.server.stub(), method)(requests[method], timeout=0.5)
    except grpc.RpcError as error:
        assert error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert time.monotonic() - started < 5.0
