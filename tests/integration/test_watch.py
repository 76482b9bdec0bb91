"""Watch: resume by revision, its errors, finished jobs and heartbeats."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from clonejob_rpc import (
    ADAPTING,
    VM1,
    State,
    bad_fields,
    cancel,
    changes,
    create,
    error_info,
    get,
    job_name,
    read_to_end,
    read_until,
    revisions,
    step_running,
    stream_error,
    vm_body,
    watch,
)

from clonejob_grpc import clone_job_service_pb2 as spb

if TYPE_CHECKING:
    from conftest import Server, ServerPool


@dataclass
class Watched:
    server: Server
    name: str
    messages: list[spb.WatchCloneJobResponse]


@pytest.fixture(scope="module")
def watched(module_servers: ServerPool, tmp_path_factory: pytest.TempPathFactory) -> Watched:
    """A VM clone watched live from its creation to its end."""
    from conftest import write_sample_vm

    data_dir = tmp_path_factory.mktemp("watch") / "data"
    data_dir.mkdir()
    write_sample_vm(data_dir)
    server = module_servers.start(data_dir)
    stub = server.stub()
    job = create(stub, "watched", vm_body("watched-vm"))
    messages = read_to_end(watch(stub, job.name))
    assert messages[-1].clone_job.state == State.SUCCEEDED
    assert len(changes(messages)) >= 4
    return Watched(server, job.name, messages)


def test_watch_after_middle_revision_delivers_exactly_the_later_ones(watched: Watched) -> None:
    revs = revisions(watched.messages)
    for middle in revs[1:-1]:
        later = read_to_end(watch(watched.server.stub(), watched.name, after_revision=middle))
        assert revisions(later) == [r for r in revs if r > middle]
        assert later == [m for m in watched.messages if m.revision > middle]


def test_watch_after_current_revision_of_finished_job_sends_nothing(watched: Watched) -> None:
    last = watched.messages[-1].revision
    assert read_to_end(watch(watched.server.stub(), watched.name, after_revision=last)) == []


def test_watch_after_future_revision_is_out_of_range(watched: Watched) -> None:
    last = watched.messages[-1].revision
    stream = watch(watched.server.stub(), watched.name, after_revision=last + 1)
    error, seen = stream_error(stream)
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
    assert error_info(error).reason
    assert seen == []


def test_watch_of_finished_job_from_zero_sends_it_once(watched: Watched) -> None:
    stub = watched.server.stub()
    only = read_to_end(watch(stub, watched.name))
    assert len(only) == 1
    assert only[0].revision == watched.messages[-1].revision
    assert only[0].clone_job == get(stub, watched.name) == watched.messages[-1].clone_job


def test_watch_of_unknown_job_is_not_found_before_any_message(watched: Watched) -> None:
    error, seen = stream_error(watch(watched.server.stub(), job_name("nobody")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(error).reason == "CLONE_JOB_NOT_FOUND"
    assert seen == []


def test_watch_negative_after_revision_is_invalid_argument(watched: Watched) -> None:
    error, seen = stream_error(watch(watched.server.stub(), watched.name, after_revision=-1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == ["after_revision"]
    assert seen == []


def test_watch_malformed_name_is_invalid_argument(watched: Watched) -> None:
    error, seen = stream_error(watch(watched.server.stub(), f"{VM1}/cloneJobs/Bad_Id"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == ["name"]
    assert seen == []


def test_watch_heartbeat_carries_current_revision(
    servers: ServerPool, data_dir: Path, sample_vm: Any
) -> None:
    sample_vm(data_dir)
    server = servers.start(
        data_dir,
        heartbeat_interval=0.2,
        fault_plan=[{"match": "cloneJobs/hold-adapt", "step": ADAPTING, "action": "hold"}],
    )
    stub = server.stub()
    job = create(stub, "hold-adapt", vm_body("beat-vm"))
    stream = watch(stub, job.name)
    seen = read_until(stream, step_running(ADAPTING))
    current = seen[-1].revision

    beats = read_until(stream, lambda m: m.heartbeat)

    # Nothing changes while the step is held: the heartbeat comes next.
    assert len(beats) == 1
    beat = beats[0]
    assert beat.revision == current
    assert not beat.HasField("clone_job")
    assert all(m.revision == current for m in read_until(stream, lambda m: m.heartbeat))
    cancel(stub, job.name)
    assert changes(read_to_end(stream))[-1].clone_job.state == State.CANCELLED
