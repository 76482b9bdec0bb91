"""A VM clone job's CPU in two parts, each measured on its own in this process
(pinned to the server core), for job_cost's table: what the goal on a whole job
has to fit in.

- The target alone: `LocalTarget`'s three steps (the disk's copy, the boot disk's
  detection, the instance's JSON and libvirt XML), every file synced as the
  service syncs it, called one job after another through the target's async
  methods (one thread hop per step); no engine, no store, no gRPC.
- The engine alone: the real SQLite store and engine running VM jobs made before
  (not timed) with a target that does no I/O but reports the copy's 0% and 100% as
  the local one does; no watchers, no gRPC, logging as the process has it (the
  bench configures none: no log line is written).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from bench import engine as engine_bench
from bench import fixtures, store_rates
from bench.processes import sample_vm
from server.domain.job import CloneJob, State, TargetResult
from server.domain.names import CloneJobName, MigratingVmName
from server.engine import Engine
from server.store import SqliteJobStore
from server.targets.base import Fence, NoFence, ProgressFn
from server.targets.local import LocalTarget

POLL_INTERVAL = 0.02
RUN_TIMEOUT = 120.0


class _ReportingNoIoTarget(engine_bench.NoIoTarget):
    """The engine bench's no-I/O target, with the copy's two reports from a thread,
    as the local target sends them for a short copy."""

    async def prepare_disks(
        self, job: CloneJob, progress: ProgressFn, cancelled: threading.Event, fence: Fence
    ) -> TargetResult:
        def copy() -> TargetResult:
            progress(0, 1 << 20, virtual_bytes=1 << 20)
            progress(1 << 20, 1 << 20, virtual_bytes=1 << 20)
            return TargetResult(disk_uris=((0, f"projects/bench/zones/z/disks/{job.name}"),))

        return await asyncio.to_thread(copy)


async def _target_alone(data: Path, jobs: int) -> float:
    """CPU seconds of `jobs` VM jobs' three steps in the local target."""
    target = LocalTarget(data)
    cancelled = threading.Event()
    fence = NoFence()  # outside any lease: always held, as with one process
    templates = [store_rates.sample_job(f"t-{i}", vm=True) for i in range(jobs)]
    started = time.process_time()
    for job in templates:
        now = job.create_time
        kind = job.next_step()
        assert kind is not None
        job = job.start_step(kind, now)
        result = await target.prepare_disks(job, lambda *a, **k: None, cancelled, fence)
        job = job.finish_step_and_go_on(now, result)
        job = job.finish_step_and_go_on(now, await target.adapt_os(job, cancelled, fence))
        job = job.finish_step_and_go_on(now, await target.instantiate(job, cancelled, fence))
        if job.state is not State.SUCCEEDED:
            raise RuntimeError(f"{job.name} ended {job.state.name}, not SUCCEEDED")
    return time.process_time() - started


async def _engine_alone(path: Path, jobs: int) -> float:
    """CPU seconds from an engine's start until its `jobs` waiting VM jobs SUCCEEDED."""
    parent = MigratingVmName.parse(fixtures.PARENT)
    store = SqliteJobStore(path)
    await store.open()
    maker = Engine(store, _ReportingNoIoTarget(), max_concurrent_jobs=0)
    await maker.start()
    try:
        for i in range(jobs):
            name = CloneJobName(parent=parent, clone_job_id=f"e-{i}")
            template = store_rates.sample_job(name.clone_job_id, vm=True)
            await maker.create(name=name, target=template.target)
    finally:
        await maker.stop()
    engine = Engine(store, _ReportingNoIoTarget())
    started = time.process_time()
    deadline = time.monotonic() + RUN_TIMEOUT
    await engine.start()
    try:
        while (await store.count_by_state()).get(State.SUCCEEDED, 0) < jobs:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the engine did not finish {jobs} jobs in {RUN_TIMEOUT} s")
            await asyncio.sleep(POLL_INTERVAL)
        return time.process_time() - started
    finally:
        await engine.stop()
        await store.close()


def measure(work: Path, jobs: int, cpus: set[int] | None) -> dict[str, Any]:
    """CPU per VM job (µs) of the target alone and of the engine alone."""
    data = work / "data"
    sample_vm(data, fixtures.PARENT, disks=1, disk_size="1MiB")
    with fixtures.pinned(cpus):
        target_s = asyncio.run(_target_alone(data, jobs))
        engine_s = asyncio.run(_engine_alone(work / "engine.db", jobs))
    return {
        "jobs": jobs,
        "target_cpu_us_per_job": 1e6 * target_s / jobs,
        "engine_cpu_us_per_job": 1e6 * engine_s / jobs,
    }
