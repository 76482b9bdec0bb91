"""Short jobs to SUCCEEDED per second: 1, 2 and 3 worker replicas on one PostgreSQL, and
one SQLite server for reference.

Each configuration drains a backlog of N disks-only jobs (one 1 MiB disk each) made
through the API before any of them runs, so that the figure is the workers' and not the
Creates'. On PostgreSQL the worker replicas (default slots) are started and paused
(SIGSTOP) while one more replica, API only (--max-concurrent-jobs 0), takes the Creates;
then all are resumed at once and the API replica stays up, as it would. The SQLite server
takes the Creates with --max-concurrent-jobs 0, then is restarted with its slots.

The rate is counted between 10 % and 90 % of the jobs done (the steady part: neither the
start nor the last few jobs, when slots go idle), from the store polled every 100 ms.
In the same window: the CPU of each process (every replica, and the PostgreSQL backends
serving the benchmark's database) and of the whole machine, all cores, everyone's. No
process is pinned here: the question is what the machine's cores give.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import fixtures, postgres, processes
from bench.figures import Figure, Run
from bench.processes import sample_vm
from server.domain.job import State

POLL_INTERVAL = 0.1
RUN_TIMEOUT = 120.0
FINISHED = (int(State.SUCCEEDED), int(State.FAILED), int(State.CANCELLED))
_COUNT_SQL = (
    f"SELECT count(*) FROM clone_jobs WHERE state IN {FINISHED} AND name LIKE '%/cloneJobs/t-%'"
)


@dataclass(slots=True, kw_only=True)
class Sample:
    """One poll: jobs finished, and CPU seconds so far."""

    at: float
    done: int
    cpu: dict[str, dict[int, float]]  # process group -> pid -> seconds
    machine: tuple[float, float]


@dataclass(slots=True, kw_only=True)
class Drain:
    """Polls the store until `jobs` jobs are finished, sampling CPU as it goes."""

    jobs: int
    count: Callable[[], tuple[int, list[int]]]  # finished jobs, database backend pids
    groups: dict[str, list[int]]  # the servers' pids by group
    samples: list[Sample] = field(default_factory=list)

    def sample(self) -> Sample:
        done, backends = self.count()
        pids = {**self.groups, "postgres": backends} if backends else self.groups
        s = Sample(
            at=time.monotonic(),
            done=done,
            cpu={group: processes.cpu_seconds(p) for group, p in pids.items()},
            machine=processes.machine_busy_seconds(),
        )
        self.samples.append(s)
        return s

    def wait(self, check: Callable[[], None]) -> None:
        deadline = time.monotonic() + RUN_TIMEOUT
        while self.sample().done < self.jobs:
            check()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.samples[-1].done}/{self.jobs} jobs finished in {RUN_TIMEOUT:.0f} s"
                )
            time.sleep(POLL_INTERVAL)

    def window(self) -> dict[str, Any]:
        """Rate and CPU between the first samples at >= 10 % and >= 90 % done."""
        lo = next(s for s in self.samples if s.done >= 0.1 * self.jobs)
        hi = next(s for s in self.samples if s.done >= 0.9 * self.jobs)
        wall = hi.at - lo.at
        if wall <= 0:
            raise RuntimeError(f"10 % to 90 % of {self.jobs} jobs within one poll: too few jobs")
        cpu = {
            group: sum(t - lo.cpu.get(group, {}).get(pid, 0.0) for pid, t in times.items())
            for group, times in hi.cpu.items()
        }
        busy = hi.machine[0] - lo.machine[0]
        total = hi.machine[1] - lo.machine[1]
        first, last = self.samples[0], self.samples[-1]
        return {
            "jobs_per_s": (hi.done - lo.done) / wall,
            "window_s": wall,
            "window_jobs": hi.done - lo.done,
            "overall_jobs_per_s": (last.done - first.done) / (last.at - first.at),
            "cpu_cores": {group: seconds / wall for group, seconds in cpu.items()},
            "cpu_ms_per_job": {
                group: 1000 * seconds / (hi.done - lo.done) for group, seconds in cpu.items()
            },
            "machine_busy_cores": busy / wall,
            "machine_cores": total / wall,
        }


def _ids(jobs: int) -> list[str]:
    return [f"t-{i}" for i in range(jobs)]


def _pg_states(url: str) -> dict[str, int]:
    with postgres.connect(url) as conn:
        rows = conn.execute("SELECT state, count(*) FROM clone_jobs GROUP BY state").fetchall()
    return {State(int(s)).name: int(n) for s, n in rows}


def _on_postgres(run: Run, data: Path, workers: int, jobs: int) -> dict[str, Any]:
    work = run.tmpdir(f"throughput-pg{workers}")
    with (
        postgres.temporary_database() as url,
        processes.real(data, workdir=work, cpus=None, store=url, max_concurrent_jobs=0) as api,
        processes.replicas(workers, data, store=url, workdir=work, cpus=None) as fleet,
        postgres.connect(url) as conn,
    ):
        for server in fleet:
            server.pause()
        try:
            created = time.monotonic()
            fixtures.create_many(api.address, _ids(jobs))
            create_s = time.monotonic() - created
        finally:
            for server in fleet:
                server.resume()

        def count() -> tuple[int, list[int]]:
            row = conn.execute(_COUNT_SQL).fetchone()
            return (0 if row is None else int(row[0])), postgres.backend_pids(conn)

        def check() -> None:
            for server in (api, *fleet):
                processes.check_alive(server)

        groups = {"api replica": [api.pid], "worker replicas": [s.pid for s in fleet]}
        drain = Drain(jobs=jobs, count=count, groups=groups)
        drain.wait(check)
        out = drain.window()
        out["states"] = _pg_states(url)
    out["create_s"] = create_s
    out["creates_per_s"] = jobs / create_s
    return out


def _on_sqlite(run: Run, data: Path, jobs: int) -> dict[str, Any]:
    work = run.tmpdir("throughput-sqlite")
    with processes.real(data, workdir=work, cpus=None, max_concurrent_jobs=0) as server:
        created = time.monotonic()
        fixtures.create_many(server.address, _ids(jobs))
        create_s = time.monotonic() - created
        db = sqlite3.connect(f"file:{data / 'clonejob.db'}?mode=ro", uri=True)
        try:

            def count() -> tuple[int, list[int]]:
                row = db.execute(_COUNT_SQL).fetchone()
                return (0 if row is None else int(row[0])), []

            # Its worker claims the backlog as it starts: sampling begins once it serves.
            server.restart(max_concurrent_jobs=None)
            drain = Drain(jobs=jobs, count=count, groups={"server": [server.pid]})
            drain.wait(lambda: processes.check_alive(server))
            out = drain.window()
            rows = db.execute("SELECT state, count(*) FROM clone_jobs GROUP BY state").fetchall()
            out["states"] = {State(s).name: n for s, n in rows}
        finally:
            db.close()
    out["create_s"] = create_s
    out["creates_per_s"] = jobs / create_s
    return out


@contextlib.contextmanager
def _fresh(template: Path, name: str) -> Iterator[Path]:
    """A copy of the sample VM's data directory; removed after, disks and all."""
    data = template.parent / name
    shutil.copytree(template, data)
    try:
        yield data
    finally:
        shutil.rmtree(data, ignore_errors=True)


