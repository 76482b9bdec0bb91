"""Graceful shutdown (SIGTERM) under load, the restart after it, and the bounded drain.

The server runs as a real process with `--shutdown-grace`; held jobs (fault
`hold`) are watched while other tasks keep unary Get and List calls in flight.
On SIGTERM the process exits 0 within the grace period and a margin, the
watches end UNAVAILABLE, and every unary call either completes OK or, arriving
after shutdown began, fails UNAVAILABLE. After the restart each watcher resumes
from its last revision and sees only later changes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import grpc.aio
import pytest
from clonejob_rpc import (
    ADAPTING,
    PREPARING,
    TERMINAL,
    VM1,
    State,
    running_step,
    vm_body,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clonejob_grpc import clone_job_service_pb2 as spb
from clonejob_grpc import clone_job_service_pb2_grpc as spb_grpc

if TYPE_CHECKING:
    from conftest import Server, ServerPool

GRACE = 5.0
# Process teardown after the drain (engine stop, store close, interpreter exit) on a
# loaded two-core machine.
MARGIN = 10.0
RPC_DEADLINE = 10.0
STEP_TIMEOUT = 30.0
LOAD_WORKERS = 64  # unary callers racing the shutdown
RACE_ROUNDS = 5

HELD = {"held-prep-0": PREPARING, "held-prep-1": PREPARING, "held-adapt-0": ADAPTING}
HOLDS = [
    {"match": "cloneJobs/held-prep-", "step": PREPARING, "action": "hold"},
    {"match": "cloneJobs/held-adapt-", "step": ADAPTING, "action": "hold"},
]
SERVICE = "clonejob.v1.CloneJobService"

Stub = spb_grpc.CloneJobServiceStub


@dataclass
class Watcher:
    """One watch of a held job: what it saw and how its stream ended."""

    name: str
    held_step: str
    seen: list[tuple[int, int]] = field(default_factory=list)  # (revision, state)
    held: asyncio.Event = field(default_factory=asyncio.Event)
    code: grpc.StatusCode | None = None
    details: str = ""
    ended_at: float = 0.0

    @property
    def last(self) -> int:
        return self.seen[-1][0] if self.seen else 0

    async def run(self, stub: Stub, after_revision: int = 0) -> None:
        call = stub.WatchCloneJob(
            spb.WatchCloneJobRequest(name=self.name, after_revision=after_revision),
            timeout=120,
        )
        try:
            async for message in call:
                if message.heartbeat:
                    continue
                self.seen.append((message.revision, message.clone_job.state))
                if running_step(message.clone_job) == self.held_step:
                    self.held.set()
            self.code = await call.code()
        except grpc.aio.AioRpcError as error:
            self.code, self.details = error.code(), error.details() or ""
        finally:
            self.ended_at = time.monotonic()
            call.cancel()


@dataclass
class UnaryLoad:
    """Get and List calls in a loop from a few tasks, each call's span and outcome kept."""

    stubs: list[Stub]
    names: list[str]
    calls: list[tuple[float, float, grpc.StatusCode]] = field(default_factory=list)
    details: dict[str, str] = field(default_factory=dict)  # an example message per code
    warm: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, worker: int, max_calls: int = 20_000) -> None:
        stub = self.stubs[worker % len(self.stubs)]
        for i in range(max_calls):
            if self.stop.is_set():
                return
            started = time.monotonic()
            try:
                if (i + worker) % 2:
                    await stub.GetCloneJob(
                        spb.GetCloneJobRequest(name=self.names[i % len(self.names)]),
                        timeout=RPC_DEADLINE,
                    )
                else:
                    await stub.ListCloneJobs(
                        spb.ListCloneJobsRequest(parent=VM1, page_size=50), timeout=RPC_DEADLINE
                    )
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
                self.details.setdefault(
                    code.name, f"{error.details()} ({error.debug_error_string()})"
                )
            self.calls.append((started, time.monotonic(), code))
            if len(self.calls) >= 30:
                self.warm.set()


async def _sigterm(server: Server) -> tuple[int, float, float]:
    """SIGTERM and wait for the exit (in a thread: the loop keeps serving our calls)."""
    sent = time.monotonic()
    code = await asyncio.to_thread(server.stop)
    return code, sent, time.monotonic()


def _transitions_into(states: list[int], state: int, before: int) -> int:
    count, previous = 0, before
    for current in states:
        if current == state and previous != state:
            count += 1
        previous = current
    return count


