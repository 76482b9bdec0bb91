"""Several replicas on one PostgreSQL: every replica answers for every job, each job
runs on exactly one replica at a time under a fenced lease, and a dead or paused
replica's jobs are taken over.

Each test makes its own database on the PostgreSQL of CLONEJOB_TEST_POSTGRES
(default 127.0.0.1:5432, user postgres) and drops it after; without one these
tests skip, except in CI, where they fail.
"""

from __future__ import annotations

import functools
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from clonejob_rpc import (
    ADAPTING,
    INSTANTIATING,
    PREPARING,
    VM1,
    cancel,
    changes,
    create,
    error_info,
    get,
    job_name,
    list_jobs,
    read_to_end,
    read_until,
    rpc_error,
    step_running,
    vm_body,
    watch,
)
from conftest import ServerPool, write_sample_vm
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.launcher import ServerProcess
from clonejob_grpc import clone_job_pb2 as pb
from server.store.schema import migrations
from tests.pg import temporary_database_sync

State = pb.CloneJob.State
TTL = 2  # seconds: short, so takeovers happen within a test
SLOW_STEP = {"match": "cloneJobs/slow-", "step": PREPARING, "action": "delay", "seconds": 4}
pytestmark = pytest.mark.slow


@pytest.fixture
def store_url() -> Iterator[str]:
    with temporary_database_sync() as url:
        yield url


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    """The data directory every replica shares (one machine: one folder)."""
    path = tmp_path / "shared"
    path.mkdir()
    write_sample_vm(path)
    return path


def replicas(
    servers: ServerPool, count: int, data_dir: Path, store_url: str, **options: Any
) -> list[ServerProcess]:
    options.setdefault("lease_ttl", TTL)
    return servers.replicas(count, data_dir, store=store_url, **options)


def lease_of(store_url: str, name: str) -> tuple[str | None, int]:
    """(owner, epoch) of the job's lease, read from the database."""
    with psycopg.connect(store_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT lease_owner, lease_epoch FROM clone_jobs WHERE name = %s", (name,)
        ).fetchone()
    assert row is not None, name
    return row[0], int(row[1])


