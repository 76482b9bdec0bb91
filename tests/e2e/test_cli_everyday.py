"""The operator's everyday `clonejob`, end to end against real server processes:
error output, connecting (timeouts, TLS mismatches, no gRPC log lines), short job
ids, create --watch/--wait/--validate-only, list's columns, the live table of
`top`/`list --watch`, and the demo."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    CLONEJOB,
    REPO,
    Result,
    ServerPool,
    Terminal,
    base_env,
    closed_port,
    run,
    wait_until,
    write_sample_vm,
)

from client import BlockingCloneJobClient, NotFoundError
from client.launcher import ServerProcess, TlsConfig
from clonejob_grpc.clone_job_pb2 import CloneJob

sys.path.insert(0, str(REPO / "tests" / "integration"))
from certs import Pki, make_pki  # a helper of the integration tests

VM_A = "projects/p1/locations/us-central1/sources/s1/migratingVms/day-a"
VM_B = "projects/p1/locations/us-central1/sources/s1/migratingVms/day-b"
ANY_VM = "projects/p1/locations/-/sources/-/migratingVms/-"
VM_ARGS = ("--zone", "us-central1-a", "--machine-type", "n2-standard-2")
FIELD_VM_NAME = "clone_job.compute_engine_target_details.vm_name"
FAULTS = [
    {"match": "cloneJobs/hold-", "step": "adapting_os", "action": "hold"},
    {
        "match": "cloneJobs/fail-",
        "step": "instantiating_migrated_vm",
        "action": "fail",
        "message": "boom",
    },
    {"match": "cloneJobs/slow-", "step": "preparing_vm_disks", "action": "delay", "seconds": 2},
]
# gRPC's C-core log line: "E1201 23:01:58.703014   26816 ssl_transport_security.cc:2563] ..."
CORE_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+\.cc:\d+\]", re.M)
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


def env(**extra: str) -> dict[str, str]:
    """base_env, and no config file of the developer's own."""
    return base_env(CLONEJOB_CONFIG=os.devnull, **extra)


def name_of(job_id: str, parent: str = VM_A) -> str:
    return f"{parent}/cloneJobs/{job_id}"


def assert_clean(result: Result) -> None:
    """No traceback, and none of gRPC's own log lines."""
    assert "Traceback" not in result.stdout + result.stderr, result
    assert not CORE_LOG_LINE.search(result.stderr), result


