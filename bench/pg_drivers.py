"""psycopg 3 (async) against asyncpg on the queries a PostgreSQL job store runs.

Run from the checkout:

    .venv/bin/python -m bench.pg_drivers [--quick] [--dsn postgresql://postgres@127.0.0.1/postgres]

The benchmark creates a throwaway database (``pgdrv_bench_<random>``) through ``--dsn``,
builds a ``clone_jobs`` / ``clone_job_revisions`` schema in it, and drops it with
``DROP DATABASE ... WITH (FORCE)`` at the end, also on error or Ctrl-C. It measures, for
``psycopg_pool.AsyncConnectionPool`` and ``asyncpg.create_pool`` (both 8 connections, each
driver's default statement preparation: psycopg prepares a query on a connection after its
5th execution there, asyncpg on first use), with a ~3 KiB JSON text record per job:

* get: ``SELECT record FROM clone_jobs WHERE name = $1`` from 16 tasks, a fixed number of
  calls on random names among 2,000 preloaded rows;
* create: one transaction per job inserting a ``clone_jobs`` row and a ``clone_job_revisions``
  row, from 16 tasks, durable commits (``synchronous_commit`` left on);
* claim: the lease claim (``FOR UPDATE SKIP LOCKED`` in a CTE, then ``UPDATE ... RETURNING``)
  from 4 tasks, one job per call, until a pool of PENDING jobs is exhausted.

psycopg connections are in autocommit mode, so a lone SELECT is one round trip as with asyncpg
(psycopg's default would wrap it in BEGIN/COMMIT); writes use ``conn.transaction()`` in both.
asyncpg's pool keeps its default ``Connection.reset()`` on release (one more round trip per
acquire); psycopg's pool does nothing on return of an idle connection.

Reported per op and driver: throughput (ops/s), mean latency of one call (including the wait
for a pool connection), and CPU time of this process per op (``time.process_time``; the
service is CPU-bound, and PostgreSQL's own CPU is not in it), each the median of 3 runs with
± half the min-max range, and the asyncpg/psycopg ratio of each. Every run starts from the same
reloaded, analysed and checkpointed tables; the drivers alternate which goes first. ``--quick``
uses fewer calls and a smaller claim pool (about 20 s in all); the full run about 1-2 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import random
import re
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar

import asyncpg
import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

T = TypeVar("T")

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
POOL_SIZE = 8
READERS = 16
WRITERS = 16
CLAIMERS = 4
RUNS = 3
PRELOADED = 2_000
RECORD_BYTES = 3 * 1024
LEASE_TTL_S = 30.0
PARENT = "projects/bench/locations/us-central1/sources/vsphere/migratingVms/vm-1"
# CloneJob states in the claimable set (the partial index) and one outside it.
PENDING = 1
SUCCEEDED = 4

SCHEMA = """
CREATE TABLE clone_jobs (
    name text PRIMARY KEY,
    parent text NOT NULL,
    request_id text UNIQUE,
    state int NOT NULL,
    create_time_us bigint NOT NULL,
    revision bigint NOT NULL,
    record text NOT NULL,
    lease_owner text,
    lease_epoch bigint NOT NULL DEFAULT 0,
    lease_expires timestamptz
) WITH (autovacuum_enabled = off);
CREATE INDEX clone_jobs_claimable ON clone_jobs (create_time_us, name)
    WHERE state IN (1, 2, 6, 7);
CREATE TABLE clone_job_revisions (
    name text,
    revision bigint,
    record text,
    PRIMARY KEY (name, revision)
) WITH (autovacuum_enabled = off);
"""

GET_SQL = "SELECT record FROM clone_jobs WHERE name = $1"
INSERT_JOB_SQL = (
    "INSERT INTO clone_jobs (name, parent, request_id, state, create_time_us, revision, record)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7)"
)
INSERT_REVISION_SQL = "INSERT INTO clone_job_revisions (name, revision, record) VALUES ($1, $2, $3)"
CLAIM_SQL = (
    "WITH c AS (SELECT name FROM clone_jobs WHERE state IN (1, 2, 6, 7)"
    " AND (lease_expires IS NULL OR lease_expires < now())"
    " ORDER BY create_time_us, name LIMIT $1 FOR UPDATE SKIP LOCKED)"
    " UPDATE clone_jobs j SET lease_owner = $2, lease_epoch = j.lease_epoch + 1,"
    " lease_expires = now() + make_interval(secs => $3)"
    " FROM c WHERE j.name = c.name RETURNING j.name, j.lease_epoch, j.record"
)


def to_psycopg(query: str) -> str:
    """The same query with psycopg's placeholders ($1, $2, ... in order become %s)."""
    return re.sub(r"\$\d+", "%s", query)


