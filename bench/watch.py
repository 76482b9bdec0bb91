"""Watch fan-out and watch memory, against the bare server.

Fan-out: K watchers on one job, held in adapting_os by a fault plan; the event is
Cancel's CANCELLING change, timed from just before Cancel is called to the last
watcher receiving it (Cancel's own round trip, with its durable commit, is
included; so is the bare server's trigger call). The bare server pushes one
message to K streams waiting on one asyncio.Event, set by its Cancel.
Memory: server VmRSS before and after opening the largest K, per stream.
Many jobs: K watchers on K different jobs (PENDING behind a held job, with
--max-concurrent-jobs 1), every job cancelled (64 Cancel calls in flight); the
time until every watcher saw its own job's CANCELLING.
"""

from __future__ import annotations

from typing import Any

from bench import fixtures, loadgen, processes
from bench.figures import Figure, Run
from bench.processes import sample_vm
from bench.profiles import profiled
from client.launcher import ServerProcess

PER_CHANNEL = 100


def _phase(
    run: Run, server: ServerProcess, names: list[str], streams: int, log: Any, label: str
) -> dict[str, Any]:
    spec = {
        "mode": "watch",
        "target": server.address,
        "names": names,
        "streams": streams,
        "per_channel": PER_CHANNEL,
        "open_timeout": 120.0,
        "event_timeout": 60.0,
    }
    before = processes.rss_bytes(server.pid)
    with loadgen.LoadGenerator(spec, cpus=run.load_cpus, log=log) as gen:
        ready = gen.result(180)
        after = processes.rss_bytes(server.pid)
        with profiled(run, label, server.pid, 2.0):  # the fan-out, from the Cancels on
            gen.go()
            result = gen.result(180)
    result["ready"] = ready
    result["rss_before"] = before
    result["rss_after"] = after
    opened = ready["opened"]
    result["rss_per_stream"] = (after - before) / opened if opened else None
    return result


def _phases(run: Run, server: ServerProcess, real: bool, sizes: dict[str, int]) -> dict[str, Any]:
    """The same three phases on either server; the real one needs its jobs made first."""
    log = server.run_dir / "loadgen.log"
    out: dict[str, Any] = {}
    for label, k in (("fan_max", sizes["fan_max"]), ("fan_1k", sizes["fan_1k"])):
        job_id = f"fan-{label.replace('_', '-')}"
        name = fixtures.job_name(job_id)
        if real:
            fixtures.create(server.address, job_id, vm=True)
            held = fixtures.wait_state(server.address, name, {fixtures.State.ADAPTING_OS})
            out.setdefault("held_job", held)
        side = "real" if real else "bare"
        out[label] = _phase(run, server, [name], k, log, f"watch-{label}-{side}")
        processes.check_alive(server)
        if real:  # free the one job slot for the next phase
            fixtures.wait_state(server.address, name, {fixtures.State.CANCELLED})
    k = sizes["many"]
    ids = [f"many-{i}" for i in range(k)]
    if real:
        fixtures.create(server.address, "fan-blocker", vm=True)
        fixtures.wait_state(
            server.address, fixtures.job_name("fan-blocker"), {fixtures.State.ADAPTING_OS}
        )
        fixtures.create_many(server.address, ids)
    out["many"] = _phase(
        run, server, [fixtures.job_name(i) for i in ids], k, log,
        f"watch-many-{'real' if real else 'bare'}",
    )  # fmt: skip
    processes.check_alive(server)
    return out


