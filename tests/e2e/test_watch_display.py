"""`clonejob watch` in a real terminal (a pseudo-terminal), against a real server:
what a person sees while a job runs, fails, is cancelled or loses its server, and
the summary it ends with; in colour, and plain with NO_COLOR."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    CLONEJOB,
    ServerPool,
    Terminal,
    base_env,
    colour_codes,
    plain,
    run,
    wait_until,
    write_sample_vm,
)

from client import BlockingCloneJobClient
from client.launcher import ServerProcess
from clonejob_grpc.clone_job_pb2 import CloneJob

VM = "projects/p1/locations/us-central1/sources/s1/migratingVms/tty-vm"
BIG_VM = "projects/p1/locations/us-central1/sources/s1/migratingVms/tty-big"
VM_ARGS = ("--zone", "us-central1-a", "--machine-type", "n2-standard-2")
FAULT_MESSAGE = "the OS image has no kernel"
FAULTS = [
    {"match": "cloneJobs/fail-", "step": "adapting_os", "action": "fail", "message": FAULT_MESSAGE},
    {"match": "cloneJobs/hold-os-", "step": "adapting_os", "action": "hold"},
    # Held after the first of the four disks is copied: a quarter of the data.
    {"match": "cloneJobs/hold-disks-", "step": "preparing_vm_disks", "action": "hold"},
    # The copy starts once the watch is up (any job with "slow-" in its id).
    {"match": "slow-", "step": "preparing_vm_disks", "action": "delay", "seconds": 2},
]
RED_CROSS = re.compile(rb"\x1b\[[0-9;]*31m\xe2\x9c\x97")  # ✗ in red
YELLOW_SQUARE = re.compile(rb"\x1b\[[0-9;]*33m\xe2\x96\xa0")  # ■ in yellow
DIM_PENDING = re.compile(rb"\x1b\[2mAdapting OS")


@pytest.fixture(scope="module")
def server_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    pool = ServerPool(tmp_path_factory.mktemp("run"))
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("data")
    write_sample_vm(data, VM, disks=4, disk_size="16MiB")  # 4 MiB of data each
    write_sample_vm(data, BIG_VM, disks=4, disk_size="256MiB")  # 64 MiB of data each
    return data


@pytest.fixture(scope="module")
def server(server_pool: Any, data_dir: Path) -> ServerProcess:
    server: ServerProcess = server_pool.start(data_dir, fault_plan=FAULTS)
    return server


def terminal_env(**extra: str) -> dict[str, str]:
    """A colour terminal's environment (base_env is a dumb, colourless one)."""
    env = base_env(TERM="xterm-256color", **extra)
    if "NO_COLOR" not in extra:
        del env["NO_COLOR"]
    return env


def create(server: ServerProcess, job_id: str, *, parent: str = VM) -> str:
    result = run(
        CLONEJOB, "--server", server.address, "create", parent, job_id,
        "--vm-name", f"{job_id}-vm", *VM_ARGS,
    )  # fmt: skip
    assert result.returncode == 0, result
    return f"{parent}/cloneJobs/{job_id}"


def watch(server: ServerProcess, name: str, **env: str) -> Terminal:
    return Terminal([*CLONEJOB, "--server", server.address, "watch", name], env=terminal_env(**env))


def cancel(server: ServerProcess, name: str) -> None:
    result = run(CLONEJOB, "--server", server.address, "cancel", name)
    assert result.returncode == 0, result


