"""The engine end to end: N VM jobs (3 steps) through every step with a target that
does no I/O, in this process, with the real SqliteJobStore; against the store's raw
rate of state-change commits (SqliteJobStore.update in a loop)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from bench import fixtures, store_rates
from bench.figures import Figure, Run
from server.domain.job import CloneJob, State, TargetResult
from server.domain.names import CloneJobName, MigratingVmName
from server.engine import Engine
from server.store import SqliteJobStore
from server.targets.base import Fence, ProgressFn


class NoIoTarget:
    """A Target whose every step returns at once."""

    async def latest_cycle(self, migrating_vm: MigratingVmName) -> str:
        return "1"

    async def preflight(self, job: CloneJob) -> None:
        return None

    async def prepare_disks(
        self, job: CloneJob, progress: ProgressFn, cancelled: threading.Event, fence: Fence
    ) -> TargetResult:
        return TargetResult(disk_uris=((0, f"projects/bench/zones/z/disks/{job.target.vm_name}"),))

    async def adapt_os(
        self, job: CloneJob, cancelled: threading.Event, fence: Fence
    ) -> TargetResult:
        return TargetResult(boot_option="EFI", license_type="NONE", disk_uris=job.result.disk_uris)

    async def instantiate(
        self, job: CloneJob, cancelled: threading.Event, fence: Fence
    ) -> TargetResult:
        return job.result

    async def cleanup(self, job: CloneJob) -> None:
        return None


async def _engine_run(path: Path, jobs: int, limit: float) -> dict[str, Any]:
    store = SqliteJobStore(path)
    await store.open()
    engine = Engine(store, NoIoTarget())
    await engine.start()
    parent = MigratingVmName.parse(fixtures.PARENT)
    finals: list[CloneJob] = []
    try:
        names = [CloneJobName(parent=parent, clone_job_id=f"e-{i}") for i in range(jobs)]
        # Subscribed before creating, so no change is missed.
        subs = [engine.hub.subscribe(str(n)) for n in names]

        async def finished(sub: Any) -> None:
            while True:
                job = await sub.next(limit)
                if job is None:
                    raise TimeoutError(f"{sub.name} made no progress in {limit} s")
                if job.state.terminal:
                    finals.append(job)
                    return

        start = time.perf_counter()
        waiters = [asyncio.create_task(finished(s)) for s in subs]
        try:
            for name in names:
                template = store_rates.sample_job(name.clone_job_id, vm=True)
                await engine.create(name=name, target=template.target)
            await asyncio.wait_for(asyncio.gather(*waiters), limit)
        finally:
            for task in waiters:
                task.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
            for sub in subs:
                sub.close()
        elapsed = time.perf_counter() - start
    finally:
        await engine.stop()
        await store.close()
    states: dict[str, int] = {}
    for job in finals:
        states[job.state.name] = states.get(job.state.name, 0) + 1
    commits = sum(job.revision for job in finals)  # revision 1 is the create
    return {
        "jobs": jobs,
        "seconds": elapsed,
        "jobs_per_s": jobs / elapsed,
        "commits": commits,
        "commits_per_job": commits / len(finals) if finals else None,
        "commits_per_s": commits / elapsed,
        "states": states,
        "succeeded": states.get(State.SUCCEEDED.name, 0),
    }


def run(run: Run) -> list[Figure]:
    work = run.tmpdir("engine")
    jobs = run.scale(1000, 100)
    with fixtures.pinned(run.server_cpus):
        raw = store_rates.update_rate(work / "raw.db", duration=run.scale(3.0, 1.0))
        result = asyncio.run(_engine_run(work / "engine.db", jobs, limit=120.0))
    run.details["engine"] = {"engine": result, "raw_store_updates": raw}
    if result["succeeded"] != jobs:  # a rate of failing jobs is no figure
        raise RuntimeError(f"{result['succeeded']}/{jobs} jobs SUCCEEDED: {result['states']}")
    per_job = result["commits_per_job"] or 0
    note = (
        f"{result['jobs_per_s']:.0f} jobs/s end to end ({jobs} VM jobs, create -> SUCCEEDED,"
        f" {per_job:.1f} commits/job, 4 slots); {result['succeeded']}/{jobs} SUCCEEDED;"
        " both in one process on the server core"
    )
    return [
        Figure(
            benchmark="engine",
            name="engine commits/s vs raw store updates/s",
            measured=result["commits_per_s"],
            baseline=raw["commits_per_s"],
            unit="commits/s",
            goal=0.5,
            note=note,
        ),
        Figure(
            benchmark="engine",
            name="engine jobs/s vs raw updates/s / commits per job",
            measured=result["jobs_per_s"],
            baseline=raw["commits_per_s"] / per_job if per_job else None,
            unit="jobs/s",
            note="the same ratio in jobs: the best a store-bound engine could do",
        ),
    ]