def run(run: Run) -> list[Figure]:
    work = run.tmpdir("watch")
    data = work / "data"
    sample_vm(data, fixtures.PARENT, disks=1, disk_size="1MiB")
    sizes = {
        "fan_max": run.scale(5000, 500),
        "fan_1k": run.scale(1000, 100),
        "many": run.scale(1000, 100),
    }
    with processes.real(
        data,
        workdir=work,
        cpus=run.server_cpus,
        fault_plan=fixtures.FAN_FAULT_PLAN["faults"],
        max_concurrent_jobs=1,
    ) as real:
        real_out = _phases(run, real, True, sizes)
    held: bytes = real_out.pop("held_job")
    message = work / "job.bin"
    message.write_bytes(held)
    with processes.bare(message, workdir=work, cpus=run.server_cpus) as bare:
        bare_out = _phases(run, bare, False, sizes)
    run.details["watch"] = {
        "sizes": sizes,
        "job_bytes": len(held),
        "real": real_out,
        "bare": bare_out,
    }
    return _figures(sizes, real_out, bare_out)


def _complete(result: dict[str, Any], streams: int) -> str:
    """'' when every stream opened and saw its change, else what went wrong."""
    problems = []
    if result["ready"]["opened"] < streams:
        problems.append(f"{result['ready']['opened']}/{streams} opened")
    if result["received"] < result["ready"]["opened"]:
        problems.append(f"{result['received']}/{result['ready']['opened']} saw the change")
    if result.get("errors"):
        problems.append(f"errors {result['errors']}")
    return "; ".join(problems)


def _figures(sizes: dict[str, int], real: dict[str, Any], bare: dict[str, Any]) -> list[Figure]:
    figures = []
    for label, goal in (("fan_1k", 2.0), ("fan_max", 2.0)):
        k = sizes[label]
        r, b = real[label], bare[label]
        problems = "; ".join(
            f"{side}: {text}"
            for side, text in (("real", _complete(r, k)), ("bare", _complete(b, k)))
            if text
        )
        wrong = {s: n for s, n in r["states"].items() if s != "CANCELLING"}
        if wrong:
            problems += f"; real delivered {wrong}"
        figures.append(
            Figure(
                benchmark="watch",
                name=f"fan-out, {k} watchers on 1 job",
                measured=r["fanout_s"] * 1000 if r["fanout_s"] is not None else None,
                baseline=b["fanout_s"] * 1000 if b["fanout_s"] is not None else None,
                unit="ms",
                goal=goal,
                higher_is_better=False,
                note=(
                    f"Cancel call {r['cancel_s'] * 1000:.1f} ms (bare trigger"
                    f" {b['cancel_s'] * 1000:.1f} ms); last delivery after Cancel returned:"
                    f" {_ms(r['after_return_s'])} vs {_ms(b['after_return_s'])}; open {k}:"
                    f" {r['ready']['open_s']:.1f} s vs {b['ready']['open_s']:.1f} s"
                    + (f"; {problems}" if problems else "")
                ),
            )
        )
    k = sizes["fan_max"]
    r, b = real["fan_max"], bare["fan_max"]
    figures.append(
        Figure(
            benchmark="memory",
            name=f"RSS per idle watch stream, K={k}",
            measured=r["rss_per_stream"],
            baseline=b["rss_per_stream"],
            unit="bytes",
            goal=1.3,
            higher_is_better=False,
            note=(
                f"VmRSS {r['rss_before'] / 2**20:.0f} -> {r['rss_after'] / 2**20:.0f} MiB"
                f" (bare {b['rss_before'] / 2**20:.0f} -> {b['rss_after'] / 2**20:.0f} MiB)"
            ),
        )
    )
    k = sizes["many"]
    r, b = real["many"], bare["many"]
    problems = "; ".join(
        f"{side}: {text}"
        for side, text in (("real", _complete(r, k)), ("bare", _complete(b, k)))
        if text
    )
    figures.append(
        Figure(
            benchmark="watch",
            name=f"{k} watchers on {k} jobs, all cancelled",
            measured=r["fanout_s"] * 1000 if r["fanout_s"] is not None else None,
            baseline=b["fanout_s"] * 1000 if b["fanout_s"] is not None else None,
            unit="ms",
            higher_is_better=False,
            note=(
                f"{k} Cancel calls, 64 in flight, each a durable commit on the real server;"
                f" first states {r['ready']['first_states']}"
                + (f"; {problems}" if problems else "")
            ),
        )
    )
    return figures


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"
