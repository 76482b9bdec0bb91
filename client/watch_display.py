"""What `clonejob watch` (and `create --watch`) shows while a clone job runs.

A `WatchView` folds the watch's responses, and the client's reconnect notices,
into what a person needs: every step of the job's kind from the start, how far
the running one is in data bytes, the rate and the time left, and whether the
stream is reconnecting. The rendering functions are pure (a view and the time
in, `rich.text.Text` out); `WatchDisplay` puts them on a console: a live
screen on a terminal, one line per change otherwise, and a summary at the end.

Only a step that ended by itself gets ✓: the server also stamps `end_time` on
the step a job failed or was cancelled in, so that step is told apart by its
`end_time` being the job's own.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from client.errors import CloneJobError
from client.job_text import duration, state_name
from client.retry import TERMINAL_STATES
from clonejob_grpc.clone_job_pb2 import (
    AppliedLicense,
    CloneJob,
    CloneStep,
    ComputeEngineBootOption,
)
from clonejob_grpc.clone_job_service_pb2 import StepProgress, WatchCloneJobResponse

__all__ = [
    "StepRow",
    "StepState",
    "WatchDisplay",
    "WatchView",
    "change_line",
    "duration",
    "human_bytes",
    "job_error",
    "plan",
    "running_kind",
    "screen",
    "short_id",
    "state_name",
    "step_rows",
    "summary",
]

STEP_TITLES = {
    "preparing_vm_disks": "Preparing VM disks",
    "adapting_os": "Adapting OS",
    "instantiating_migrated_vm": "Instantiating migrated VM",
}
# The steps the server runs for each kind of target, in order.
VM_STEPS = ("preparing_vm_disks", "adapting_os", "instantiating_migrated_vm")
DISKS_STEPS = ("preparing_vm_disks",)
COPY_STEP = "preparing_vm_disks"  # the one that copies data, disk by disk

STATE_STYLES = {
    CloneJob.PENDING: "cyan",
    CloneJob.ACTIVE: "blue",
    CloneJob.ADAPTING_OS: "blue",
    CloneJob.SUCCEEDED: "green",
    CloneJob.FAILED: "red",
    CloneJob.CANCELLING: "yellow",
    CloneJob.CANCELLED: "yellow",
}

# The rate is measured over the progress messages of about the last RATE_WINDOW
# seconds (and the one before them), once they span MIN_RATE_SPAN seconds: the
# server sends one when the percent changes, so a slow copy sends few.
RATE_WINDOW = 20.0
MIN_RATE_SPAN = 0.5
BAR_WIDTH = 20
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_TITLE_WIDTH = max(len(title) for title in STEP_TITLES.values())


class StepState(enum.Enum):
    """Where one step of the plan stands."""

    PENDING = "pending"  # not reached yet
    RUNNING = "running"
    CANCELLING = "cancelling"  # still running; the job is being cancelled
    DONE = "done"  # ended by itself: the only state shown with ✓
    FAILED = "failed"  # the job failed in this step
    CANCELLED = "cancelled"  # the job was cancelled in this step
    NOT_RUN = "not run"  # the job ended before reaching it


_MARKS = {
    StepState.PENDING: ("·", "dim"),
    StepState.DONE: ("✓", "green"),
    StepState.FAILED: ("✗", "red"),
    StepState.CANCELLED: ("■", "yellow"),
    StepState.NOT_RUN: ("-", "dim"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRow:
    """One step of the job's plan: `number` of `of`, its times (epoch seconds)
    and the last progress seen while it ran."""

    kind: str
    title: str
    number: int
    of: int
    state: StepState
    start: float | None
    end: float | None
    progress: StepProgress | None


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float
    bytes_done: int


class WatchView:
    """What a watch has seen so far; `update` with each response, `drop` and
    `resume` as the stream reconnects."""

    def __init__(self) -> None:
        self.job: CloneJob | None = None
        self.revision = 0
        self.progress: StepProgress | None = None  # of the latest response
        self.reconnecting: str | None = None  # why, while the stream is down
        self._seen: dict[str, StepProgress] = {}  # each step's last progress
        self._samples: deque[_Sample] = deque()
        self._sampled_kind = ""

    def update(self, change: WatchCloneJobResponse, *, at: float) -> None:
        """Take in one response, received at `at` (epoch seconds)."""
        if not change.HasField("clone_job"):
            return  # a heartbeat
        self.job = change.clone_job
        self.revision = change.revision
        self.progress = change.progress if change.HasField("progress") else None
        kind = running_kind(self.job)
        if kind is None or self.progress is None:
            return
        self._seen[kind] = self.progress
        if kind != self._sampled_kind:
            self._samples.clear()
            self._sampled_kind = kind
        if self.progress.bytes_total > 0:
            if self._samples and self.progress.bytes_done < self._samples[-1].bytes_done:
                self._samples.clear()  # the step started over (a restarted server runs it again)
            if self._samples and self._samples[-1].bytes_done == 0:
                self._samples.pop()  # the copy had not begun: waiting is not a slow rate
            self._samples.append(_Sample(at, self.progress.bytes_done))
            while len(self._samples) > 2 and self._samples[1].at <= at - RATE_WINDOW:
                self._samples.popleft()

    def drop(self, reason: str) -> None:
        """The stream dropped; the client is reconnecting."""
        self.reconnecting = reason

    def resume(self) -> None:
        """The stream answers again."""
        self.reconnecting = None

    def seen(self, kind: str) -> StepProgress | None:
        """The last progress seen while `kind` ran."""
        return self._seen.get(kind)

    def rate(self) -> float | None:
        """Data bytes per second of the running step, once measurable."""
        if len(self._samples) < 2:
            return None
        first, last = self._samples[0], self._samples[-1]
        span = last.at - first.at
        if span < MIN_RATE_SPAN or last.bytes_done < first.bytes_done:
            return None
        return (last.bytes_done - first.bytes_done) / span

    def time_left(self, now: float) -> float | None:
        """Seconds until the running step's data is copied, at the current rate."""
        rate = self.rate()
        progress = self.progress
        if not rate or progress is None or not self._samples:
            return None
        left = (progress.bytes_total - progress.bytes_done) / rate
        return max(0.0, left - (now - self._samples[-1].at))