def runner_of(fleet: list[ServerProcess], store_url: str, name: str) -> ServerProcess:
    """The replica whose lease runs `name` (owners are named host:pid:…)."""
    owner, _ = lease_of(store_url, name)
    assert owner is not None, f"{name} has no lease"
    pid = int(owner.split(":")[1])
    matches = [s for s in fleet if s.process is not None and s.pid == pid]
    assert len(matches) == 1, (owner, [s.pid for s in fleet if s.process is not None])
    return matches[0]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    # Polling with a deadline: the one way to wait on another process's state.
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def together(calls: list[Callable[[], None]]) -> None:
    """Run `calls` at once, each on a thread of its own; return when all are done."""
    threads = [threading.Thread(target=call) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def assert_history_sound(messages: list[Any]) -> None:
    """Revisions n, n + 1, n + 2, … with no gap or repeat; each step entered once; no
    state goes back to an earlier step."""
    jobs = changes(messages)
    revisions = [m.revision for m in jobs]
    assert revisions == list(range(revisions[0], revisions[0] + len(revisions))), revisions
    step_counts = [len(m.clone_job.steps) for m in jobs]
    assert step_counts == sorted(step_counts), step_counts
    final = jobs[-1].clone_job
    kinds = [s.WhichOneof("step") for s in final.steps]
    assert len(kinds) == len(set(kinds)), kinds


def test_replicas_create_on_one_get_and_list_on_the_others(
    servers: ServerPool, shared_dir: Path, store_url: str
) -> None:
    fleet = replicas(servers, 3, shared_dir, store_url)
    made = create(fleet[0].stub(), "across", vm_body("across-vm"))
    for replica in fleet:
        assert get(replica.stub(), made.name).name == made.name
        assert [j.name for j in list_jobs(replica.stub()).clone_jobs] == [made.name]
    final = read_to_end(watch(fleet[2].stub(), made.name))
    assert changes(final)[-1].clone_job.state == State.SUCCEEDED
    for replica in fleet:
        assert get(replica.stub(), made.name).state == State.SUCCEEDED


def test_replicas_watch_on_a_third_replica_sees_a_job_run_elsewhere_gapless(
    servers: ServerPool, shared_dir: Path, store_url: str
) -> None:
    api = replicas(servers, 1, shared_dir, store_url, max_concurrent_jobs=0)[0]
    runner = replicas(servers, 1, shared_dir, store_url)[0]
    watcher = replicas(servers, 1, shared_dir, store_url, max_concurrent_jobs=0)[0]
    made = create(api.stub(), "elsewhere", vm_body("elsewhere-vm"))
    messages = read_to_end(watch(watcher.stub(), made.name))
    assert_history_sound(messages)
    final = changes(messages)[-1].clone_job
    assert final.state == State.SUCCEEDED
    assert [s.WhichOneof("step") for s in final.steps] == [PREPARING, ADAPTING, INSTANTIATING]
    owner, epoch = lease_of(store_url, made.name)
    assert owner is None and epoch == 1  # one claim, by the only replica with slots
    assert runner.process is not None


def test_replicas_api_only_replica_runs_nothing(
    servers: ServerPool, shared_dir: Path, store_url: str
) -> None:
    api = replicas(servers, 1, shared_dir, store_url, max_concurrent_jobs=0)[0]
    made = create(api.stub(), "waits", vm_body("waits-vm"))
    time.sleep(2 * TTL)  # the behaviour under test is that nothing happens meanwhile
    job = get(api.stub(), made.name)
    assert job.state == State.PENDING
    assert lease_of(store_url, made.name) == (None, 0)
    worker = replicas(servers, 1, shared_dir, store_url)[0]
    done = read_to_end(watch(api.stub(), made.name))
    assert changes(done)[-1].clone_job.state == State.SUCCEEDED
    assert worker.process is not None


def test_replicas_sigkill_of_the_runner_mid_step_is_taken_over(
    servers: ServerPool, shared_dir: Path, store_url: str
) -> None:
    fleet = replicas(servers, 3, shared_dir, store_url, fault_plan=[SLOW_STEP])
    made = create(fleet[0].stub(), "slow-kill", vm_body("kill-vm"))
    stream = watch(fleet[0].stub(), made.name)
    read_until(stream, step_running(PREPARING))
    stream.cancel()
    victim = runner_of(fleet, store_url, made.name)
    _, first_epoch = lease_of(store_url, made.name)
    killed_at = time.monotonic()
    victim.kill()
    survivor = next(s for s in fleet if s is not victim)
    messages = read_to_end(watch(survivor.stub(), made.name))
    took = time.monotonic() - killed_at
    assert_history_sound(messages)
    final = changes(messages)[-1].clone_job
    assert final.state == State.SUCCEEDED, final
    assert [s.WhichOneof("step") for s in final.steps] == [PREPARING, ADAPTING, INSTANTIATING]
    assert lease_of(store_url, made.name)[1] == first_epoch + 1
    # TTL, then the re-run step's own delay, then the rest: well under a minute.
    assert took < TTL + SLOW_STEP["seconds"] + 30
    leftovers = [p.name for p in (shared_dir / "targets").rglob("*.tmp")]
    assert leftovers == []


def test_replicas_paused_runner_is_fenced_off_after_the_ttl(
    servers: ServerPool, shared_dir: Path, store_url: str
) -> None:
    fleet = replicas(servers, 2, shared_dir, store_url, fault_plan=[SLOW_STEP])
    made = create(fleet[0].stub(), "slow-pause", vm_body("pause-vm"))
    stream = watch(fleet[0].stub(), made.name)
    read_until(stream, step_running(PREPARING))
    stream.cancel()
    paused = runner_of(fleet, store_url, made.name)
    other = next(s for s in fleet if s is not paused)
    paused.pause()
    try:
        wait_for(lambda: lease_of(store_url, made.name)[1] == 2, "the takeover", TTL + 15)
        messages = read_to_end(watch(other.stub(), made.name))
    finally:
        paused.resume()
    final = changes(messages)[-1].clone_job
    assert final.state == State.SUCCEEDED
    # The old runner wakes, finds its lease gone, and commits nothing more.
    wait_for(lambda: "lost" in paused.log_path.read_text(), "the old runner to notice", 20)
    time.sleep(1.0)  # give a misbehaving old runner the chance to write
    again = read_to_end(watch(other.stub(), made.name, after_revision=0))
    assert changes(again)[-1].revision == changes(messages)[-1].revision
    history = read_to_end(watch(paused.stub(), made.name))
    assert changes(history)[-1].clone_job == final
    assert_history_sound(messages)
    assert [s.WhichOneof("step") for s in final.steps] == [PREPARING, ADAPTING, INSTANTIATING]
    assert [p.name for p in (shared_dir / "targets").rglob("*.tmp")] == []


def test_replicas_simultaneous_duplicate_creates(
    servers: ServerPool, shared_dir: Path, store_url: str
) -> None:
    fleet = replicas(servers, 2, shared_dir, store_url, max_concurrent_jobs=0)
    request_id = str(uuid.uuid4())
    body = vm_body("dup-vm")
    answers: list[Any] = [None, None]
    start = threading.Barrier(2)

    def send(i: int, job_id: str, rid: str) -> None:
        start.wait()
        try:
            answers[i] = create(fleet[i].stub(), job_id, body, request_id=rid)
        except grpc.RpcError as error:
            answers[i] = error

    for round_ in range(5):
        rid = str(uuid.uuid4()) if round_ else request_id
        together([functools.partial(send, i, f"same-{round_}", rid) for i in (0, 1)])
        assert all(isinstance(a, pb.CloneJob) for a in answers), answers
        assert answers[0] == answers[1]
    for round_ in range(5):
        rids = [str(uuid.uuid4()), str(uuid.uuid4())]
        together([functools.partial(send, i, f"race-{round_}", rids[i]) for i in (0, 1)])
        won = [a for a in answers if isinstance(a, pb.CloneJob)]
        lost = [a for a in answers if isinstance(a, grpc.RpcError)]
        assert len(won) == 1 and len(lost) == 1, answers
        assert lost[0].code() == grpc.StatusCode.ALREADY_EXISTS
    assert len(list_jobs(fleet[0].stub()).clone_jobs) == 10


def test_replicas_page_token_from_one_works_on_another(
    servers: ServerPool, shared_dir: Path, store_url: str
) -> None:
    fleet = replicas(servers, 2, shared_dir, store_url, max_concurrent_jobs=0)
    names = [create(fleet[0].stub(), f"page-{i}", vm_body(f"page-{i}")).name for i in range(5)]
    seen: list[str] = []
    token = ""
    for turn in range(10):
        page = list_jobs(fleet[turn % 2].stub(), page_size=2, page_token=token)
        seen += [j.name for j in page.clone_jobs]
        token = page.next_page_token
        if not token:
            break
    assert seen == names


def test_replicas_cancel_from_a_replica_that_is_not_the_runner(
    servers: ServerPool, shared_dir: Path, store_url: str
) -> None:
    fleet = replicas(servers, 2, shared_dir, store_url)
    hold = {"match": "cloneJobs/hold-", "step": PREPARING, "action": "hold"}
    for server in fleet:
        server.restart(fault_plan=[hold])
    made = create(fleet[0].stub(), "hold-cancel", vm_body("cancel-vm"))
    stream = watch(fleet[0].stub(), made.name)
    read_until(stream, step_running(PREPARING))
    stream.cancel()
    runner = runner_of(fleet, store_url, made.name)
    other = next(s for s in fleet if s is not runner)
    wait_for(lambda: any((shared_dir / "targets").rglob("*.img")), "a first disk copied")
    asked = time.monotonic()
    assert cancel(other.stub(), made.name).state == State.CANCELLING
    messages = read_to_end(watch(other.stub(), made.name))
    took = time.monotonic() - asked
    assert changes(messages)[-1].clone_job.state == State.CANCELLED
    assert took < 5.0, took  # the feed tells the runner at once, not at its next renewal
    assert [p for p in (shared_dir / "targets").rglob("*") if p.is_file()] == []


def test_replicas_cancel_of_a_pending_job_is_finished_by_a_worker(
    servers: ServerPool, shared_dir: Path, store_url: str
) -> None:
    api = replicas(servers, 1, shared_dir, store_url, max_concurrent_jobs=0)[0]
    made = create(api.stub(), "never-ran", vm_body("never-vm"))
    assert cancel(api.stub(), made.name).state == State.CANCELLING
    replicas(servers, 1, shared_dir, store_url, max_concurrent_jobs=1)
    messages = read_to_end(watch(api.stub(), made.name))
    final = changes(messages)[-1].clone_job
    assert final.state == State.CANCELLED and list(final.steps) == []


def test_replicas_cut_database_connections(
    servers: ServerPool, shared_dir: Path, store_url: str
) -> None:
    fleet = replicas(servers, 2, shared_dir, store_url, fault_plan=[SLOW_STEP])
    made = create(fleet[0].stub(), "slow-cut", vm_body("cut-vm"))
    stream = watch(fleet[1].stub(), made.name)
    first = read_until(stream, step_running(PREPARING))
    database = store_url.rpartition("/")[2]
    with psycopg.connect(store_url.rpartition("/")[0] + "/postgres", autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )
    codes = set()
    for _ in range(20):
        try:
            get(fleet[0].stub(), made.name)
            codes.add(grpc.StatusCode.OK)
        except grpc.RpcError as error:
            codes.add(error.code())
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            assert error_info(error).reason == "STORE_UNAVAILABLE"
    rest = read_to_end(stream)
    assert_history_sound(first + rest)
    assert changes(rest)[-1].clone_job.state == State.SUCCEEDED
    for server in fleet:
        health = health_pb2_grpc.HealthStub(server.channel())
        wait_for(
            lambda h=health: h.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            == health_pb2.HealthCheckResponse.SERVING,
            "SERVING again",
        )
    # Work goes on after the cut.
    again = create(fleet[0].stub(), "after-cut", vm_body("after-cut-vm"))
    assert changes(read_to_end(watch(fleet[1].stub(), again.name)))[-1].clone_job.state == (
        State.SUCCEEDED
    )


def test_replicas_three_starting_at_once_on_an_empty_database(
    servers: ServerPool, shared_dir: Path, store_url: str
) -> None:
    fleet = [servers.add(shared_dir, store=store_url, lease_ttl=TTL) for _ in range(3)]
    errors: list[BaseException] = []

    def start(server: ServerProcess) -> None:
        try:
            server.start()
        except BaseException as error:  # reported below
            errors.append(error)

    together([functools.partial(start, s) for s in fleet])
    assert errors == []
    with psycopg.connect(store_url, autocommit=True) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_version")]
    assert sorted(versions) == list(range(1, len(migrations("postgres")) + 1))  # each once
    made = create(fleet[1].stub(), "after-start", vm_body("start-vm"))
    assert changes(read_to_end(watch(fleet[2].stub(), made.name)))[-1].clone_job.state == (
        State.SUCCEEDED
    )


def test_replicas_bad_store_url_exits_2_with_one_line(
    servers: ServerPool, shared_dir: Path
) -> None:
    for url, words in [
        ("mysql://root@127.0.0.1/x", "postgresql://"),
        ("postgresql://postgres@127.0.0.1:1/none", "cannot reach"),
    ]:
        server = servers.add(shared_dir, store=url, store_connect_timeout=1)
        with pytest.raises(Exception) as caught:
            server.start()
        text = server.log_path.read_text().strip()
        assert words in text, text
        assert len(text.splitlines()) == 1, text
        assert getattr(caught.value, "returncode", None) == 2, caught.value


def test_replicas_rpc_error_names_job_on_every_replica(
    servers: ServerPool, shared_dir: Path, store_url: str
) -> None:
    fleet = replicas(servers, 2, shared_dir, store_url, max_concurrent_jobs=0)
    missing = job_name("nope", VM1)
    for server in fleet:
        error = rpc_error(get, server.stub(), missing)
        assert error.code() == grpc.StatusCode.NOT_FOUND


def test_replicas_job_counts_in_metrics_are_the_fleets(
    servers: ServerPool, shared_dir: Path, store_url: str
) -> None:
    runner = replicas(servers, 1, shared_dir, store_url, metrics_listen="127.0.0.1:0")[0]
    api = replicas(
        servers, 1, shared_dir, store_url, max_concurrent_jobs=0, metrics_listen="127.0.0.1:0"
    )[0]
    names = [create(runner.stub(), f"count-{i}", vm_body(f"count-{i}")).name for i in range(3)]
    for name in names:
        read_to_end(watch(api.stub(), name))
    for server in (runner, api):  # the API-only replica ran none of them, and still counts them
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10
        ).read().decode()
        assert 'clonejob_jobs{state="SUCCEEDED"} 3.0' in text, text
        assert 'clonejob_jobs{state="PENDING"} 0.0' in text
