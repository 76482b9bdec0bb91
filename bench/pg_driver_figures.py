"""bench/pg_drivers.py (psycopg 3 against asyncpg on the job store's queries) as rows of the
table, for `python -m bench --only pg_drivers`: per query, asyncpg's median over
psycopg's, for throughput and for this process's CPU per query. Never run unless named.
"""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

from psycopg.conninfo import conninfo_to_dict

from bench import pg_drivers, postgres
from bench.figures import Figure, Run


def run(run: Run) -> list[Figure]:
    plan = run.scale(pg_drivers.FULL, pg_drivers.QUICK)
    with postgres.temporary_database() as url:
        params = conninfo_to_dict(url)
        connect_kwargs: dict[str, Any] = {
            "host": params.get("host"),
            "port": int(str(params["port"])) if params.get("port") else None,
            "user": params.get("user"),
            "password": params.get("password"),
            "database": params.get("dbname"),
        }
        results = asyncio.run(pg_drivers.run(url, connect_kwargs, plan))
    run.details["pg_drivers"] = {
        op: {
            driver: [
                {"ops_per_s": s.ops_per_s, "latency_us": s.latency_us, "cpu_us": s.cpu_us_per_op}
                for s in samples
            ]
            for driver, samples in by_driver.items()
        }
        for op, by_driver in results.items()
    }
    figures = []
    for op, by_driver in results.items():

        def median(driver: str, metric: str, by_driver: Any = by_driver) -> float:
            return float(statistics.median(getattr(s, metric) for s in by_driver[driver]))

        for metric, label, unit, higher in (
            ("ops_per_s", "ops/s", "ops/s", True),
            ("cpu_us_per_op", "client CPU per op", "us", False),
        ):
            figures.append(
                Figure(
                    benchmark="pg_drivers",
                    name=f"{op}: {label}, asyncpg vs psycopg",
                    measured=median("asyncpg", metric),
                    baseline=median("psycopg", metric),
                    unit=unit,
                    higher_is_better=higher,
                    note=f"median of {pg_drivers.RUNS} runs; see bench/pg_drivers.py"
                    if op == "get" and metric == "ops_per_s"
                    else "",
                )
            )
    return figures