# --- the plan and its rows ---------------------------------------------------


def plan(job: CloneJob) -> list[str]:
    """The steps a job of this kind runs, in order (any step the server reports
    beyond them is added at the end)."""
    if job.HasField("compute_engine_target_details"):
        kinds = list(VM_STEPS)
    elif job.HasField("compute_engine_disks_target_details"):
        kinds = list(DISKS_STEPS)
    else:
        kinds = []
    for step in job.steps:
        if _kind(step) not in kinds:
            kinds.append(_kind(step))
    return kinds


def running_kind(job: CloneJob) -> str | None:
    """The kind of the step that runs now, if one does."""
    if job.state in TERMINAL_STATES or not job.steps or job.steps[-1].HasField("end_time"):
        return None
    return _kind(job.steps[-1])


def step_rows(job: CloneJob, view: WatchView | None = None) -> list[StepRow]:
    """Every step of the job's plan, with where it stands."""
    kinds = plan(job)
    by_kind = {_kind(step): step for step in job.steps}
    last = job.steps[-1] if job.steps else None
    # The step a job failed or was cancelled in ends when the job does; one that
    # ended before the job did had finished by itself.
    stopped_in_last = (
        job.state in (CloneJob.FAILED, CloneJob.CANCELLED)
        and last is not None
        and not (
            last.HasField("end_time") and job.HasField("end_time") and last.end_time != job.end_time
        )
    )
    rows = []
    for number, kind in enumerate(kinds, start=1):
        step = by_kind.get(kind)
        if step is None:
            state = StepState.NOT_RUN if job.state in TERMINAL_STATES else StepState.PENDING
        elif job.state not in TERMINAL_STATES and not step.HasField("end_time"):
            state = StepState.CANCELLING if job.state == CloneJob.CANCELLING else StepState.RUNNING
        elif last is not None and kind == _kind(last) and stopped_in_last:
            state = StepState.FAILED if job.state == CloneJob.FAILED else StepState.CANCELLED
        else:
            state = StepState.DONE
        rows.append(
            StepRow(
                kind=kind,
                title=STEP_TITLES.get(kind, kind),
                number=number,
                of=len(kinds),
                state=state,
                start=_seconds_of(step, "start_time"),
                end=_seconds_of(step, "end_time"),
                progress=view.seen(kind) if view is not None else None,
            )
        )
    return rows


