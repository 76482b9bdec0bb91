"""Watch delivery across replicas: a change committed on replica A, received by 1,000
watchers on replica B, against 1,000 watchers on A itself.

Two replicas on one PostgreSQL, both API only (--max-concurrent-jobs 0): the job stays
PENDING until the Cancel, and no runner's work lands in the measured moment. Each round
makes a job on A, opens the watchers (on A or on B) and waits for every first message;
then the load generator calls Cancel on A and times, for each watcher, from just before
the Cancel call to its CANCELLING message. That start is the same instant for both
sides: on A the watchers are sent the change as A commits it; on B, after PostgreSQL's
notification reaches B and B reads the job once (server/engine/feed.py). A's Cancel
returns only after it has handed the change to its own watchers, so its reply is no
commit time to measure A's watchers from. Rounds alternate the sides; the percentiles
pool every watcher of every round. Replicas on the server core, the load generator on
the other, PostgreSQL unpinned.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench import fixtures, loadgen, postgres, processes
from bench.figures import Figure, Run, percentile
from bench.processes import sample_vm
from client.launcher import ServerProcess

PER_CHANNEL = 100
SIDES = ("same", "cross")


def _round(
    run: Run, watch_on: ServerProcess, cancel_on: ServerProcess, job_id: str, watchers: int
) -> dict[str, Any]:
    fixtures.create(cancel_on.address, job_id)
    spec = {
        "mode": "watch",
        "target": watch_on.address,
        "cancel_target": cancel_on.address,
        "names": [fixtures.job_name(job_id)],
        "streams": watchers,
        "per_channel": PER_CHANNEL,
        "open_timeout": 60.0,
        "event_timeout": 30.0,
        # The job stays CANCELLING (no replica runs jobs): its streams do not end.
        "drain_timeout": 0.1,
        "return_delays": True,
    }
    with loadgen.LoadGenerator(spec, cpus=run.load_cpus, log=run.workdir / "loadgen.log") as gen:
        ready = gen.result(90)
        gen.go()
        result = gen.result(90)
    result["ready"] = ready
    for server in (watch_on, cancel_on):
        processes.check_alive(server)
    return result


def run(run: Run) -> list[Figure]:
    work = run.tmpdir("replica_watch")
    data = work / "data"
    sample_vm(data, fixtures.PARENT, disks=1, disk_size="1MiB")
    watchers = run.scale(1000, 1000)
    rounds = run.scale(3, 2)
    results: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    with (
        postgres.temporary_database() as url,
        processes.replicas(
            2, data, store=url, workdir=work, cpus=run.server_cpus, max_concurrent_jobs=0
        ) as (a, b),
    ):
        for n in range(rounds):
            for side in SIDES if n % 2 == 0 else SIDES[::-1]:
                watch_on = a if side == "same" else b
                results[side].append(_round(run, watch_on, a, f"rw-{side}-{n}", watchers))
    run.details["replica_watch"] = {
        side: [{k: v for k, v in r.items() if k != "delays_s"} for r in rs]
        for side, rs in results.items()
    }
    return _figures(watchers, rounds, results)


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    delays = [1000 * d for r in rounds for d in r["delays_s"]]
    after_reply = [1000 * (d - r["cancel_s"]) for r in rounds for d in r["delays_s"]]
    return {
        "p50_ms": percentile(delays, 50),
        "p99_ms": percentile(delays, 99),
        "round_p99s_ms": [percentile([1000 * d for d in r["delays_s"]], 99) for r in rounds],
        "cancel_ms": statistics.median(1000 * r["cancel_s"] for r in rounds),
        "after_reply_p50_ms": percentile(after_reply, 50),
        "after_reply_p99_ms": percentile(after_reply, 99),
        "received": sum(r["received"] for r in rounds),
        "opened": sum(r["ready"]["opened"] for r in rounds),
        "states": {s: sum(r["states"].get(s, 0) for r in rounds) for s in ("CANCELLING",)},
        "errors": [r["errors"] for r in rounds if r["errors"]],
    }


def _figures(watchers: int, rounds: int, results: dict[str, list[dict[str, Any]]]) -> list[Figure]:
    same, cross = _summary(results["same"]), _summary(results["cross"])
    expected = watchers * rounds
    problems = [
        f"{side}: {s['opened']}/{expected} opened, {s['received']} received,"
        f" {s['states']['CANCELLING']} CANCELLING, errors {s['errors']}"
        for side, s in (("same", same), ("cross", cross))
        if s["opened"] < expected or s["states"]["CANCELLING"] < expected or s["errors"]
    ]
    note = (
        f"{rounds} round(s) a side; from the Cancel call on A to each CANCELLING;"
        f" per-round p99 {_list(cross['round_p99s_ms'])} vs {_list(same['round_p99s_ms'])} ms;"
        f" Cancel call {cross['cancel_ms']:.1f} ms (no watcher on A) vs {same['cancel_ms']:.1f} ms;"
        f" B's watchers after A's reply: p50 {cross['after_reply_p50_ms']:.1f},"
        f" p99 {cross['after_reply_p99_ms']:.1f} ms"
        + (f"; PROBLEMS: {'; '.join(problems)}" if problems else "")
    )
    name = f"{watchers} watchers on B, commit on A, vs on A"
    return [
        Figure(
            benchmark="replica_watch",
            name=f"delivery p99, {name}",
            measured=cross["p99_ms"],
            baseline=same["p99_ms"],
            unit="ms",
            goal=2.0,
            higher_is_better=False,
            note=note,
        ),
        Figure(
            benchmark="replica_watch",
            name=f"delivery p50, {name}",
            measured=cross["p50_ms"],
            baseline=same["p50_ms"],
            unit="ms",
            higher_is_better=False,
        ),
    ]


def _list(values: list[float | None]) -> str:
    return "/".join("-" if v is None else f"{v:.0f}" for v in values)
