"""Crash test: SIGKILL the server at random moments under a stream of calls.

A few client tasks create jobs (VM and disks-only targets, some sharing a
vm_name so that their instances conflict, some planned to fail or to hit ENOSPC
in a random step, a few held until cancelled), cancel jobs and watch jobs, while
the controller kills the server 0.05 to 0.5 s after each restart and starts it
again on the same data directory. After the last restart every job is followed
to its end, and then:

- every job whose Create was acknowledged exists (lost = 0);
- every job is terminal, and in the state its plan allows;
- every watcher saw strictly increasing revisions across its reconnects
  (resumed with `after_revision` = the last revision seen), every transition
  the job went through, and a terminal last message;
- every file under targets/ belongs to a SUCCEEDED job (orphans = 0), and no
  SUCCEEDED job misses one of its files.

`tests/stress.py` runs the same scenario for longer. The seed is printed; set
CLONEJOB_CRASH_SEED to replay a run's choices (the timing is the machine's).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import time
import uuid
import xml.etree.ElementTree as ET
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import grpc
import grpc.aio
import pytest
from clonejob_rpc import (
    ADAPTING,
    DISKS_ZONE,
    INSTANTIATING,
    PREPARING,
    PROJECT,
    TERMINAL,
    VM1,
    ZONE,
    State,
    disks_body,
    job_error_info,
    running_step,
    vm_body,
)
from google.rpc import error_details_pb2, status_pb2

from clonejob_grpc import clone_job_pb2 as pb
from clonejob_grpc import clone_job_service_pb2 as spb
from clonejob_grpc import clone_job_service_pb2_grpc as spb_grpc

if TYPE_CHECKING:
    from conftest import ServerPool

VM2 = "projects/p1/locations/us-central1/sources/s1/migratingVms/vm2"
# parent → (disks, disk size, bios)
SAMPLE_VMS = {VM1: (2, "8MiB", False), VM2: (1, "8MiB", True)}

STEPS = {"prep": PREPARING, "adapt": ADAPTING, "inst": INSTANTIATING}
FAULT_PLAN = [
    *(
        {"match": f"cloneJobs/{action}-{short}-", "step": step, "action": action}
        for action in ("fail", "enospc")
        for short, step in STEPS.items()
    ),
    {"match": "cloneJobs/hold-prep-", "step": PREPARING, "action": "hold"},
    {"match": "cloneJobs/hold-adapt-", "step": ADAPTING, "action": "hold"},
]
# What a job of each kind ends as, unless it was cancelled.
FAULT_REASONS = {"fail": "INJECTED_FAULT", "enospc": "TARGET_STORAGE_FULL"}
SHARED_VM_NAMES = 3  # shared-0 … shared-2: their instances conflict
MAX_OPEN_HOLDS = 2  # held jobs take slots until cancelled

CI_KILLS = 30
CI_SECONDS = 90.0

RPC_DEADLINE = 20.0  # one unary call
CALL_BUDGET = 90.0  # one call retried over kills
RESTART_TIMEOUT = 90.0  # waiting for the next incarnation
FINAL_BUDGET = 30.0  # following one job to its end after the last restart
KILL_DELAY = (0.05, 0.5)

T = TypeVar("T")
Stub = spb_grpc.CloneJobServiceStub


class Process(Protocol):
    """What the scenario needs of conftest's `Server`."""

    @property
    def address(self) -> str: ...
    @property
    def targets(self) -> Path: ...
    def start(self) -> object: ...
    def kill(self) -> int: ...


# -- the server being killed, and the channels that follow it --


@dataclass(frozen=True, slots=True)
class Incarnation:
    """One run of the server process (each restart listens on a new port)."""

    generation: int
    channel: grpc.aio.Channel
    stub: Stub


