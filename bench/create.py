"""Durable CreateCloneJob/s, 64 in flight, against the bare server.

- The API path alone: a server that runs no jobs (`--max-concurrent-jobs 0`, so
  every created job stays PENDING), in rounds alternating with the bare server.
- With jobs running behind (disks only, one 1 MiB disk, 4 slots), as they would:
  the same load, and how the one server core is split between the API and the
  engine (see `_split`).
- Beside them, the store's raw create-commit rate.
"""

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
    """How many jobs are in each state (read-only, while the server runs or after)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT state, COUNT(*) FROM clone_jobs GROUP BY state").fetchall()
    finally:
        conn.close()
    return {State(s).name: n for s, n in rows}


def _load(run: Run, server: ServerProcess, prefix: str, label: str, work: Path) -> dict[str, Any]:
    spec = _spec(run, server, prefix)
    with profiled(run, label, server.pid, spec["warmup"] + spec["duration"]):
        return loadgen.run(spec, cpus=run.load_cpus, log=work / "loadgen.log", timeout=90)


def _with_jobs(run: Run, data: Path, work: Path) -> dict[str, Any]:
    """The create load with jobs running behind it. Besides the load generator's
    window, the server's CPU and the jobs created and SUCCEEDED are counted over
    the whole load (warm-up included), so that the three agree with each other."""
    db = data / "clonejob.db"
    with processes.real(data, workdir=work, cpus=run.server_cpus) as real:
        fixtures.create(real.address, "probe-jobs")
        before = _states(db)
        cpu_before = processes.cpu_seconds([real.pid])[real.pid]
        result = _load(run, real, "j-", "create-jobs", work)
        cpu = processes.cpu_seconds([real.pid])[real.pid] - cpu_before
        after = _states(db)
        rss = processes.rss_bytes(real.pid)
    return {
        **result,
        "load_server_cpu_s": cpu,
        "load_created": sum(after.values()) - sum(before.values()),
        "load_succeeded": after.get("SUCCEEDED", 0) - before.get("SUCCEEDED", 0),
        "states_after_load": after,
        "states_at_stop": _states(db),
        "server_rss_after": rss,
    }


def _split(
    api_us_per_create: float | None, jobs: dict[str, Any], job_us: float | None
) -> dict[str, Any]:
    """The server's CPU during the load with jobs, split: the API's share is the CPU
    per Create of the API-only run times the creates made; the rest is the engine's
    (the jobs' steps and commits, and anything else the server did). With `job_us`,
    job_cost's CPU per disks-only job of this run, the engine's share is also
    estimated the other way round: the jobs that reached SUCCEEDED times it."""
    total = jobs["load_server_cpu_s"]
    if not api_us_per_create or not total:
        return {}
    by_jobs = (
        min(1.0, job_us * 1e-6 * jobs["load_succeeded"] / total) if job_us is not None else None
    )
    estimate = api_us_per_create * 1e-6 * jobs["load_created"]
    # On a noisy machine the estimate can exceed the total: then the engine's share is ~0.
    api = min(total, estimate)
    engine = total - api
    succeeded = jobs["load_succeeded"]
    return {
        "server_cpu_s": total,
        "api_cpu_s": api,
        "api_cpu_estimate_s": estimate,
        "engine_cpu_s": engine,
        "api_share": api / total,
        "engine_share": engine / total,
        "engine_cpu_us_per_succeeded_job": 1e6 * engine / succeeded if succeeded else None,
        "engine_share_by_job_cost": by_jobs,
    }


def run(run: Run) -> list[Figure]:
    work = run.tmpdir("create")
    data = work / "data"
    sample_vm(data, fixtures.PARENT, disks=1, disk_size="1MiB")
    with fixtures.pinned(run.server_cpus):
        raw = store_rates.create_rate(work / "raw.db", duration=run.scale(3.0, 1.0))
    rounds = run.scale(2, 1)
    api_results: list[dict[str, Any]] = []
    bare_results: list[dict[str, Any]] = []
    api_data = work / "data-api"
    sample_vm(api_data, fixtures.PARENT, disks=1, disk_size="1MiB")
    with processes.real(api_data, workdir=work, cpus=run.server_cpus, max_concurrent_jobs=0) as api:
        job = fixtures.create(api.address, "probe")
        message = work / "job.bin"
        message.write_bytes(job)
        with processes.bare(message, workdir=work, cpus=run.server_cpus) as bare:
            # Alternate, so that noise on the shared machine hits both alike.
            for n in range(rounds):
                bare_results.append(_load(run, bare, f"b{n}-", f"create-bare-{n}", work))
                api_results.append(_load(run, api, f"a{n}-", f"create-api-{n}", work))
    api_states = _states(api_data / "clonejob.db")
    jobs = _with_jobs(run, data, work)
    api_best = max(api_results, key=lambda r: r["calls_per_s"])
    bare_best = max(bare_results, key=lambda r: r["calls_per_s"])
    job_cost = run.details.get("job_cost", {}).get("results", {}).get("disks", {})
    job_ms = job_cost.get("untraced", {}).get("cpu_ms_per_job")
    split = _split(api_best["server_cpu_us_per_call"], jobs, job_ms * 1000 if job_ms else None)
    run.details["create"] = {
        "job_bytes": len(job),
        "rounds": rounds,
        "api_only": api_results,
        "bare": bare_results,
        "with_jobs": jobs,
        "split": split,
        "raw_store_creates": raw,
        "api_only_states_at_stop": api_states,
    }
    api_note = (
        f"{IN_FLIGHT} in flight, request_id set, --max-concurrent-jobs 0 (jobs stay PENDING);"
        f" best of {rounds} rounds alternating with bare"
    )
    errors = {k: v for r in api_results for k, v in r["errors"].items()}
    if errors:
        api_note += f"; errors {errors}"
    jobs_note = (
        f"{IN_FLIGHT} in flight, jobs run behind (4 slots, 1 x 1 MiB disk); jobs after the"
        f" load: {jobs['states_after_load']}"
    )
    if jobs["errors"]:
        jobs_note += f"; errors {jobs['errors']}"
    if split:
        per_job = split["engine_cpu_us_per_succeeded_job"]
        jobs_note += (
            f". Server core over the whole load: {split['server_cpu_s']:.2f} s CPU; API"
            f" {100 * split['api_share']:.0f}% (API-only CPU per Create x"
            f" {jobs['load_created']} creates), engine {100 * split['engine_share']:.0f}% (the"
            f" rest; {jobs['load_succeeded']} jobs reached SUCCEEDED"
            + (f", {per_job:,.0f} us CPU each)" if per_job else ")")
        )
        if split["engine_share_by_job_cost"] is not None:
            jobs_note += (
                f"; by job_cost's CPU per job x the jobs that SUCCEEDED, engine"
                f" {100 * split['engine_share_by_job_cost']:.0f}%"
            )
        if split["api_cpu_estimate_s"] > split["server_cpu_s"]:
            jobs_note += " [the API estimate exceeded the total: noise between the two runs]"
    return [
        Figure(
            benchmark="create",
            name="CreateCloneJob calls/s (API path alone)",
            measured=api_best["calls_per_s"],
            baseline=bare_best["calls_per_s"],
            unit="calls/s",
            goal=0.3,
            note=api_note,
        ),
        *cost_figures(
            "create",
            api_best,
            bare_best,
            rpc="CreateCloneJob (API path alone)",
            call="Create (API path alone)",
            p99=False,
            cpu_note="server process CPU time / calls, in the measured window",
        ),
        Figure(
            benchmark="create",
            name="CreateCloneJob calls/s (jobs running behind)",
            measured=jobs["calls_per_s"],
            baseline=bare_best["calls_per_s"],
            unit="calls/s",
            note=jobs_note,
        ),
        Figure(
            benchmark="create",
            name="server CPU per Create (jobs running behind)",
            measured=jobs["server_cpu_us_per_call"],
            baseline=bare_best["server_cpu_us_per_call"],
            unit="us",
            higher_is_better=False,
            note="includes the engine's CPU for the jobs running meanwhile",
        ),
        Figure(
            benchmark="create",
            name="Create/s (API path alone) vs raw store creates/s",
            measured=api_best["calls_per_s"],
            baseline=raw["commits_per_s"],
            unit="/s",
            note="baseline: a loop of SqliteJobStore.create in one process (WAL, synchronous=FULL)",
        ),
    ]
