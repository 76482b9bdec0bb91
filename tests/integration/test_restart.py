"""Crash (SIGKILL) and graceful stop (SIGTERM), then a restart on the same data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from clonejob_rpc import (
    ADAPTING,
    INSTANTIATING,
    PREPARING,
    State,
    cancel,
    changes,
    create,
    describe,
    disks_body,
    error_info,
    files_of_vm,
    get,
    read_to_end,
    read_until,
    revisions,
    run_to_end,
    step_running,
    stream_error,
    vm_body,
    watch,
)

from clonejob_grpc import clone_job_pb2 as pb
from clonejob_grpc import clone_job_service_pb2_grpc as spb_grpc

if TYPE_CHECKING:
    from conftest import Server, ServerPool

HOLDS = [
    {"match": "cloneJobs/hold-prep", "step": PREPARING, "action": "hold"},
    {"match": "cloneJobs/hold-adapt", "step": ADAPTING, "action": "hold"},
    {"match": "cloneJobs/hold-inst", "step": INSTANTIATING, "action": "hold"},
    {"match": "cloneJobs/hold-cancel", "step": ADAPTING, "action": "hold"},
]
HELD = {"hold-prep": PREPARING, "hold-adapt": ADAPTING, "hold-inst": INSTANTIATING}


@dataclass
class AfterKill:
    server: Server
    names: dict[str, str]  # job id → name
    killed_at: datetime
    found: dict[str, pb.CloneJob]  # Get right after the restart
    final: dict[str, pb.CloneJob]  # watched to the end


@pytest.fixture(scope="module")
def after_kill(module_servers: ServerPool, tmp_path_factory: pytest.TempPathFactory) -> AfterKill:
    from conftest import write_sample_vm

    data_dir = tmp_path_factory.mktemp("kill") / "data"
    data_dir.mkdir()
    write_sample_vm(data_dir)
    server = module_servers.start(data_dir, fault_plan=HOLDS, max_concurrent_jobs=4)
    stub = server.stub()
    names: dict[str, str] = {}

    done = create(stub, "done-before", disks_body())
    names["done-before"] = done.name
    assert run_to_end(stub, done.name).state == State.SUCCEEDED
    streams = []
    for job_id, step in [*HELD.items(), ("hold-cancel", ADAPTING)]:
        names[job_id] = create(stub, job_id, vm_body(f"{job_id}-vm")).name
        stream = watch(stub, names[job_id])
        read_until(stream, step_running(step))
        streams.append(stream)
    # Every slot is taken: this one waits.
    names["queued"] = create(stub, "queued", vm_body("queued-vm")).name
    queued = watch(stub, names["queued"])
    assert next(queued).clone_job.state == State.PENDING
    streams.append(queued)
    assert cancel(stub, names["hold-cancel"]).state == State.CANCELLING

    server.kill()  # at once: the cancelled job may still be CANCELLING in the store
    killed_at = datetime.now(UTC)
    for stream in streams:
        stream.cancel()
    server.restart(fault_plan=None)
    stub = server.stub()
    found = {job_id: get(stub, name) for job_id, name in names.items()}
    final = {job_id: run_to_end(stub, name) for job_id, name in names.items()}
    return AfterKill(server, names, killed_at, found, final)


def test_restart_after_kill_keeps_every_job(after_kill: AfterKill) -> None:
    assert {job_id: job.name for job_id, job in after_kill.found.items()} == after_kill.names
    assert after_kill.found["done-before"].state == State.SUCCEEDED


def test_restart_after_kill_finishes_every_job(after_kill: AfterKill) -> None:
    states = {job_id: State.Name(job.state) for job_id, job in after_kill.final.items()}
    assert states == {
        "done-before": "SUCCEEDED",
        "hold-prep": "SUCCEEDED",
        "hold-adapt": "SUCCEEDED",
        "hold-inst": "SUCCEEDED",
        "hold-cancel": "CANCELLED",
        "queued": "SUCCEEDED",
    }


@pytest.mark.parametrize("job_id", sorted(HELD))
def test_restart_after_kill_reruns_the_interrupted_step(after_kill: AfterKill, job_id: str) -> None:
    job = after_kill.final[job_id]
    kinds = [s.WhichOneof("step") for s in job.steps]
    assert kinds == [PREPARING, ADAPTING, INSTANTIATING]  # the step is not added twice
    interrupted = job.steps[kinds.index(HELD[job_id])]
    killed_at = after_kill.killed_at.replace(tzinfo=None)
    assert interrupted.start_time.ToDatetime() < killed_at < interrupted.end_time.ToDatetime()
    assert all(s.HasField("end_time") for s in job.steps)


def test_restart_after_kill_ends_cancelling_job_cancelled_without_products(
    after_kill: AfterKill,
) -> None:
    assert after_kill.found["hold-cancel"].state in (State.CANCELLING, State.CANCELLED)
    assert after_kill.final["hold-cancel"].state == State.CANCELLED
    assert files_of_vm(after_kill.server.targets, "hold-cancel-vm") == []


def test_restart_after_kill_leaves_no_orphan_files(after_kill: AfterKill) -> None:
    server = after_kill.server
    owned: set[Path] = set()
    for job in after_kill.final.values():
        if job.state != State.SUCCEEDED:
            continue
        if job.HasField("compute_engine_target_details"):
            d = job.compute_engine_target_details
            instance = server.targets / f"projects/{d.project}/zones/{d.zone}/instances"
            owned |= {instance / f"{d.vm_name}.json", instance / f"{d.vm_name}.xml"}
            definition = json.loads((instance / f"{d.vm_name}.json").read_text())
            owned |= {server.data_dir / disk["path"] for disk in definition["disks"]}
        else:
            owned |= {
                server.targets / f"{disk.disk_uri}.img"
                for disk in job.compute_engine_disks_target_details.disks
            }
    present = {p for p in server.targets.rglob("*") if not p.is_dir()}
    assert present - owned == set()
    assert owned - present == set()


def test_restart_after_graceful_stop_resumes_watch_after_last_revision(
    servers: ServerPool, data_dir: Path, sample_vm: object
) -> None:
    sample_vm(data_dir)  # type: ignore[operator]
    server = servers.start(data_dir, fault_plan=HOLDS)
    job = create(server.stub(), "hold-adapt", vm_body("graceful-vm"))
    with server.channel() as channel:  # its own channel: stop() closes the server's
        stream = watch(spb_grpc.CloneJobServiceStub(channel), job.name)
        last = read_until(stream, step_running(ADAPTING))[-1].revision

        assert server.stop() == 0

        error, after = stream_error(stream)
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    assert error_info(error).reason == "SERVER_SHUTTING_DOWN"
    assert not changes(after), describe(after)

    server.restart()
    stub = server.stub()
    assert get(stub, job.name).state == State.ADAPTING_OS
    resumed = watch(stub, job.name, after_revision=last)
    cancel(stub, job.name)
    later = read_to_end(resumed)

    assert changes(later)[-1].clone_job.state == State.CANCELLED
    assert all(r > last for r in revisions(later))
    replay = read_to_end(watch(stub, job.name, after_revision=1))
    assert revisions(later) == [r for r in revisions(replay) if r > last]