class CrashingServer:
    """The server under test; the controller kills and restarts it, clients follow."""

    def __init__(self, server: Process) -> None:
        self.server = server
        self.generation = 0
        self.kills = 0
        self.up = asyncio.Event()
        self._current: Incarnation | None = None
        self._channels: dict[int, grpc.aio.Channel] = {}

    def attach(self) -> None:
        """Follow the (re)started process: a new channel to its new port."""
        self.generation += 1
        channel = grpc.aio.insecure_channel(self.server.address)
        self._channels[self.generation] = channel
        self._current = Incarnation(self.generation, channel, Stub(channel))
        self.up.set()

    async def current(self) -> Incarnation:
        """The live incarnation, waiting for a restart if the server is down."""
        async with asyncio.timeout(RESTART_TIMEOUT):
            await self.up.wait()
        assert self._current is not None
        return self._current

    async def kill(self) -> None:
        self.up.clear()
        await asyncio.to_thread(self.server.kill)
        self.kills += 1

    async def start(self) -> None:
        await asyncio.to_thread(self.server.start)
        self.attach()
        # Calls on a channel two restarts old ended long ago: the process behind it is gone.
        old = self._channels.pop(self.generation - 2, None)
        if old is not None:
            await old.close()

    def interrupted(self, error: BaseException, inc: Incarnation) -> bool:
        """Whether a call failed because the server was killed under it."""
        if isinstance(error, grpc.aio.UsageError):  # its channel was closed after a restart
            return inc.generation != self.generation
        if not isinstance(error, grpc.aio.AioRpcError):
            return False
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            return True
        if error.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
            return inc.generation != self.generation or not self.up.is_set()
        return False

    async def retrying(self, call: Callable[[Stub], Awaitable[T]], *, budget: float) -> T:
        """`call` on the live server, again after each kill, for `budget` seconds at most."""
        deadline = time.monotonic() + budget
        while True:
            inc = await self.current()
            try:
                return await call(inc.stub)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError) as error:
                if not self.interrupted(error, inc) or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.02)  # backoff: the kill may not be noticed yet

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


# -- what the clients did and saw --


@dataclass(frozen=True, slots=True)
class JobPlan:
    """A job the scenario tried to create, and what it should end as."""

    job_id: str
    parent: str
    kind: str  # vm, shared, disks, fail, enospc, hold
    step: str  # the faulty step, for fail/enospc/hold
    vm_name: str  # empty for a disks-only target
    request_id: str

    @property
    def name(self) -> str:
        return f"{self.parent}/cloneJobs/{self.job_id}"

    def body(self) -> pb.CloneJob:
        return vm_body(self.vm_name) if self.vm_name else disks_body()

    def steps(self) -> tuple[str, ...]:
        return (PREPARING, ADAPTING, INSTANTIATING) if self.vm_name else (PREPARING,)


@dataclass(slots=True)
class WatchRecord:
    """Everything one watcher saw of one job, over all its reconnects."""

    name: str
    seen: list[tuple[int, int]] = field(default_factory=list)  # (revision, state)
    heartbeats: int = 0
    reconnects: int = 0
    done: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def last(self) -> int:
        return self.seen[-1][0] if self.seen else 0

    def add(self, message: spb.WatchCloneJobResponse) -> None:
        if message.heartbeat:
            self.heartbeats += 1
            if message.revision != self.last:
                self.problems.append(f"heartbeat at {message.revision}, last seen {self.last}")
            return
        if self.done:
            self.problems.append(f"revision {message.revision} after the terminal state")
        if message.revision <= self.last:
            self.problems.append(
                f"revision {message.revision} after {self.last} (duplicate or out of order)"
            )
        self.seen.append((message.revision, message.clone_job.state))
        if message.clone_job.state in TERMINAL:
            self.done = True