@pytest.mark.timeout(150)
async def test_shutdown_under_load_ends_watches_unavailable_and_resumes_after_restart(
    servers: ServerPool, data_dir: Path, sample_vm: Callable[..., Path]
) -> None:
    sample_vm(data_dir)
    server = servers.start(data_dir, fault_plan=HOLDS, shutdown_grace=GRACE, max_concurrent_jobs=4)
    channel = grpc.aio.insecure_channel(server.address)
    stub = Stub(channel)
    names = []
    for job_id in HELD:
        job = await stub.CreateCloneJob(
            spb.CreateCloneJobRequest(
                parent=VM1, clone_job_id=job_id, clone_job=vm_body(f"{job_id}-vm")
            ),
            timeout=RPC_DEADLINE,
        )
        names.append(job.name)
    watchers = [Watcher(name, step) for name, step in zip(names, HELD.values(), strict=True)]
    load = UnaryLoad([stub], names)
    async with asyncio.TaskGroup() as group:
        watching = [group.create_task(w.run(stub)) for w in watchers]
        loading = [group.create_task(load.run(i)) for i in range(3)]
        async with asyncio.timeout(STEP_TIMEOUT):
            for w in watchers:
                await w.held.wait()
            await load.warm.wait()

        exit_code, sent, exited = await _sigterm(server)
        load.stop.set()
        async with asyncio.timeout(RPC_DEADLINE):
            await asyncio.gather(*watching, *loading)
    await channel.close()

    # The process: exit 0, within the grace period and a margin.
    assert exit_code == 0, server.log_text()
    assert exited - sent < GRACE + MARGIN
    # The watches: UNAVAILABLE, so that their clients resume elsewhere; before the exit.
    for w in watchers:
        assert w.code == grpc.StatusCode.UNAVAILABLE, (w.name, w.code, w.details)
        assert w.ended_at < exited + 1.0
    # The unary calls: OK, or UNAVAILABLE once shutdown began; never INTERNAL or UNKNOWN.
    # (CANCELLED, for a call that arrives as the server stops, is a known bug: see
    # test_shutdown_refuses_calls_arriving_during_the_shutdown_with_unavailable.)
    outcomes = Counter(code.name for _, _, code in load.calls)
    print(f"unary calls around SIGTERM: {dict(outcomes)}; exit after {exited - sent:.2f} s")
    assert set(outcomes) <= {"OK", "UNAVAILABLE", "CANCELLED"}, (outcomes, load.details)
    assert all(code == grpc.StatusCode.OK for _, end, code in load.calls if end < sent)
    in_flight = Counter(code.name for start, end, code in load.calls if start < sent < end)
    print(f"in flight at SIGTERM: {dict(in_flight)}")
    assert in_flight, "no unary call was in flight at SIGTERM"

    # The restart, with the same data and fault plan: each watcher resumes from its
    # last revision. The held step runs again (adding no revision); cancelling then
    # brings CANCELLING and CANCELLED, each once, and nothing seen before.
    await asyncio.to_thread(server.restart)
    channel = grpc.aio.insecure_channel(server.address)
    stub = Stub(channel)
    before = {w.name: (w.last, w.seen[-1][1]) for w in watchers}
    resumed = [Watcher(w.name, w.held_step) for w in watchers]
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(r.run(stub, after_revision=before[r.name][0])) for r in resumed]
        for name in names:
            job = await stub.CancelCloneJob(
                spb.CancelCloneJobRequest(name=name), timeout=RPC_DEADLINE
            )
            assert job.state in (State.CANCELLING, State.CANCELLED)
        async with asyncio.timeout(STEP_TIMEOUT):
            await asyncio.gather(*tasks)
    for r in resumed:
        last, last_state = before[r.name]
        revisions = [revision for revision, _ in r.seen]
        states = [state for _, state in r.seen]
        assert r.code == grpc.StatusCode.OK, (r.name, r.code, r.details)
        assert revisions and revisions[0] > last, (r.name, last, revisions)
        assert revisions == sorted(set(revisions)), revisions
        assert states[-1] == State.CANCELLED and states.count(State.CANCELLED) == 1, states
        assert _transitions_into(states, State.CANCELLING, last_state) == 1, states
        # Nothing missed: the store holds no other change after `last`.
        again = Watcher(r.name, r.held_step)
        await again.run(stub, after_revision=last)
        assert again.seen == r.seen
    await channel.close()


