"""The happy path: a VM clone through its three steps, and a disks-only clone."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from clonejob_rpc import (
    ADAPTING,
    DISKS_ZONE,
    INSTANTIATING,
    MIB,
    PREPARING,
    PROJECT,
    VM1,
    ZONE,
    State,
    cancel,
    create,
    disks_body,
    get,
    read_until,
    running_step,
    sha256,
    step_running,
    vm_body,
    watch,
)

from clonejob_grpc import clone_job_pb2 as pb
from clonejob_grpc import clone_job_service_pb2 as spb
from server.targets.disk_image import data_bytes

if TYPE_CHECKING:
    from conftest import Server, ServerPool

VM_BIOS = "projects/p1/locations/us-central1/sources/s1/migratingVms/vm-bios"
DISK_SIZE = 4 * MIB
DISKS = 2


@dataclass
class Run:
    """A clone watched from its creation to its end."""

    server: Server
    snapshot: Path
    created: pb.CloneJob
    messages: list[spb.WatchCloneJobResponse]
    code: grpc.StatusCode

    @property
    def final(self) -> pb.CloneJob:
        return self.messages[-1].clone_job

    @property
    def jobs(self) -> list[pb.CloneJob]:
        return [m.clone_job for m in self.messages]


@pytest.fixture(scope="module")
def clone_server(module_servers: ServerPool, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """One job slot, so that a held `blocker` job keeps a new job PENDING for as long as
    the test wants: the watch then sees the job from its first revision."""
    from conftest import write_sample_vm

    data_dir = tmp_path_factory.mktemp("clone") / "data"
    data_dir.mkdir()
    write_sample_vm(data_dir, VM1, disks=DISKS, disk_size="4MiB")
    write_sample_vm(data_dir, VM_BIOS, disks=1, disk_size="4MiB", bios=True)
    return module_servers.start(
        data_dir,
        max_concurrent_jobs=1,
        fault_plan=[{"match": "cloneJobs/blocker", "step": PREPARING, "action": "hold"}],
    )


def run_from_pending(server: Server, parent: str, job_id: str, body: pb.CloneJob) -> Run:
    stub = server.stub()
    blocker = create(stub, f"blocker-{job_id}", disks_body(), parent=parent)
    blocker_watch = watch(stub, blocker.name)
    read_until(blocker_watch, step_running(PREPARING))
    created = create(stub, job_id, body, parent=parent)
    stream = watch(stub, created.name)
    first = next(stream)
    assert first.clone_job.state == State.PENDING
    assert cancel(stub, blocker.name).state == State.CANCELLING
    blocker_watch.cancel()
    messages = [first, *stream]
    snapshot = server.data_dir / "snapshots" / parent / "cycles" / "1"
    return Run(server, snapshot, created, messages, stream.code())


@pytest.fixture(scope="module")
def vm_run(clone_server: Server) -> Run:
    return run_from_pending(clone_server, VM1, "clone-efi", vm_body("efi-vm"))


@pytest.fixture(scope="module")
def bios_run(clone_server: Server) -> Run:
    return run_from_pending(clone_server, VM_BIOS, "clone-bios", vm_body("bios-vm"))


@pytest.fixture(scope="module")
def disks_run(clone_server: Server) -> Run:
    return run_from_pending(clone_server, VM1, "clone-disks", disks_body())


def phases(run: Run) -> list[tuple[str, str | None]]:
    """(state, running step) at each message, consecutive repeats merged."""
    out: list[tuple[str, str | None]] = []
    for job in run.jobs:
        phase = (State.Name(job.state), running_step(job))
        if not out or out[-1] != phase:
            out.append(phase)
    return out


def test_vm_clone_goes_through_the_states_and_steps_in_order(vm_run: Run) -> None:
    seen = phases(vm_run)
    # Between two steps the job may show its state with no step running; skip those.
    with_steps = [p for p in seen if p[1] is not None or p[0] in ("PENDING", "SUCCEEDED")]
    assert with_steps == [
        ("PENDING", None),
        ("ACTIVE", PREPARING),
        ("ADAPTING_OS", ADAPTING),
        ("ACTIVE", INSTANTIATING),
        ("SUCCEEDED", None),
    ], seen


def test_vm_clone_states_in_order(vm_run: Run) -> None:
    states = []
    for job in vm_run.jobs:
        if not states or states[-1] != job.state:
            states.append(job.state)
    assert states == [
        State.PENDING,
        State.ACTIVE,
        State.ADAPTING_OS,
        State.ACTIVE,
        State.SUCCEEDED,
    ]


def test_vm_clone_watch_ends_ok_after_succeeded(vm_run: Run) -> None:
    assert vm_run.code == grpc.StatusCode.OK
    assert vm_run.final.state == State.SUCCEEDED
    assert [m.clone_job.state for m in vm_run.messages].count(State.SUCCEEDED) == 1
    assert not any(m.heartbeat for m in vm_run.messages)


def test_vm_clone_revisions_strictly_increase(vm_run: Run) -> None:
    revs = [m.revision for m in vm_run.messages]
    assert revs[0] >= 1
    assert all(b > a for a, b in itertools.pairwise(revs)), revs


def test_vm_clone_steps_have_start_and_end_times(vm_run: Run) -> None:
    steps = vm_run.final.steps
    assert [s.WhichOneof("step") for s in steps] == [PREPARING, ADAPTING, INSTANTIATING]
    previous_end = vm_run.final.create_time.ToDatetime()
    for step in steps:
        assert step.HasField("start_time") and step.HasField("end_time")
        start, end = step.start_time.ToDatetime(), step.end_time.ToDatetime()
        assert previous_end <= start <= end
        previous_end = end
    assert previous_end <= vm_run.final.end_time.ToDatetime()


def test_vm_clone_running_step_has_no_end_time(vm_run: Run) -> None:
    for job in vm_run.jobs:
        for step in job.steps[:-1]:
            assert step.HasField("end_time")
        kind = running_step(job)
        if kind is not None:
            assert job.steps[-1].HasField("start_time")


def test_vm_clone_state_time_moves_with_each_state(vm_run: Run) -> None:
    jobs = vm_run.jobs
    for before, after in itertools.pairwise(jobs):
        if before.state != after.state:
            assert after.state_time.ToDatetime() > before.state_time.ToDatetime()
        else:
            assert after.state_time == before.state_time
    assert jobs[0].state_time == jobs[0].create_time


def test_vm_clone_end_time_set_only_at_terminal_state(vm_run: Run) -> None:
    for job in vm_run.jobs[:-1]:
        assert not job.HasField("end_time"), State.Name(job.state)
    final = vm_run.final
    assert final.HasField("end_time")
    assert final.end_time == final.state_time
    assert final.end_time.ToDatetime() >= final.create_time.ToDatetime()


def test_vm_clone_create_returns_pending_job(vm_run: Run) -> None:
    created = vm_run.created
    assert created.state == State.PENDING
    assert created.name == f"{VM1}/cloneJobs/clone-efi"
    assert created.HasField("create_time")
    assert not created.steps
    assert vm_run.final.create_time == created.create_time


def test_vm_clone_progress_reports_bytes_while_preparing_disks(vm_run: Run) -> None:
    # Bytes of data: what the snapshot disks hold, holes left out.
    total = sum(data_bytes(vm_run.snapshot / f"disk-{k}.img") for k in range(DISKS))
    preparing = [m for m in vm_run.messages if running_step(m.clone_job) == PREPARING]
    with_bytes = [m.progress for m in preparing if m.progress.bytes_total]
    assert with_bytes, "no progress with bytes while preparing disks"
    assert all(p.bytes_total == total for p in with_bytes)
    done = [p.bytes_done for p in with_bytes]
    assert done == sorted(done) and 0 <= done[0] and done[-1] <= total
    assert all(0 <= p.percent <= 100 for p in with_bytes)
    # No other step reports bytes, and no progress while no step runs.
    for m in vm_run.messages:
        if running_step(m.clone_job) is None:
            assert not m.HasField("progress"), State.Name(m.clone_job.state)
        elif running_step(m.clone_job) != PREPARING:
            assert m.progress.bytes_total == 0


def test_vm_clone_disks_are_byte_identical_to_the_snapshot(vm_run: Run) -> None:
    data_dir = vm_run.server.data_dir
    instance = json.loads(
        (data_dir / f"targets/projects/{PROJECT}/zones/{ZONE}/instances/efi-vm.json").read_text()
    )
    disks = sorted(instance["disks"], key=lambda d: d["source_disk_number"])
    assert [d["source_disk_number"] for d in disks] == list(range(DISKS))
    for disk in disks:
        copy = data_dir / disk["path"]
        assert copy.is_relative_to(data_dir / "targets" / "projects" / PROJECT / "zones" / ZONE)
        assert copy.stat().st_size == DISK_SIZE
        original = vm_run.snapshot / f"disk-{disk['source_disk_number']}.img"
        assert sha256(copy) == sha256(original)


def test_vm_clone_writes_instance_definition(vm_run: Run) -> None:
    instances = vm_run.server.targets / f"projects/{PROJECT}/zones/{ZONE}/instances"
    assert sorted(p.name for p in instances.iterdir() if p.name.startswith("efi-vm")) == [
        "efi-vm.json",
        "efi-vm.xml",
    ]
    instance = json.loads((instances / "efi-vm.json").read_text())
    assert instance["name"] == "efi-vm"
    assert instance["clone_job"] == vm_run.created.name
    assert len(instance["disks"]) == DISKS
    assert "efi-vm" in (instances / "efi-vm.xml").read_text()


def test_vm_clone_reports_efi_boot_and_applied_license(vm_run: Run) -> None:
    details = vm_run.final.compute_engine_target_details
    assert details.boot_option == pb.COMPUTE_ENGINE_BOOT_OPTION_EFI
    assert details.HasField("applied_license")
    assert details.applied_license.type != pb.AppliedLicense.TYPE_UNSPECIFIED
    assert details.vm_name == "efi-vm"
    assert details.project == PROJECT


def test_vm_clone_of_bios_vm_reports_bios_boot(bios_run: Run) -> None:
    assert bios_run.final.state == State.SUCCEEDED
    details = bios_run.final.compute_engine_target_details
    assert details.boot_option == pb.COMPUTE_ENGINE_BOOT_OPTION_BIOS
    assert details.HasField("applied_license")


def test_vm_clone_get_returns_the_final_job(vm_run: Run) -> None:
    assert get(vm_run.server.stub(), vm_run.created.name) == vm_run.final


def test_disks_clone_runs_only_preparing_vm_disks(disks_run: Run) -> None:
    assert disks_run.code == grpc.StatusCode.OK
    final = disks_run.final
    assert final.state == State.SUCCEEDED
    assert [s.WhichOneof("step") for s in final.steps] == [PREPARING]
    states = []
    for job in disks_run.jobs:
        if not states or states[-1] != job.state:
            states.append(job.state)
    assert states == [State.PENDING, State.ACTIVE, State.SUCCEEDED]
    assert all(s.HasField("end_time") for s in final.steps)


def test_disks_clone_lists_a_persistent_disk_per_source_disk(disks_run: Run) -> None:
    disks = disks_run.final.compute_engine_disks_target_details.disks
    assert sorted(d.source_disk_number for d in disks) == list(range(DISKS))
    data_dir = disks_run.server.data_dir
    for disk in disks:
        assert disk.disk_uri.startswith(f"projects/{PROJECT}/zones/{DISKS_ZONE}/disks/")
        copy = data_dir / "targets" / f"{disk.disk_uri}.img"
        assert sha256(copy) == sha256(disks_run.snapshot / f"disk-{disk.source_disk_number}.img")


def test_disks_clone_writes_no_instance(disks_run: Run) -> None:
    zone = disks_run.server.targets / f"projects/{PROJECT}/zones/{DISKS_ZONE}"
    assert not (zone / "instances").exists() or not any((zone / "instances").iterdir())
    assert not disks_run.final.HasField("compute_engine_target_details")
    made = sorted(p.name for p in (zone / "disks").iterdir())
    assert len(made) == DISKS
    assert all(name.startswith("clone-disks-disk") for name in made), made