@contextmanager
def throttled(
    server: ServerProcess, *, running: float = 0.04, stopped: float = 0.16
) -> Iterator[None]:
    """The server runs `running` seconds of every `running + stopped` (SIGSTOP, SIGCONT):
    its copy then lasts long enough to measure a rate, however fast the disk."""
    done = threading.Event()

    def cycle() -> None:
        while not done.is_set():
            server.pause()
            done.wait(stopped)
            server.resume()
            done.wait(running)

    thread = threading.Thread(target=cycle, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        server.resume()


def test_watch_marks_the_failed_step_with_a_red_cross_and_the_error(server: ServerProcess) -> None:
    name = create(server, "fail-slow-tty")

    with watch(server, name) as term:
        code = term.finish()

    screen = term.frames()[-1]  # what stays: the summary, then the error line
    assert code == 1, term
    assert re.search(r"^clone job fail-slow-tty  FAILED$", screen, re.M), term
    assert re.search(r"^  ✓ Preparing VM disks\s+\d+\.\ds  16\.0 MiB data", screen, re.M), term
    assert re.search(r"^  ✗ Adapting OS\s+\d+\.\ds  failed$", screen, re.M), term
    assert re.search(r"^  - Instantiating migrated VM\s+not run$", screen, re.M), term
    assert f"error     ABORTED INJECTED_FAULT: {FAULT_MESSAGE}" in screen, term
    assert f"error: the clone job failed: ABORTED INJECTED_FAULT: {FAULT_MESSAGE}" in screen
    shown = plain(term.raw)
    assert "✓ Adapting OS" not in shown, term  # in no frame at all
    assert "100%" not in shown, term
    assert RED_CROSS.search(term.raw), term.raw[-2000:]


def test_watch_lists_every_step_then_shows_where_a_cancelled_copy_stopped(
    server: ServerProcess,
) -> None:
    name = create(server, "hold-disks-tty")

    with watch(server, name) as term:
        frame, _ = term.wait_for(r"^      disk 0 .* copied ")
        assert re.search(r"^clone job hold-disks-tty  ACTIVE  step 1 of 3$", frame, re.M), frame
        copy = r"^  \S Preparing VM disks\s+\d+\.\ds  ━{5}─{15}  25%  4\.0 MiB / 16\.0 MiB data"
        assert re.search(copy + r" · 64\.0 MiB virtual$", frame, re.M), frame
        assert re.search(r"^      disk 1 .* 0%  0 B / 4\.0 MiB · 16\.0 MiB virtual$", frame, re.M)
        assert re.search(r"^  · Adapting OS\s+pending$", frame, re.M), frame
        assert re.search(r"^  · Instantiating migrated VM\s+pending$", frame, re.M), frame
        assert DIM_PENDING.search(term.raw), term.raw[-2000:]

        cancel(server, name)
        code = term.finish()

    screen = term.frames()[-1]
    assert code == 2, term
    assert re.search(r"^clone job hold-disks-tty  CANCELLED$", screen, re.M), term
    assert re.search(
        r"^  ■ Preparing VM disks\s+\d+\.\ds  cancelled at 25% \(4\.0 MiB / 16\.0 MiB data\)$",
        screen,
        re.M,
    ), term
    assert re.search(r"^  - Adapting OS\s+not run$", screen, re.M), term
    shown = plain(term.raw)
    assert "✓ Preparing VM disks" not in shown, term
    assert "100%" not in shown, term
    assert YELLOW_SQUARE.search(term.raw), term.raw[-2000:]


def test_watch_shows_the_rate_and_the_time_left_of_the_copy(server: ServerProcess) -> None:
    name = create(server, "slow-rate-tty", parent=BIG_VM)

    with watch(server, name) as term:
        term.wait_for(r"Preparing VM disks.* 0%  0 B / 256\.0 MiB data")
        with throttled(server):
            frame, _ = term.wait_for(r"MiB data · 1\.0 GiB virtual · \d+\.\d [KMG]iB/s · \S+ left")
        code = term.finish()

    assert code == 0, term
    rate = re.search(r"(\d+\.\d) ([KMG]iB)/s · (\S+) left", frame)
    assert rate is not None and float(rate.group(1)) > 0, frame
    assert re.fullmatch(r"(\d+m)?\d+(\.\d)?s", rate.group(3)), frame


def test_watch_says_reconnecting_while_the_server_is_down_then_resumes(
    server_pool: Any, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    write_sample_vm(data, VM, disks=1, disk_size="1MiB")
    own: ServerProcess = server_pool.start(data, fault_plan=FAULTS, heartbeat_interval=0.5)
    name = create(own, "hold-os-tty")
    with BlockingCloneJobClient(own.address, timeout=30) as client:

        def adapting() -> CloneJob | None:
            job = client.get(name)
            return job if job.state == CloneJob.ADAPTING_OS else None

        started = wait_until("the held job to reach ADAPTING_OS", adapting).steps[-1].start_time
    # The watch begins once the step has run for 2 s (by the clock the server stamps with).
    time.sleep(max(0.0, started.seconds + started.nanos / 1e9 + 2.0 - time.time()))

    with watch(own, name) as term:
        frame, _ = term.wait_for(r"^  \S Adapting OS\s+\d+\.\ds$")
        # Elapsed counts from the step's start on the server, not from the watch's.
        elapsed = float(re.search(r"Adapting OS\s+(\d+\.\d)s", frame).group(1))  # type: ignore[union-attr]
        assert elapsed >= 2.0, frame

        port = own.port
        own.stop()
        down, offset = term.wait_for(r"^reconnecting… \(UNAVAILABLE: .+\)$")
        assert re.search(r"^  ⋯ Adapting OS", down, re.M), down  # no spinner while down

        own.restart(listen=f"127.0.0.1:{port}")
        back, _ = term.wait_for(
            r"^  \S Adapting OS\s+\d+\.\ds$", unless="reconnecting", since=offset
        )
        assert re.search(r"^clone job hold-os-tty  ADAPTING_OS  step 2 of 3$", back, re.M), back

        cancel(own, name)
        code = term.finish()

    assert code == 2, term
    assert re.search(r"^  ■ Adapting OS\s+\d+\.\ds  cancelled$", term.frames()[-1], re.M), term


@pytest.mark.parametrize("no_color", [False, True], ids=["colour", "NO_COLOR"])
def test_watch_ends_with_a_summary_coloured_unless_no_color(
    server: ServerProcess, no_color: bool
) -> None:
    job_id = f"summary-{'plain' if no_color else 'colour'}"
    name = create(server, job_id)

    with watch(server, name, **({"NO_COLOR": "1"} if no_color else {})) as term:
        code = term.finish()

    screen = term.frames()[-1]
    assert code == 0, term
    assert re.search(rf"^clone job {job_id}  SUCCEEDED$", screen, re.M), term
    steps = re.findall(r"^  ✓ (\S.*?)\s+(\d+\.\ds)", screen, re.M)
    assert [title for title, _ in steps] == [
        "Preparing VM disks",
        "Adapting OS",
        "Instantiating migrated VM",
    ], term
    assert re.search(r"^  in all\s+\d+\.\ds$", screen, re.M), term
    vm = f"{job_id}-vm"
    assert (
        f"target    VM {vm} in project p1, zone us-central1-a, machine type n2-standard-2" in screen
    ), term
    instance = f"projects/p1/zones/us-central1-a/instances/{vm}"
    assert f"instance  {instance}\n" in screen, term
    assert "cycle     replication cycle 1\n" in screen, term
    assert f"files     {{data dir}}/targets/{instance}.json (and .xml)" in screen, term
    assert (server.targets / f"{instance}.json").is_file()  # where the summary says
    if no_color:
        assert colour_codes(term.raw) == [], term.raw[-2000:]
    else:
        assert re.search(rb"\x1b\[1;32mSUCCEEDED", term.raw), term.raw[-2000:]
        assert re.search(rb"\x1b\[[0-9;]*32m\xe2\x9c\x93", term.raw), term.raw[-2000:]
