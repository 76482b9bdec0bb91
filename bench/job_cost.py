"""CPU per clone job through SUCCEEDED, against the CPU of one bare echo call.

For each kind of job (disks only: one step; a VM: three steps), N jobs with one
1 MiB disk each are made through the API of a server that runs none of them
(`--max-concurrent-jobs 0`). The server is then restarted with its slots (the
default 4), pinned to the server core; its worker takes up the backlog, and the
server's CPU (user + system, every thread) is counted from the moment it serves
until the last job is SUCCEEDED, polled read-only from the database every 50 ms.
CPU per job is that CPU over N: what the engine spends on a job (claim, every
commit, the disk copy, the published changes, the log lines), none of the
Create's. The baseline is the bare server's CPU per call in the same run (the
echo of a Get-sized reply, 64 in flight).

Beside it, from a second pass of the same backlog with `strace -f -c` attached
to the server: the syscalls per job, the fsyncs (fsync + fdatasync) per job, and
the revisions the engine wrote per job (each in a commit of its own, or sharing
one with others: a step's last progress and its end, other jobs' changes by the
group commit).

After them, a VM job's two parts, each measured on its own in the bench's
process on the server core (bench/job_parts.py): the target's steps alone and the
engine alone. They have no goal: they say what the goal on a whole job has to
fit in on the machine of the day.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench import fixtures, job_parts, loadgen, processes
from bench.figures import Figure, Run
from bench.processes import sample_vm
from bench.profiles import profiled
from clonejob_grpc import clone_job_service_pb2
from server.domain.job import State

POLL_INTERVAL = 0.05
RUN_TIMEOUT = 120.0
GOAL = 8.0  # CPU per job <= 8x the CPU of one bare call
# A sync call and the path of its descriptor, as `strace -y` prints it.
# (With -f, a call another thread interrupts is cut: "fsync(5</x-wal> <unfinished ...>".)
_SYNC = re.compile(r"\b(?:fsync|fdatasync)\(\d+<([^>]*)>")
_DONE_SQL = f"SELECT count(*) FROM clone_jobs WHERE state = {int(State.SUCCEEDED)}"
_ENDED_SQL = (
    "SELECT count(*) FROM clone_jobs WHERE state IN"
    f" ({int(State.SUCCEEDED)}, {int(State.FAILED)}, {int(State.CANCELLED)})"
)


def _bare_cpu_per_call(run: Run, work: Path, reply: bytes) -> dict[str, Any]:
    message = work / "job.bin"
    message.write_bytes(reply)
    request = clone_job_service_pb2.GetCloneJobRequest(name=fixtures.job_name("x"))
    with processes.bare(message, workdir=work, cpus=run.server_cpus) as bare:
        spec = {
            "mode": "unary",
            "target": bare.address,
            "server_pid": bare.pid,
            "method": "GetCloneJob",
            "request": request.SerializeToString().hex(),
            "concurrency": 64,
            "warmup": run.scale(1.0, 0.3),
            "duration": run.scale(3.0, 1.0),
        }
        return loadgen.run(spec, cpus=run.load_cpus, log=work / "loadgen.log", timeout=60)


def fsync_cpu_us(folder: Path, *, size: int = 4096, rounds: int = 200) -> float:
    """CPU (user + system) of one fsync of a new file of `size` bytes in `folder`, on
    this machine's filesystem: what durability costs per fsync, at the least. The
    files stay (the run's end removes them): deleting them here would make every
    file created after cost more (see `file_create_cpu_us`)."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = os.urandom(size)
    spent = 0.0
    for n in range(rounds):
        fd = os.open(folder / f"fsync-{size}-{n}.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, payload)
            before = time.process_time()
            os.fsync(fd)
            spent += time.process_time() - before
        finally:
            os.close(fd)
    return 1e6 * spent / rounds


def file_create_cpu_us(folder: Path, *, rounds: int = 200) -> float:
    """CPU of creating one empty file in a new `folder`, now. On ext4 without a
    journal it grows with the files deleted nearby in the last minutes (each new
    inode skips those one by one): 15 us on a quiet disk, 170-560 us measured after
    a few thousand deletions. A clone job creates one file per disk, and a VM job
    two more (its definition and its domain XML)."""
    folder.mkdir(parents=True)
    spent = 0.0
    for n in range(rounds):
        path = folder / f"new-{n}"
        before = time.process_time()
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        spent += time.process_time() - before
    return 1e6 * spent / rounds


def _spread(values: Iterable[float]) -> str:
    ordered = sorted(values)
    low, high = f"{ordered[0]:.0f}", f"{ordered[-1]:.0f}"
    return low if low == high else f"{low}-{high}"


def _wait_done(db: sqlite3.Connection, jobs: int, server: Any) -> int:
    """Poll until every job ended; how many SUCCEEDED."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        ended = db.execute(_ENDED_SQL).fetchone()[0]
        if ended >= jobs:
            return int(db.execute(_DONE_SQL).fetchone()[0])
        processes.check_alive(server)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{ended}/{jobs} jobs ended in {RUN_TIMEOUT:.0f} s")
        time.sleep(POLL_INTERVAL)


@contextlib.contextmanager
def _strace(pid: int, out: Path) -> Any:
    """`strace -f -C -y` on every thread of `pid` while the block runs: each call, with
    the paths of its file descriptors, then the summary table, in `out`."""
    proc = subprocess.Popen(
        ["strace", "-f", "-C", "-y", "-q", "-o", str(out), "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.3)  # attached to every thread by then
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _syncs(path: Path) -> tuple[int, int]:
    """(fsyncs of the database's log, the other fsyncs) in a `strace -y` trace: each
    sync of the write-ahead log is one durable commit."""
    log = other = 0
    if not path.exists():
        return log, other
    for line in path.read_text(errors="replace").splitlines():
        found = _SYNC.search(line)
        if found is not None:
            if found.group(1).endswith("-wal"):
                log += 1
            else:
                other += 1
    return log, other


def _syscalls(path: Path) -> dict[str, int]:
    """Calls per syscall from `strace -c`'s table."""
    counts: dict[str, int] = {}
    if not path.exists():
        return counts
    for line in path.read_text().splitlines():
        cells = line.split()
        # % time, seconds, usecs/call, calls, [errors,] syscall
        if len(cells) >= 5 and re.fullmatch(r"[\d.]+", cells[0]) and cells[3].isdigit():
            if cells[-1] != "total":
                counts[cells[-1]] = int(cells[3])
    return counts


def _one_kind(
    run: Run, work: Path, *, vm: bool, jobs: int, traced: bool, label: str = ""
) -> dict[str, Any]:
    data = work / ("data-traced" if traced else "data")
    sample_vm(data, fixtures.PARENT, disks=1, disk_size="1MiB")
    prefix = "vm-" if vm else "d-"
    ids = [f"{prefix}{i}" for i in range(jobs)]
    # Where the job's files go, what a new file costs now (pinned like the server).
    with fixtures.pinned(run.server_cpus):
        create_us = file_create_cpu_us(work / ("new-files-traced" if traced else "new-files"))
    with processes.real(data, workdir=work, cpus=run.server_cpus, max_concurrent_jobs=0) as server:
        fixtures.create_many(server.address, ids, vm=vm)
        db = sqlite3.connect(f"file:{data / 'clonejob.db'}?mode=ro", uri=True)
        try:
            server.restart(max_concurrent_jobs=None)
            processes.pin(server.pid, run.server_cpus)
            out: dict[str, Any] = {"file_create_cpu_us": create_us}
            if traced:
                trace = work / f"strace-{prefix}{jobs}.txt"
                with _strace(server.pid, trace):
                    before = int(db.execute(_ENDED_SQL).fetchone()[0])
                    succeeded = _wait_done(db, jobs, server)
                counts = _syscalls(trace)
                traced_jobs = max(1, jobs - before)
                out["traced_jobs"] = traced_jobs
                out["syscalls"] = counts
                out["syscalls_per_job"] = sum(counts.values()) / traced_jobs
                out["fsyncs_per_job"] = (
                    counts.get("fsync", 0) + counts.get("fdatasync", 0)
                ) / traced_jobs
                log_syncs, file_syncs = _syncs(trace)
                out["durable_commits_per_job"] = log_syncs / traced_jobs
                out["file_fsyncs_per_job"] = file_syncs / traced_jobs
                out["futex_per_job"] = counts.get("futex", 0) / traced_jobs
                out["writes_per_job"] = (
                    counts.get("pwrite64", 0) + counts.get("write", 0)
                ) / traced_jobs
            else:
                label = label or f"job-cost-{'vm' if vm else 'disks'}"
                start_cpu = processes.cpu_seconds([server.pid])[server.pid]
                started = time.monotonic()
                with profiled(run, label, server.pid, run.scale(4.0, 2.0)):
                    succeeded = _wait_done(db, jobs, server)
                    wall = time.monotonic() - started
                    cpu = processes.cpu_seconds([server.pid])[server.pid] - start_cpu
                out["cpu_ms_per_job"] = 1000 * cpu / jobs
                out["wall_s"] = wall
                out["jobs_per_s"] = jobs / wall
            revisions = db.execute(
                "SELECT count(*) FROM clone_job_revisions WHERE name LIKE ?",
                (f"%/cloneJobs/{prefix}%",),
            ).fetchone()[0]
            # The Create's revision is the API's; the rest are the engine's.
            out["engine_revisions_per_job"] = revisions / jobs - 1
            out["succeeded"] = succeeded
        finally:
            db.close()
    return out


def run(run: Run) -> list[Figure]:
    work = run.tmpdir("job_cost")
    jobs = run.scale(300, 100)
    sample_vm(work / "probe", fixtures.PARENT)
    with processes.real(work / "probe", workdir=work, cpus=run.server_cpus) as probe:
        reply = fixtures.create(probe.address, "probe")
    # Rounds alternating the bare server and the jobs: the machine's speed drifts
    # (seen here: 2x between minutes), and each figure takes its best round.
    rounds = run.scale(2, 1)
    bares: list[dict[str, Any]] = []
    untraced: dict[str, list[dict[str, Any]]] = {"disks": [], "vm": []}
    for n in range(rounds):
        bares.append(_bare_cpu_per_call(run, run.tmpdir(f"job_cost/bare-{n}"), reply))
        for key in untraced:
            untraced[key].append(
                _one_kind(
                    run, run.tmpdir(f"job_cost/{key}-{n}"), vm=key == "vm", jobs=jobs,
                    traced=False, label=f"job-cost-{key}-{n}",
                )
            )  # fmt: skip
    bare = min(bares, key=lambda b: b["server_cpu_us_per_call"])
    with fixtures.pinned(run.server_cpus):
        fsync_us = fsync_cpu_us(work / "fsync")
        fsync_disk_us = fsync_cpu_us(work / "fsync", size=1 << 20, rounds=50)
    bare_us = bare["server_cpu_us_per_call"]
    parts = job_parts.measure(run.tmpdir("job_cost/parts"), run.scale(150, 50), run.server_cpus)
    results: dict[str, Any] = {
        "rounds": rounds,
        "bare": bares,
        "fsync_cpu_us": {"4KiB": fsync_us, "1MiB": fsync_disk_us},
        "vm_parts": parts,
    }
    figures: list[Figure] = []
    for vm in (False, True):
        kind = "VM (3 steps)" if vm else "disks only (1 step)"
        key = "vm" if vm else "disks"
        measured = min(untraced[key], key=lambda m: m["cpu_ms_per_job"])
        traced: dict[str, Any] = {}
        if processes.strace_available():
            traced = _one_kind(
                run, run.tmpdir(f"job_cost/{key}-traced"), vm=vm, jobs=jobs, traced=True
            )
        results[key] = {"untraced": measured, "rounds": untraced[key], "traced": traced}
        odd = "" if measured["succeeded"] == jobs else f"; ONLY {measured['succeeded']} SUCCEEDED"
        counts = (
            f"; per job: {measured['engine_revisions_per_job']:.1f} revisions written by the"
            f" engine in {traced['durable_commits_per_job']:.1f} durable commits (syncs of the"
            f" database's log), {traced['fsyncs_per_job']:.1f} fsyncs in all"
            f" ({traced['file_fsyncs_per_job']:.1f} of files and folders; one fsync costs"
            f" {fsync_us:.0f} us of CPU here for a new 4 KiB file,"
            f" {fsync_disk_us:.0f} us for 1 MiB: about"
            f" {fsync_disk_us + (traced['fsyncs_per_job'] - 1) * fsync_us:,.0f} us for"
            " the job's, one of them its disk's),"
            f" {traced['syscalls_per_job']:.0f} syscalls"
            f" ({traced['futex_per_job']:.0f} futex, {traced['writes_per_job']:.0f} writes)"
            if traced
            else f"; per job: {measured['engine_revisions_per_job']:.1f} revisions by the engine"
            " (no strace: no syscall counts)"
        )
        figures.append(
            Figure(
                benchmark="job_cost",
                name=f"server CPU per clone job, {kind}",
                measured=measured["cpu_ms_per_job"] * 1000,
                baseline=bare_us,
                unit="us",
                goal=GOAL,
                higher_is_better=False,
                note=f"{jobs} jobs, 1 x 1 MiB disk each, 4 slots, SQLite; best of {rounds}"
                " rounds alternating with bare;"
                f" {measured['jobs_per_s']:.0f} jobs/s on one core; baseline: bare server CPU"
                f" per echo call; a new file cost"
                f" {_spread(m['file_create_cpu_us'] for m in untraced[key])} us of CPU where"
                f" the jobs' files went, just before each round" + counts + odd,
            )
        )
    n = parts["jobs"]
    for part, key, what in (
        (
            "the target's steps alone",
            "target_cpu_us_per_job",
            f"{n} VM jobs' three steps in LocalTarget, one after another: the 1 MiB copy,"
            " boot detection, the instance's files, every file and folder synced; no"
            " engine, store or gRPC",
        ),
        (
            "the engine alone",
            "engine_cpu_us_per_job",
            f"{n} waiting VM jobs run by the engine on the real SQLite store with a target"
            " that does no I/O (it reports 0% and 100% as the local one does); no watchers,"
            " no gRPC, no log lines",
        ),
    ):
        figures.append(
            Figure(
                benchmark="job_cost",
                name=f"VM job's part: {part}",
                measured=parts[key],
                baseline=bare_us,
                unit="us",
                higher_is_better=False,
                note=what + "; in the bench's process on the server core",
            )
        )
    run.details["job_cost"] = {"jobs": jobs, "results": results}
    return figures
