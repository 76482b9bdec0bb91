"""Get and durable Create on the PostgreSQL store against SQLite: one server each, in the
same run, under the load generator of bench/get.py and bench/create.py.

Get, as get.py: one finished job, GetCloneJob 64 in flight over one channel, rounds
alternating between the two servers, the best round of each. Both answer from their cache
of committed jobs; SQLite's server is its store's only writer and trusts it, while a
replica on PostgreSQL first looks the job's revision up in the store (other replicas
write too: server/engine/changes.py), so a Get there costs one database round trip.
Create, as create.py: CreateCloneJob 64 in flight with request_id set, a fresh server
(and database) each round, the created jobs running behind it (default slots, one 1 MiB
disk each): create.py does not hold them back, so neither does this. Then, for
information, once more with --max-concurrent-jobs 0: the API path and its commit alone.
Servers on the server core, the load generator on the other; PostgreSQL is not pinned,
and its backends' CPU (those serving the benchmark's database) is read beside the
server's, over the whole load generator run.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import fixtures, loadgen, postgres, processes
from bench.figures import Figure, Run, cost_figures
from bench.processes import sample_vm
from bench.profiles import profiled
from client.launcher import ServerProcess
from clonejob_grpc import clone_job_service_pb2

IN_FLIGHT = 64
STORES = ("sqlite", "postgres")


def _spec(run: Run, server: ServerProcess, **call: Any) -> dict[str, Any]:
    return {
        "mode": "unary",
        "target": server.address,
        "server_pid": server.pid,
        "concurrency": IN_FLIGHT,
        "warmup": run.scale(0.5, 0.3),
        "duration": run.scale(2.5, 1.0),
        **call,
    }


def _load(
    run: Run, spec: dict[str, Any], backends: Callable[[], list[int]], label: str
) -> dict[str, Any]:
    """The load generator's result, plus the database backends' CPU seconds over its run."""
    before = processes.cpu_seconds(backends())
    seconds = spec["warmup"] + spec["duration"]
    with profiled(run, label, spec["server_pid"], seconds):
        result = loadgen.run(spec, cpus=run.load_cpus, log=run.workdir / "loadgen.log", timeout=90)
    after = processes.cpu_seconds(backends())
    result["postgres_cpu_s"] = sum(t - before.get(pid, 0.0) for pid, t in after.items())
    result["warmup"] = spec["warmup"]
    result["postgres_cpu_util"] = result["postgres_cpu_s"] / (spec["warmup"] + spec["duration"])
    return result


@contextlib.contextmanager
def _server(
    run: Run, store: str, template: Path, name: str, **options: Any
) -> Iterator[tuple[ServerProcess, Callable[[], list[int]]]]:
    """A fresh real server on `store` ("sqlite" or "postgres"), with a function that lists
    the database backends serving it (none for SQLite)."""
    work = run.tmpdir(f"pg_store-{name}")
    data = work / "data"
    shutil.copytree(template, data)
    with contextlib.ExitStack() as stack:
        if store == "sqlite":
            url = None

            def backends() -> list[int]:
                return []
        else:
            url = stack.enter_context(postgres.temporary_database())
            conn = stack.enter_context(postgres.connect(url))

            def backends() -> list[int]:
                return postgres.backend_pids(conn)

        server = stack.enter_context(
            processes.real(data, workdir=work, cpus=run.server_cpus, store=url, **options)
        )
        yield server, backends
        processes.check_alive(server)


def _gets(run: Run, template: Path) -> dict[str, list[dict[str, Any]]]:
    name = fixtures.job_name("get-1")
    request = clone_job_service_pb2.GetCloneJobRequest(name=name).SerializeToString()
    results: dict[str, list[dict[str, Any]]] = {store: [] for store in STORES}
    with contextlib.ExitStack() as stack:
        servers = {store: stack.enter_context(_server(run, store, template, f"get-{store}"))
                   for store in STORES}  # fmt: skip
        for server, _ in servers.values():
            fixtures.create(server.address, "get-1")
            fixtures.wait_state(server.address, name, {fixtures.State.SUCCEEDED})
        # Alternate, so that noise on the shared machine hits both alike.
        for n in range(run.scale(2, 1)):
            for store in STORES if n % 2 == 0 else STORES[::-1]:
                server, backends = servers[store]
                spec = _spec(run, server, method="GetCloneJob", request=request.hex())
                results[store].append(_load(run, spec, backends, f"pg-store-get-{store}-{n}"))
    return results


def _creates(
    run: Run, template: Path, rounds: int, label: str, **options: Any
) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {store: [] for store in STORES}
    for n in range(rounds):
        for store in STORES if n % 2 == 0 else STORES[::-1]:
            with _server(run, store, template, f"{label}-{store}-{n}", **options) as (
                server,
                backends,
            ):
                fixtures.create(server.address, "probe")
                spec = _spec(
                    run, server, method="CreateCloneJob", parent=fixtures.PARENT, prefix="c-"
                )
                results[store].append(_load(run, spec, backends, f"pg-store-{label}-{store}-{n}"))
    return results


def run(run: Run) -> list[Figure]:
    template = run.tmpdir("pg_store") / "template"
    sample_vm(template, fixtures.PARENT, disks=1, disk_size="1MiB")
    gets = _gets(run, template)
    behind = _creates(run, template, run.scale(2, 1), "create")
    api_only = _creates(run, template, 1, "create-api", max_concurrent_jobs=0)
    run.details["pg_store"] = {"get": gets, "create": behind, "create_api_only": api_only}

    def best(results: dict[str, list[dict[str, Any]]], store: str) -> dict[str, Any]:
        return max(results[store], key=lambda r: r["calls_per_s"])

    get_pg, get_sqlite = best(gets, "postgres"), best(gets, "sqlite")
    create_pg, create_sqlite = best(behind, "postgres"), best(behind, "sqlite")
    api_pg, api_sqlite = best(api_only, "postgres"), best(api_only, "sqlite")
    rounds = len(gets["postgres"]), len(behind["postgres"])
    return [
        Figure(
            benchmark="pg_store",
            name="GetCloneJob calls/s, PostgreSQL vs SQLite",
            measured=get_pg["calls_per_s"],
            baseline=get_sqlite["calls_per_s"],
            unit="calls/s",
            goal=0.9,
            note=f"{IN_FLIGHT} in flight, 1 channel; best of {rounds[0]}, alternating;"
            f" PostgreSQL backends busy {get_pg['postgres_cpu_util']:.2f} cores"
            f" ({_per_call(get_pg)} us per Get: the revision lookup)",
        ),
        *cost_figures("pg_store", get_pg, get_sqlite, rpc="GetCloneJob", call="Get", p99=True),
        Figure(
            benchmark="pg_store",
            name="CreateCloneJob calls/s, PostgreSQL vs SQLite",
            measured=create_pg["calls_per_s"],
            baseline=create_sqlite["calls_per_s"],
            unit="calls/s",
            goal=0.5,
            note=f"as create.py: {IN_FLIGHT} in flight, request_id set, jobs run behind"
            f" (1 x 1 MiB disk); best of {rounds[1]}, a fresh server each;"
            f" {_create_note(create_pg, create_sqlite)}",
        ),
        *cost_figures(
            "pg_store", create_pg, create_sqlite, rpc="CreateCloneJob", call="Create", p99=True
        ),
        Figure(
            benchmark="pg_store",
            name="CreateCloneJob calls/s, API only, PostgreSQL vs SQLite",
            measured=api_pg["calls_per_s"],
            baseline=api_sqlite["calls_per_s"],
            unit="calls/s",
            note=f"--max-concurrent-jobs 0 (no job runs); {_create_note(api_pg, api_sqlite)}",
        ),
    ]


def _per_call(result: dict[str, Any]) -> str:
    """The database backends' CPU per call (over the whole load generator run)."""
    seconds = result["warmup"] + result["seconds"]
    calls = result["attempted"] or result["calls_per_s"] * seconds or 1
    return f"{1e6 * result['postgres_cpu_s'] / calls:,.0f}"


def _create_note(pg: dict[str, Any], sqlite: dict[str, Any]) -> str:
    note = (
        f"PostgreSQL backends {_per_call(pg)} us CPU per Create"
        f" ({pg['postgres_cpu_util']:.2f} cores); server CPU {pg['server_cpu_util']:.2f} cores"
        f" ({pg['server_cpu_us_per_call']:,.0f} us per Create) vs SQLite's"
        f" {sqlite['server_cpu_util']:.2f} ({sqlite['server_cpu_us_per_call']:,.0f} us)"
    )
    errors = {store: r["errors"] for store, r in (("postgres", pg), ("sqlite", sqlite))}
    if any(errors.values()):
        note += f"; errors {errors}"
    return note
