"""Chaos test: three replicas on one PostgreSQL, killed, paused, restarted and cut off
from the database at random, under a stream of creates, cancels and watches.

The crash test's scenario (tests/integration/test_crash.py: its job mix, fault
plan, watch records and checks) runs against three replicas sharing one fresh
database and one data directory, with `--lease-ttl 2`, and with `delay` faults
on top of the crash test's fail/enospc/hold plan so that steps last long enough
to be interrupted. Clients fail over: a call that fails UNAVAILABLE, runs past
its (short) deadline or finds its channel closed goes to another replica; a
Create carries a request_id, so that its retry elsewhere is idempotent, and is
acknowledged when some replica answered it OK; a watch that breaks, or stays
silent past three heartbeats (a paused replica), resumes on another replica
with `after_revision`. Meanwhile the controller, at random intervals, does one
of (each in turn, in a shuffled order): SIGKILL a replica then restart it;
SIGSTOP one for 2.5 to 5 s (past the TTL) then SIGCONT; SIGTERM one and start
it again; terminate every database connection of the test database. At most
two replicas are disturbed at a time: one is always up.

At the end every replica is running (resumed or restarted), every job is waited
for until it is terminal (bounded), and then:

- the crash test's checks: every acknowledged job exists (lost = 0), every job
  is terminal (stuck = 0) and in a state its plan allows, every file under
  targets/ belongs to a SUCCEEDED job (orphans = 0), no SUCCEEDED job misses one;
- every watcher's revisions are gapless and in order across its reconnects, and
  hold every transition the store holds after its first;
- the stored history (table clone_job_revisions) of every job: revisions 1, 2,
  … with none missing, each allowed by the state diagram, steps only appended
  in plan order and never repeated, a step's start never rewritten, steps' time
  intervals not overlapping, times never going backwards;
- no step of any job ran on two replicas at once with effect, as far as the
  servers' logs and the stored revisions tell (see `audit_leases`,
  `audit_steps` and LEASE_CHECKS): no epoch claimed twice, no revision
  committed by two processes, no commit of an epoch after its runner logged the
  loss, runner commits of a job in epoch order, no commit of an older epoch
  after a newer epoch's claim. An older runner still running (frozen) at a
  newer claim is counted as a fenced overlap. And, from the runners' step
  lines ("step K started/ended under lease epoch N (outcome)", "runner of
  lease epoch N ended (why)"): each step run is an interval, from its start
  line to its end line, or to the process's end when it "stopped" (its thread
  may run on until then), or to the SIGKILL's completion when its process was
  killed before logging the end. Intervals of two epochs of one job never
  overlap, except where the older epoch was already superseded (a newer claim
  logged before the overlap) and its step ended `lost` or `stopped`, or was
  cut by a SIGKILL, or lay frozen (its process paused when the overlap began,
  the overlap over within PAUSE_TAIL of the SIGCONT): counted as fenced step
  overlaps, since the fence kept them from committing (the commit checks
  above). Every started step logs its end and every claimed runner logs its
  end, unless its process was SIGKILLed.

A server ERROR line (a job that "stopped unexpectedly") fails the test too.

`test_chaos_connection_cuts_fail_no_job` is the cut alone, in a burst: every
connection cut every 70 ms for 6 s while plain jobs run; none may end FAILED.

`tests/chaos.py` runs the same for longer. The seed is printed; set
CLONEJOB_CHAOS_SEED to replay a run's choices (the timing is the machine's).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import math
import os
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import psycopg
import pytest
from clonejob_rpc import (
    ADAPTING,
    INSTANTIATING,
    PREPARING,
    TERMINAL,
    VM1,
    State,
    job_error_info,
    vm_body,
)
from conftest import write_sample_vm
from test_crash import (
    FAULT_PLAN,
    CrashReport,
    CrashScenario,
    Incarnation,
    JobPlan,
    WatchRecord,
    _code,
    _pace,
    check_files,
    check_states,
    list_every_job,
    write_sample_vms,
)

from client.launcher import Fleet, ServerProcess, ServerStartError, ServerStopError
from clonejob_grpc import clone_job_pb2 as pb
from clonejob_grpc import clone_job_service_pb2 as spb
from clonejob_grpc import clone_job_service_pb2_grpc as spb_grpc
from server.domain.job import ALLOWED_TRANSITIONS
from server.domain.job import State as JobState
from tests.pg import server_url, temporary_database_sync

REPLICAS = 3
TTL = 2.0  # --lease-ttl: short, so that takeovers happen within the run
SLOTS = 3  # --max-concurrent-jobs of each replica
# Slow jobs (a "-slow<key>" suffix on the id) wait this long at the start of one
# step, every time it runs: long enough for a kill or a pause to land in it.
SLOW = {"p": (PREPARING, 3.0), "a": (ADAPTING, 2.5), "i": (INSTANTIATING, 2.0)}
SLOW_SHARE = 0.45
CHAOS_FAULT_PLAN = [
    *FAULT_PLAN,
    *(
        {"match": f"-slow{key}", "step": step, "action": "delay", "seconds": seconds}
        for key, (step, seconds) in SLOW.items()
    ),
]

CI_SECONDS = 60.0

ACTIONS = ("kill", "pause", "restart", "cut")
ACTION_GAP = (0.4, 1.6)  # seconds between two actions of the controller
PAUSE = (2.5, 5.0)  # SIGSTOP for longer than the TTL
DOWN = (0.0, 1.5)  # a killed replica stays down this long before its restart
# A replica just resumed or restarted is left alone this long: time to notice the
# leases it lost and to take up work, before it is hit again.
REST = TTL
START_ATTEMPTS = 3

CREATORS = 2
WATCHERS = 3
CREATE_PACE = (0.2, 0.6)
CANCEL_PACE = (0.4, 1.2)
WATCH_BUDGET = (2.0, 10.0)  # one watcher follows one job this long, then another job
RPC_DEADLINE = 3.0  # one unary call: a paused replica costs this much, then failover
CALL_BUDGET = 60.0  # one call, failed over from replica to replica
HEARTBEAT = 1.0  # --heartbeat-interval
WATCH_IDLE = 3.5  # a watch silent this long is stalled: a paused replica
SETTLE_TIMEOUT = 60.0  # every job terminal after the chaos, at the latest
# Log times are truncated to the millisecond; the jobs' times are microseconds.
CLOCK_SLACK = 0.002

UNFINISHED = tuple(int(s) for s in JobState if not s.terminal)
PLAN_STEPS = {
    "vm": (PREPARING, ADAPTING, INSTANTIATING),
    "disks": (PREPARING,),
}

T = TypeVar("T")
Stub = spb_grpc.CloneJobServiceStub


def chaos_seed() -> int:
    value = os.environ.get("CLONEJOB_CHAOS_SEED")
    return int(value) if value else random.SystemRandom().randrange(2**32)


# -- what the controller did --


@dataclass(slots=True)
class Run:
    """One start of one replica: its process, its log, and what happened to it."""

    replica: int
    pid: int
    log: Path
    started: float  # wall clock (time.time(), as in the logs), once serving
    paused: list[tuple[float, float]] = field(default_factory=list)  # SIGSTOP … SIGCONT
    end: str = ""  # "killed" or "stopped"; "" while it runs
    end_sent: float | None = None  # SIGKILL or SIGTERM sent
    ended: float | None = None  # the process gone

    @property
    def name(self) -> str:
        return f"replica {self.replica} (pid {self.pid})"

    def paused_during(self, start: float, end: float) -> bool:
        return any(a <= end and b >= start for a, b in self.paused)


@dataclass(slots=True)
class ChaosLog:
    """What the controller did, with wall-clock times to set beside the servers' logs."""

    kills: int = 0
    pauses: int = 0
    graceful_restarts: int = 0
    restarts: int = 0  # starts after the first of each replica
    cuts: list[tuple[float, int]] = field(default_factory=list)  # (time, backends ended)
    runs: list[Run] = field(default_factory=list)
    start_failures: list[str] = field(default_factory=list)
    stop_problems: list[str] = field(default_factory=list)