@pytest.fixture(scope="module")
def server_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    pool = ServerPool(tmp_path_factory.mktemp("run"))
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def server(server_pool: Any, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    data_dir = tmp_path_factory.mktemp("data")
    write_sample_vm(data_dir, VM_A, disks=2, disk_size="1MiB")
    write_sample_vm(data_dir, VM_B, disks=1, disk_size="1MiB")
    started: ServerProcess = server_pool.start(data_dir, fault_plan=FAULTS)
    return started


@pytest.fixture
def cli(server: ServerProcess) -> Any:
    """`cli(*args, env=...)`: `clonejob --server ADDRESS *args`."""

    def call(*args: str, **kwargs: Any) -> Result:
        kwargs.setdefault("env", env())
        return run(CLONEJOB, "--server", server.address, *args, **kwargs)

    return call


@pytest.fixture
def client(server: ServerProcess) -> Iterator[BlockingCloneJobClient]:
    with BlockingCloneJobClient(server.address, timeout=30) as blocking:
        yield blocking


def create_vm(cli: Any, job_id: str, *extra: str, parent: str = VM_A) -> Result:
    result = cli("create", parent, job_id, "--vm-name", f"{job_id}-vm", *VM_ARGS, *extra)
    assert result.returncode == 0, result
    return result


def wait_for_end(client: BlockingCloneJobClient, name: str) -> CloneJob:
    last = None
    for change in client.watch(name):
        last = change.clone_job
    assert last is not None
    return last


def wait_for_state(client: BlockingCloneJobClient, name: str, state: int) -> None:
    """Until the job (made by another process) exists and reaches `state`."""

    def reached() -> bool:
        try:
            return client.get(name).state == state
        except NotFoundError:
            return False

    wait_until(f"{name} to reach {CloneJob.State.Name(state)}", reached)


def status_of(result: Result) -> dict[str, Any]:
    """The google.rpc.Status that `--json` prints on stderr."""
    assert result.stdout == "", result
    status = json.loads(result.stderr)
    assert isinstance(status, dict), result
    return status


def detail(status: dict[str, Any], type_url: str) -> dict[str, Any]:
    found = [d for d in status.get("details", []) if d["@type"] == type_url]
    assert len(found) == 1, status
    return found[0]


# --- errors --------------------------------------------------------------------


def test_invalid_argument_has_one_headline_then_each_bad_field_once(cli: Any) -> None:
    result = cli("create", VM_A, "bad-name", "--vm-name", "Bad_Name!", *VM_ARGS)

    assert result.returncode == 3, result
    lines = result.stderr.splitlines()
    assert lines[0] == "error: INVALID_ARGUMENT: the request has 1 invalid field", result
    assert lines[1].startswith(f"  {FIELD_VM_NAME}: "), result
    description = lines[1].partition(": ")[2]
    assert result.stderr.count(FIELD_VM_NAME) == 1, result
    assert result.stderr.count(description) == 1, result
    assert result.stdout == "", result
    assert_clean(result)


def test_an_unknown_job_shows_the_code_and_the_reason(cli: Any) -> None:
    result = cli("get", name_of("no-such-job"))

    assert result.returncode == 3, result
    assert result.stderr.startswith("error: NOT_FOUND CLONE_JOB_NOT_FOUND: "), result
    assert name_of("no-such-job") in result.stderr, result
    assert result.stdout == "", result


@pytest.mark.parametrize(
    ("args", "command", "message"),
    [
        (("get",), "get", "the following arguments are required: NAME"),
        (("get", name_of("x"), "--bogus"), "get", "unrecognized arguments: --bogus"),
        (("create", VM_A, "no-flags"), "create", "create needs --vm-name, --zone, --machine-type"),
        (("list", VM_A, "--page-size", "many"), "list", "argument --page-size: invalid int"),
        (
            ("create", VM_A, "x", "--disks-only", "--zone", "z"),
            "create",
            "--disks-only clones disks, not a VM: drop --zone",
        ),
    ],
)
def test_a_commands_mistake_prints_that_commands_usage(
    cli: Any, args: tuple[str, ...], command: str, message: str
) -> None:
    result = cli(*args)

    assert result.returncode == 2, result
    assert result.stderr.startswith(f"usage: clonejob {command} "), result
    assert "usage: clonejob [-h]" not in result.stderr, result  # not the top-level usage
    assert f"clonejob {command}: error: {message}" in result.stderr, result
    assert result.stdout == "", result


@pytest.mark.parametrize("flag", ["--tls-ca", "--body"])
def test_a_missing_file_is_told_in_plain_words(cli: Any, tmp_path: Path, flag: str) -> None:
    missing = tmp_path / "nowhere.pem"
    before = ["--tls-ca", str(missing)] if flag == "--tls-ca" else []
    after = ["--body", str(missing)] if flag == "--body" else ["--disks-only"]

    result = cli(*before, "create", VM_A, "file-error", *after)

    assert result.returncode == 3, result
    assert result.stderr == f"error: {flag} {missing}: no such file\n", result
    assert "Errno" not in result.stderr, result


def test_a_directory_given_as_a_file_is_told_in_plain_words(cli: Any, tmp_path: Path) -> None:
    result = cli("--tls-ca", str(tmp_path), "get", name_of("x"))

    assert result.returncode == 3, result
    assert result.stderr == f"error: --tls-ca {tmp_path}: is a directory, not a file\n", result


def test_a_body_that_is_not_a_clone_job_names_the_file(cli: Any, tmp_path: Path) -> None:
    body = tmp_path / "job.json"
    body.write_text('{"computeEngineTargetDetails": {"vmName": 3, "nope": 1}}')

    result = cli("create", VM_A, "bad-body", "--body", str(body))

    assert result.returncode == 3, result
    assert result.stderr.startswith(f"error: --body {body}: not a CloneJob in the proto3"), result


def test_json_errors_are_the_rpc_status_on_stderr(cli: Any, tmp_path: Path) -> None:
    not_found = status_of(cli("--json", "get", name_of("no-such-job")))
    assert not_found["code"] == 5, not_found
    assert name_of("no-such-job") in not_found["message"], not_found
    info = detail(not_found, ERROR_INFO)
    assert (info["reason"], info["domain"]) == ("CLONE_JOB_NOT_FOUND", "clonejob.v1"), info

    invalid = cli("create", VM_A, "bad-json", "--vm-name", "Bad_Name!", *VM_ARGS, "--json")
    assert invalid.returncode == 3, invalid
    status = status_of(invalid)
    assert status["code"] == 3, status
    violations = detail(status, BAD_REQUEST)["fieldViolations"]
    assert [v["field"] for v in violations] == [FIELD_VM_NAME], status

    usage = cli("--json", "get")
    assert usage.returncode == 2, usage
    status = status_of(usage)
    assert status["code"] == 3, status
    assert detail(status, ERROR_INFO) == {
        "@type": ERROR_INFO,
        "reason": "USAGE",
        "domain": "clonejob.cli",
    }, status

    missing = cli("--json", "--tls-ca", str(tmp_path / "none.pem"), "get", name_of("x"))
    assert missing.returncode == 3, missing
    assert detail(status_of(missing), ERROR_INFO)["reason"] == "FILE_UNREADABLE", missing


# --- connecting ----------------------------------------------------------------


@pytest.mark.parametrize("command", ["get", "watch", "cancel"])
def test_timeout_bounds_a_call_to_a_closed_port(command: str) -> None:
    address = f"127.0.0.1:{closed_port()}"

    started = time.monotonic()
    result = run(
        CLONEJOB, "--server", address, "--timeout", "0.5", command, name_of("x"), env=env()
    )
    elapsed = time.monotonic() - started

    assert result.returncode == 3, result
    assert result.stderr.startswith("error: UNAVAILABLE: "), result
    assert f"hint: is the server running at {address}?" in result.stderr, result
    # Retrying alone took 3.15 s at the least before --timeout bounded it; the margin
    # is for starting Python on a busy machine.
    assert elapsed < 3.0, (elapsed, result)
    assert_clean(result)


def test_timeout_bounds_a_call_to_a_server_that_never_answers() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), says nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"

        started = time.monotonic()
        result = run(CLONEJOB, "--server", address, "--timeout", "1", "get", "a/b", env=env())
        elapsed = time.monotonic() - started

    assert result.returncode == 3, result
    assert result.stderr.startswith(("error: DEADLINE_EXCEEDED: ", "error: UNAVAILABLE: ")), result
    assert elapsed < 4.0, (elapsed, result)  # gRPC alone would wait 20 s to connect
    assert_clean(result)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(server_pool: Any, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Any:
    tls = TlsConfig(cert=pki.server_cert, key=pki.server_key, ca=pki.ca)
    return server_pool.start(tmp_path_factory.mktemp("tls-data"), tls=tls)


def test_a_plaintext_client_of_a_tls_server_is_told_to_pass_tls_ca(tls_server: Any) -> None:
    result = run(
        CLONEJOB, "--server", tls_server.address, "--timeout", "3", "get", name_of("x"), env=env()
    )

    assert result.returncode == 3, result
    hint = f"hint: the server at {tls_server.address} speaks TLS: pass --tls-ca"
    assert hint in result.stderr, result
    assert "is the server running" not in result.stderr, result
    assert_clean(result)


def test_a_tls_client_of_a_plaintext_server_is_told_to_drop_tls_ca(
    server: ServerProcess, pki: Pki
) -> None:
    result = run(
        CLONEJOB, "--server", server.address, "--tls-ca", str(pki.ca), "--timeout", "3",
        "get", name_of("x"), env=env(),
    )  # fmt: skip

    assert result.returncode == 3, result
    hint = f"hint: the server at {server.address} does not speak TLS: drop --tls-ca"
    assert hint in result.stderr, result
    assert "is the server running" not in result.stderr, result
    assert_clean(result)  # the handshake failure is logged by gRPC's core, and not shown


def test_a_tls_client_with_the_wrong_ca_is_told_so(tls_server: Any, pki: Pki) -> None:
    result = run(
        CLONEJOB, "--server", tls_server.address, "--tls-ca", str(pki.other_ca),
        "--timeout", "3", "get", name_of("x"), env=env(),
    )  # fmt: skip

    assert result.returncode == 3, result
    assert f"is not signed by the CA in --tls-ca {pki.other_ca}" in result.stderr, result
    assert_clean(result)


def test_the_right_ca_reaches_the_tls_server(tls_server: Any, pki: Pki) -> None:
    result = run(
        CLONEJOB, "--server", tls_server.address, "--tls-ca", str(pki.ca), "get", name_of("x"),
        env=env(),
    )  # fmt: skip

    assert result.returncode == 3, result
    assert result.stderr.startswith("error: NOT_FOUND CLONE_JOB_NOT_FOUND"), result


# --- short ids -----------------------------------------------------------------


def test_short_ids_under_clonejob_parent(cli: Any, client: BlockingCloneJobClient) -> None:
    short = env(CLONEJOB_PARENT=VM_A)
    created = cli(
        "create", "hold-short", "--vm-name", "hold-short-vm", *VM_ARGS, env=short
    )  # the parent from CLONEJOB_PARENT
    assert created.returncode == 0, created
    assert f"name:     {name_of('hold-short')}" in created.stdout, created
    wait_for_state(client, name_of("hold-short"), CloneJob.ADAPTING_OS)

    got = cli("get", "hold-short", env=short)
    assert got.returncode == 0, got
    assert f"name:     {name_of('hold-short')}" in got.stdout, got

    cancelled = cli("cancel", "hold-short", env=short)
    assert cancelled.returncode == 0, cancelled
    assert re.search(r"^state:\s+(CANCELLING|CANCELLED)\b", cancelled.stdout, re.M), cancelled

    watched = cli("watch", "hold-short", env=short)
    assert watched.returncode == 2, watched  # CANCELLED
    assert "CANCELLED" in watched.stdout, watched

    full = cli("get", name_of("hold-short"), env=short)  # full names still work
    assert full.returncode == 0, full
    assert re.search(r"^state:\s+CANCELLED\b", full.stdout, re.M), full


def test_the_parent_flag_and_the_config_file_give_short_ids_too(
    cli: Any, server: ServerProcess, client: BlockingCloneJobClient, tmp_path: Path
) -> None:
    create_vm(cli, "config-short")
    wait_for_end(client, name_of("config-short"))

    flag = cli("--parent", VM_A, "get", "config-short")
    assert flag.returncode == 0, flag
    assert f"name:     {name_of('config-short')}" in flag.stdout, flag

    config = tmp_path / "config.toml"
    config.write_text(f'server = "{server.address}"\nparent = "{VM_A}"\n')
    from_file = run(CLONEJOB, "get", "config-short", env=base_env(CLONEJOB_CONFIG=str(config)))
    assert from_file.returncode == 0, from_file
    assert f"name:     {name_of('config-short')}" in from_file.stdout, from_file

    config.write_text('parent = "x"\ncolour = "yes"\n')
    bad = run(CLONEJOB, "get", "config-short", env=base_env(CLONEJOB_CONFIG=str(config)))
    assert bad.returncode == 3, bad
    assert bad.stderr == f"error: config file {config}: unknown setting 'colour'" + (
        " (known: server, parent)\n"
    ), bad


def test_a_short_id_without_a_parent_says_how_to_set_one(cli: Any) -> None:
    result = cli("get", "check-1")

    assert result.returncode == 2, result
    assert result.stderr.startswith("usage: clonejob get "), result
    assert "'check-1' is a short id and there is no default parent" in result.stderr, result
    assert "--parent, CLONEJOB_PARENT" in result.stderr, result


def test_a_short_id_under_a_wildcard_parent_is_found_by_list(
    cli: Any, client: BlockingCloneJobClient
) -> None:
    create_vm(cli, "only-in-b", parent=VM_B)
    create_vm(cli, "in-both", parent=VM_A)
    create_vm(cli, "in-both-b", parent=VM_B)  # a second VM name: instance names are unique
    wait_for_end(client, name_of("only-in-b", VM_B))

    found = cli("get", "only-in-b", env=env(CLONEJOB_PARENT=ANY_VM))
    assert found.returncode == 0, found
    assert f"name:     {name_of('only-in-b', VM_B)}" in found.stdout, found

    none = cli("get", "in-no-vm", env=env(CLONEJOB_PARENT=ANY_VM))
    assert none.returncode == 3, none
    assert none.stderr.startswith("error: NOT_FOUND CLONE_JOB_NOT_FOUND: "), none


# --- create --watch, --wait, --validate-only ------------------------------------


def test_create_watch_follows_the_job_and_exits_0_when_it_succeeds(cli: Any) -> None:
    result = create_vm(cli, "watch-ok", "--watch")

    assert result.stdout.startswith(f"created {name_of('watch-ok')}\n"), result
    assert re.search(r"^rev \d+\s+SUCCEEDED\b", result.stdout, re.M), result
    assert_clean(result)


def test_create_watch_exits_1_when_the_job_fails(cli: Any) -> None:
    result = cli("create", VM_A, "fail-watch", "--vm-name", "fail-watch-vm", *VM_ARGS, "--watch")

    assert result.returncode == 1, result
    assert re.search(r"^rev \d+\s+FAILED\b", result.stdout, re.M), result
    assert "error: the clone job failed: ABORTED INJECTED_FAULT: boom" in result.stderr, result


def test_create_watch_exits_2_when_the_job_is_cancelled(
    server: ServerProcess, client: BlockingCloneJobClient
) -> None:
    name = name_of("hold-watch")
    creating = subprocess.Popen(
        [*CLONEJOB, "--server", server.address, "create", VM_A, "hold-watch",
         "--vm-name", "hold-watch-vm", *VM_ARGS, "--watch"],
        cwd=REPO, env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_state(client, name, CloneJob.ADAPTING_OS)
        client.cancel(name)
        stdout, stderr = creating.communicate(timeout=60)
    finally:
        if creating.poll() is None:
            creating.kill()
            creating.communicate()

    result = Result(creating.args, creating.returncode, stdout, stderr)  # type: ignore[arg-type]
    assert creating.returncode == 2, result
    assert re.search(r"^rev \d+\s+CANCELLED\b", stdout, re.M), result


@pytest.mark.parametrize(
    ("job_id", "code", "state"),
    [("wait-ok", 0, "SUCCEEDED"), ("fail-wait", 1, "FAILED")],
)
def test_create_wait_is_quiet_then_shows_the_end(
    cli: Any, job_id: str, code: int, state: str
) -> None:
    result = cli("create", VM_A, job_id, "--vm-name", f"{job_id}-vm", *VM_ARGS, "--wait")

    assert result.returncode == code, result
    # One summary, of the ended job: nothing was printed while it ran.
    assert result.stdout.startswith(f"name:     {name_of(job_id)}\nstate:    {state} "), result
    assert len(re.findall(r"^name:", result.stdout, re.M)) == 1, result
    assert "rev " not in result.stdout, result
    if code:
        assert "error: the clone job failed: ABORTED INJECTED_FAULT: boom" in result.stderr
    else:
        assert result.stderr == "", result


def test_create_wait_json_prints_the_ended_job(cli: Any) -> None:
    result = cli(
        "--json", "create", VM_A, "wait-json", "--vm-name", "wait-json-vm", *VM_ARGS, "--wait"
    )

    assert result.returncode == 0, result
    job = json.loads(result.stdout)
    assert (job["name"], job["state"]) == (name_of("wait-json"), "SUCCEEDED"), job


def test_validate_only_shows_the_job_and_creates_nothing(
    cli: Any, client: BlockingCloneJobClient
) -> None:
    result = cli(
        "create", VM_A, "validated", "--vm-name", "validated-vm", *VM_ARGS, "--validate-only"
    )

    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert lines[0] == "valid: nothing was created; the clone job would be:", result
    assert f"name:     {name_of('validated')}" in lines, result
    assert "  vm_name: validated-vm" in lines, result
    with pytest.raises(NotFoundError):
        client.get(name_of("validated"))
    assert name_of("validated") not in [job.name for job in client.list(VM_A)]


def test_validate_only_tells_a_taken_instance_name(
    cli: Any, client: BlockingCloneJobClient
) -> None:
    create_vm(cli, "taken")
    assert wait_for_end(client, name_of("taken")).state == CloneJob.SUCCEEDED

    result = cli(
        "create", VM_A, "taken-again", "--vm-name", "taken-vm", *VM_ARGS, "--validate-only"
    )

    assert result.returncode == 3, result
    assert result.stderr.startswith("error: ALREADY_EXISTS INSTANCE_NAME_TAKEN: "), result
    with pytest.raises(NotFoundError):
        client.get(name_of("taken-again"))


# --- list and get ----------------------------------------------------------------


def test_list_shows_the_target_and_the_reason_of_failed_jobs(
    cli: Any, client: BlockingCloneJobClient
) -> None:
    parent = VM_B
    create_vm(cli, "list-vm", parent=parent)
    create_vm(cli, "fail-list", parent=parent)
    disks = cli("create", parent, "list-disks", "--disks-only")
    assert disks.returncode == 0, disks
    for job_id in ("list-vm", "fail-list", "list-disks"):
        wait_for_end(client, name_of(job_id, parent))

    result = cli("list", parent, "--filter", "state != CANCELLED")

    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATE", "TARGET", "CREATED", "ENDED", "REASON"], result
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.strip()}
    # ID STATE TARGET CREATED(2 words) ENDED(2 words) REASON
    assert rows["list-vm"][1:3] == ["SUCCEEDED", "p1/us-central1-a/list-vm-vm"], result
    assert rows["list-vm"][-1] == "-", result
    assert rows["fail-list"][1:3] == ["FAILED", "p1/us-central1-a/fail-list-vm"], result
    assert rows["fail-list"][-1] == "INJECTED_FAULT", result
    assert rows["list-disks"][1:4] == ["SUCCEEDED", "disks", "(1)"], result


def test_get_shows_the_cycle_the_boot_option_and_the_license(
    cli: Any, client: BlockingCloneJobClient
) -> None:
    create_vm(cli, "get-boot")
    assert wait_for_end(client, name_of("get-boot")).state == CloneJob.SUCCEEDED

    result = cli("get", name_of("get-boot"))

    assert result.returncode == 0, result
    assert re.search(r"^boot:\s+EFI$", result.stdout, re.M), result  # sample VMs boot EFI
    assert re.search(r"^license:\s+NONE \(requested DEFAULT\)$", result.stdout, re.M), result
    assert re.search(r"^cycle:\s+1$", result.stdout, re.M), result  # the sample VM's only cycle


# --- the live table ----------------------------------------------------------------


class Lines:
    """The lines a process writes to a pipe, read by a thread: `wait_for` blocks
    until one matches (no polling)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert process.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> str:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r}: {self.seen}") from None
            if line is None:
                raise AssertionError(f"output ended without {pattern!r}: {self.seen}")
            self.seen.append(line)
            if regex.search(line):
                return line

    def rest(self) -> list[str]:
        self._thread.join(timeout=30)
        while True:
            line = self._queue.get_nowait() if not self._queue.empty() else None
            if line is None:
                return self.seen
            self.seen.append(line)


@pytest.mark.parametrize("command", [("top",), ("list", "--watch")])
def test_a_live_table_on_a_pipe_shows_a_row_for_a_job_made_after_it_started(
    cli: Any, server: ServerProcess, command: tuple[str, ...]
) -> None:
    job_id = f"slow-top-{command[0]}"
    with subprocess.Popen(
        [*CLONEJOB, "--server", server.address, *command, VM_A, "--interval", "0.3"],
        cwd=REPO, env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    ) as table:  # fmt: skip
        try:
            lines = Lines(table)
            header = lines.wait_for(r"^NAME\s+")
            assert header.split() == ["NAME", "STATE", "STEP", "PROGRESS", "RATE", "AGE"]
            assert not any(line.startswith(job_id) for line in lines.seen)

            create_vm(cli, job_id)

            first = lines.wait_for(rf"^{job_id}\s")
            assert first.split()[1] in ("PENDING", "ACTIVE"), lines.seen
            lines.wait_for(rf"^{job_id}\s+ACTIVE\s+preparing disks 1/3\s+\d+%")
            lines.wait_for(rf"^{job_id}\s+SUCCEEDED\s")
            table.send_signal(signal.SIGINT)  # Ctrl-C
            code = table.wait(timeout=30)
        finally:
            if table.poll() is None:
                table.kill()
                table.wait()
        seen = lines.rest()
        assert table.stderr is not None
        stderr = table.stderr.read()
    assert code == 0, (seen, stderr)
    assert "Traceback" not in stderr, stderr


def test_top_in_a_terminal_redraws_the_table_with_the_new_job(
    cli: Any, server: ServerProcess
) -> None:
    job_id = "slow-top-tty"
    with Terminal(
        [*CLONEJOB, "--server", server.address, "top", VM_A, "--interval", "0.3"],
        env=env(TERM="xterm-256color"),
    ) as terminal:
        terminal.wait_for(r"^NAME\s+STATE\s+STEP\s+PROGRESS\s+RATE\s+AGE")
        create_vm(cli, job_id)
        frame, _ = terminal.wait_for(rf"^{job_id}\s+\S+")
        assert f"clone jobs of {VM_A}" in frame, frame
        terminal.wait_for(rf"^{job_id}\s+SUCCEEDED\s")
        terminal.process.send_signal(signal.SIGINT)
        assert terminal.finish() == 0, terminal
        assert "Traceback" not in terminal.frames()[-1], terminal


# --- demo ------------------------------------------------------------------------


def test_demo_is_paced_and_keep_says_how_to_serve_its_data_again(
    tmp_path: Path, server_pool: Any
) -> None:
    result = run(CLONEJOB, "demo", "--keep", env=env(TMPDIR=str(tmp_path)), timeout=120)

    assert result.returncode == 0, result
    assert re.search(r"each step waits 3 s at its start \(a `delay` fault", result.stdout), result
    data_dir = Path(re.findall(r"data in (\S+)", result.stdout)[0])
    instance = data_dir / "targets/projects/demo-project/zones/us-central1-a/instances"
    assert re.search(
        rf"^  instance definition\s+{re.escape(str(instance / 'demo-clone-vm.json'))}$",
        result.stdout,
        re.M,
    ), result
    lines = result.stdout.splitlines()
    kept = lines.index(f"kept {data_dir}; to serve it again:")
    assert lines[kept + 1] == f"  clonejob-server --data-dir {data_dir}", result
    assert "removed" not in result.stdout, result

    # What the printed command does (here on a free port, not the default one):
    # the server comes back on that directory with the demo's job.
    again = server_pool.start(data_dir)
    with BlockingCloneJobClient(again.address, timeout=30) as client:
        job = client.get(
            "projects/demo-project/locations/us-central1/sources/demo-source"
            "/migratingVms/demo-vm/cloneJobs/demo-clone"
        )
    assert job.state == CloneJob.SUCCEEDED
    took = [s.end_time.ToMilliseconds() - s.start_time.ToMilliseconds() for s in job.steps]
    assert len(took) == 3 and min(took) >= 2_900, took  # a few seconds per step


def test_demo_without_keep_says_it_removed_its_data(tmp_path: Path) -> None:
    result = run(CLONEJOB, "demo", "--step-delay", "0", env=env(TMPDIR=str(tmp_path)), timeout=120)

    assert result.returncode == 0, result
    data_dir = Path(re.findall(r"data in (\S+)", result.stdout)[0])
    assert not data_dir.exists(), result
    assert result.stdout.splitlines()[-1] == (
        f"removed {data_dir} and all it held (`clonejob demo --keep` keeps it)"
    ), result
    assert "paced" not in result.stdout, result