@dataclass(slots=True)
class CrashReport:
    seed: int
    kills: int = 0
    plans: dict[str, JobPlan] = field(default_factory=dict)  # every job tried, by name
    acknowledged: set[str] = field(default_factory=set)
    cancel_attempted: set[str] = field(default_factory=set)
    cancel_acknowledged: set[str] = field(default_factory=set)
    cancel_refused: set[str] = field(default_factory=set)  # FAILED_PRECONDITION: finished
    duplicates_refused: int = 0
    records: list[WatchRecord] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    final: dict[str, pb.CloneJob] = field(default_factory=dict)  # every job, at its end
    lost: list[str] = field(default_factory=list)
    wrong_states: list[str] = field(default_factory=list)
    watch_problems: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # two SUCCEEDED jobs, one instance

    def summary(self) -> str:
        states = Counter(job.state for job in self.final.values())
        return (
            f"crash-test: kills={self.kills} jobs={len(self.final)}"
            f" acknowledged={len(self.acknowledged)} lost={len(self.lost)}"
            f" orphans={len(self.orphans)} succeeded={states[State.SUCCEEDED]}"
            f" failed={states[State.FAILED]} cancelled={states[State.CANCELLED]}"
            f" seed={self.seed}"
        )

    def details(self) -> str:
        reconnects = sum(r.reconnects for r in self.records)
        lines = [
            f"calls: {dict(sorted(self.calls.items()))}",
            f"watches: {len(self.records)} ({reconnects} reconnects,"
            f" {sum(len(r.seen) for r in self.records)} changes,"
            f" {sum(r.heartbeats for r in self.records)} heartbeats)",
            f"failed jobs by reason: {dict(self.failure_reasons())}",
            f"cancels: {len(self.cancel_acknowledged)} acknowledged,"
            f" {len(self.cancel_refused)} refused (finished);"
            f" duplicate creates refused: {self.duplicates_refused}",
        ]
        for title, items in (
            ("unexpected errors", self.unexpected),
            ("lost", self.lost),
            ("wrong final states", self.wrong_states),
            ("watch problems", self.watch_problems),
            ("orphan files", self.orphans),
            ("missing files", self.missing),
            ("instance conflicts", self.conflicts),
        ):
            if items:
                lines.append(f"{title} ({len(items)}): " + "; ".join(items[:20]))
        return "\n".join(lines)

    def failure_reasons(self) -> Counter[str]:
        return Counter(
            job_error_info(job).reason for job in self.final.values() if job.state == State.FAILED
        )

    def check(self, *, min_kills: int) -> None:
        assert self.kills >= min_kills, f"only {self.kills} kills in the time allowed"
        assert self.acknowledged, "no Create was acknowledged"
        assert self.lost == [], self.details()
        assert self.orphans == [], self.details()
        assert self.missing == [], self.details()
        assert all(job.state in TERMINAL for job in self.final.values()), self.details()
        assert self.wrong_states == [], self.details()
        assert self.watch_problems == [], self.details()
        assert self.conflicts == [], self.details()
        assert self.unexpected == [], self.details()


# -- the clients --


