"""What a benchmark reports (figures) and what it runs with (the run context)."""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Every benchmark, in the order `python -m bench` runs them.
BENCHMARKS = (
    # job_cost before create: create's note uses its CPU per job.
    "get", "job_cost", "create", "watch", "memory", "engine", "disk", "scaling", "cli_startup",
    # Several replicas on one PostgreSQL ($CLONEJOB_BENCH_POSTGRES, see bench/postgres.py).
    "pg_store", "replica_watch", "takeover", "throughput",
)  # fmt: skip
# Run only when named with --only.
OPTIONAL = ("pg_drivers",)


@dataclass(frozen=True, slots=True, kw_only=True)
class Figure:
    """One row of the table: a measurement, its baseline and their ratio.

    `higher_is_better` says which way the goal points: ratio >= goal when True,
    ratio <= goal when False. A figure without a goal is shown for information.
    """

    benchmark: str
    name: str
    measured: float | None
    baseline: float | None
    unit: str
    goal: float | None = None
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.measured is None or not self.baseline:
            return None
        return self.measured / self.baseline

    @property
    def met(self) -> bool | None:
        ratio = self.ratio
        if self.goal is None or ratio is None:
            return None
        return ratio >= self.goal if self.higher_is_better else ratio <= self.goal

    @property
    def goal_text(self) -> str:
        if self.goal is None:
            return "-"
        return f"{'>=' if self.higher_is_better else '<='} {self.goal:g}x"

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "name": self.name,
            "measured": self.measured,
            "baseline": self.baseline,
            "unit": self.unit,
            "ratio": self.ratio,
            "goal": self.goal_text,
            "met": self.met,
            "note": self.note,
        }


@dataclass(slots=True, kw_only=True)
class Run:
    """The settings of one `python -m bench` run, shared by every benchmark."""

    quick: bool
    workdir: Path
    server_cpus: set[int] | None
    load_cpus: set[int] | None
    profile_dir: Path | None = None
    profiles: list[Any] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    details: dict[str, Any] = field(default_factory=dict)
    tag: str = field(default_factory=lambda: secrets.token_hex(3))

    def scale(self, full: Any, quick: Any) -> Any:
        """The full-run value, or the quick one with --quick."""
        return quick if self.quick else full

    def tmpdir(self, name: str) -> Path:
        """`workdir/name`, its first folder named for this run too (`job_cost.1f2e3d`):
        below a top of directory hierarchies, ext4 places a new folder by its name's
        hash, and a fixed name would land where the last run's was just deleted (see
        `bench.__main__._fresh_block_groups`)."""
        first, _, rest = name.partition("/")
        path = self.workdir / f"{first}.{self.tag}" / rest
        path.mkdir(parents=True, exist_ok=True)
        return path


def cost_figures(
    benchmark: str,
    measured: dict[str, Any],
    baseline: dict[str, Any],
    *,
    rpc: str,
    call: str,
    p99: bool,
    latency_note: str = "",
    cpu_note: str = "",
) -> list[Figure]:
    """The latency and server-CPU rows of a unary benchmark (lower is better):
    `rpc` names the latency rows, `call` the CPU row."""
    rows = [("p50_ms", f"{rpc} p50 latency", "ms", latency_note)]
    if p99:
        rows.append(("p99_ms", f"{rpc} p99 latency", "ms", ""))
    rows.append(("server_cpu_us_per_call", f"server CPU per {call}", "us", cpu_note))
    return [
        Figure(
            benchmark=benchmark,
            name=name,
            measured=measured[key],
            baseline=baseline[key],
            unit=unit,
            higher_is_better=False,
            note=note,
        )
        for key, name, unit, note in rows
    ]


def cpu_plan() -> tuple[set[int] | None, set[int] | None]:
    """Server on the first core, load generator on the second, when there are two."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, None
    return {cores[0]}, {cores[1]}


def percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]