# -- the replicas, as the clients see them --


class Replica:
    def __init__(self, index: int, server: ServerProcess) -> None:
        self.index = index
        self.server = server
        self.up = False  # serving, not paused, and no action of the controller on it
        self.rest_until = 0.0  # monotonic: not a victim before
        self.run: Run | None = None
        self.incarnations: list[Incarnation] = []

    @property
    def current(self) -> Incarnation | None:
        return self.incarnations[-1] if self.incarnations else None


class ChaosCluster:
    """The replicas under test. A client asks `current()` for a replica, in turn; a
    call that fails because its replica is dead, paused, stopping or cut off from
    the database goes to another one (`retrying`). Clients do not know which
    replicas are up: they find out as real clients do."""

    def __init__(self, servers: Sequence[ServerProcess]) -> None:
        self.replicas = [Replica(i, s) for i, s in enumerate(servers)]
        self.failovers: Counter[str] = Counter()
        self._generation = 0
        self._turn = 0
        self._owner: dict[int, Replica] = {}

    def attach(self, replica: Replica) -> None:
        """Follow a (re)started replica: a new channel to its new port."""
        self._generation += 1
        channel = grpc.aio.insecure_channel(replica.server.address)
        inc = Incarnation(self._generation, channel, Stub(channel))
        self._owner[inc.generation] = replica
        replica.incarnations.append(inc)

    async def retire(self, replica: Replica) -> None:
        # Calls on a channel two restarts old ended long ago: the process behind it is gone.
        if len(replica.incarnations) > 2:
            old = replica.incarnations.pop(0)
            await old.channel.close()

    async def current(self, avoid: Incarnation | None = None) -> Incarnation:
        """The next replica in turn, other than `avoid`'s."""
        skip = None if avoid is None else self._owner[avoid.generation]
        for _ in range(2 * len(self.replicas)):
            self._turn += 1
            replica = self.replicas[self._turn % len(self.replicas)]
            if replica.current is not None and replica is not skip:
                return replica.current
        raise AssertionError("no replica was ever started")

    def interrupted(self, error: BaseException, inc: Incarnation) -> bool:
        """Whether a call failed because of its replica (dead, paused, stopping, cut
        off from the database), so that another replica should be tried."""
        if isinstance(error, grpc.aio.UsageError):  # its channel was closed after a restart
            return True
        if not isinstance(error, grpc.aio.AioRpcError):
            return False
        code = error.code()
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return True
        if code == grpc.StatusCode.CANCELLED:  # its channel closed, or its process stopping
            replica = self._owner[inc.generation]
            return replica.current is not inc or not replica.up
        return False

    async def retrying(self, call: Callable[[Stub], Awaitable[T]], *, budget: float) -> T:
        """`call` on one replica after another until one answers, for `budget` s at most."""
        deadline = time.monotonic() + budget
        avoid: Incarnation | None = None
        while True:
            inc = await self.current(avoid)
            try:
                return await call(inc.stub)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError) as error:
                if not self.interrupted(error, inc) or time.monotonic() > deadline:
                    raise
                self.failovers[_reason(error)] += 1
            avoid = inc
            await asyncio.sleep(0.02)  # backoff: all may be cut off from the database

    async def close(self) -> None:
        for replica in self.replicas:
            for inc in replica.incarnations:
                await inc.channel.close()
            replica.incarnations.clear()