async def _pace(stop: asyncio.Event, delay: float) -> None:
    """Wait `delay` seconds, or less when the run stops."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)


def _instance_name_taken(error: BaseException) -> bool:
    """ALREADY_EXISTS with reason INSTANCE_NAME_TAKEN: a shared name refused at Create."""
    if not isinstance(error, grpc.aio.AioRpcError):
        return False
    if error.code() != grpc.StatusCode.ALREADY_EXISTS:
        return False
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info.reason == "INSTANCE_NAME_TAKEN"
    return False


def _code(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return f"{type(error).__name__}: {error}"


class CrashScenario:
    def __init__(self, cluster: CrashingServer, report: CrashReport) -> None:
        self.cluster = cluster
        self.report = report
        self._counter = 0
        self._recent: deque[str] = deque(maxlen=24)
        self._holds: list[str] = []  # acknowledged held jobs not yet cancelled

    # creators

    def _plan(self, rng: random.Random) -> JobPlan:
        self._counter += 1
        n = self._counter
        parent = rng.choice(list(SAMPLE_VMS))
        request_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        roll = rng.random()
        step, vm_name = "", ""
        if roll < 0.05 and len(self._holds) < MAX_OPEN_HOLDS:
            kind, step = "hold", rng.choice(["prep", "adapt"])
        elif roll < 0.22:
            kind, step = "fail", rng.choice(list(STEPS))
        elif roll < 0.39:
            kind, step = "enospc", rng.choice(list(STEPS))
        elif roll < 0.52:
            kind = "shared"
            vm_name = f"shared-{rng.randrange(SHARED_VM_NAMES)}"
        elif roll < 0.76:
            kind = "disks"
        else:
            kind = "vm"
        if kind in ("vm", "hold") or (kind in FAULT_REASONS and rng.random() < 0.7):
            vm_name = f"vm-{n}"
        job_id = f"{kind}-{step}-{n}" if step else f"{kind}-{n}"
        return JobPlan(
            job_id=job_id,
            parent=parent,
            kind=kind,
            step=step,
            vm_name=vm_name,
            request_id=request_id,
        )

    async def creator(self, rng: random.Random, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.report.acknowledged and rng.random() < 0.08:
                await self._create_duplicate(rng)
            else:
                await self._create(self._plan(rng))
            await _pace(stop, rng.uniform(0.03, 0.15))

    async def _create(self, plan: JobPlan) -> None:
        self.report.plans[plan.name] = plan
        request = spb.CreateCloneJobRequest(
            parent=plan.parent,
            clone_job_id=plan.job_id,
            clone_job=plan.body(),
            request_id=plan.request_id,
        )

        async def call(stub: Stub) -> pb.CloneJob:
            self.report.calls["create"] += 1
            return await stub.CreateCloneJob(request, timeout=RPC_DEADLINE)

        try:
            # The same request_id on every attempt: a retry gets the job created first.
            job = await self.cluster.retrying(call, budget=CALL_BUDGET)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError) as error:
            if plan.kind == "shared" and _instance_name_taken(error):
                # Found at Create, before any copy: no job, nothing to clean up.
                self.report.calls["create-name-taken"] += 1
                del self.report.plans[plan.name]
                return
            self.report.unexpected.append(f"create {plan.job_id}: {_code(error)}")
            return
        if job.name != plan.name:
            self.report.unexpected.append(f"create {plan.job_id} returned {job.name}")
        self.report.acknowledged.add(plan.name)
        self._recent.append(plan.name)
        if plan.kind == "hold":
            self._holds.append(plan.name)

    async def _create_duplicate(self, rng: random.Random) -> None:
        """The id of an acknowledged job with another request_id: ALREADY_EXISTS."""
        plan = self.report.plans[rng.choice(sorted(self.report.acknowledged))]
        request = spb.CreateCloneJobRequest(
            parent=plan.parent,
            clone_job_id=plan.job_id,
            clone_job=plan.body(),
            request_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        )
        inc = await self.cluster.current()
        self.report.calls["create-duplicate"] += 1
        try:
            job = await inc.stub.CreateCloneJob(request, timeout=RPC_DEADLINE)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError) as error:
            if isinstance(error, grpc.aio.AioRpcError) and (
                error.code() == grpc.StatusCode.ALREADY_EXISTS
            ):
                self.report.duplicates_refused += 1
            elif not self.cluster.interrupted(error, inc):
                self.report.unexpected.append(f"duplicate {plan.job_id}: {_code(error)}")
            return
        self.report.unexpected.append(f"duplicate create of {plan.job_id} returned {job.name}")

    # picking jobs

    def _pick(self, rng: random.Random) -> str | None:
        """Mostly the newest jobs, the likeliest to be running when the server is killed."""
        if self._recent and rng.random() < 0.5:
            return self._recent[-1 - rng.randrange(min(4, len(self._recent)))]
        if self._recent and rng.random() < 0.5:
            return rng.choice(list(self._recent))
        if self.report.acknowledged:
            return rng.choice(sorted(self.report.acknowledged))
        return None

    # cancellers

    async def canceller(self, rng: random.Random, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _pace(stop, rng.uniform(0.05, 0.25))
            if self._holds and rng.random() < 0.1:  # held jobs live a second or two
                name: str | None = self._holds[0]
            else:
                name = self._pick(rng)
            if name is not None:
                await self.cancel(name)

    async def cancel(self, name: str) -> None:
        """Cancel once; a kill may take the answer (not the cancel) away."""
        self.report.cancel_attempted.add(name)
        inc = await self.cluster.current()
        self.report.calls["cancel"] += 1
        try:
            job = await inc.stub.CancelCloneJob(
                spb.CancelCloneJobRequest(name=name), timeout=RPC_DEADLINE
            )
        except (grpc.aio.AioRpcError, grpc.aio.UsageError) as error:
            if isinstance(error, grpc.aio.AioRpcError) and (
                error.code() == grpc.StatusCode.FAILED_PRECONDITION
            ):
                self.report.cancel_refused.add(name)
            elif not self.cluster.interrupted(error, inc):
                self.report.unexpected.append(f"cancel {name}: {_code(error)}")
            return
        if job.state not in (State.CANCELLING, State.CANCELLED):
            self.report.unexpected.append(f"cancel {name} returned {State.Name(job.state)}")
            return
        self.report.cancel_acknowledged.add(name)
        if name in self._holds:
            self._holds.remove(name)

    # watchers

    async def watcher(self, rng: random.Random, stop: asyncio.Event) -> None:
        while not stop.is_set():
            # Held jobs stay open across kills (and idle: heartbeats).
            if self._holds and rng.random() < 0.3:
                name: str | None = rng.choice(self._holds)
            else:
                name = self._pick(rng)
            if name is None:
                await _pace(stop, 0.05)
                continue
            record = WatchRecord(name)
            self.report.records.append(record)
            await self.follow(record, budget=rng.uniform(1.0, 4.0))
            await _pace(stop, rng.uniform(0.01, 0.05))

    async def follow(self, record: WatchRecord, *, budget: float) -> None:
        """Watch for `budget` seconds at most, resuming after each kill from the last
        revision seen; the record keeps what was seen, to be resumed later."""
        deadline = time.monotonic() + budget
        while not record.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            inc = await self.cluster.current()
            self.report.calls["watch"] += 1
            try:
                call = inc.stub.WatchCloneJob(
                    spb.WatchCloneJobRequest(name=record.name, after_revision=record.last),
                    timeout=remaining,
                )
                try:
                    async for message in call:
                        record.add(message)
                finally:
                    call.cancel()
            except (grpc.aio.AioRpcError, grpc.aio.UsageError) as error:
                if (
                    isinstance(error, grpc.aio.AioRpcError)
                    and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                    and time.monotonic() >= deadline - 0.5
                ):
                    return  # the budget is spent; resumed later
                if not self.cluster.interrupted(error, inc):
                    self.report.unexpected.append(f"watch {record.name}: {_code(error)}")
                    return
                record.reconnects += 1
                await asyncio.sleep(0.02)  # backoff: the kill may not be noticed yet
                continue
            if not record.done:
                record.problems.append(f"the stream ended OK after {record.last}, not terminal")
            return

    # the controller

    async def controller(self, rng: random.Random, *, kills: int, seconds: float) -> None:
        """Kill the server a random moment after each restart, `kills` times at most."""
        end = time.monotonic() + seconds
        while self.cluster.kills < kills and time.monotonic() < end:
            await asyncio.sleep(rng.uniform(*KILL_DELAY))  # the crash moment, by design
            await self.cluster.kill()
            await self.cluster.start()
        self.report.kills = self.cluster.kills

    # after the last restart

    async def settle(self) -> None:
        """Follow every job to its end, then compare what was seen with what is stored."""
        stub = (await self.cluster.current()).stub
        # Held jobs never end by themselves.
        for job in await list_every_job(stub):
            if "/cloneJobs/hold-" in job.name and job.state not in TERMINAL:
                await self.cancel(job.name)
        limit = asyncio.Semaphore(16)

        async def resume(record: WatchRecord) -> None:
            async with limit:
                await self.follow(record, budget=FINAL_BUDGET)

        unfinished = [r for r in self.report.records if not r.done]
        await asyncio.gather(*(resume(r) for r in unfinished))

        async def final(name: str) -> None:
            async with limit:
                try:
                    messages = await watch_all(stub, name, after_revision=0)
                except (grpc.aio.AioRpcError, AssertionError) as error:
                    self.report.unexpected.append(f"final watch of {name}: {_code(error)}")
                    self.report.final[name] = await stub.GetCloneJob(
                        spb.GetCloneJobRequest(name=name), timeout=RPC_DEADLINE
                    )
                else:
                    self.report.final[name] = messages[-1].clone_job

        names = [job.name for job in await list_every_job(stub)]
        if len(set(names)) != len(names):
            self.report.unexpected.append("List returned a job twice")
        await asyncio.gather(*(final(name) for name in names))

        async def history(record: WatchRecord) -> None:
            async with limit:
                await check_history(stub, record)

        await asyncio.gather(*(history(r) for r in self.report.records if r.seen))


async def list_every_job(stub: Stub) -> list[pb.CloneJob]:
    jobs: list[pb.CloneJob] = []
    for parent in SAMPLE_VMS:
        token = ""
        for _ in range(1000):
            page = await stub.ListCloneJobs(
                spb.ListCloneJobsRequest(parent=parent, page_size=200, page_token=token),
                timeout=RPC_DEADLINE,
            )
            jobs.extend(page.clone_jobs)
            token = page.next_page_token
            if not token:
                break
    return jobs


async def watch_all(
    stub: Stub, name: str, *, after_revision: int
) -> list[spb.WatchCloneJobResponse]:
    """Every change after `after_revision` up to the terminal state (the stream ends OK)."""
    call = stub.WatchCloneJob(
        spb.WatchCloneJobRequest(name=name, after_revision=after_revision),
        timeout=FINAL_BUDGET,
    )
    messages = [m async for m in call if not m.heartbeat]
    assert messages and messages[-1].clone_job.state in TERMINAL, "no terminal state"
    return messages


def _transition(job: pb.CloneJob) -> tuple[object, ...]:
    """What a change may not be coalesced away for: the state and the steps' starts and ends."""
    return (
        job.state,
        tuple((s.WhichOneof("step"), s.HasField("end_time")) for s in job.steps),
    )


