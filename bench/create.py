"""Durable CreateCloneJob/s, 64 in flight, against the bare server; beside it the
store's raw create-commit rate. Created jobs run in the background, as they would
(disks only, one 1 MiB disk)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from bench import fixtures, loadgen, processes, store_rates
from bench.figures import Figure, Run, cost_figures
from bench.processes import sample_vm
from bench.profiles import profiled
from client.launcher import ServerProcess
from server.domain.job import State

IN_FLIGHT = 64


def _spec(run: Run, server: ServerProcess, prefix: str) -> dict[str, Any]:
    return {
        "mode": "unary",
        "target": server.address,
        "server_pid": server.pid,
        "method": "CreateCloneJob",
        "parent": fixtures.PARENT,
        "prefix": prefix,
        "concurrency": IN_FLIGHT,
        "warmup": run.scale(1.0, 0.3),
        "duration": run.scale(4.0, 1.0),
    }


def _states(db: Path) -> dict[str, int]:
    """How far the created jobs got by the time the server stopped."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT state, COUNT(*) FROM clone_jobs GROUP BY state").fetchall()
    finally:
        conn.close()
    return {State(s).name: n for s, n in rows}


def run(run: Run) -> list[Figure]:
    work = run.tmpdir("create")
    data = work / "data"
    sample_vm(data, fixtures.PARENT, disks=1, disk_size="1MiB")
    with fixtures.pinned(run.server_cpus):
        raw = store_rates.create_rate(work / "raw.db", duration=run.scale(3.0, 1.0))
    with processes.real(data, workdir=work, cpus=run.server_cpus) as real:
        job = fixtures.create(real.address, "probe")
        spec = _spec(run, real, "c-")
        with profiled(run, "create-real", real.pid, spec["warmup"] + spec["duration"]):
            real_result = loadgen.run(
                spec, cpus=run.load_cpus, log=work / "loadgen.log", timeout=90
            )
        backlog = processes.rss_bytes(real.pid)
    states = _states(data / "clonejob.db")
    message = work / "job.bin"
    message.write_bytes(job)
    with processes.bare(message, workdir=work, cpus=run.server_cpus) as bare:
        spec = _spec(run, bare, "c-")
        with profiled(run, "create-bare", bare.pid, spec["warmup"] + spec["duration"]):
            bare_result = loadgen.run(
                spec, cpus=run.load_cpus, log=work / "loadgen.log", timeout=90
            )
    run.details["create"] = {
        "job_bytes": len(job),
        "real": real_result,
        "bare": bare_result,
        "raw_store_creates": raw,
        "real_server_rss_after": backlog,
        "job_states_at_stop": states,
    }
    errors = real_result["errors"]
    note = f"{IN_FLIGHT} in flight, request_id set, jobs run behind (1 x 1 MiB disk)"
    if errors:
        note += f"; errors {errors}"
    note += f"; jobs at stop: {states}"
    return [
        Figure(
            benchmark="create",
            name="CreateCloneJob calls/s",
            measured=real_result["calls_per_s"],
            baseline=bare_result["calls_per_s"],
            unit="calls/s",
            goal=0.35,
            note=note,
        ),
        Figure(
            benchmark="create",
            name="Create/s vs raw store creates/s",
            measured=real_result["calls_per_s"],
            baseline=raw["commits_per_s"],
            unit="/s",
            note="baseline: a loop of SqliteJobStore.create in one process (WAL, synchronous=FULL)",
        ),
        *cost_figures(
            "create", real_result, bare_result, rpc="CreateCloneJob", call="Create", p99=False
        ),
    ]