def _reason(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code().name
    return type(error).__name__


# -- the controller --


def terminate_backends(database: str) -> int:
    """End every connection to `database` (from the maintenance database); how many."""
    with psycopg.connect(server_url(), autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return sum(1 for (ended,) in rows if ended)


class Controller:
    """Kills, pauses, restarts replicas and cuts their database connections."""

    def __init__(self, cluster: ChaosCluster, database: str, log: ChaosLog) -> None:
        self.cluster = cluster
        self.database = database
        self.log = log

    async def start(self, replica: Replica) -> None:
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                await asyncio.to_thread(replica.server.start)
                break
            except ServerStartError as error:
                tail = " | ".join(error.log.strip().splitlines()[-3:])
                self.log.start_failures.append(
                    f"replica {replica.index} start {attempt}: {error.reason}: {tail[-400:]}"
                )
                if attempt == START_ATTEMPTS:
                    raise
        server = replica.server
        replica.run = Run(replica.index, server.pid, server.log_path, time.time())
        self.log.runs.append(replica.run)
        self.cluster.attach(replica)
        await self.cluster.retire(replica)
        replica.rest_until = time.monotonic() + REST
        replica.up = True

    async def run(self, rng: random.Random, *, seconds: float) -> None:
        """One action every ACTION_GAP seconds for `seconds`; returns once every action
        is over (each paused replica resumed, each killed or stopped one restarted)."""
        end = time.monotonic() + seconds
        bag: list[str] = []
        async with asyncio.TaskGroup() as actions:
            while time.monotonic() < end:
                await asyncio.sleep(rng.uniform(*ACTION_GAP))  # the moment, by design
                if not bag:
                    bag = list(ACTIONS)
                    rng.shuffle(bag)
                if bag[-1] == "cut":
                    bag.pop()
                    actions.create_task(self.cut())
                    continue
                idle = [r for r in self.cluster.replicas if r.up]
                rested = [r for r in idle if r.rest_until <= time.monotonic()]
                if len(idle) < 2 or not rested:
                    continue  # the last replica up stays up
                kind = bag.pop()
                victim = rng.choice(rested)
                victim.up = False
                own = random.Random(rng.getrandbits(64))
                actions.create_task(self.act(kind, victim, own))

    async def act(self, kind: str, replica: Replica, rng: random.Random) -> None:
        run = replica.run
        assert run is not None
        server = replica.server
        if kind == "pause":
            began = time.time()
            server.pause()
            await asyncio.sleep(rng.uniform(*PAUSE))
            server.resume()
            run.paused.append((began, time.time()))
            self.log.pauses += 1
            replica.rest_until = time.monotonic() + REST
            replica.up = True
            return
        run.end_sent = time.time()
        if kind == "kill":
            run.end = "killed"
            await asyncio.to_thread(server.kill)
            self.log.kills += 1
            run.ended = time.time()
            await asyncio.sleep(rng.uniform(*DOWN))
        else:
            run.end = "stopped"
            try:
                code = await asyncio.to_thread(server.stop)
            except ServerStopError as error:
                self.log.stop_problems.append(f"{run.name}: {str(error)[:300]}")
            else:
                if code != 0:
                    self.log.stop_problems.append(f"{run.name}: SIGTERM exit code {code}")
            run.ended = time.time()
            self.log.graceful_restarts += 1
        await self.start(replica)
        self.log.restarts += 1

    async def cut(self) -> None:
        ended = await asyncio.to_thread(terminate_backends, self.database)
        self.log.cuts.append((time.time(), ended))


# -- the clients --


class ChaosScenario(CrashScenario):
    """The crash test's clients (job mix, picking, settling), failing over between
    replicas, with short deadlines and with watches that notice a paused replica."""

    cluster: ChaosCluster

    def _plan(self, rng: random.Random) -> JobPlan:
        plan = super()._plan(rng)
        if rng.random() >= SLOW_SHARE:
            return plan
        key = rng.choice([k for k, (step, _) in SLOW.items() if step in plan.steps()])
        return dataclasses.replace(plan, job_id=f"{plan.job_id}-slow{key}")

    async def creator(self, rng: random.Random, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.report.acknowledged and rng.random() < 0.05:
                await self._create_duplicate(rng)
            else:
                await self._create(self._plan(rng))
            await _pace(stop, rng.uniform(*CREATE_PACE))

    async def canceller(self, rng: random.Random, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _pace(stop, rng.uniform(*CANCEL_PACE))
            if self._holds and rng.random() < 0.3:  # held jobs live a few seconds
                name: str | None = self._holds[0]
            else:
                name = self._pick(rng)
            if name is not None:
                await self.cancel(name)

    async def cancel(self, name: str) -> None:
        """Cancel, failing over. FAILED_PRECONDITION means the job had SUCCEEDED or
        FAILED, even after an earlier attempt was interrupted: an attempt that
        did commit would have left it CANCELLING or CANCELLED, which a retry
        answers OK."""
        self.report.cancel_attempted.add(name)

        async def call(stub: Stub) -> pb.CloneJob:
            self.report.calls["cancel"] += 1
            return await stub.CancelCloneJob(
                spb.CancelCloneJobRequest(name=name), timeout=RPC_DEADLINE
            )

        try:
            job = await self.cluster.retrying(call, budget=CALL_BUDGET)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError) as error:
            if isinstance(error, grpc.aio.AioRpcError) and (
                error.code() == grpc.StatusCode.FAILED_PRECONDITION
            ):
                self.report.cancel_refused.add(name)
            else:
                self.report.unexpected.append(f"cancel {name}: {_code(error)}")
            return
        if job.state not in (State.CANCELLING, State.CANCELLED):
            self.report.unexpected.append(f"cancel {name} returned {State.Name(job.state)}")
            return
        self.report.cancel_acknowledged.add(name)
        if name in self._holds:
            self._holds.remove(name)

    async def watcher(self, rng: random.Random, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self._holds and rng.random() < 0.3:
                name: str | None = rng.choice(self._holds)
            else:
                name = self._pick(rng)
            if name is None:
                await _pace(stop, 0.05)
                continue
            record = WatchRecord(name)
            self.report.records.append(record)
            await self.follow(record, budget=rng.uniform(*WATCH_BUDGET))
            await _pace(stop, rng.uniform(0.01, 0.05))

    async def follow(self, record: WatchRecord, *, budget: float) -> None:
        """Watch for `budget` seconds at most; when the stream breaks or goes silent
        (no heartbeat for WATCH_IDLE s), resume on another replica after the last
        revision seen. The record keeps what was seen, to be resumed later."""
        deadline = time.monotonic() + budget
        avoid: Incarnation | None = None
        while not record.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            inc = await self.cluster.current(avoid)
            self.report.calls["watch"] += 1
            try:
                call = inc.stub.WatchCloneJob(
                    spb.WatchCloneJobRequest(name=record.name, after_revision=record.last),
                    timeout=remaining,
                )
                try:
                    while True:
                        async with asyncio.timeout(WATCH_IDLE):
                            message = await call.read()
                        if message is grpc.aio.EOF:
                            break
                        record.add(message)
                finally:
                    call.cancel()
            except TimeoutError:
                self.report.calls["watch resumed after a silence"] += 1
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
                self.report.calls[f"watch resumed after {_reason(error)}"] += 1
            else:
                if not record.done:
                    record.problems.append(f"the stream ended OK after {record.last}")
                return
            record.reconnects += 1
            avoid = inc
            await asyncio.sleep(0.02)

    async def finish(self, store_url: str, stuck: list[str]) -> None:
        """End held jobs, wait (bounded) until no job is unfinished, then follow every
        job to its end as the crash test does; the names of jobs left unfinished
        go to `stuck`."""
        stub = (await self.cluster.current()).stub
        for job in await list_every_job(stub):
            if "/cloneJobs/hold-" in job.name and job.state not in TERMINAL:
                await self.cancel(job.name)
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while unfinished := await asyncio.to_thread(unfinished_jobs, store_url):
            if time.monotonic() > deadline:
                stuck.extend(unfinished)
                break
            await asyncio.sleep(0.2)  # polling another process's state, with a deadline
        if stuck:  # their watches would each wait out their budget: take them as they are
            for job in await list_every_job(stub):
                self.report.final[job.name] = job
            return
        await self.settle()


def unfinished_jobs(store_url: str) -> list[str]:
    with psycopg.connect(store_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT name FROM clone_jobs WHERE state = ANY(%s) ORDER BY name", (list(UNFINISHED),)
        ).fetchall()
    return [name for (name,) in rows]


def check_gapless(records: Iterable[WatchRecord]) -> list[str]:
    """Each watcher's revisions n, n + 1, n + 2, … across its reconnects."""
    problems = []
    for record in records:
        revisions = [revision for revision, _ in record.seen]
        for before, after in itertools.pairwise(revisions):
            if after != before + 1:
                problems.append(f"{record.name}: revision {after} after {before}")
                break
    return problems


# -- what the database holds --


@dataclass(frozen=True, slots=True)
class StoredJob:
    name: str
    state: int
    revision: int
    lease_owner: str | None
    lease_epoch: int
    record: dict[str, Any]
    history: dict[int, dict[str, Any]]  # revision → record


def read_store(store_url: str) -> dict[str, StoredJob]:
    with psycopg.connect(store_url, autocommit=True) as conn:
        jobs = conn.execute(
            "SELECT name, state, revision, lease_owner, lease_epoch, record FROM clone_jobs"
        ).fetchall()
        history: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
        for name, revision, record in conn.execute(
            "SELECT name, revision, record FROM clone_job_revisions"
        ):
            history[name][int(revision)] = json.loads(record)
    return {
        name: StoredJob(
            name=name,
            state=int(state),
            revision=int(revision),
            lease_owner=owner,
            lease_epoch=int(epoch),
            record=json.loads(record),
            history=history.get(name, {}),
        )
        for name, state, revision, owner, epoch, record in jobs
    }


def _times(record: dict[str, Any]) -> list[int]:
    times = [record["state_time"], *(t for s in record["steps"] for t in (s["start"], s["end"]))]
    return [t for t in times if t is not None]


def audit_history(job: StoredJob) -> list[str]:
    """The job's stored revisions: complete, each allowed by the state diagram, steps
    appended in plan order and never repeated nor rewritten, their time intervals
    not overlapping, times never going backwards, terminal only at the end."""
    problems: list[str] = []
    name = job.name.rsplit("/", 1)[1]
    revisions = sorted(job.history)
    if revisions != list(range(1, job.revision + 1)):
        return [f"{name}: stored revisions {revisions[:5]}… not 1..{job.revision}"]
    if job.history[job.revision] != job.record:
        problems.append(f"{name}: the job's row differs from its last revision")
    plan = PLAN_STEPS[job.record["target"]["kind"]]
    previous: dict[str, Any] | None = None
    for revision in revisions:
        record = job.history[revision]
        state = JobState[record["state"]]
        steps = [(s["kind"], s["start"], s["end"]) for s in record["steps"]]
        where = f"{name} revision {revision}"
        if record["revision"] != revision:
            problems.append(f"{where}: its record says revision {record['revision']}")
        kinds = [kind for kind, _, _ in steps]
        if tuple(kinds) != plan[: len(kinds)]:
            problems.append(f"{where}: steps {kinds}, not in plan order (repeated?)")
        for (_, _, end), (_, next_start, _) in itertools.pairwise(steps):
            if end is None or end > next_start:
                problems.append(f"{where}: a step ends at {end}, after the next began")
        for kind, start, end in steps:
            if end is not None and end < start:
                problems.append(f"{where}: step {kind} ends before it starts")
        if previous is None:
            if revision != 1 or state is not JobState.PENDING or steps:
                problems.append(f"{where}: does not begin PENDING with no steps")
            previous = record
            continue
        before = JobState[previous["state"]]
        if before.terminal:
            problems.append(f"{where}: a change after the terminal {before.name}")
        if state not in ALLOWED_TRANSITIONS[before]:
            problems.append(f"{where}: {before.name} -> {state.name} is not allowed")
        old = [(s["kind"], s["start"], s["end"]) for s in previous["steps"]]
        if len(steps) == len(old):
            unchanged = steps == old
            ended = bool(old) and steps[:-1] == old[:-1] and steps[-1][:2] == old[-1][:2]
            if not unchanged and not (ended and old[-1][2] is None):
                problems.append(f"{where}: a step was rewritten: {old[-1:]} -> {steps[-1:]}")
        elif len(steps) == len(old) + 1:
            # The step before had ended, or ends in this same revision (a step's end
            # commits the next one's start).
            after_end = steps[:-1] == old and not (old and old[-1][2] is None)
            with_end = (
                bool(old)
                and old[-1][2] is None
                and steps[:-2] == old[:-1]
                and steps[-2][:2] == old[-1][:2]
                and steps[-2][2] is not None
            )
            if not (after_end or with_end) or steps[-1][2] is not None:
                problems.append(f"{where}: a step began while another ran, or began ended")
        else:
            problems.append(f"{where}: steps went from {len(old)} to {len(steps)}")
        if _times(record) and _times(previous) and max(_times(record)) < max(_times(previous)):
            problems.append(f"{where}: its times go back before revision {revision - 1}'s")
        previous = record
    return problems


# -- the servers' logs --

CLAIM = re.compile(r"running (?P<job>\S+) under lease epoch (?P<epoch>\d+)")
LOSS = re.compile(r"(?P<job>\S+): lease epoch (?P<epoch>\d+) lost \((?P<why>.*)\); its step stops")
STEP_START = re.compile(
    r"(?P<job>\S+): step (?P<kind>\S+) started under lease epoch (?P<epoch>\d+)"
)
STEP_END = re.compile(
    r"(?P<job>\S+): step (?P<kind>\S+) ended under lease epoch (?P<epoch>\d+)"
    r" \((?P<outcome>done|failed|cancelled|lost|stopped)\)"
)
RUNNER_END = re.compile(r"(?P<job>\S+): runner of lease epoch (?P<epoch>\d+) ended \((?P<why>.*)\)")
# A frozen runner, resumed by SIGCONT, finds its lease lost at its next renewal
# (every TTL/3) or fenced check, on a noisy machine: its step's overlap with a
# newer epoch's is over this long after the SIGCONT at the latest.
PAUSE_TAIL = 3.5
# Re-read the logs this long, at most, for the end lines of live runners that are
# still being written (a runner logs its end after its job's last commit).
LOG_SETTLE = 10.0


@dataclass(frozen=True, slots=True)
class Claim:
    """A replica began running a job under a lease epoch (logged after the claim
    committed: `ts` is later than the claim)."""

    job: str
    epoch: int
    run: Run
    ts: float


@dataclass(frozen=True, slots=True)
class Commit:
    """A state change a replica committed (logged after the commit)."""

    job: str
    revision: int
    old: str
    new: str
    run: Run
    ts: float
    epoch: int  # the lease it ran under; 0 for the API's writes (create, cancel)


@dataclass(frozen=True, slots=True)
class Loss:
    job: str
    epoch: int
    run: Run
    ts: float
    why: str


@dataclass(slots=True)
class Step:
    """One run of one step by one runner: from its start line (logged before the
    target is called) to its end line (logged when the call returned)."""

    job: str
    epoch: int
    kind: str
    run: Run
    start: float
    end_line: float | None = None  # None: no end line logged
    outcome: str = ""  # done, failed, cancelled, lost, stopped; "" with no end line

    def end(self) -> tuple[float, str]:
        """When the step certainly no longer ran, and how it ended. A step "stopped"
        (its replica stopping) may run on in its thread until the process is gone;
        one with no end line ran until its process was killed (or is open)."""
        run = self.run
        if self.outcome and self.outcome != "stopped":
            assert self.end_line is not None
            return self.end_line, self.outcome
        if self.outcome == "stopped":
            return (run.ended if run.ended is not None else math.inf), "stopped"
        if run.end == "killed" and run.ended is not None:
            return run.ended, "killed"
        return math.inf, "no end"


@dataclass(slots=True)
class ServerLog:
    claims: list[Claim] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)
    losses: list[Loss] = field(default_factory=list)
    errors: list[tuple[Run, str]] = field(default_factory=list)  # ERROR lines
    unattributed: list[Commit] = field(default_factory=list)  # runner commits, no claim
    steps: list[Step] = field(default_factory=list)
    runner_ends: dict[tuple[str, int, int], str] = field(default_factory=dict)  # → why
    unpaired: list[str] = field(default_factory=list)  # step lines out of order

    def unended(self) -> int:
        """Steps and runners of live processes whose end is not logged yet."""
        steps = sum(1 for s in self.steps if not s.outcome and not s.run.end)
        runners = sum(
            1
            for c in self.claims
            if not c.run.end and (c.job, c.epoch, id(c.run)) not in self.runner_ends
        )
        return steps + runners


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def read_logs(runs: Iterable[Run]) -> ServerLog:
    """The lines of every run's JSON log that tell of leases and state changes. A
    SIGKILL takes the lines still queued in the process with it: a run's log may
    end early, never out of order."""
    found = ServerLog()
    for run in runs:
        held: dict[str, int] = {}  # job → the epoch this process runs it under
        running: dict[tuple[str, int], Step] = {}  # (job, epoch) → its step under way
        text = run.log.read_text(errors="replace") if run.log.exists() else ""
        for raw in text.splitlines():
            if not raw.startswith("{"):
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                continue  # the last line, cut by a SIGKILL
            msg, ts = str(line.get("msg", "")), _ts(line["ts"])
            if line.get("level") in ("ERROR", "CRITICAL"):
                trace = " | " + line["exc"][-300:] if "exc" in line else ""
                found.errors.append((run, msg + trace))
            if "new_state" in line:
                job, old, new = line["job"], line["old_state"], line["new_state"]
                runner = old != "none" and new != "CANCELLING"  # else the API's write
                epoch = held.get(job, 0) if runner else 0
                commit = Commit(job, int(line["revision"]), old, new, run, ts, epoch)
                found.commits.append(commit)
                if runner and not epoch:
                    found.unattributed.append(commit)
            elif (claim := CLAIM.fullmatch(msg)) is not None:
                held[claim["job"]] = int(claim["epoch"])
                found.claims.append(Claim(claim["job"], int(claim["epoch"]), run, ts))
            elif (loss := LOSS.fullmatch(msg)) is not None:
                found.losses.append(Loss(loss["job"], int(loss["epoch"]), run, ts, loss["why"]))
            elif (start := STEP_START.fullmatch(msg)) is not None:
                key = (start["job"], int(start["epoch"]))
                if key in running:
                    found.unpaired.append(f"{run.name}: {msg}, the previous step not ended")
                step = Step(key[0], key[1], start["kind"], run, ts)
                running[key] = step
                found.steps.append(step)
            elif (end := STEP_END.fullmatch(msg)) is not None:
                key = (end["job"], int(end["epoch"]))
                step = running.pop(key, None)
                if step is None or step.kind != end["kind"]:
                    found.unpaired.append(f"{run.name}: {msg}, not after its start")
                else:
                    step.end_line, step.outcome = ts, end["outcome"]
            elif (over := RUNNER_END.fullmatch(msg)) is not None:
                found.runner_ends[(over["job"], int(over["epoch"]), id(run))] = over["why"]
    return found


# What `audit_leases` checks: each violation is counted under its check's name.
LEASE_CHECKS = {
    "epoch claimed twice": "no lease epoch of a job is claimed by two processes",
    "epoch beyond the store's": "no logged epoch is above the job's stored lease_epoch",
    "runner commit without a claim": "each runner commit follows a claim in its process's log",
    "revision committed twice": "no revision of a job is committed by two processes",
    "logged commit not stored": "each logged commit is the stored revision (same state)",
    "commit after the lease was lost": "no commit of an epoch whose recorded state_time is"
    " later than its runner's logged loss",
    "older epoch committed after a newer one": "a job's runner commits, in revision order,"
    " are in epoch order",
    "older epoch committed after a newer claim": "no commit of epoch N whose recorded"
    " state_time is later than the logged claim of an epoch M > N",
    "step lines unpaired": "each step's end line follows its start line, one step at a time"
    " per runner",
    "step without an end": "each started step logs its end, unless its process was SIGKILLed",
    "runner without an end": "each claimed runner logs its end, unless its process was SIGKILLed",
    "step on two epochs at once": "no step interval of one epoch of a job overlaps one of"
    " another epoch, unless fenced: the older epoch superseded by a newer claim and its step"
    f" ended lost or stopped, cut by a SIGKILL, or frozen (till SIGCONT + {PAUSE_TAIL:g} s)",
}


@dataclass(slots=True)
class LeaseAudit:
    """What the logs and the store say of who ran which job when."""

    claims: int = 0
    commits: int = 0  # runner commits, each attributed to its epoch
    takeovers: Counter[str] = field(default_factory=Counter)  # claims of epoch > 1, by cause
    fenced_overlaps: int = 0  # an older epoch's runner still running at a newer claim
    longest_fenced: float = 0.0  # s from the newer claim to the older one's loss or death
    unlogged_claims: int = 0  # epochs the store counted that no log kept
    violations: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    silent: list[str] = field(default_factory=list)  # older runners that logged no loss
    overlaps: list[str] = field(default_factory=list)  # the fenced ones, described
    # The step intervals (see `audit_steps`).
    step_intervals: int = 0
    step_epochs: int = 0  # (job, epoch) pairs with at least one step
    runner_ends: int = 0  # runners' end lines
    cross_epoch_pairs: int = 0  # pairs of intervals of two epochs of one job compared
    fenced_steps: Counter[str] = field(default_factory=Counter)  # fenced overlaps, by end
    longest_fenced_step: float = 0.0  # s of the longest fenced step overlap
    step_overlaps: list[str] = field(default_factory=list)  # the fenced ones, described

    def overlap(self, job: str, old: Claim, new: Claim, end: float, how: str) -> None:
        """Epoch `old` still ran (unaware) when `new` was claimed, until `end`."""
        self.fenced_overlaps += 1
        self.longest_fenced = max(self.longest_fenced, end - new.ts)
        self.overlaps.append(
            f"{job.rsplit('/', 1)[1]}: epoch {old.epoch} on {old.run.name} ran on"
            f" {end - new.ts:.2f} s after epoch {new.epoch}'s claim on {new.run.name}"
            f" (at {new.ts:.3f}), until {how}"
        )

    def violate(self, kind: str, text: str) -> None:
        assert kind in LEASE_CHECKS, kind
        self.violations[kind] += 1
        self.problems.append(f"{kind}: {text}")

    @property
    def observed_takeovers(self) -> int:
        return sum(n for cause, n in self.takeovers.items() if cause.startswith("from "))


def audit_leases(logs: ServerLog, stored: dict[str, StoredJob], chaos: ChaosLog) -> LeaseAudit:
    """Check, from the servers' logs and the stored revisions, that no job ran on two
    replicas at once with effect. Times: a log line's `ts` is after the event it
    tells of (an upper bound); a job's recorded times (state_time) are read
    before the commit that writes them (a lower bound). So a commit of epoch N
    whose state_time is later than the log time of a claim of epoch M > N was
    certainly committed after that claim: the fence failed."""
    audit = LeaseAudit(claims=len(logs.claims))
    claims: dict[str, dict[int, list[Claim]]] = defaultdict(lambda: defaultdict(list))
    for claim in logs.claims:
        claims[claim.job][claim.epoch].append(claim)
    losses = {(loss.job, loss.epoch, id(loss.run)): loss for loss in logs.losses}
    errors: dict[int, str] = defaultdict(str)
    for run, msg in logs.errors:
        errors[id(run)] += msg + "\n"

    # 1. Each epoch of a job is claimed once, by one process.
    for job, epochs in claims.items():
        for epoch, found in epochs.items():
            if len(found) > 1:
                who = ", ".join(c.run.name for c in found)
                audit.violate("epoch claimed twice", f"{job} epoch {epoch} by {who}")
        logged = len(epochs)
        if job in stored:
            if max(epochs) > stored[job].lease_epoch:
                audit.violate("epoch beyond the store's", f"{job}: {max(epochs)}")
            audit.unlogged_claims += max(0, stored[job].lease_epoch - logged)
    for commit in logs.unattributed:
        audit.violate(
            "runner commit without a claim",
            f"{commit.job} revision {commit.revision} by {commit.run.name}",
        )

    # 2. Each logged commit is the stored revision, committed by one process only.
    by_revision: dict[tuple[str, int], list[Commit]] = defaultdict(list)
    for commit in logs.commits:
        by_revision[(commit.job, commit.revision)].append(commit)
    for (job, revision), found in by_revision.items():
        if len(found) > 1:
            who = ", ".join(c.run.name for c in found)
            audit.violate("revision committed twice", f"{job} revision {revision} by {who}")
        record = stored[job].history.get(revision) if job in stored else None
        if record is None or record["state"] != found[0].new:
            audit.violate(
                "logged commit not stored",
                f"{job} revision {revision} {found[0].new} by {found[0].run.name}",
            )

    runner_commits = [c for c in logs.commits if c.epoch]
    audit.commits = len(runner_commits)
    by_job: dict[str, list[Commit]] = defaultdict(list)
    for commit in runner_commits:
        by_job[commit.job].append(commit)

    # 3. A runner commits nothing after it logged the loss of its lease. By times, not
    #    by lines: a commit made while the lease held may be logged after a renewal
    #    that finished at the same moment (both answered after a pause) logged the loss.
    for commit in runner_commits:
        loss = losses.get((commit.job, commit.epoch, id(commit.run)))
        record = stored[commit.job].history.get(commit.revision) if commit.job in stored else None
        if loss is not None and record is not None:
            written = record["state_time"] / 1e6  # read before the commit
            if written > loss.ts + CLOCK_SLACK:
                audit.violate(
                    "commit after the lease was lost",
                    f"{commit.job} revision {commit.revision} by {commit.run.name}, epoch"
                    f" {commit.epoch}, at {written:.3f}; the loss logged at {loss.ts:.3f}",
                )

    # 4. Runner commits of a job, in revision order, are in epoch order; and none of
    #    an older epoch comes after a newer epoch's claim.
    for job, commits in by_job.items():
        commits.sort(key=lambda c: c.revision)
        for before, after in itertools.pairwise(commits):
            if after.epoch < before.epoch:
                audit.violate(
                    "older epoch committed after a newer one",
                    f"{job}: revision {after.revision} (epoch {after.epoch}, {after.run.name})"
                    f" after revision {before.revision} (epoch {before.epoch})",
                )
        for commit in commits:
            record = stored[job].history.get(commit.revision) if job in stored else None
            if record is None:
                continue
            written = record["state_time"] / 1e6  # read before the commit
            for epoch, found in claims[job].items():
                if epoch <= commit.epoch:
                    continue
                for claim in found:
                    if written > claim.ts + CLOCK_SLACK:
                        audit.violate(
                            "older epoch committed after a newer claim",
                            f"{job} revision {commit.revision} ({commit.new}) by epoch"
                            f" {commit.epoch} on {commit.run.name} at {written:.3f}, after"
                            f" epoch {epoch}'s claim on {claim.run.name} at {claim.ts:.3f}",
                        )

    # 5. Each takeover, by why the older epoch ended (figures, not checks). An older
    #    runner whose process lived on either logged its loss (fenced: any refused
    #    write or fenced check logs it) or fell silent: found the job finished by the
    #    newer epoch and returned, which the logs cannot tell from running on unaware.
    for job, epochs in claims.items():
        for epoch, found in epochs.items():
            if epoch == 1:
                continue
            claim = found[0]
            before = epochs.get(epoch - 1)
            if not before:
                audit.takeovers["previous epoch in no log"] += 1
                continue
            old = before[0]
            run = old.run
            loss = losses.get((job, old.epoch, id(run)))
            died = run.end_sent if run.end else None
            if run is claim.run:
                audit.takeovers["again by the same process"] += 1
                continue
            if died is not None and died <= claim.ts and (loss is None or loss.ts > died):
                cause = "from a killed replica" if run.end == "killed" else "after a graceful stop"
                audit.takeovers[cause] += 1
                continue
            if loss is not None:
                window = (claim.ts - TTL - 1.0, claim.ts)
                if run.paused_during(*window):
                    audit.takeovers["from a paused replica"] += 1
                elif any(window[0] - 1.0 <= t <= claim.ts for t, _ in chaos.cuts):
                    audit.takeovers["from a replica cut off from the database"] += 1
                else:
                    audit.takeovers["from a replica that lost its lease otherwise"] += 1
                if loss.ts > claim.ts:
                    audit.overlap(job, old, claim, loss.ts, f"its loss logged ({loss.why})")
                continue
            if job in errors[id(run)]:
                audit.takeovers["after an engine error"] += 1
                continue
            if died is not None:  # killed or stopped after the claim, silent till then
                audit.takeovers[f"from a replica {run.end} before it logged a loss"] += 1
                continue
            why = logs.runner_ends.get((job, old.epoch, id(run)))
            if why is not None:  # its steps are checked by `audit_steps`
                audit.takeovers[f"from a replica whose old runner ended ({why})"] += 1
                continue
            audit.takeovers["from a replica whose old runner logged nothing more"] += 1
            audit.silent.append(
                f"{job.rsplit('/', 1)[1]}: epoch {old.epoch} on {run.name}, taken over by"
                f" epoch {epoch} on {claim.run.name} at {claim.ts:.3f}"
            )

    audit_steps(logs, claims, audit)
    return audit


def audit_steps(
    logs: ServerLog, claims: dict[str, dict[int, list[Claim]]], audit: LeaseAudit
) -> None:
    """Check, from the step and runner lines, that no step of a job ran under two
    epochs at once except fenced. Times: a start line is logged before the target
    is called, an end line after the call returned; a "stopped" step runs on (in its
    thread) until its process is gone, and a step with no end line in a SIGKILLed
    process until the kill completed (`Run.ended`, as the controller saw it). Ends
    get CLOCK_SLACK more (log times are truncated to the millisecond)."""
    audit.runner_ends = len(logs.runner_ends)
    for text in logs.unpaired:
        audit.violate("step lines unpaired", text)
    for claim in logs.claims:
        if claim.run.end != "killed" and (
            (claim.job, claim.epoch, id(claim.run)) not in logs.runner_ends
        ):
            audit.violate(
                "runner without an end", f"{claim.job} epoch {claim.epoch} on {claim.run.name}"
            )
    by_job: dict[str, list[tuple[Step, float, str]]] = defaultdict(list)
    for step in logs.steps:
        end, how = step.end()
        if how == "no end":
            audit.violate(
                "step without an end",
                f"{step.job} step {step.kind} of epoch {step.epoch} on {step.run.name},"
                f" started at {step.start:.3f}",
            )
        by_job[step.job].append((step, end, how))
    audit.step_intervals = len(logs.steps)
    audit.step_epochs = len({(s.job, s.epoch) for s in logs.steps})
    for job, steps in by_job.items():
        for (a, a_end, a_how), (b, b_end, b_how) in itertools.combinations(steps, 2):
            if a.epoch == b.epoch:
                continue
            audit.cross_epoch_pairs += 1
            (old, old_end, how), (new, new_end, _) = sorted(
                [(a, a_end, a_how), (b, b_end, b_how)], key=lambda s: s[0].epoch
            )
            begins = max(old.start, new.start)
            ends = min(old_end, new_end) + CLOCK_SLACK
            if begins >= ends:
                continue
            superseded = [
                c
                for epoch, found in claims[job].items()
                if epoch > old.epoch
                for c in found
                if c.ts <= begins
            ]
            frozen = any(p0 <= begins and ends <= p1 + PAUSE_TAIL for p0, p1 in old.run.paused)
            if how not in ("lost", "stopped", "killed") and frozen:
                how = "frozen"
            text = (
                f"{job.rsplit('/', 1)[1]}: step {old.kind} of epoch {old.epoch} on"
                f" {old.run.name} ({old.start:.3f}..{old_end:.3f}, {how}) and step {new.kind}"
                f" of epoch {new.epoch} on {new.run.name} ({new.start:.3f}..{new_end:.3f}):"
                f" {ends - begins:.2f} s at once"
            )
            if superseded and how in ("lost", "stopped", "killed", "frozen"):
                audit.fenced_steps[how] += 1
                audit.longest_fenced_step = max(audit.longest_fenced_step, ends - begins)
                audit.step_overlaps.append(text)
            else:
                audit.violate("step on two epochs at once", text)


# -- the report --


@dataclass(slots=True)
class ChaosReport:
    seed: int
    jobs: CrashReport  # the crash test's bookkeeping and checks
    chaos: ChaosLog = field(default_factory=ChaosLog)
    seconds: float = 0.0  # of chaos
    failovers: Counter[str] = field(default_factory=Counter)
    stuck: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    history_problems: list[str] = field(default_factory=list)
    revisions: int = 0
    leases: LeaseAudit = field(default_factory=LeaseAudit)
    server_errors: list[str] = field(default_factory=list)
    epochs_in_store: int = 0

    @property
    def overlapping_steps(self) -> int:
        return sum(self.leases.violations.values()) + len(self.history_problems)

    def summary(self) -> str:
        jobs, chaos, leases = self.jobs, self.chaos, self.leases
        states = Counter(job.state for job in jobs.final.values())
        records = jobs.records
        causes = ", ".join(f"{n} {cause}" for cause, n in sorted(leases.takeovers.items()))
        fenced_steps = ", ".join(f"{n} {how}" for how, n in sorted(leases.fenced_steps.items()))
        return "\n".join(
            [
                f"chaos-test: {self.seconds:.0f} s of chaos on {REPLICAS} replicas"
                f" (--lease-ttl {TTL:g}), seed={self.seed}",
                f"  chaos:    kills={chaos.kills} pauses={chaos.pauses}"
                f" graceful-restarts={chaos.graceful_restarts} restarts={chaos.restarts}"
                f" connection-cuts={len(chaos.cuts)}"
                f" (backends ended: {sum(n for _, n in chaos.cuts)})"
                f" start-failures={len(chaos.start_failures)}",
                f"  jobs:     acknowledged={len(jobs.acknowledged)} of {len(jobs.plans)} tried,"
                f" succeeded={states[State.SUCCEEDED]} failed={states[State.FAILED]}"
                f" cancelled={states[State.CANCELLED]}",
                f"  checks:   lost={len(jobs.lost)} stuck={len(self.stuck)}"
                f" orphans={len(jobs.orphans)} missing={len(jobs.missing)}"
                f" wrong-states={len(jobs.wrong_states)}"
                f" overlapping-steps={self.overlapping_steps}"
                f" watch-problems={len(jobs.watch_problems) + len(self.gaps)}"
                f" unexpected={len(jobs.unexpected)}",
                f"  watches:  {len(records)} ({sum(r.reconnects for r in records)} reconnects,"
                f" {sum(len(r.seen) for r in records)} changes)",
                f"  leases:   takeovers-observed={leases.observed_takeovers}"
                f" claims-logged={leases.claims} (store: {self.epochs_in_store},"
                f" unlogged {leases.unlogged_claims}) runner-commits={leases.commits}"
                f" fenced-overlaps={leases.fenced_overlaps}"
                f" (longest {leases.longest_fenced:.2f} s)",
                f"  steps:    intervals={leases.step_intervals} (of {leases.step_epochs} job"
                f" epochs) runner-ends={leases.runner_ends}"
                f" cross-epoch-pairs={leases.cross_epoch_pairs}"
                f" fenced-step-overlaps={sum(leases.fenced_steps.values())}"
                f" ({fenced_steps or 'none'}; longest {leases.longest_fenced_step:.2f} s)"
                f" unfenced={leases.violations['step on two epochs at once']}",
                f"  claims of epoch > 1: {causes or 'none'}",
                f"  history:  {len(jobs.final)} jobs, {self.revisions} revisions audited",
                f"  failovers: {dict(sorted(self.failovers.items()))}",
            ]
        )

    def details(self) -> str:
        lines = [self.jobs.details(), "no step on two replicas at once, as checked:"]
        lines += [
            f"  {self.leases.violations[kind]} violations: {text}"
            for kind, text in LEASE_CHECKS.items()
        ]
        lines.append(
            f"  {len(self.history_problems)} violations: each job's stored revisions 1..n,"
            " allowed transitions, steps appended in plan order, never repeated or rewritten,"
            " not overlapping in time, times never going back"
        )
        lines.append(
            f"  {self.leases.fenced_overlaps} fenced overlaps: an older epoch's runner still"
            " running at a newer claim (its replica paused past the TTL), which logged the"
            f" loss of its lease at most {self.leases.longest_fenced:.2f} s after the claim"
        )
        lines.append(
            f"  {sum(self.leases.fenced_steps.values())} fenced step overlaps: a step of an"
            " older, superseded epoch still running while one of a newer epoch ran, ended"
            f" lost, stopped, by a SIGKILL or frozen, at most"
            f" {self.leases.longest_fenced_step:.2f} s at once"
        )
        for title, items in (
            ("stuck", self.stuck),
            ("watch gaps", self.gaps),
            ("stored-history problems", self.history_problems),
            ("lease problems", self.leases.problems),
            ("fenced overlaps", self.leases.overlaps),
            ("fenced step overlaps", self.leases.step_overlaps),
            ("older runners that logged neither a loss nor their end", self.leases.silent),
            ("server ERROR lines", self.server_errors),
            ("start failures", self.chaos.start_failures),
            ("graceful stop problems", self.chaos.stop_problems),
        ):
            if items:
                lines.append(f"{title} ({len(items)}): " + "\n  ".join(items[:20]))
        return "\n".join(lines)

    def check(self) -> None:
        chaos = self.chaos
        assert chaos.kills and chaos.pauses and chaos.graceful_restarts and chaos.cuts, (
            "some kind of chaos never happened"
        )
        assert self.leases.observed_takeovers > 0, "no takeover: the chaos hit no running job"
        self.jobs.check(min_kills=1)
        assert self.stuck == [], self.details()
        assert self.gaps == [], self.details()
        assert self.history_problems == [], self.details()
        assert self.leases.problems == [], self.details()
        assert chaos.stop_problems == [], self.details()
        assert self.server_errors == [], self.details()
        assert any(j.state == State.SUCCEEDED for j in self.jobs.final.values()), self.details()


# -- the whole run --


async def run_chaos(
    fleet: Fleet, data_dir: Path, store_url: str, *, seconds: float, seed: int
) -> ChaosReport:
    """Three replicas on `store_url` and `data_dir` (with the sample VMs), the chaos for
    `seconds`, the settling and the checks; the report, checked by the caller. The
    processes stay in `fleet`, running, for the caller to close."""
    report = ChaosReport(seed=seed, jobs=CrashReport(seed=seed))
    servers = [
        fleet.add(
            data_dir,
            store=store_url,
            lease_ttl=TTL,
            max_concurrent_jobs=SLOTS,
            heartbeat_interval=HEARTBEAT,
            log_format="json",
            fault_plan=CHAOS_FAULT_PLAN,
        )
        for _ in range(REPLICAS)
    ]
    cluster = ChaosCluster(servers)
    controller = Controller(cluster, store_url.rpartition("/")[2], report.chaos)
    scenario = ChaosScenario(cluster, report.jobs)  # type: ignore[arg-type]
    stop = asyncio.Event()

    def rng(role: str, i: int = 0) -> random.Random:
        return random.Random(f"{seed}/{role}/{i}")

    try:
        for replica in cluster.replicas:
            await controller.start(replica)
        began = time.monotonic()
        async with asyncio.TaskGroup() as group:
            for i in range(CREATORS):
                group.create_task(scenario.creator(rng("create", i), stop))
            for i in range(WATCHERS):
                group.create_task(scenario.watcher(rng("watch", i), stop))
            group.create_task(scenario.canceller(rng("cancel"), stop))
            try:
                await controller.run(rng("chaos"), seconds=seconds)
            finally:
                report.seconds = time.monotonic() - began
                stop.set()
        await scenario.finish(store_url, report.stuck)
    finally:
        report.failovers = cluster.failovers
        await cluster.close()
    report.jobs.kills = report.chaos.kills
    check_states(report.jobs)
    check_files(data_dir / "targets", report.jobs)
    report.gaps = check_gapless(report.jobs.records)
    stored = await asyncio.to_thread(read_store, store_url)
    report.epochs_in_store = sum(job.lease_epoch for job in stored.values())
    for job in stored.values():
        report.revisions += len(job.history)
        report.history_problems += audit_history(job)
    missing = sorted(set(stored) - set(report.jobs.final))
    report.jobs.unexpected += [f"{name}: stored, but not listed" for name in missing]
    logs = await asyncio.to_thread(read_logs, report.chaos.runs)
    settle = time.monotonic() + LOG_SETTLE
    while logs.unended() and time.monotonic() < settle:
        await asyncio.sleep(0.25)  # the last end lines of live runners, being written
        logs = await asyncio.to_thread(read_logs, report.chaos.runs)
    report.leases = audit_leases(logs, stored, report.chaos)
    report.server_errors = [f"{run.name}: {msg}" for run, msg in logs.errors]
    return report


def close_quietly(fleet: Fleet) -> None:
    """Stop every process without printing the logs (kept in the run directory)."""
    for server in fleet.servers:
        server.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_chaos_replicas_lose_no_job_and_never_run_a_step_twice_at_once(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    seed = chaos_seed()
    print(f"chaos-test seed={seed} (CLONEJOB_CHAOS_SEED={seed} replays its choices)")
    data_dir = tmp_path / "shared"
    data_dir.mkdir()
    write_sample_vms(data_dir, write_sample_vm)
    fleet = Fleet(tmp_path_factory.mktemp("run"))
    passed = False
    try:
        with temporary_database_sync() as store_url:
            try:
                report = await run_chaos(fleet, data_dir, store_url, seconds=CI_SECONDS, seed=seed)
            finally:
                close_quietly(fleet)  # before the database is dropped
        print(report.summary())
        print(report.details())
        print(f"server logs: {fleet.run_dir}")
        report.check()
        passed = True
    finally:
        if not passed:
            fleet.close()  # every log to stderr


CUT_EVERY = 0.07  # s between two cuts of the burst
CUT_SECONDS = 6.0
CUT_JOBS = 30


def _with_failover(fleet: Sequence[ServerProcess], call: Callable[[Stub], T]) -> T:
    """`call` on one replica after another while they fail for the cuts: UNAVAILABLE,
    or a deadline spent waiting for a pooled connection (the calls are idempotent)."""
    deadline = time.monotonic() + CALL_BUDGET
    retry = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    for attempt in itertools.count():
        try:
            return call(fleet[attempt % len(fleet)].stub())
        except grpc.RpcError as error:
            if error.code() not in retry or time.monotonic() > deadline:
                raise
        time.sleep(0.02)  # backoff between replicas
    raise AssertionError("unreachable")


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_chaos_connection_cuts_fail_no_job(servers: Fleet, tmp_path: Path) -> None:
    """A burst of database connection cuts (every 70 ms for 6 s) while plain jobs run
    on two replicas: a runner whose store call was cut must not end its job FAILED
    (the store is unavailable, not the job broken); once the cuts stop, every job
    SUCCEEDS."""
    data_dir = tmp_path / "shared"
    data_dir.mkdir()
    write_sample_vm(data_dir)
    with temporary_database_sync() as store_url:
        fleet = servers.replicas(2, data_dir, store=store_url, lease_ttl=TTL, log_format="json")
        try:
            database = store_url.rpartition("/")[2]
            names: list[str] = []
            ends = time.monotonic() + CUT_SECONDS
            for i in range(CUT_JOBS):
                request = spb.CreateCloneJobRequest(
                    parent=VM1,
                    clone_job_id=f"cut-{i}",
                    clone_job=vm_body(f"cut-{i}"),
                    request_id=f"00000000-0000-4000-8000-{i:012d}",
                )
                job = _with_failover(
                    fleet, lambda stub, r=request: stub.CreateCloneJob(r, timeout=RPC_DEADLINE)
                )
                names.append(job.name)
                terminate_backends(database)
            cuts = CUT_JOBS
            while time.monotonic() < ends:
                time.sleep(CUT_EVERY)  # the cut moments, by design
                terminate_backends(database)
                cuts += 1
            deadline = time.monotonic() + SETTLE_TIMEOUT
            while unfinished := unfinished_jobs(store_url):
                assert time.monotonic() < deadline, f"unfinished after the cuts: {unfinished}"
                time.sleep(0.2)  # polling other processes' state, with a deadline
            final = {
                name: _with_failover(
                    fleet,
                    lambda stub, n=name: stub.GetCloneJob(
                        spb.GetCloneJobRequest(name=n), timeout=RPC_DEADLINE
                    ),
                )
                for name in names
            }
        finally:
            for server in fleet:
                server.close()  # before the database is dropped
    failed = {
        name.rsplit("/", 1)[1]: f"{State.Name(job.state)} {job_error_info(job).reason}"
        for name, job in final.items()
        if job.state != State.SUCCEEDED
    }
    print(f"chaos-cuts: {cuts} cuts, {len(names)} jobs, {len(failed)} not SUCCEEDED")
    assert failed == {}, failed
