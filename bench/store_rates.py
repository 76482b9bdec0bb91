"""The store's raw commit rates, for the baselines of `create` and `engine`: a loop of
SqliteJobStore.create or .update in this process (same pragmas: WAL, synchronous=FULL)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.fixtures import PARENT
from server.domain.job import CloneJob, State, TargetKind, TargetSpec
from server.store import SqliteJobStore


def sample_job(job_id: str, *, vm: bool = False) -> CloneJob:
    if vm:
        target = TargetSpec(
            kind=TargetKind.VM,
            project="bench",
            zone="us-central1-a",
            vm_name=job_id,
            machine_type="n2-standard-4",
            details={"vm_name": job_id, "zone": "us-central1-a", "machine_type": "n2-standard-4"},
        )
    else:
        target = TargetSpec(kind=TargetKind.DISKS, project="bench", zone="us-central1")
    return CloneJob.new(
        name=f"{PARENT}/cloneJobs/{job_id}",
        target=target,
        source_cycle="1",
        now=datetime.now(UTC),
        request_id=str(uuid.uuid4()),
        request_hash="0" * 64,
    )


async def _creates(path: Path, duration: float, limit: int) -> dict[str, Any]:
    store = SqliteJobStore(path)
    await store.open()
    try:
        template = sample_job("raw-0")
        count = 0
        start = time.perf_counter()
        deadline = start + duration
        while count < limit and time.perf_counter() < deadline:
            count += 1
            await store.create(
                dataclasses.replace(
                    template,
                    name=f"{PARENT}/cloneJobs/raw-{count}",
                    request_id=str(uuid.uuid4()),
                )
            )
        elapsed = time.perf_counter() - start
    finally:
        await store.close()
    return {"commits": count, "seconds": elapsed, "commits_per_s": count / elapsed}


async def _updates(path: Path, duration: float, limit: int) -> dict[str, Any]:
    """State-change commits: each update moves a job to a new revision (and state)."""
    store = SqliteJobStore(path)
    await store.open()
    try:
        job = sample_job("raw-update", vm=True)
        await store.create(job)
        now = datetime.now(UTC)
        states = (State.ACTIVE, State.ADAPTING_OS)
        count = 0
        start = time.perf_counter()
        deadline = start + duration
        while count < limit and time.perf_counter() < deadline:
            count += 1
            new = dataclasses.replace(
                job, state=states[count % 2], state_time=now, revision=job.revision + 1
            )
            await store.update(new, expected_revision=job.revision)
            job = new
        elapsed = time.perf_counter() - start
    finally:
        await store.close()
    return {"commits": count, "seconds": elapsed, "commits_per_s": count / elapsed}


def create_rate(path: Path, *, duration: float, limit: int = 1_000_000) -> dict[str, Any]:
    return asyncio.run(_creates(path, duration, limit))


def update_rate(path: Path, *, duration: float, limit: int = 1_000_000) -> dict[str, Any]:
    return asyncio.run(_updates(path, duration, limit))