async def _health_watch(
    address: str, statuses: list[int], first: asyncio.Event
) -> grpc.StatusCode | None:
    async with grpc.aio.insecure_channel(address) as channel:
        call = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=120
        )
        try:
            async for response in call:
                statuses.append(response.status)
                first.set()
        except grpc.aio.AioRpcError as error:
            return error.code()
        return await call.code()


@pytest.mark.parametrize("grace", [1.0, 4.0])
async def test_shutdown_drains_calls_in_flight_for_the_grace_period_then_stops(
    servers: ServerPool, data_dir: Path, sample_vm: Callable[..., Path], grace: float
) -> None:
    """A call that never ends (a health watch) keeps the drain going exactly `grace`
    seconds: the server waits for calls in flight, and not for longer. A job watch
    ends UNAVAILABLE at once, not at the end of the drain."""
    sample_vm(data_dir)
    server = servers.start(data_dir, fault_plan=HOLDS, shutdown_grace=grace)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = Stub(channel)
        job = await stub.CreateCloneJob(
            spb.CreateCloneJobRequest(
                parent=VM1, clone_job_id="held-adapt-0", clone_job=vm_body("held-vm")
            ),
            timeout=RPC_DEADLINE,
        )
        watcher = Watcher(job.name, ADAPTING)
        statuses: list[int] = []
        serving = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            watching = group.create_task(watcher.run(stub))
            health = group.create_task(_health_watch(server.address, statuses, serving))
            async with asyncio.timeout(STEP_TIMEOUT):
                await watcher.held.wait()
                await serving.wait()
            exit_code, sent, exited = await _sigterm(server)
            async with asyncio.timeout(RPC_DEADLINE):
                await watching
                health_code = await health
    drained = exited - sent
    print(f"grace {grace} s: exit after {drained:.2f} s; health watch ended {health_code}")
    assert exit_code == 0, server.log_text()
    assert grace - 0.2 <= drained < grace + MARGIN
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
    assert watcher.code == grpc.StatusCode.UNAVAILABLE, (watcher.code, watcher.details)
    if grace >= 4.0:  # room to tell "at once" from "at the end of the drain"
        assert watcher.ended_at - sent < grace / 2
    assert not any(state in TERMINAL for _, state in watcher.seen)


@pytest.mark.xfail(
    strict=False,
    reason="upstream: a unary call that reaches the server as it stops fails CANCELLED (no"
    " details) instead of UNAVAILABLE: grpc core cancels calls not yet matched to a handler"
    " at shutdown (grpc/grpc#41785). The Python client retries such a bare CANCELLED for"
    " safe calls (client/retry.py); kept to notice when grpcio fixes it",
)
async def test_shutdown_refuses_calls_arriving_during_the_shutdown_with_unavailable(
    servers: ServerPool, data_dir: Path, sample_vm: Callable[..., Path]
) -> None:
    """Callers racing SIGTERM, over a few rounds of stop and restart (the race is
    timing-dependent): every call completes OK or is refused UNAVAILABLE."""
    sample_vm(data_dir)
    server = servers.start(data_dir, shutdown_grace=GRACE)
    async with grpc.aio.insecure_channel(server.address) as channel:
        job = await Stub(channel).CreateCloneJob(
            spb.CreateCloneJobRequest(parent=VM1, clone_job_id="j", clone_job=vm_body("j-vm")),
            timeout=RPC_DEADLINE,
        )
    outcomes: Counter[str] = Counter()
    details: dict[str, str] = {}
    for round_ in range(RACE_ROUNDS):
        if round_:
            await asyncio.to_thread(server.start)
        channels = [grpc.aio.insecure_channel(server.address) for _ in range(4)]
        stubs = [Stub(channel) for channel in channels]
        try:
            load = UnaryLoad(stubs, [job.name])
            async with asyncio.TaskGroup() as group:
                for i in range(LOAD_WORKERS):
                    group.create_task(load.run(i))
                async with asyncio.timeout(STEP_TIMEOUT):
                    await load.warm.wait()
                exit_code, _, _ = await _sigterm(server)
                load.stop.set()
        finally:
            for channel in channels:
                await channel.close()
        assert exit_code == 0
        outcomes.update(code.name for _, _, code in load.calls)
        details.update(load.details)
        if set(outcomes) - {"OK", "UNAVAILABLE"}:
            break
    print(f"{LOAD_WORKERS} callers around SIGTERM, {round_ + 1} rounds: {dict(outcomes)}")
    assert set(outcomes) <= {"OK", "UNAVAILABLE"}, (outcomes, details)