class Job(NamedTuple):
    name: str
    parent: str
    request_id: str
    state: int
    create_time_us: int
    revision: int
    record: str


def make_record(name: str, state: int, create_time_us: int) -> str:
    """A job record serialised as JSON text, padded to RECORD_BYTES."""
    doc: dict[str, Any] = {
        "name": name,
        "parent": PARENT,
        "state": state,
        "createTime": create_time_us,
        "computeEngineTargetDetails": {
            "project": "projects/bench",
            "zone": "us-central1-a",
            "vmName": name.rsplit("/", 1)[-1],
            "machineType": "n2-standard-4",
            "labels": {"team": "migration", "wave": "7"},
        },
        "steps": [
            {"step": step, "startTime": create_time_us + i, "endTime": None}
            for i, step in enumerate(("instantiating_migrated_vm", "adapting_os", "preparing"))
        ],
        "pad": "",
    }
    doc["pad"] = "x" * max(0, RECORD_BYTES - len(json.dumps(doc)))
    return json.dumps(doc)


def make_job(name: str, state: int, create_time_us: int) -> Job:
    return Job(
        name=name,
        parent=PARENT,
        request_id=str(uuid.uuid4()),
        state=state,
        create_time_us=create_time_us,
        revision=1,
        record=make_record(name, state, create_time_us),
    )


class Store(Protocol):
    label: str

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def get(self, name: str) -> str | None: ...
    async def create(self, job: Job) -> None: ...
    async def claim(self, owner: str, limit: int, ttl_s: float) -> list[str]: ...


class PsycopgStore:
    label = "psycopg"

    def __init__(self, conninfo: str) -> None:
        self._pool: AsyncConnectionPool = AsyncConnectionPool(
            conninfo,
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            kwargs={"autocommit": True},
            open=False,
        )
        self._get = to_psycopg(GET_SQL)
        self._insert_job = to_psycopg(INSERT_JOB_SQL)
        self._insert_revision = to_psycopg(INSERT_REVISION_SQL)
        self._claim = to_psycopg(CLAIM_SQL)

    async def open(self) -> None:
        await self._pool.open(wait=True)

    async def close(self) -> None:
        await self._pool.close()

    async def get(self, name: str) -> str | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(self._get, (name,))
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def create(self, job: Job) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(self._insert_job, job)
            await conn.execute(self._insert_revision, (job.name, job.revision, job.record))

    async def claim(self, owner: str, limit: int, ttl_s: float) -> list[str]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(self._claim, (limit, owner, ttl_s))
            rows = await cur.fetchall()
        return [row[0] for row in rows]


class AsyncpgStore:
    label = "asyncpg"

    def __init__(self, connect_kwargs: dict[str, Any]) -> None:
        self._connect_kwargs = connect_kwargs
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "open() first"
        return self._pool

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            min_size=POOL_SIZE, max_size=POOL_SIZE, **self._connect_kwargs
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def get(self, name: str) -> str | None:
        async with self.pool.acquire() as conn:
            record: str | None = await conn.fetchval(GET_SQL, name)
        return record

    async def create(self, job: Job) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(INSERT_JOB_SQL, *job)
            await conn.execute(INSERT_REVISION_SQL, job.name, job.revision, job.record)

    async def claim(self, owner: str, limit: int, ttl_s: float) -> list[str]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(CLAIM_SQL, limit, owner, ttl_s)
        return [row[0] for row in rows]


@dataclass(frozen=True)
class Sample:
    ops: int
    calls: int
    wall_s: float
    cpu_s: float
    latency_s: float  # sum over calls

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.wall_s

    @property
    def latency_us(self) -> float:
        return self.latency_s / self.calls * 1e6

    @property
    def cpu_us_per_op(self) -> float:
        return self.cpu_s / self.ops * 1e6


async def timed(
    tasks: int, worker: Callable[[int], Awaitable[tuple[int, float]]], ops: Callable[[], int]
) -> Sample:
    """Run `tasks` copies of `worker` (each returning its calls and summed latency) at once."""
    gc.collect()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        running = [tg.create_task(worker(i)) for i in range(tasks)]
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    results = [t.result() for t in running]
    return Sample(
        ops=ops(),
        calls=sum(calls for calls, _ in results),
        wall_s=wall,
        cpu_s=cpu,
        latency_s=sum(lat for _, lat in results),
    )