# --- the live screen ---------------------------------------------------------


def screen(view: WatchView, now: float) -> list[Text]:
    """The live screen: a header, a row per step (and per disk while disks are
    prepared), the job's error, and the reconnect notice."""
    job = view.job
    if job is None:
        if view.reconnecting:
            return [_line(("reconnecting… ", "bold yellow"), (f"({view.reconnecting})", "yellow"))]
        return [_line(("waiting for the job…", "dim"))]
    rows = step_rows(job, view)
    lines = [_header(job, rows)]
    for row in rows:
        lines.append(_step_line(row, view, now))
        if row.state in (StepState.RUNNING, StepState.CANCELLING) and row.kind == COPY_STEP:
            lines += _disk_lines(view.progress)
        if row.state is StepState.FAILED:
            lines.append(_line("    ", (job_error(job), "red")))
    if job.state == CloneJob.FAILED and not any(r.state is StepState.FAILED for r in rows):
        lines.append(_line("  ", (job_error(job), "red")))
    if view.reconnecting:
        lines.append(_line(("reconnecting… ", "bold yellow"), (f"({view.reconnecting})", "yellow")))
    for line in lines:
        line.rstrip()
    return lines


def _header(job: CloneJob, rows: Sequence[StepRow]) -> Text:
    header = _line(("clone job ", "bold"), (short_id(job), "bold"), "  ", _state_text(job))
    running = [r for r in rows if r.state in (StepState.RUNNING, StepState.CANCELLING)]
    ended = [r for r in rows if r.state in (StepState.FAILED, StepState.CANCELLED)]
    if running or ended:
        row = (running or ended)[0]
        header.append(f"  step {row.number} of {row.of}")
    elif job.state == CloneJob.PENDING:
        header.append(f"  not started ({len(rows)} step{'s' if len(rows) != 1 else ''})")
    else:  # between two steps, or ended after one
        done = sum(r.state is StepState.DONE for r in rows)
        header.append(f"  {done} of {len(rows)} steps done")
    return header


def _step_line(row: StepRow, view: WatchView, now: float) -> Text:
    pending = row.state in (StepState.PENDING, StepState.NOT_RUN)
    line = _line("  ", _mark(row, view, now), " ")
    line.append(row.title.ljust(_TITLE_WIDTH), style="dim" if pending else "")
    if pending:
        line.append(f"  {row.state.value}", style="dim")
        return line
    line.append(f"  {_clock(row, now):>8}  ")
    progress = row.progress
    if row.state in (StepState.RUNNING, StepState.CANCELLING):
        if progress is not None and (progress.bytes_total or progress.percent):
            percent = _percent(progress)
            line.append_text(_bar(percent))
            line.append(f" {percent:>3}%  ")
            line.append(_amounts(progress))
            rate, left = view.rate(), view.time_left(now)
            if rate is not None and not view.reconnecting:  # unknown while the stream is down
                line.append(f" · {human_bytes(rate)}/s")
            if left is not None and not view.reconnecting:
                line.append(f" · {duration(left)} left")
        if row.state is StepState.CANCELLING:
            line.append("  cancelling…", style="yellow")
    elif row.state is StepState.DONE:
        if progress is not None and progress.bytes_total:
            line.append(_amounts(progress, done=True), style="dim")
    elif row.state is StepState.FAILED:
        line.append("failed", style="red")
        line.append(_where_it_stopped(progress))
    else:
        line.append("cancelled", style="yellow")
        line.append(_where_it_stopped(progress))
    return line