async def check_history(stub: Stub, record: WatchRecord) -> None:
    """The record holds every transition the store holds after its first message."""
    first, state = record.seen[0]
    if state in TERMINAL:
        return  # nothing came after
    try:
        stored = await watch_all(stub, record.name, after_revision=first)
    except (grpc.aio.AioRpcError, AssertionError) as error:
        record.problems.append(f"watching again after {first}: {_code(error)}")
        return
    seen = {revision for revision, _ in record.seen}
    stored_revisions = {m.revision for m in stored}
    problems = record.problems
    if not seen - {first} <= stored_revisions:
        problems.append(f"revisions never stored: {sorted(seen - {first} - stored_revisions)}")
    previous: tuple[object, ...] | None = None
    for message in stored:
        key = _transition(message.clone_job)
        if key != previous and message.revision not in seen:
            step = running_step(message.clone_job) or "-"
            problems.append(
                f"missed revision {message.revision} ({State.Name(message.clone_job.state)}/{step})"
            )
        previous = key


# -- the checks --


def uid(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:8]


DISK_FILE = re.compile(r"^(?P<base>[a-z][a-z0-9-]*)-disk(?P<k>[0-9]+)-(?P<uid>[0-9a-f]{8})\.img$")


def _xml_owner(path: Path) -> str | None:
    try:
        owner = ET.parse(path).getroot().find("metadata/{urn:clonejob}owner")
    except (OSError, ET.ParseError):
        return None
    return None if owner is None else owner.text


