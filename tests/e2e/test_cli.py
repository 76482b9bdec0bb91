"""The `clonejob` CLI and the `clonejob-server` command, end to end, as subprocesses."""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    CLONEJOB,
    CLONEJOB_SERVER,
    REPO,
    Result,
    ServerPool,
    base_env,
    closed_port,
    run,
    wait_until,
    write_sample_vm,
)

from client import BlockingCloneJobClient
from clonejob_grpc.clone_job_pb2 import CloneJob
from server.targets.disk_image import detect_boot

VM1 = "projects/p1/locations/us-central1/sources/s1/migratingVms/vm1"
VM_LIST = "projects/p1/locations/us-central1/sources/s1/migratingVms/vm-list"
VM_ARGS = ("--zone", "us-central1-a", "--machine-type", "n2-standard-2")
STEPS = ("preparing_vm_disks", "adapting_os", "instantiating_migrated_vm")
FIELD_VM_NAME = "clone_job.compute_engine_target_details.vm_name"
FAULTS = [
    {"match": "cloneJobs/hold", "step": "adapting_os", "action": "hold"},
    {
        "match": "cloneJobs/fail",
        "step": "instantiating_migrated_vm",
        "action": "fail",
        "message": "boom",
    },
]


def name_of(job_id: str, parent: str = VM1) -> str:
    return f"{parent}/cloneJobs/{job_id}"


def assert_no_traceback(result: Result) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result


