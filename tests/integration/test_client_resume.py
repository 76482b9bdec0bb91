"""The Python client (client/) rides out a server restart by itself.

The server runs on a fixed port, so that the client's channel finds the new
process where the old one was: a watch resumes with its last revision, and a
blocking Get retries through the restart.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clonejob_rpc import ADAPTING, VM1, vm_body

from client import BlockingCloneJobClient, CloneJobClient
from client.launcher import ServerProcess
from client.retry import Backoff, RetryPolicy
from clonejob_grpc.clone_job_pb2 import CloneJob

HOLD = [{"match": "cloneJobs/hold", "step": ADAPTING, "action": "hold"}]
# Quicker than the default backoff (at most 5 s between tries), so that the test
# does not wait long after the new server is up; still the client's own resume.
FAST = RetryPolicy(backoff=Backoff(initial=0.05, maximum=0.5), max_reconnect_time=60.0)
# Unary calls right after the restart need more than the default 4 attempts (at
# most 0.7 s): a channel of this process to the same address may still be in
# gRPC's reconnect backoff (1 s and more), failing calls fast with UNAVAILABLE.
PATIENT = RetryPolicy(backoff=Backoff(initial=0.05, maximum=0.5), attempts=40)
END_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FixedPortServer(ServerProcess):
    """A server that listens on the same port at every start."""

    def __init__(self, data_dir: Path, run_dir: Path, *, port: int, **options: Any) -> None:
        super().__init__(data_dir, run_dir, listen=f"127.0.0.1:{port}", **options)
        self.fixed_port = port


@pytest.fixture
def fixed_port_server(
    data_dir: Path, sample_vm: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """A server (not yet started) that always listens on the same fixed port."""
    sample_vm(data_dir)
    server = FixedPortServer(
        data_dir, tmp_path_factory.mktemp("run"), port=free_port(), fault_plan=HOLD
    )
    yield server
    server.close()
    if server.logs:
        print(server.log_text(), file=sys.stderr)


async def _watch_across_restart(server: Any, job_id: str, *, crash: bool) -> None:
    await asyncio.to_thread(server.start)
    assert server.port == server.fixed_port
    seen: list[tuple[int, int]] = []
    adapting = asyncio.Event()

    async with CloneJobClient(server.address, timeout=10, retry=FAST) as client:
        job = await client.create(VM1, job_id, vm_body(f"{job_id}-vm"))

        async def follow() -> None:
            async for change in client.watch(job.name):
                seen.append((change.revision, change.clone_job.state))
                if change.clone_job.state == CloneJob.ADAPTING_OS:
                    adapting.set()

        task = asyncio.create_task(follow())
        try:
            await asyncio.wait_for(adapting.wait(), 30)
            before = seen[-1][0]

            code = await asyncio.to_thread(server.kill if crash else server.stop)
            if not crash:
                assert code == 0, server.log_text()
            await asyncio.to_thread(server.start)
            assert server.port == server.fixed_port
            assert not task.done(), f"the watch ended across the restart: {seen}"

            async with CloneJobClient(server.address, timeout=10, retry=PATIENT) as other:
                assert (await other.get(job.name)).state == CloneJob.ADAPTING_OS
                cancelled = await other.cancel(job.name)
            assert cancelled.state in (CloneJob.CANCELLING, CloneJob.CANCELLED)

            await asyncio.wait_for(asyncio.shield(task), END_TIMEOUT)
        finally:
            task.cancel()

        revisions = [r for r, _ in seen]
        states = [CloneJob.State.Name(s) for _, s in seen]
        assert all(a < b for a, b in itertools.pairwise(revisions)), seen
        assert states[-1] == "CANCELLED", states
        assert "CANCELLING" in states, states
        assert any(r > before for r in revisions), seen

        # Every change after the first one seen, once: a replay of the job's
        # history from the store matches what the resumed watch delivered.
        replay = [c.revision async for c in client.watch(job.name, after_revision=revisions[0])]
        assert revisions[1:] == replay, (seen, replay)


async def test_watch_resumes_by_itself_across_a_graceful_restart(fixed_port_server: Any) -> None:
    await _watch_across_restart(fixed_port_server, "hold-resume-term", crash=False)


async def test_watch_resumes_by_itself_across_a_crash(fixed_port_server: Any) -> None:
    await _watch_across_restart(fixed_port_server, "hold-resume-kill", crash=True)


class _SignallingBackoff:
    """A Backoff that says when the first retry delay is asked for: the first
    attempt has failed with a retryable error."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.first_retry = threading.Event()

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        for delay in self.backoff.delays(rng):
            self.first_retry.set()
            yield delay


def test_blocking_get_retries_through_a_restart(fixed_port_server: Any) -> None:
    server = fixed_port_server.start()
    with BlockingCloneJobClient(server.address, timeout=10) as setup:
        job = setup.create(VM1, "hold-blocking", vm_body("hold-blocking-vm"))
    assert server.stop() == 0

    backoff = _SignallingBackoff(Backoff(initial=0.2, maximum=0.5))
    # 80 attempts, at least 0.25 s apart once the backoff is up: a budget of
    # 20 s and more, for a restart that takes a second or two.
    policy = RetryPolicy(backoff=backoff, attempts=80)  # type: ignore[arg-type]
    outcome: list[Any] = []

    def get() -> None:
        try:
            with BlockingCloneJobClient(server.address, timeout=5, retry=policy) as client:
                outcome.append(client.get(job.name))
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=get, daemon=True)
    thread.start()
    try:
        assert backoff.first_retry.wait(30), "the first Get did not fail while the server was down"
        assert outcome == []
        server.start()
    finally:
        thread.join(END_TIMEOUT)
    assert not thread.is_alive(), "the Get did not return"

    assert len(outcome) == 1
    got = outcome[0]
    assert isinstance(got, CloneJob), repr(got)
    assert got.name == job.name
    assert got.state in (CloneJob.PENDING, CloneJob.ACTIVE, CloneJob.ADAPTING_OS), got