def run(run: Run) -> list[Figure]:
    work = run.tmpdir("throughput")
    template = work / "template"
    sample_vm(template, fixtures.PARENT, disks=1, disk_size="1MiB")
    jobs = run.scale(300, 150)
    results: dict[str, dict[str, Any]] = {}
    with _fresh(template, "sqlite") as data:
        results["sqlite"] = _on_sqlite(run, data, jobs)
    for workers in (1, 2, 3):
        with _fresh(template, f"pg{workers}") as data:
            results[f"pg{workers}"] = _on_postgres(run, data, workers, jobs)
    run.details["throughput"] = {"jobs": jobs, "results": results}
    return _figures(jobs, results)


def _cpu_note(result: dict[str, Any]) -> str:
    """Where the cores went in the window: each group's cores (and CPU ms per job)."""
    cores = result["cpu_cores"]
    parts = [
        f"{group} {c:.2f} ({result['cpu_ms_per_job'][group]:.1f} ms/job)"
        for group, c in cores.items()
    ]
    rest = result["machine_busy_cores"] - sum(cores.values())
    odd = {s: n for s, n in result["states"].items() if s != "SUCCEEDED"}
    return (
        f"CPU cores {', '.join(parts)}; the rest of the machine (other runs, PostgreSQL's own"
        f" processes, the kernel) {rest:.2f}; busy {result['machine_busy_cores']:.2f}"
        f" of {result['machine_cores']:.0f}" + (f"; NOT SUCCEEDED: {odd}" if odd else "")
    )


def _figures(jobs: int, results: dict[str, dict[str, Any]]) -> list[Figure]:
    sqlite, one = results["sqlite"], results["pg1"]
    figures = [
        Figure(
            benchmark="throughput",
            name=f"jobs/s, 1 replica on PostgreSQL vs SQLite, {jobs} jobs",
            measured=one["jobs_per_s"],
            baseline=sqlite["jobs_per_s"],
            unit="jobs/s",
            note=f"PostgreSQL {_cpu_note(one)} | SQLite {_cpu_note(sqlite)}",
        )
    ]
    for workers in (2, 3):
        result = results[f"pg{workers}"]
        figures.append(
            Figure(
                benchmark="throughput",
                name=f"jobs/s, {workers} replicas vs 1 on PostgreSQL",
                measured=result["jobs_per_s"],
                baseline=one["jobs_per_s"],
                unit="jobs/s",
                note=_cpu_note(result),
            )
        )
    return figures