async def run_calls(
    items: Sequence[T], tasks: int, call: Callable[[T], Awaitable[object]]
) -> Sample:
    """`call` once per item, the items shared out among `tasks` concurrent tasks."""
    shared: Iterator[T] = iter(items)

    async def worker(_: int) -> tuple[int, float]:
        calls, latency = 0, 0.0
        for item in shared:
            t0 = time.perf_counter()
            await call(item)
            latency += time.perf_counter() - t0
            calls += 1
        return calls, latency

    return await timed(tasks, worker, lambda: len(items))


async def bench_get(store: Store, names: Sequence[str]) -> Sample:
    async def get(name: str) -> None:
        if await store.get(name) is None:
            raise RuntimeError(f"{store.label}: no row for {name}")

    return await run_calls(names, READERS, get)


async def bench_create(store: Store, jobs: Sequence[Job]) -> Sample:
    return await run_calls(jobs, WRITERS, store.create)


async def bench_claim(store: Store, pending: int) -> Sample:
    claimed: list[str] = []

    async def worker(i: int) -> tuple[int, float]:
        owner = f"bench-{store.label}-{i}"
        calls, latency = 0, 0.0
        while True:
            t0 = time.perf_counter()
            names = await store.claim(owner, 1, LEASE_TTL_S)
            latency += time.perf_counter() - t0
            calls += 1
            if not names:
                return calls, latency
            claimed.extend(names)

    sample = await timed(CLAIMERS, worker, lambda: len(claimed))
    if len(claimed) != pending or len(set(claimed)) != pending:
        raise RuntimeError(
            f"{store.label}: claimed {len(claimed)} ({len(set(claimed))} distinct) of {pending}"
        )
    return sample


@dataclass(frozen=True)
class Plan:
    gets: int
    creates: int
    pending: int


FULL = Plan(gets=30_000, creates=6_000, pending=2_000)
QUICK = Plan(gets=3_000, creates=600, pending=300)
WARMUP = Plan(gets=400, creates=200, pending=200)


class Fixtures:
    """Rows and call lists shared by every run, so both drivers see the same work."""

    def __init__(self, plan: Plan) -> None:
        base_us = 1_700_000_000_000_000
        self.preloaded = [
            make_job(f"{PARENT}/cloneJobs/done-{i:05d}", SUCCEEDED, base_us + i)
            for i in range(PRELOADED)
        ]
        most = max(plan.pending, WARMUP.pending)
        self.pending = [
            make_job(f"{PARENT}/cloneJobs/pending-{i:05d}", PENDING, base_us + PRELOADED + i)
            for i in range(most)
        ]
        rng = random.Random(20_240_601)
        names = [job.name for job in self.preloaded]
        self.get_names = [rng.choice(names) for _ in range(max(plan.gets, WARMUP.gets))]
        self.new_jobs = [
            make_job(f"{PARENT}/cloneJobs/new-{i:06d}", PENDING, base_us + 10_000_000 + i)
            for i in range(max(plan.creates, WARMUP.creates))
        ]


async def reset_tables(admin: psycopg.AsyncConnection[Any], rows: Sequence[Job]) -> None:
    """Empty both tables, load `rows`, analyse, and checkpoint, so runs start alike."""
    await admin.execute("TRUNCATE clone_jobs, clone_job_revisions")
    columns = ", ".join(Job._fields)
    async with admin.cursor() as cur, cur.copy(f"COPY clone_jobs ({columns}) FROM STDIN") as copy:
        for row in rows:
            await copy.write_row(row)
    await admin.execute("VACUUM (ANALYZE) clone_jobs, clone_job_revisions")
    try:
        await admin.execute("CHECKPOINT")
    except psycopg.errors.InsufficientPrivilege:
        pass


OPS = ("get", "create", "claim")


async def measure(
    op: str,
    store: Store,
    admin: psycopg.AsyncConnection[Any],
    fixtures: Fixtures,
    plan: Plan,
) -> Sample:
    if op == "claim":
        await reset_tables(admin, fixtures.preloaded + fixtures.pending[: plan.pending])
        return await bench_claim(store, plan.pending)
    await reset_tables(admin, fixtures.preloaded)
    if op == "get":
        return await bench_get(store, fixtures.get_names[: plan.gets])
    return await bench_create(store, fixtures.new_jobs[: plan.creates])


