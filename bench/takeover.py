"""Takeover after SIGKILL of the runner: how long a job mid-step waits before another
replica has claimed it, as a multiple of the lease TTL.

Three replicas on one PostgreSQL with --lease-ttl 2, and one job held mid-step by a fault
plan (a 30 s delay at the start of preparing_vm_disks, waited again by every new runner).
Each kill: the runner is found from the job's lease_owner ("host:pid:hex"), left running a
seeded random 0.5 to 0.5 + TTL seconds after its claim (so the kill falls anywhere between
two lease renewals, as a crash would), SIGKILLed; the job's lease_epoch is then polled
every 20 ms until it grows: the time from the SIGKILL to the poll that sees it is the
takeover. The killed replica is started again before the next kill. What to expect: the
dead runner renewed its lease at most TTL/3 before it died, so the lease expires between
2/3 TTL and one TTL after the kill; a replica wakes at the expiry it last read (+ 50 ms).
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from bench import fixtures, postgres, processes
from bench.figures import Figure, Run
from bench.processes import sample_vm
from client.launcher import ServerProcess

TTL = 2.0
REPLICAS = 3
POLL = 0.02
JOB_ID = "slow-1"
SLOW_STEP = {
    "match": "cloneJobs/slow-",
    "step": "preparing_vm_disks",
    "action": "delay",
    "seconds": 30,
}
CLAIM_TIMEOUT = 30.0


def _lease(conn: Any, name: str) -> tuple[str | None, int]:
    row = conn.execute(
        "SELECT lease_owner, lease_epoch FROM clone_jobs WHERE name = %s", (name,)
    ).fetchone()
    return (None, 0) if row is None else (row[0], int(row[1]))


def _claimed_after(conn: Any, name: str, epoch: int) -> tuple[float, str, int]:
    """Poll until the job's lease epoch passes `epoch`; (when seen, owner, epoch)."""
    deadline = time.monotonic() + CLAIM_TIMEOUT
    while True:
        owner, now_epoch = _lease(conn, name)
        seen = time.monotonic()
        if now_epoch > epoch and owner is not None:
            return seen, owner, now_epoch
        if seen > deadline:
            raise RuntimeError(f"{name}: no claim past epoch {epoch} in {CLAIM_TIMEOUT:.0f} s")
        time.sleep(POLL)


def _runner(fleet: list[ServerProcess], owner: str) -> ServerProcess:
    pid = int(owner.split(":")[1])
    for server in fleet:
        if server.process is not None and server.pid == pid:
            return server
    raise RuntimeError(f"the lease owner {owner} is none of this run's replicas")


def run(run: Run) -> list[Figure]:
    work = run.tmpdir("takeover")
    data = work / "data"
    sample_vm(data, fixtures.PARENT, disks=1, disk_size="1MiB")
    kills = run.scale(6, 3)
    rng = random.Random(11)
    name = fixtures.job_name(JOB_ID)
    takeovers: list[dict[str, Any]] = []
    with (
        postgres.temporary_database() as url,
        processes.replicas(
            REPLICAS,
            data,
            store=url,
            workdir=work,
            cpus=run.server_cpus,
            lease_ttl=TTL,
            fault_plan=[SLOW_STEP],
        ) as fleet,
        postgres.connect(url) as conn,
    ):
        fixtures.create(fleet[0].address, JOB_ID)
        claimed_at, owner, epoch = _claimed_after(conn, name, 0)
        for _ in range(kills):
            runner = _runner(fleet, owner)
            hold = rng.uniform(0.5, 0.5 + TTL)
            time.sleep(max(0.0, claimed_at + hold - time.monotonic()))
            killed_at, held_from = time.monotonic(), claimed_at
            runner.kill()
            claimed_at, new_owner, new_epoch = _claimed_after(conn, name, epoch)
            takeovers.append(
                {
                    "seconds": claimed_at - killed_at,
                    "held_s": killed_at - held_from,
                    "from": owner,
                    "to": new_owner,
                    "epochs": [epoch, new_epoch],
                }
            )
            owner, epoch = new_owner, new_epoch
            # Three again before the next kill; the start is counted in the next hold.
            runner.start()
            processes.pin(runner.pid, run.server_cpus)
        for server in fleet:
            processes.check_alive(server)
    run.details["takeover"] = {"ttl_s": TTL, "replicas": REPLICAS, "takeovers": takeovers}
    seconds = [t["seconds"] for t in takeovers]
    same = [t for t in takeovers if t["to"].split(":")[1] == t["from"].split(":")[1]]
    goal_s = 1.2 * TTL + 1.0
    return [
        Figure(
            benchmark="takeover",
            name=f"takeover after SIGKILL, median of {len(seconds)}, x lease TTL",
            measured=statistics.median(seconds),
            baseline=TTL,
            unit="s",
            goal=goal_s / TTL,
            higher_is_better=False,
            note=f"goal 1.2 x TTL + 1 s = {goal_s:g} s; --lease-ttl {TTL:g}, {REPLICAS} replicas;"
            f" each: {', '.join(f'{s:.2f}' for s in seconds)} s; max {max(seconds):.2f} s"
            + (f"; {len(same)} taken over by the killed process itself" if same else ""),
        ),
    ]
