"""How Get and a List page move with 1k, 10k and 100k stored jobs (--quick: 1k, 10k).

Each size gets its own database, bulk-loaded in a prep step (bench-only: sqlite3
directly, the store's own schema via its migrations and records.dump, batched
transactions), then the real server on it. Latency is one call at a time from
the load generator: Get of random jobs; a List page (page_size 100, ordered by
create_time) filtered on a state 10% of the jobs have; and, for information,
filtered on a state only 50 jobs have (the page must look through all of them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import fixtures, loadgen, processes, store_rates
from bench.figures import Figure, Run
from client.launcher import ServerProcess
from clonejob_grpc import clone_job_service_pb2
from server.domain.job import State, Step, StepKind
from server.store import SqliteJobStore, records

BATCH = 5_000
RARE = 50
QUERIES = {
    "list": "state = FAILED",
    "list_rare": "state = CANCELLED",
}


def _state(i: int, count: int) -> State:
    if i % max(1, count // RARE) == 7 % max(1, count // RARE):
        return State.CANCELLED
    if i % 10 == 3:
        return State.FAILED
    return State.SUCCEEDED


def bulk_load(path: Path, count: int) -> list[str]:
    """`count` finished disks-only jobs under one parent; returns their names."""

    async def migrate() -> None:
        store = SqliteJobStore(path)
        await store.open()
        await store.close()

    asyncio.run(migrate())
    base = datetime(2026, 1, 1, tzinfo=UTC)
    template = store_rates.sample_job("bulk")
    names: list[str] = []
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        for first in range(0, count, BATCH):
            jobs_rows = []
            revision_rows = []
            for i in range(first, min(count, first + BATCH)):
                created = base + timedelta(seconds=i)
                ended = created + timedelta(seconds=30)
                job = dataclasses.replace(
                    template,
                    name=f"{fixtures.PARENT}/cloneJobs/j-{i}",
                    request_id="",
                    create_time=created,
                    state=_state(i, count),
                    state_time=ended,
                    end_time=ended,
                    steps=(
                        Step(kind=StepKind.PREPARING_VM_DISKS, start_time=created, end_time=ended),
                    ),
                    revision=4,
                )
                record = records.dump(job)
                names.append(job.name)
                jobs_rows.append(
                    (
                        job.name,
                        fixtures.PARENT,
                        None,
                        int(job.state),
                        records.to_us(created),
                        4,
                        record,
                    )
                )
                revision_rows.append((job.name, 4, record))
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO clone_jobs (name, parent, request_id, state, create_time_us,"
                " revision, record) VALUES (?, ?, ?, ?, ?, ?, ?)",
                jobs_rows,
            )
            conn.executemany(
                "INSERT INTO clone_job_revisions (name, revision, record) VALUES (?, ?, ?)",
                revision_rows,
            )
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return names


def _measure(run: Run, server: ServerProcess, method: str, requests: list[bytes], log: Path) -> Any:
    return loadgen.run(
        {
            "mode": "latency",
            "target": server.address,
            "method": method,
            "requests": [r.hex() for r in requests],
            "duration": run.scale(1.5, 0.7),
            "max_calls": 20_000,
            "warmup_calls": 20,
        },
        cpus=run.load_cpus,
        log=log,
        timeout=60,
    )


def run(run: Run) -> list[Figure]:
    work = run.tmpdir("scaling")
    sizes = run.scale([1_000, 10_000, 100_000], [1_000, 10_000])
    rng = random.Random(5)
    results: dict[int, dict[str, Any]] = {}
    for count in sizes:
        data = work / f"data-{count}"
        data.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        names = bulk_load(data / "clonejob.db", count)
        load_s = time.perf_counter() - start
        gets = [
            clone_job_service_pb2.GetCloneJobRequest(name=n).SerializeToString()
            for n in rng.sample(names, min(500, len(names)))
        ]
        lists = {
            key: [
                clone_job_service_pb2.ListCloneJobsRequest(
                    parent=fixtures.PARENT, page_size=100, order_by="create_time", filter=text
                ).SerializeToString()
            ]
            for key, text in QUERIES.items()
        }
        log = work / "loadgen.log"
        with processes.real(data, workdir=work, cpus=run.server_cpus) as server:
            out: dict[str, Any] = {"load_s": load_s}
            out["get"] = _measure(run, server, "GetCloneJob", gets, log)
            for key, requests in lists.items():
                out[key] = _measure(run, server, "ListCloneJobs", requests, log)
            processes.check_alive(server)
        results[count] = out
    run.details["scaling"] = {"sizes": sizes, "queries": QUERIES, "results": results}
    small, large = sizes[0], sizes[-1]
    figures = []
    for key, label, goal in (
        ("get", "Get p50 latency", 1.2),
        ("list", f"List page p50 ({QUERIES['list']}, 10%)", 1.2),
        ("list_rare", f"List page p50 ({QUERIES['list_rare']}, {RARE} jobs)", None),
    ):
        middle = "; ".join(f"{n // 1000}k {results[n][key]['p50_ms']:.2f} ms" for n in sizes)
        figures.append(
            Figure(
                benchmark="scaling",
                name=f"{label}, {large // 1000}k vs {small // 1000}k jobs",
                measured=results[large][key]["p50_ms"],
                baseline=results[small][key]["p50_ms"],
                unit="ms",
                goal=goal,
                higher_is_better=False,
                note=f"p50 by size: {middle}" + ("; goal ~1x, met at <= 1.2x" if goal else ""),
            )
        )
    return figures