async def run(
    conninfo: str, connect_kwargs: dict[str, Any], plan: Plan
) -> dict[str, dict[str, list[Sample]]]:
    fixtures = Fixtures(plan)
    stores: list[Store] = [PsycopgStore(conninfo), AsyncpgStore(connect_kwargs)]
    results: dict[str, dict[str, list[Sample]]] = {
        op: {store.label: [] for store in stores} for op in OPS
    }
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as admin:
        await admin.execute(SCHEMA)
        for store in stores:
            await store.open()
        try:
            # Untimed pass: every pooled connection prepares its statements.
            for op in OPS:
                for store in stores:
                    await measure(op, store, admin, fixtures, WARMUP)
            for i in range(RUNS):
                for op in OPS:
                    for store in stores if i % 2 == 0 else stores[::-1]:
                        sample = await measure(op, store, admin, fixtures, plan)
                        results[op][store.label].append(sample)
                        print(
                            f"  run {i + 1}/{RUNS} {op:<6} {store.label:<8}"
                            f" {sample.ops:>6} ops in {sample.wall_s:6.2f} s",
                            file=sys.stderr,
                        )
        finally:
            for store in stores:
                await store.close()
    return results


def median_spread(values: Sequence[float]) -> tuple[float, float]:
    """The median, and half the min-max range as a fraction of it."""
    mid = statistics.median(values)
    return mid, (max(values) - min(values)) / 2 / mid


def cell(values: Sequence[float], digits: int) -> str:
    mid, spread = median_spread(values)
    return f"{mid:>10,.{digits}f} ±{spread * 100:4.1f}%"


def ratio(by_driver: dict[str, list[Sample]], metric: Callable[[Sample], float]) -> float:
    """asyncpg's median over psycopg's."""
    asyncpg_mid = statistics.median(metric(s) for s in by_driver["asyncpg"])
    return asyncpg_mid / statistics.median(metric(s) for s in by_driver["psycopg"])


def render(results: dict[str, dict[str, list[Sample]]], plan: Plan) -> str:
    metrics: list[tuple[str, Callable[[Sample], float], int]] = [
        ("ops/s", lambda s: s.ops_per_s, 0),
        ("mean latency µs", lambda s: s.latency_us, 0),
        ("CPU µs/op", lambda s: s.cpu_us_per_op, 1),
    ]
    shapes = {
        "get": f"{plan.gets:,} calls, {READERS} tasks",
        "create": f"{plan.creates:,} txns, {WRITERS} tasks",
        "claim": f"{plan.pending:,} jobs, {CLAIMERS} tasks",
    }
    width = 18
    lines = [
        f"{'op':<7}{'driver':<17}" + "".join(f"{name:>{width}}" for name, _, _ in metrics),
        "-" * (24 + width * len(metrics)),
    ]
    for op, by_driver in results.items():
        for label, samples in by_driver.items():
            row = "".join(f"{cell([f(s) for s in samples], d):>{width}}" for _, f, d in metrics)
            lines.append(f"{op:<7}{label:<17}{row}")
        ratios = "".join(f"{ratio(by_driver, f):>{width - 1}.2f}x" for _, f, _ in metrics)
        lines.append(f"{'':<7}{'asyncpg/psycopg':<17}{ratios}")
        lines.append(f"{'':<7}({shapes[op]})")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pg_drivers",
        description="psycopg 3 async vs asyncpg on a job store's queries.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer calls (about 20 s)")
    parser.add_argument(
        "--dsn",
        default=DEFAULT_DSN,
        help="server to create the throwaway database on (default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    dbname = f"pgdrv_bench_{secrets.token_hex(4)}"
    params = conninfo_to_dict(args.dsn)
    conninfo = make_conninfo(args.dsn, dbname=dbname)
    connect_kwargs: dict[str, Any] = {
        "host": params.get("host"),
        "port": int(params["port"]) if params.get("port") else None,
        "user": params.get("user"),
        "password": params.get("password"),
        "database": dbname,
    }

    with psycopg.connect(args.dsn, autocommit=True) as server:
        server_version = server.info.server_version
        server.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    started = time.perf_counter()
    try:
        results = asyncio.run(run(conninfo, connect_kwargs, plan))
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as server:
            server.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
            )

    major, minor = divmod(server_version, 10_000)
    print(
        f"psycopg {psycopg.__version__} (psycopg_pool {psycopg_pool.__version__}) vs asyncpg"
        f" {asyncpg.__version__}, PostgreSQL {major}.{minor}, Python"
        f" {platform.python_version()}, {POOL_SIZE}-connection pools,"
        f" {'quick' if args.quick else 'full'} run"
    )
    print(f"median of {RUNS} runs ± half their range; {time.perf_counter() - started:.0f} s\n")
    print(render(results, plan))


if __name__ == "__main__":
    main()