def _disk_lines(progress: StepProgress | None) -> list[Text]:
    if progress is None:
        return []
    lines = []
    for disk in progress.disks:
        percent = min(99, disk.bytes_done * 100 // disk.bytes_total) if disk.bytes_total else 0
        copied = disk.bytes_total > 0 and disk.bytes_done >= disk.bytes_total
        label = f"disk {disk.source_disk_number}".ljust(_TITLE_WIDTH)
        line = _line("      ", (label, "dim"), " " * 10)
        if copied:
            line.append_text(_bar(100))
            line.append("  copied ")
        else:
            line.append_text(_bar(percent))
            line.append(f" {percent:>3}%  ")
        line.append(f"{human_bytes(disk.bytes_done)} / {human_bytes(disk.bytes_total)}")
        if disk.virtual_bytes:
            line.append(f" · {human_bytes(disk.virtual_bytes)} virtual", style="dim")
        lines.append(line)
    return lines


def _mark(row: StepRow, view: WatchView, now: float) -> tuple[str, str]:
    if row.state in (StepState.RUNNING, StepState.CANCELLING):
        style = "yellow" if row.state is StepState.CANCELLING else "blue"
        if view.reconnecting:
            return "⋯", style  # nothing is known to move while the stream is down
        return SPINNER[int(now * 10) % len(SPINNER)], style
    return _MARKS[row.state]


def _clock(row: StepRow, now: float) -> str:
    """How long the step ran (or runs, from its server-side start)."""
    if row.start is None:
        return ""
    return duration((row.end if row.end is not None else now) - row.start)


def _bar(percent: int) -> Text:
    filled = BAR_WIDTH * max(0, min(100, percent)) // 100
    return _line(("━" * filled, "blue"), ("─" * (BAR_WIDTH - filled), "dim"))


def _percent(progress: StepProgress) -> int:
    """Of the data, never 100 for a step that has not ended."""
    if progress.bytes_total > 0:
        return min(99, progress.bytes_done * 100 // progress.bytes_total)
    return max(0, min(99, progress.percent))


def _amounts(progress: StepProgress, *, done: bool = False) -> str:
    if not progress.bytes_total:
        return ""
    if done:
        text = f"{human_bytes(progress.bytes_total)} data"
    else:
        text = f"{human_bytes(progress.bytes_done)} / {human_bytes(progress.bytes_total)} data"
    if progress.virtual_bytes:
        text += f" · {human_bytes(progress.virtual_bytes)} virtual"
    return text


def _where_it_stopped(progress: StepProgress | None) -> str:
    if progress is None or not (progress.bytes_total or progress.percent):
        return ""
    text = f" at {_percent(progress)}%"
    if progress.bytes_total:
        done, total = human_bytes(progress.bytes_done), human_bytes(progress.bytes_total)
        text += f" ({done} / {total} data)"
    return text


# --- one line per change (not a terminal) ------------------------------------


def change_line(view: WatchView, now: float) -> str:
    """The latest change as one log line: `rev N  STATE  ...`."""
    job = view.job
    if job is None:
        return ""
    line = f"rev {view.revision}  {state_name(job)}"
    rows = step_rows(job, view)
    running = [r for r in rows if r.state in (StepState.RUNNING, StepState.CANCELLING)]
    stopped = [r for r in rows if r.state in (StepState.FAILED, StepState.CANCELLED)]
    if running:
        row = running[0]
        line += f"  step {row.number} of {row.of} {row.kind}"
        progress = view.progress
        if progress is not None and (progress.bytes_total or progress.percent):
            line += f" {_percent(progress)}%"
            if progress.bytes_total:
                line += f" {_amounts(progress)}"
            rate, left = view.rate(), view.time_left(now)
            if rate is not None:
                line += f", {human_bytes(rate)}/s"
            if left is not None:
                line += f", {duration(left)} left"
        line += f"  running {_clock(row, now)}"
    elif stopped:
        row = stopped[0]
        line += f"  {row.kind} {row.state.value}{_where_it_stopped(row.progress)}"
        if row.state is StepState.FAILED:
            line += f": {job_error(job)}"
    elif job.state == CloneJob.FAILED:
        line += f"  {job_error(job)}"
    elif job.state not in TERMINAL_STATES:
        done = [r for r in rows if r.state is StepState.DONE]
        if done:
            line += f"  {done[-1].kind} done"
    return line


# --- the summary at the end --------------------------------------------------


def summary(job: CloneJob, view: WatchView | None = None) -> list[Text]:
    """What the job did: each step and its duration, in all, the target and
    where its instance (or disks) lie, and the error of a failed job."""
    lines = [_line(("clone job ", "bold"), (short_id(job), "bold"), "  ", _state_text(job))]
    for row in step_rows(job, view):
        mark = _MARKS.get(row.state, ("·", "blue"))
        line = _line("  ", mark, " ", row.title.ljust(_TITLE_WIDTH))
        if row.start is None or row.end is None:
            line.append(f"  {row.state.value}", style="dim")
        elif row.state is StepState.DONE:
            line.append(f"  {duration(row.end - row.start):>8}")
            if row.progress is not None and row.progress.bytes_total:
                line.append(f"  {_amounts(row.progress, done=True)}", style="dim")
        else:
            line.append(f"  {duration(row.end - row.start):>8}")
            note = row.state.value + _where_it_stopped(row.progress)
            line.append(f"  {note}", style="red" if row.state is StepState.FAILED else "yellow")
        lines.append(line)
    starts = [_seconds(s.start_time) for s in job.steps if s.HasField("start_time")]
    if starts and job.HasField("end_time"):
        took = duration(_seconds(job.end_time) - min(starts))
        lines.append(_line("  ", "in all".ljust(_TITLE_WIDTH + 2), f"  {took:>8}"))
    lines += [_line((f"{label:<10}", "bold"), value) for label, value in _target_lines(job)]
    if job.HasField("error"):
        lines.append(_line((f"{'error':<10}", "bold"), (job_error(job), "red")))
    return lines


def _target_lines(job: CloneJob) -> list[tuple[str, str]]:
    made = job.state == CloneJob.SUCCEEDED
    if job.HasField("compute_engine_target_details"):
        t = job.compute_engine_target_details
        target = f"VM {t.vm_name} in project {t.project}, zone {t.zone}"
        if t.machine_type:
            target += f", machine type {t.machine_type}"
        lines = [("target", target), *_cycle_line(job)]
        instance = f"projects/{t.project}/zones/{t.zone}/instances/{t.vm_name}"
        lines.append(("instance", instance if made else f"{instance} (not kept: {_not_kept(job)})"))
        if made:
            # Where the local target writes it, under the server's data directory.
            lines.append(("files", f"{{data dir}}/targets/{instance}.json (and .xml)"))
        boot = _boot(job)
        if boot:
            lines.append(("boot", boot))
        return lines
    if job.HasField("compute_engine_disks_target_details"):
        d = job.compute_engine_disks_target_details
        lines = [("target", "disks only"), *_cycle_line(job)]
        if d.HasField("vm_target_details") and d.vm_target_details.vm_uri:
            lines.append(("instance", d.vm_target_details.vm_uri))
        lines += [(f"disk {disk.source_disk_number}", disk.disk_uri) for disk in d.disks]
        if not d.disks and not made:
            lines.append(("disks", f"none kept: {_not_kept(job)}"))
        return lines
    return []


def _cycle_line(job: CloneJob) -> list[tuple[str, str]]:
    cycle = job.replication_cycle
    return [("cycle", f"replication cycle {cycle}")] if cycle else []


def _not_kept(job: CloneJob) -> str:
    return "the job was cancelled" if job.state == CloneJob.CANCELLED else "the job did not succeed"


def _boot(job: CloneJob) -> str:
    t = job.compute_engine_target_details
    parts = []
    if t.boot_option:
        name = _enum_name(ComputeEngineBootOption.Name, t.boot_option)
        parts.append(name.removeprefix("COMPUTE_ENGINE_BOOT_OPTION_"))
    if t.HasField("applied_license") and t.applied_license.type:
        parts.append(f"license {_enum_name(AppliedLicense.Type.Name, t.applied_license.type)}")
    return ", ".join(parts)


# --- small pieces ------------------------------------------------------------


def human_bytes(count: float) -> str:
    """1536 → "1.5 KiB"; bytes below 1 KiB stay whole."""
    if count < 1024:
        return f"{int(count)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        count /= 1024
        if count < 1024 or unit == "TiB":
            return f"{count:.1f} {unit}"
    raise AssertionError("unreachable")


def short_id(job: CloneJob) -> str:
    return job.name.rpartition("/")[2]


def job_error(job: CloneJob) -> str:
    """`CODE REASON: message` of a failed job."""
    if not job.HasField("error"):
        return "(no error details)"
    code = _code_name(job.error.code)
    reason = ""
    for detail in job.error.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reason = info.reason
    return f"{code} {reason}: {job.error.message}" if reason else f"{code}: {job.error.message}"


def _code_name(code: int) -> str:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return str(status.name)
    return f"CODE_{code}"


def _state_text(job: CloneJob) -> Text:
    return Text(state_name(job), style="bold " + STATE_STYLES.get(job.state, "blue"))


def _enum_name(name: Callable[[int], str], value: int) -> str:
    try:
        return str(name(value))
    except ValueError:  # a value added after this client was built
        return str(value)


def _kind(step: CloneStep) -> str:
    return step.WhichOneof("step") or "step"


def _seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def _seconds_of(step: CloneStep | None, field: str) -> float | None:
    if step is None or not step.HasField(field):
        return None
    value = getattr(step, field)
    return _seconds(value) if isinstance(value, Timestamp) else None


def _line(*parts: str | tuple[str, str] | Text) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    for part in parts:
        if isinstance(part, Text):
            text.append_text(part)
        elif isinstance(part, tuple):
            text.append(part[0], style=part[1])
        else:
            text.append(part)
    return text


# --- on a console ------------------------------------------------------------


class WatchDisplay:
    """Shows a watch on `out`: a live screen on a terminal (redrawn from the
    view several times a second), a line per change otherwise; `finish`
    prints the summary. Use as `with WatchDisplay(out) as display:`."""

    def __init__(self, out: Console, *, clock: Callable[[], float] = time.time) -> None:
        self.view = WatchView()
        self._out = out
        self._clock = clock
        self._lock = threading.Lock()  # the live screen is redrawn from rich's thread
        self._live: Live | None = None
        if out.is_terminal:
            self._live = Live(
                get_renderable=self._render,
                console=out,
                refresh_per_second=8,
                transient=True,  # the summary is what stays on the screen
            )

    def __enter__(self) -> Self:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            # Interrupted or failed: leave the last screen standing, as there is no summary.
            self._live.transient = exc is None
            self._live.stop()

    def update(self, change: WatchCloneJobResponse) -> None:
        """Take in one watch response and show it."""
        with self._lock:
            self.view.update(change, at=self._clock())
            line = None if self._live is not None else change_line(self.view, self._clock())
        if self._live is not None:
            self._live.refresh()
        elif line:
            self._print(line)

    def reconnect(self, error: CloneJobError | None) -> None:
        """The client's reconnect hook: `error` while reconnecting, None once back."""
        with self._lock:
            was = self.view.reconnecting
            if error is None:
                self.view.resume()
            else:
                self.view.drop(_reason(error))
            now = self.view.reconnecting
        if self._live is not None:
            self._live.refresh()
        elif now is not None and now != was:
            self._print(f"reconnecting… ({now})")
        elif now is None and was is not None:
            self._print("resumed")

    def finish(self, job: CloneJob) -> None:
        """Print the summary of the job as it ended."""
        for line in summary(job, self.view):
            self._out.print(line, highlight=False, soft_wrap=True)

    def _render(self) -> Group:
        with self._lock:
            return Group(*screen(self.view, self._clock()))

    def _print(self, text: str) -> None:
        self._out.print(text, highlight=False, markup=False, soft_wrap=True)


def _reason(error: CloneJobError) -> str:
    text = f"{error.code_name}: {error.message}"
    return f"{text} [{error.reason}]" if error.reason else text