def _json_owner(path: Path) -> str | None:
    try:
        owner = json.loads(path.read_text()).get("clone_job")
    except (OSError, ValueError, AttributeError):
        return None
    return owner if isinstance(owner, str) else None


def file_owner(path: Path, jobs: dict[str, pb.CloneJob]) -> pb.CloneJob | None:
    """The job a file under targets/ belongs to, by the naming scheme; None if no job's."""
    by_uid = {uid(name): job for name, job in jobs.items()}
    if path.parent.name == "disks":
        match = DISK_FILE.match(path.name)
        if match is None:
            return None
        job = by_uid.get(match["uid"])
        if job is None or match["base"] not in (_vm_name(job), job.name.rsplit("/", 1)[1]):
            return None
        return job
    if path.parent.name == "instances" and path.suffix in (".json", ".xml"):
        owner = _json_owner(path) if path.suffix == ".json" else _xml_owner(path)
        job = jobs.get(owner or "")
        if job is None or _vm_name(job) != path.stem:
            return None
        return job
    return None  # a stray .tmp, or anything else


def _vm_name(job: pb.CloneJob) -> str:
    if job.HasField("compute_engine_target_details"):
        return job.compute_engine_target_details.vm_name
    return ""


def expected_files(targets: Path, job: pb.CloneJob) -> list[Path]:
    """The files a SUCCEEDED job keeps."""
    parent = job.name.rsplit("/cloneJobs/", 1)[0]
    disks = SAMPLE_VMS[parent][0]
    vm_name = _vm_name(job)
    zone = targets / "projects" / PROJECT / "zones" / (ZONE if vm_name else DISKS_ZONE)
    base = vm_name or job.name.rsplit("/", 1)[1]
    files = [zone / "disks" / f"{base}-disk{k}-{uid(job.name)}.img" for k in range(disks)]
    if vm_name:
        files += [zone / "instances" / f"{vm_name}.json", zone / "instances" / f"{vm_name}.xml"]
    return files


def check_files(targets: Path, report: CrashReport) -> None:
    jobs = report.final
    for path in sorted(targets.rglob("*")) if targets.exists() else ():
        if path.is_dir():
            continue
        owner = file_owner(path, jobs)
        if owner is None or owner.state != State.SUCCEEDED:
            state = "no job" if owner is None else State.Name(owner.state)
            report.orphans.append(f"{path.relative_to(targets)} ({state})")
    for job in jobs.values():
        if job.state != State.SUCCEEDED:
            continue
        for path in expected_files(targets, job):
            if not path.exists():
                report.missing.append(f"{path.relative_to(targets)} of {job.name}")
            elif path.parent.name == "instances" and file_owner(path, jobs) is not job:
                report.missing.append(f"{path.relative_to(targets)} is not {job.name}'s")
    instances: dict[str, list[str]] = {}
    for job in jobs.values():
        if job.state == State.SUCCEEDED and _vm_name(job):
            instances.setdefault(_vm_name(job), []).append(job.name)
    report.conflicts += [f"{vm}: {owners}" for vm, owners in instances.items() if len(owners) > 1]


