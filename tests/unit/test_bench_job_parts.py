"""job_cost's two parts of a VM job, measured on their own: the target's steps
(real files, synced) and the engine (the real store, a target doing no I/O)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from bench import job_parts
from server.domain.job import State
from server.store import SqliteJobStore


def test_the_parts_run_real_jobs_through_and_report_cpu_per_job(tmp_path: Path) -> None:
    measured = job_parts.measure(tmp_path, 3, None)

    assert measured["jobs"] == 3
    assert measured["target_cpu_us_per_job"] > 0
    assert measured["engine_cpu_us_per_job"] > 0
    # The target made each VM's disk and instance files, as a clone job would.
    zone = tmp_path / "data/targets/projects/bench/zones/us-central1-a"
    assert len(list((zone / "disks").glob("t-*-disk0-*.img"))) == 3
    for i in range(3):
        definition = json.loads((zone / "instances" / f"t-{i}.json").read_text())
        assert definition["name"] == f"t-{i}"
        assert (zone / "instances" / f"t-{i}.xml").read_bytes().startswith(b"<?xml")

    # The engine ran every waiting job to SUCCEEDED (and left none behind).
    async def counts() -> dict[State, int]:
        store = SqliteJobStore(tmp_path / "engine.db")
        await store.open()
        try:
            return dict(await store.count_by_state())
        finally:
            await store.close()

    assert {s: n for s, n in asyncio.run(counts()).items() if n} == {State.SUCCEEDED: 3}
