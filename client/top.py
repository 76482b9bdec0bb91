"""`clonejob top` / `clonejob list --watch`: a live table of a parent's clone jobs.

In the manner of `kubectl get -w`: one WatchCloneJob stream per job that has not
ended (up to `max_streams`), and a List every `interval` seconds to find new jobs,
whose rows appear as they are created. On a terminal the table is redrawn in
place; otherwise (a pipe, a file, TERM=dumb) the header is printed once and then a
row each time what it shows changes: state, step or percent. Runs until interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from client._async import CloneJobClient
from client._names import id_under
from client.errors import CloneJobError
from client.job_text import state_name
from client.retry import TERMINAL_STATES
from clonejob_grpc.clone_job_pb2 import CloneJob
from clonejob_grpc.clone_job_service_pb2 import StepProgress

__all__ = ["Board", "run"]

COLUMNS = ("NAME", "STATE", "STEP", "PROGRESS", "RATE", "AGE")
# Widths that fit the usual cells ("ADAPTING_OS", "instantiating VM 3/3", ...).
_LEAST_WIDTHS = (12, 11, 20, 24, 12, 3)
DEFAULT_INTERVAL = 2.0
DEFAULT_MAX_STREAMS = 100
RATE_WINDOW = 5.0  # seconds of progress samples the rate is computed over
REDRAW_INTERVAL = 0.25

_STEP_TITLES = {
    "preparing_vm_disks": "preparing disks",
    "adapting_os": "adapting OS",
    "instantiating_migrated_vm": "instantiating VM",
}


@dataclass(slots=True)
class Row:
    """What the table knows of one job."""

    job: CloneJob
    progress: StepProgress | None = None
    # (monotonic time, bytes done) of the running step, for the rate.
    samples: deque[tuple[float, int]] = field(default_factory=deque)
    watching: bool = False
    note: str = ""

    def update(self, job: CloneJob, progress: StepProgress | None, now: float) -> None:
        if _running_step(job) != _running_step(self.job):
            self.samples.clear()
        self.job = job
        self.progress = progress
        if progress is not None and progress.bytes_total:
            self.samples.append((now, progress.bytes_done))
            while self.samples and now - self.samples[0][0] > RATE_WINDOW:
                self.samples.popleft()

    def rate(self) -> float | None:
        """Bytes per second over the last few seconds, None without two samples."""
        if len(self.samples) < 2 or self.job.state in TERMINAL_STATES:
            return None
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else None


class Board:
    """The rows of one parent's jobs, and how to show them."""

    def __init__(self, parent: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.parent = parent
        self.rows: dict[str, Row] = {}
        self.listed_at: datetime | None = None
        self.list_error = ""
        self._clock = clock

    def listed(self, jobs: Iterable[CloneJob]) -> list[str]:
        """Take a List result; returns the names of the new rows."""
        self.listed_at = datetime.now(UTC)
        self.list_error = ""
        new = []
        for job in jobs:
            row = self.rows.get(job.name)
            if row is None:
                self.rows[job.name] = Row(job)
                new.append(job.name)
            elif not row.watching:
                row.update(job, None, self._clock())
        return new

    def changed(self, job: CloneJob, progress: StepProgress | None) -> None:
        """Take a change from a watch stream."""
        row = self.rows.setdefault(job.name, Row(job))
        row.note = ""
        row.update(job, progress, self._clock())

    def cells(self, name: str, now: datetime) -> tuple[str, ...]:
        """The text of each column of a row."""
        row = self.rows[name]
        job = row.job
        rate = row.rate()
        return (
            id_under(name, self.parent),
            state_name(job),
            _step(job),
            _progress(job, row.progress) + (f" ({row.note})" if row.note else ""),
            f"{_size(rate)}/s" if rate is not None else "-",
            _age(job, now),
        )

    def names(self) -> list[str]:
        """The rows in creation order."""
        return sorted(self.rows, key=lambda n: (self.rows[n].job.create_time.ToNanoseconds(), n))

    def table(self) -> Group:
        """The whole table, for a terminal."""
        now = datetime.now(UTC)
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in COLUMNS:
            table.add_column(column, no_wrap=True)
        for name in self.names():
            cells = self.cells(name, now)
            state = Text(cells[1], style=_STATE_STYLES.get(cells[1], ""))
            table.add_row(cells[0], state, *cells[2:])
        footer = f"{len(self.rows)} clone jobs of {self.parent}"
        if self.listed_at is not None:
            footer += f"; listed {self.listed_at.strftime('%H:%M:%S')}"
        footer += "; Ctrl-C to quit"
        if self.list_error:
            footer += f"\nlisting again after an error: {self.list_error}"
        return Group(table, Text(footer, style="dim"))


_STATE_STYLES = {
    "SUCCEEDED": "green",
    "FAILED": "red",
    "CANCELLED": "yellow",
    "CANCELLING": "yellow",
}


async def run(
    client: CloneJobClient,
    parent: str,
    *,
    out: Console,
    interval: float = DEFAULT_INTERVAL,
    filter: str = "",
    max_streams: int = DEFAULT_MAX_STREAMS,
) -> None:
    """Show the jobs of `parent` (those matching `filter`) until cancelled. A
    failure of the first List is raised (`CloneJobError`); later ones are shown,
    and the List is tried again."""
    board = Board(parent)
    first = [job async for job in client.list(parent, filter=filter)]
    redraw = asyncio.Event()
    watches: dict[str, asyncio.Task[None]] = {}

    async def follow(name: str) -> None:
        row = board.rows[name]
        row.watching = True
        try:
            async for change in client.watch(name):
                board.changed(
                    change.clone_job, change.progress if change.HasField("progress") else None
                )
                redraw.set()
        except CloneJobError as error:
            row.note = f"watch lost: {error.code_name}"
            redraw.set()
        finally:
            row.watching = False
            watches.pop(name, None)

    def watch_new(names: Iterable[str], tasks: asyncio.TaskGroup) -> None:
        for name in names:
            row = board.rows[name]
            if row.job.state in TERMINAL_STATES or row.watching or name in watches:
                continue
            if len(watches) >= max_streams:
                row.note = "updated by List only"
                continue
            watches[name] = tasks.create_task(follow(name))

    async def lister(tasks: asyncio.TaskGroup) -> None:
        while True:
            await asyncio.sleep(interval)  # a poll: List is the one way to learn of new jobs
            try:
                jobs = [job async for job in client.list(parent, filter=filter)]
            except CloneJobError as error:
                board.list_error = str(error)
                redraw.set()
                continue
            board.listed(jobs)
            # Jobs whose stream was lost are watched again while they have not ended.
            watch_new(list(board.rows), tasks)
            redraw.set()

    async with asyncio.TaskGroup() as tasks:
        board.listed(first)
        watch_new(list(board.rows), tasks)
        tasks.create_task(lister(tasks))
        if out.is_interactive:  # a terminal that can move its cursor (not TERM=dumb)
            await _live(board, redraw, out)
        else:
            await _lines(board, redraw, out)


async def _live(board: Board, redraw: asyncio.Event, out: Console) -> None:
    """Redraw the table in place: on each change, at most every REDRAW_INTERVAL,
    and every second for the ages."""
    with Live(board.table(), console=out, auto_refresh=False, transient=False) as live:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await redraw.wait()
            redraw.clear()
            live.update(board.table(), refresh=True)
            await asyncio.sleep(REDRAW_INTERVAL)


async def _lines(board: Board, redraw: asyncio.Event, out: Console) -> None:
    """`kubectl get -w` on a pipe: the header, then a row each time what it shows
    (rate and age aside) changes."""
    now = datetime.now(UTC)
    # Rows printed later may be wider than the first ones: room for the usual
    # cells, and never less than two spaces between columns.
    widths = [len(c) for c in COLUMNS]
    for name in board.names():
        for i, cell in enumerate(board.cells(name, now)):
            widths[i] = max(widths[i], len(cell))
    widths = [max(w, least) + 2 for w, least in zip(widths, _LEAST_WIDTHS, strict=True)]
    shown: dict[str, tuple[str, ...]] = {}

    def line(cells: Iterable[str]) -> None:
        text = "".join(
            c.ljust(w) if len(c) < w else c + "  " for c, w in zip(cells, widths, strict=True)
        )
        out.print(text.rstrip(), highlight=False, markup=False, soft_wrap=True)

    line(COLUMNS)
    while True:
        now = datetime.now(UTC)
        for name in board.names():
            cells = board.cells(name, now)
            key = cells[:4]
            if shown.get(name) != key:
                shown[name] = key
                line(cells)
        out.file.flush()
        await redraw.wait()
        redraw.clear()


# --- cells ---------------------------------------------------------------------


def _running_step(job: CloneJob) -> str:
    for step in reversed(job.steps):
        if not step.HasField("end_time"):
            return step.WhichOneof("step") or "step"
    return ""


def _step_count(job: CloneJob) -> int:
    return 3 if job.HasField("compute_engine_target_details") else 1


def _step(job: CloneJob) -> str:
    kind = _running_step(job)
    if not kind or job.state in TERMINAL_STATES:
        return "-"
    return f"{_STEP_TITLES.get(kind, kind)} {len(job.steps)}/{_step_count(job)}"


def _progress(job: CloneJob, progress: StepProgress | None) -> str:
    if job.state == CloneJob.SUCCEEDED:
        return "100%"
    if job.state in TERMINAL_STATES or progress is None or not _running_step(job):
        return "-"
    text = f"{progress.percent}%"
    if progress.bytes_total:
        text += f" {_size(progress.bytes_done)}/{_size(progress.bytes_total)}"
    return text


def _size(count: float) -> str:
    """Bytes in human units: 512 B, 3.4 MiB, 1.2 GiB."""
    if abs(count) < 1024:
        return f"{count:.0f} B"
    units = ["KiB", "MiB", "GiB", "TiB"]
    count /= 1024
    while abs(count) >= 1024 and len(units) > 1:
        count /= 1024
        units.pop(0)
    return f"{count:.1f} {units[0]}"


def _age(job: CloneJob, now: datetime) -> str:
    """Like kubectl's AGE: 45s, 12m, 3h, 2d."""
    if not job.HasField("create_time"):
        return "-"
    seconds = max(0, int((now - job.create_time.ToDatetime(tzinfo=UTC)).total_seconds()))
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