# The fixture lives here, not in a conftest.py: a second module named `conftest`
# would shadow tests/integration/conftest.py for the integration tests' imports.
@pytest.fixture(scope="module")
def server_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    pool = ServerPool(tmp_path_factory.mktemp("run"))
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def server(server_pool: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    data_dir = tmp_path_factory.mktemp("data")
    write_sample_vm(data_dir, VM1)
    write_sample_vm(data_dir, VM_LIST, disks=1, disk_size="1MiB")
    return server_pool.start(data_dir, fault_plan=FAULTS)


@pytest.fixture
def cli(server: Any) -> Any:
    """`cli(*args)`: run `clonejob --server ADDRESS *args`."""

    def call(*args: str, **kwargs: Any) -> Result:
        return run(CLONEJOB, "--server", server.address, *args, **kwargs)

    return call


@pytest.fixture
def client(server: Any) -> Iterator[BlockingCloneJobClient]:
    """An in-process client, to set up and wait for jobs the test does not look at."""
    with BlockingCloneJobClient(server.address, timeout=30) as blocking:
        yield blocking


def wait_for_end(client: BlockingCloneJobClient, name: str) -> CloneJob:
    last = None
    for change in client.watch(name):
        last = change.clone_job
    assert last is not None
    return last


def create_vm_job(cli: Any, job_id: str, *extra: str, parent: str = VM1) -> Result:
    result = cli("create", parent, job_id, "--vm-name", f"{job_id}-vm", *VM_ARGS, *extra)
    assert result.returncode == 0, result
    return result


# --- demo --------------------------------------------------------------------


def _demo_data_dir(result: Result) -> Path:
    found = re.search(r"data in (\S+)", result.stdout)
    assert found, result
    return Path(found.group(1))


def test_demo_shows_every_step_and_removes_its_data_dir(tmp_path: Path) -> None:
    result = run(CLONEJOB, "demo", env=base_env(TMPDIR=str(tmp_path)), timeout=90)

    assert result.returncode == 0, result
    for step in STEPS:
        assert step in result.stdout, result
    assert re.search(r"\b\d{1,3}%", result.stdout), result
    assert "SUCCEEDED" in result.stdout, result
    data_dir = _demo_data_dir(result)
    assert data_dir.parent == tmp_path, result
    assert not data_dir.exists(), result
    assert_no_traceback(result)


def test_demo_keep_keeps_its_data_dir(tmp_path: Path) -> None:
    result = run(CLONEJOB, "demo", "--keep", env=base_env(TMPDIR=str(tmp_path)), timeout=90)

    assert result.returncode == 0, result
    assert "SUCCEEDED" in result.stdout, result
    data_dir = _demo_data_dir(result)
    assert f"kept {data_dir}" in result.stdout, result
    assert (data_dir / "clonejob.db").is_file(), result
    instances = list((data_dir / "targets").rglob("instances/demo-clone-vm.json"))
    assert len(instances) == 1, sorted((data_dir / "targets").rglob("*"))


# --- create, get, list -------------------------------------------------------


def test_create_prints_the_job(cli: Any, client: BlockingCloneJobClient) -> None:
    result = create_vm_job(cli, "create-text", "--label", "team=qa")

    assert f"name:     {name_of('create-text')}" in result.stdout, result
    assert re.search(r"^state:\s+(PENDING|ACTIVE)\b", result.stdout, re.M), result
    assert "target:   Compute Engine VM" in result.stdout, result
    for line in (
        "vm_name: create-text-vm",
        "project: p1",
        "zone: us-central1-a",
        "machine_type: n2-standard-2",
        "labels: team=qa",
    ):
        assert line in result.stdout, result
    assert result.stderr == "", result
    assert wait_for_end(client, name_of("create-text")).state == CloneJob.SUCCEEDED


def test_create_json_prints_the_job_as_json(cli: Any, client: BlockingCloneJobClient) -> None:
    result = cli(
        "--json", "create", VM1, "create-json", "--vm-name", "create-json-vm", *VM_ARGS,
        "--label", "team=qa",
    )  # fmt: skip

    assert result.returncode == 0, result
    job = json.loads(result.stdout)
    assert job["name"] == name_of("create-json")
    assert job["state"] in ("PENDING", "ACTIVE")
    details = job["computeEngineTargetDetails"]
    assert details["vmName"] == "create-json-vm"
    assert details["labels"] == {"team": "qa"}
    assert wait_for_end(client, name_of("create-json")).state == CloneJob.SUCCEEDED


def test_create_disks_only_clones_the_disks_in_one_step(cli: Any) -> None:
    created = cli("create", VM1, "disks-only", "--disks-only")
    assert created.returncode == 0, created
    assert "target:   Compute Engine disks only" in created.stdout, created

    watched = cli("watch", name_of("disks-only"))
    assert watched.returncode == 0, watched
    assert "SUCCEEDED" in watched.stdout, watched

    got = cli("get", name_of("disks-only"))
    assert got.returncode == 0, got
    assert re.search(r"^state:\s+SUCCEEDED\b", got.stdout, re.M), got
    step_lines = re.findall(r"^  (\w+)\s+(\d+\.\ds|\d+m\d\ds)$", got.stdout, re.M)
    assert [kind for kind, _ in step_lines] == ["preparing_vm_disks"], got
    assert re.findall(r"^  disk (\d+): \S+", got.stdout, re.M) == ["0", "1"], got


def test_get_after_the_end_shows_state_and_step_durations(
    cli: Any, client: BlockingCloneJobClient
) -> None:
    create_vm_job(cli, "get-done")
    assert wait_for_end(client, name_of("get-done")).state == CloneJob.SUCCEEDED

    got = cli("get", name_of("get-done"))

    assert got.returncode == 0, got
    assert re.search(r"^state:\s+SUCCEEDED \(since \d{4}-\d\d-\d\d ", got.stdout, re.M), got
    assert re.search(r"^ended:\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$", got.stdout, re.M), got
    step_lines = re.findall(r"^  (\w+)\s+(\d+\.\ds|\d+m\d\ds)$", got.stdout, re.M)
    assert [kind for kind, _ in step_lines] == list(STEPS), got

    as_json = cli("get", name_of("get-done"), "--json")  # global option after the command
    assert as_json.returncode == 0, as_json
    job = json.loads(as_json.stdout)
    assert job["state"] == "SUCCEEDED"
    assert all("startTime" in s and "endTime" in s for s in job["steps"]), job


def test_list_shows_a_row_per_job_and_filters(cli: Any, client: BlockingCloneJobClient) -> None:
    create_vm_job(cli, "list-ok", parent=VM_LIST)
    create_vm_job(cli, "fail-list", parent=VM_LIST)
    assert wait_for_end(client, name_of("list-ok", VM_LIST)).state == CloneJob.SUCCEEDED
    assert wait_for_end(client, name_of("fail-list", VM_LIST)).state == CloneJob.FAILED

    table = cli("list", VM_LIST)

    assert table.returncode == 0, table
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATE", "TARGET", "CREATED", "ENDED", "REASON"], table
    rows = {line.split()[0]: line.split()[1] for line in lines[1:] if line.strip()}
    assert rows == {"list-ok": "SUCCEEDED", "fail-list": "FAILED"}, table

    filtered = cli("list", VM_LIST, "--filter", "state = SUCCEEDED", "--json")

    assert filtered.returncode == 0, filtered
    jobs = json.loads(filtered.stdout).get("cloneJobs", [])
    assert [(j["name"], j["state"]) for j in jobs] == [
        (name_of("list-ok", VM_LIST), "SUCCEEDED")
    ], filtered


# --- watch -------------------------------------------------------------------


def test_watch_exits_0_when_the_job_succeeds(cli: Any) -> None:
    create_vm_job(cli, "watch-ok")

    # The job may end before the watch starts (it then sees only the final state).
    watched = cli("watch", name_of("watch-ok"))

    assert watched.returncode == 0, watched
    lines = [line for line in watched.stdout.splitlines() if line.startswith("rev ")]
    assert lines[-1].split()[2] == "SUCCEEDED", watched
    assert "clone job watch-ok  SUCCEEDED" in watched.stdout, watched  # the summary at the end
    revisions = [int(line.split()[1]) for line in lines]
    assert revisions == sorted(set(revisions)), watched
    assert_no_traceback(watched)


def test_watch_of_a_finished_job_prints_it_once_and_exits_0(
    cli: Any, client: BlockingCloneJobClient
) -> None:
    create_vm_job(cli, "watch-done")
    final = wait_for_end(client, name_of("watch-done"))
    assert final.state == CloneJob.SUCCEEDED

    watched = cli("watch", name_of("watch-done"), "--json")

    assert watched.returncode == 0, watched
    lines = watched.stdout.splitlines()
    assert len(lines) == 1, watched
    change = json.loads(lines[0])
    assert change["cloneJob"]["state"] == "SUCCEEDED"
    assert change["cloneJob"]["name"] == name_of("watch-done")
    assert int(change["revision"]) > 0


def test_watch_exits_2_when_the_job_is_cancelled(cli: Any, server: Any) -> None:
    create_vm_job(cli, "hold-watch")
    name = name_of("hold-watch")
    watcher = subprocess.Popen(
        [*CLONEJOB, "--server", server.address, "watch", name],
        cwd=REPO,
        env=base_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # The watch's lines as they come: the cancel is sent only once the watch has
    # shown the held state (a watch that started later would begin after it).
    lines: list[str] = []
    assert watcher.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(watcher.stdout.readline, "")))
    reader.start()
    try:
        wait_until(
            "the watch to show the held job in ADAPTING_OS",
            lambda: any(line.startswith("rev ") and "ADAPTING_OS" in line for line in lines),
        )
        assert watcher.poll() is None, "the watch ended while the job was held"

        cancelled = cli("cancel", name)
        assert cancelled.returncode == 0, cancelled
        assert re.search(r"^state:\s+(CANCELLING|CANCELLED)\b", cancelled.stdout, re.M), cancelled

        watcher.wait(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
        reader.join(timeout=10)
    assert watcher.stderr is not None
    stdout, stderr = "".join(lines), watcher.stderr.read()
    watcher.stdout.close()
    watcher.stderr.close()

    result = Result(watcher.args, watcher.returncode, stdout, stderr)  # type: ignore[arg-type]
    assert watcher.returncode == 2, result
    states = [line.split()[2] for line in stdout.splitlines() if line.startswith("rev ")]
    assert "ADAPTING_OS" in states, result
    assert "CANCELLING" in states, result
    assert states[-1] == "CANCELLED", result
    assert_no_traceback(result)


def test_watch_exits_1_when_the_job_fails(cli: Any) -> None:
    create_vm_job(cli, "fail-watch")

    watched = cli("watch", name_of("fail-watch"))

    assert watched.returncode == 1, watched
    changes = [line for line in watched.stdout.splitlines() if line.startswith("rev ")]
    assert changes[-1].split()[2] == "FAILED", watched
    assert "error: the clone job failed" in watched.stderr, watched
    assert "boom" in watched.stderr, watched
    assert_no_traceback(watched)

    got = cli("get", name_of("fail-watch"))
    assert got.returncode == 0, got
    assert re.search(r"^error:\s+.*boom", got.stdout, re.M), got


# --- errors ------------------------------------------------------------------


def test_get_of_an_unknown_job_is_not_found_exit_3(cli: Any) -> None:
    result = cli("get", name_of("no-such-job"))

    assert result.returncode == 3, result
    assert "NOT_FOUND" in result.stderr, result
    assert result.stdout == "", result
    assert_no_traceback(result)


def test_create_with_a_bad_vm_name_names_the_field_exit_3(cli: Any) -> None:
    result = cli("create", VM1, "bad-vm-name", "--vm-name", "Bad_Name!", *VM_ARGS)

    assert result.returncode == 3, result
    assert "INVALID_ARGUMENT" in result.stderr, result
    assert FIELD_VM_NAME in result.stderr, result
    assert_no_traceback(result)


def test_a_closed_port_exits_3_with_a_hint() -> None:
    address = f"127.0.0.1:{closed_port()}"

    result = run(CLONEJOB, "--server", address, "--timeout", "5", "get", name_of("any"))

    assert result.returncode == 3, result
    assert "UNAVAILABLE" in result.stderr, result
    hint = [line for line in result.stderr.splitlines() if line.startswith("hint:")]
    assert hint and "--server" in hint[0] and address in hint[0], result
    assert_no_traceback(result)


def test_clonejob_server_env_var_is_the_default_server(cli: Any, server: Any) -> None:
    create_vm_job(cli, "env-server")

    from_env = run(
        CLONEJOB, "get", name_of("env-server"), env=base_env(CLONEJOB_SERVER=server.address)
    )
    assert from_env.returncode == 0, from_env
    assert f"name:     {name_of('env-server')}" in from_env.stdout, from_env

    closed = f"127.0.0.1:{closed_port()}"
    unreachable = run(
        CLONEJOB, "--timeout", "5", "get", name_of("env-server"),
        env=base_env(CLONEJOB_SERVER=closed),
    )  # fmt: skip
    assert unreachable.returncode == 3, unreachable
    assert closed in unreachable.stderr, unreachable

    flag_wins = run(
        CLONEJOB, "--server", server.address, "get", name_of("env-server"),
        env=base_env(CLONEJOB_SERVER=closed),
    )  # fmt: skip
    assert flag_wins.returncode == 0, flag_wins


# --- clonejob-server ---------------------------------------------------------


def test_sample_vm_writes_a_completed_cycle_then_the_next(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    args = ("--data-dir", str(data_dir), "--disks", "3", "--disk-size", "2MiB", "--bios")

    first = run(CLONEJOB_SERVER, "sample-vm", VM1, *args)

    assert first.returncode == 0, first
    cycles = data_dir / "snapshots" / VM1 / "cycles"
    manifest = json.loads((cycles / "1" / "manifest.json").read_text())
    assert manifest["state"] == "COMPLETED"
    assert manifest["cycle"] == 1
    assert [d["source_disk_number"] for d in manifest["disks"]] == [0, 1, 2]
    for disk in manifest["disks"]:
        image = cycles / "1" / disk["file"]
        assert image.stat().st_size == 2 * 1024 * 1024 == disk["size_bytes"]
    assert [d["boot"] for d in manifest["disks"]] == [True, False, False]
    assert detect_boot(cycles / "1" / manifest["disks"][0]["file"]).firmware == "bios"
    assert str(cycles / "1") in first.stdout, first

    second = run(CLONEJOB_SERVER, "sample-vm", VM1, *args)

    assert second.returncode == 0, second
    assert sorted(p.name for p in cycles.iterdir()) == ["1", "2"]
    manifest2 = json.loads((cycles / "2" / "manifest.json").read_text())
    assert manifest2["state"] == "COMPLETED"
    assert manifest2["cycle"] == 2
    assert len(manifest2["disks"]) == 3


@pytest.mark.parametrize("name", ["not-a-name", "projects/p1/locations/us-central1/sources/s1"])
def test_sample_vm_with_an_invalid_name_fails_with_a_message(tmp_path: Path, name: str) -> None:
    result = run(CLONEJOB_SERVER, "sample-vm", name, "--data-dir", str(tmp_path / "data"))

    assert result.returncode != 0, result
    assert "NAME" in result.stderr, result
    assert_no_traceback(result)
    assert not (tmp_path / "data" / "snapshots").exists()


def _readme_configuration_rows() -> list[tuple[list[str], list[str]]]:
    """(flags, variables) of each row of the README's configuration table."""
    text = (REPO / "README.md").read_text()
    section = text.split("### Configuration", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("`--"):
            continue
        flags = re.findall(r"`?(--[a-z][a-z0-9-]*)", cells[0])
        variables = re.findall(r"\bCLONEJOB_[A-Z_]+\b", cells[1])
        rows.append((flags, variables))
    return rows


def test_server_help_lists_every_flag_of_the_readme_table() -> None:
    rows = _readme_configuration_rows()
    assert len(rows) >= 17, rows  # the table as documented: one row per option (TLS pair shared)

    result = run(CLONEJOB_SERVER, "--help")

    assert result.returncode == 0, result
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", result.stdout))
    words = set(result.stdout.split())
    missing_flags = [f for flags, _ in rows for f in flags if f not in options]
    missing_vars = [v for _, variables in rows for v in variables if not any(v in w for w in words)]
    assert missing_flags == [], result
    assert missing_vars == [], result