def _allowed_states(plan: JobPlan) -> dict[int, str | None]:
    """The final states a job may have if never cancelled, each with its error reason."""
    if plan.kind == "hold":
        return {}  # held until cancelled
    if plan.kind in FAULT_REASONS and STEPS[plan.step] in plan.steps():
        return {State.FAILED: FAULT_REASONS[plan.kind]}
    if plan.kind == "shared":
        return {State.SUCCEEDED: None, State.FAILED: "INSTANCE_ALREADY_EXISTS"}
    return {State.SUCCEEDED: None}


def check_states(report: CrashReport) -> None:
    for name in sorted(report.acknowledged):
        if name not in report.final:
            report.lost.append(name)
    for name, job in sorted(report.final.items()):
        plan = report.plans.get(name)
        if plan is None:
            report.wrong_states.append(f"{name}: a job nobody created")
            continue
        state = State.Name(job.state)
        allowed = _allowed_states(plan)
        reason = job_error_info(job).reason if job.state == State.FAILED else None
        if name in report.cancel_acknowledged:
            ok = job.state == State.CANCELLED
        elif name in report.cancel_refused:  # finished before the cancel
            ok = job.state in allowed and job.state != State.CANCELLED
        elif name in report.cancel_attempted:
            ok = job.state == State.CANCELLED or job.state in allowed
        else:
            ok = job.state in allowed
        if ok and job.state in allowed and allowed[job.state] not in (None, reason):
            ok = False
        if not ok:
            report.wrong_states.append(f"{plan.job_id}: {state} {reason or ''}".strip())
    for record in report.records:
        report.watch_problems += [f"{record.name}: {p}" for p in record.problems]
        if not record.done:
            report.watch_problems.append(f"{record.name}: never saw a terminal state")
        elif record.seen[-1][1] != report.final[record.name].state:
            report.watch_problems.append(f"{record.name}: watched end differs from the stored")


async def run_crash(
    server: Process, *, kills: int, seconds: float, seed: int, workers: int = 3
) -> CrashReport:
    """The whole scenario against a started server; the report, checked by the caller."""
    report = CrashReport(seed=seed)
    cluster = CrashingServer(server)
    cluster.attach()
    scenario = CrashScenario(cluster, report)
    stop = asyncio.Event()

    def rng(role: str, i: int = 0) -> random.Random:
        return random.Random(f"{seed}/{role}/{i}")

    try:
        async with asyncio.TaskGroup() as group:
            for i in range(workers):
                group.create_task(scenario.creator(rng("create", i), stop))
                group.create_task(scenario.watcher(rng("watch", i), stop))
            for i in range(max(1, workers - 1)):
                group.create_task(scenario.canceller(rng("cancel", i), stop))
            try:
                await scenario.controller(rng("kill"), kills=kills, seconds=seconds)
            finally:
                stop.set()
        await scenario.settle()
    finally:
        await cluster.close()
    check_states(report)
    check_files(server.targets, report)
    return report


def crash_seed() -> int:
    value = os.environ.get("CLONEJOB_CRASH_SEED")
    return int(value) if value else random.SystemRandom().randrange(2**32)


def write_sample_vms(data_dir: Path, write: Callable[..., Path]) -> None:
    for name, (disks, size, bios) in SAMPLE_VMS.items():
        write(data_dir, name, disks=disks, disk_size=size, bios=bios)


@pytest.mark.slow
@pytest.mark.timeout(170)
async def test_crash_loses_no_acknowledged_job_and_orphans_no_file(
    servers: ServerPool, data_dir: Path, sample_vm: Callable[..., Path]
) -> None:
    seed = crash_seed()
    print(f"crash-test seed={seed} (CLONEJOB_CRASH_SEED={seed} replays its choices)")
    write_sample_vms(data_dir, sample_vm)
    server = servers.start(
        data_dir, fault_plan=FAULT_PLAN, max_concurrent_jobs=4, heartbeat_interval=1
    )
    report = await run_crash(server, kills=CI_KILLS, seconds=CI_SECONDS, seed=seed)
    print(report.summary())
    print(report.details())
    report.check(min_kills=CI_KILLS)
