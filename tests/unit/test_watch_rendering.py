"""The watch display's rendering: from sequences of WatchCloneJobResponse to text."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from rich.console import Console
from rich.text import Text

from client.errors import UnavailableError
from client.watch_display import (
    StepState,
    WatchDisplay,
    WatchView,
    change_line,
    duration,
    human_bytes,
    plan,
    screen,
    step_rows,
    summary,
)
from clonejob_grpc.clone_job_pb2 import (
    AppliedLicense,
    CloneJob,
    CloneStep,
    ComputeEngineBootOption,
    ComputeEngineDisksTargetDetails,
    ComputeEngineTargetDetails,
    PersistentDisk,
    Status,
)
from clonejob_grpc.clone_job_service_pb2 import (
    DiskProgress,
    StepProgress,
    WatchCloneJobResponse,
)

NAME = "projects/p1/locations/l/sources/s/migratingVms/vm/cloneJobs/job-1"
T0 = 1_700_000_000.0
MIB, GIB = 1024**2, 1024**3
KINDS = ("preparing_vm_disks", "adapting_os", "instantiating_migrated_vm")
Span = tuple[float, float | None]  # a step's start and end, seconds after T0


def _ts(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int((T0 + seconds) * 1e9))
    return ts


def _step(kind: str, start: float, end: float | None = None) -> CloneStep:
    step = CloneStep(start_time=_ts(start))
    if end is not None:
        step.end_time.CopyFrom(_ts(end))
    getattr(step, kind).SetInParent()
    return step


def _job(
    state: CloneJob.State.ValueType,
    steps: Sequence[Span] = (),
    *,
    disks_only: bool = False,
    end: float | None = None,
    error: tuple[int, str, str] | None = None,
) -> CloneJob:
    """A job whose first len(steps) steps ran over the given spans."""
    job = CloneJob(name=NAME, state=state, create_time=_ts(-1))
    if disks_only:
        job.compute_engine_disks_target_details.SetInParent()
    else:
        job.compute_engine_target_details.CopyFrom(
            ComputeEngineTargetDetails(
                vm_name="clone-vm", project="p1", zone="us-central1-a", machine_type="n2-standard-2"
            )
        )
    for kind, (start, stop) in zip(KINDS, steps, strict=False):
        job.steps.append(_step(kind, start, stop))
    if end is not None:
        job.end_time.CopyFrom(_ts(end))
    if error is not None:
        code, reason, message = error
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="clonejob.v1"))
        job.error.CopyFrom(Status(code=code, message=message, details=[detail]))
    return job


def _change(
    revision: int, job: CloneJob, progress: StepProgress | None = None
) -> WatchCloneJobResponse:
    change = WatchCloneJobResponse(clone_job=job, revision=revision)
    if progress is not None:
        change.progress.CopyFrom(progress)
    return change


def _copying(done: int, total: int = 4 * GIB, virtual: int = 16 * GIB) -> StepProgress:
    return StepProgress(
        percent=done * 100 // total, bytes_done=done, bytes_total=total, virtual_bytes=virtual
    )


def _view(*changes: tuple[float, WatchCloneJobResponse]) -> WatchView:
    view = WatchView()
    for at, change in changes:
        view.update(change, at=T0 + at)
    return view


def _text(lines: Sequence[Text]) -> str:
    return "\n".join(line.plain for line in lines)


def _styles(line: Text, part: str) -> set[str]:
    """The styles applied to the characters of `part` in `line`."""
    start = line.plain.index(part)
    end = start + len(part)
    return {str(s.style) for s in line.spans if s.start < end and s.end > start} | (
        {str(line.style)} if line.style else set()
    )


def _rendered(lines: Sequence[Text], *, no_color: bool = False, terminal: bool = True) -> str:
    out = io.StringIO()
    console = Console(
        file=out,
        force_terminal=terminal,
        color_system="standard" if terminal else None,
        no_color=no_color,
        width=200,
    )
    for line in lines:
        console.print(line)
    return out.getvalue()


RUNNING_COPY = _job(CloneJob.ACTIVE, [(0, None)])
FAILED_CODE = grpc.StatusCode.ABORTED.value[0]


# --- the plan ----------------------------------------------------------------


def test_plan_lists_every_step_of_the_job_kind() -> None:
    assert plan(_job(CloneJob.PENDING)) == list(KINDS)
    assert plan(_job(CloneJob.PENDING, disks_only=True)) == ["preparing_vm_disks"]


def test_screen_lists_every_step_from_the_start_pending_ones_dimmed() -> None:
    lines = screen(_view((0, _change(1, _job(CloneJob.PENDING)))), T0)

    assert _text(lines) == (
        "clone job job-1  PENDING  not started (3 steps)\n"
        "  · Preparing VM disks         pending\n"
        "  · Adapting OS                pending\n"
        "  · Instantiating migrated VM  pending"
    )
    assert "dim" in _styles(lines[2], "Adapting OS")


def test_screen_of_a_disks_only_job_has_one_step() -> None:
    lines = screen(_view((0, _change(1, _job(CloneJob.PENDING, disks_only=True)))), T0)

    assert _text(lines) == (
        "clone job job-1  PENDING  not started (1 step)\n  · Preparing VM disks         pending"
    )


def test_screen_says_which_step_of_how_many_runs() -> None:
    job = _job(CloneJob.ADAPTING_OS, [(0, 5), (5, None)])
    lines = screen(_view((6, _change(7, job))), T0 + 6.5)

    assert lines[0].plain == "clone job job-1  ADAPTING_OS  step 2 of 3"
    assert re.fullmatch(r"  ✓ Preparing VM disks\s+5\.0s", lines[1].plain)
    assert re.fullmatch(r"  \S Adapting OS\s+1\.5s", lines[2].plain)
    assert lines[3].plain == "  · Instantiating migrated VM  pending"


# --- ended, failed, cancelled ------------------------------------------------


@pytest.mark.parametrize("failed", range(3), ids=KINDS)
def test_a_failed_step_shows_a_cross_and_the_error_never_a_check(failed: int) -> None:
    # The server stamps end_time on the step the job failed in, at the job's end.
    spans = [(float(i), float(i + 1)) for i in range(failed + 1)]
    job = _job(
        CloneJob.FAILED,
        spans,
        end=failed + 1,
        error=(FAILED_CODE, "INJECTED_FAULT", "boom"),
    )
    view = _view((0, _change(1, RUNNING_COPY, _copying(GIB))), (failed + 1, _change(9, job)))

    rows = step_rows(job, view)
    lines = screen(view, T0 + 10)
    text = _text(lines)

    assert [r.state for r in rows] == (
        [StepState.DONE] * failed + [StepState.FAILED] + [StepState.NOT_RUN] * (2 - failed)
    )
    assert lines[0].plain == f"clone job job-1  FAILED  step {failed + 1} of 3"
    failed_line = lines[1 + failed]
    assert failed_line.plain.startswith(f"  ✗ {rows[failed].title}")
    assert "red" in _styles(failed_line, "✗")
    assert lines[2 + failed].plain == "    ABORTED INJECTED_FAULT: boom"
    assert "red" in _styles(lines[2 + failed], "boom")
    assert text.count("✓") == failed
    assert "100%" not in text
    assert "bold red" in _styles(lines[0], "FAILED")


def test_a_cancelled_copy_shows_where_it_stopped() -> None:
    view = _view(
        (0, _change(3, RUNNING_COPY, _copying(2 * GIB, 5 * GIB))),
        (1, _change(4, _job(CloneJob.CANCELLING, [(0, None)]))),  # progress is cleared
    )
    cancelling = _text(screen(view, T0 + 2))
    view.update(_change(5, _job(CloneJob.CANCELLED, [(0, 3)], end=3)), at=T0 + 3)
    cancelled = screen(view, T0 + 4)

    assert re.search(
        r"Preparing VM disks\s+2\.0s\s+[━─]+  40%  2\.0 GiB / 5\.0 GiB data", cancelling
    )
    assert "cancelling…" in cancelling
    assert cancelled[0].plain == "clone job job-1  CANCELLED  step 1 of 3"
    assert re.fullmatch(
        r"  ■ Preparing VM disks\s+3\.0s  cancelled at 40% \(2\.0 GiB / 5\.0 GiB data\)",
        cancelled[1].plain,
    )
    assert "yellow" in _styles(cancelled[1], "■")
    assert cancelled[2].plain == "  - Adapting OS                not run"
    assert "✓" not in _text(cancelled)


def test_a_step_that_ended_before_the_cancel_keeps_its_check() -> None:
    job = _job(CloneJob.CANCELLED, [(0, 2)], end=3)  # cancelled between two steps

    rows = step_rows(job)

    assert [r.state for r in rows] == [StepState.DONE, StepState.NOT_RUN, StepState.NOT_RUN]


def test_a_job_seen_only_at_its_end_still_marks_its_failed_step() -> None:
    job = _job(CloneJob.FAILED, [(0, 1), (1, 2)], end=2, error=(13, "X", "m"))

    assert [r.state for r in step_rows(job)] == [
        StepState.DONE,
        StepState.FAILED,
        StepState.NOT_RUN,
    ]


# --- progress ----------------------------------------------------------------


def test_progress_counts_data_with_the_virtual_size_apart() -> None:
    view = _view((0, _change(3, RUNNING_COPY, _copying(GIB))))

    line = screen(view, T0 + 1)[1].plain

    assert re.fullmatch(
        r"  \S Preparing VM disks\s+1\.0s  ━{5}─{15}  25%  "
        r"1\.0 GiB / 4\.0 GiB data · 16\.0 GiB virtual",
        line,
    )


def test_progress_is_never_100_percent_before_the_step_ends() -> None:
    view = _view((0, _change(3, RUNNING_COPY, _copying(4 * GIB))))

    assert " 99%  4.0 GiB / 4.0 GiB data" in screen(view, T0 + 1)[1].plain


def test_progress_without_bytes_or_virtual_size_degrades_gracefully() -> None:
    old = StepProgress(percent=30)  # a server that reports only a percent
    line = screen(_view((0, _change(3, RUNNING_COPY, old))), T0 + 1)[1].plain

    assert line.endswith(" 30%")
    assert "virtual" not in line and "data" not in line


def test_rate_and_time_left_come_from_successive_progress_messages() -> None:
    view = _view(
        (0, _change(2, RUNNING_COPY, _copying(0, 1000 * MIB))),
        (1, _change(3, RUNNING_COPY, _copying(0, 1000 * MIB))),  # waiting is not a slow rate
        (2, _change(4, RUNNING_COPY, _copying(100 * MIB, 1000 * MIB))),
        (4, _change(5, RUNNING_COPY, _copying(300 * MIB, 1000 * MIB))),
    )

    line = screen(view, T0 + 5)[1].plain

    assert line.endswith("300.0 MiB / 1000.0 MiB data · 16.0 GiB virtual · 100.0 MiB/s · 6.0s left")


def test_no_rate_before_two_messages_apart() -> None:
    view = _view((0, _change(3, RUNNING_COPY, _copying(GIB))))

    assert "/s" not in screen(view, T0 + 1)[1].plain
    assert "left" not in screen(view, T0 + 1)[1].plain


def test_elapsed_counts_from_the_step_start_on_the_server() -> None:
    job = _job(CloneJob.ADAPTING_OS, [(0, 5), (5, None)])
    view = _view((100, _change(7, job)))  # the watch began long after the step

    assert re.fullmatch(r"  \S Adapting OS\s+1m35s", screen(view, T0 + 100)[2].plain)


def test_a_row_per_disk_while_disks_are_prepared() -> None:
    progress = _copying(5 * MIB, 12 * MIB, 48 * MIB)
    progress.disks.extend(
        [
            DiskProgress(source_disk_number=0, bytes_done=4 * MIB, bytes_total=4 * MIB),
            DiskProgress(
                source_disk_number=1,
                bytes_done=1 * MIB,
                bytes_total=8 * MIB,
                virtual_bytes=32 * MIB,
            ),
        ]
    )
    view = _view((0, _change(3, RUNNING_COPY, progress)))

    lines = [line.plain for line in screen(view, T0 + 1)]
    ended = _job(CloneJob.ADAPTING_OS, [(0, 2), (2, None)])
    view.update(_change(5, ended), at=T0 + 2)

    assert re.fullmatch(r"      disk 0\s+━{20}  copied 4\.0 MiB / 4\.0 MiB", lines[2])
    assert re.fullmatch(
        r"      disk 1\s+━━─{18}  12%  1\.0 MiB / 8\.0 MiB · 32\.0 MiB virtual", lines[3]
    )
    assert lines[4].startswith("  · Adapting OS")
    assert not any("disk 0" in line.plain for line in screen(view, T0 + 3))


# --- reconnecting ------------------------------------------------------------


def test_reconnecting_is_shown_until_the_stream_resumes() -> None:
    job = _job(CloneJob.ADAPTING_OS, [(0, 5), (5, None)])
    view = _view((6, _change(7, job)))

    view.drop("UNAVAILABLE: the server is shutting down")
    down = screen(view, T0 + 7)
    view.resume()
    back = screen(view, T0 + 8)

    assert down[-1].plain == "reconnecting… (UNAVAILABLE: the server is shutting down)"
    assert down[2].plain.startswith("  ⋯ Adapting OS")  # nothing is known to move
    assert "reconnecting" not in _text(back)
    assert back[2].plain[2] in "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


# --- one line per change -----------------------------------------------------


def test_change_lines_say_state_step_progress_and_the_error() -> None:
    view = WatchView()
    seen = []
    for at, change in [
        (0, _change(2, RUNNING_COPY, _copying(0))),
        (1, _change(3, RUNNING_COPY, _copying(GIB))),
        (2, _change(4, RUNNING_COPY, _copying(2 * GIB))),
        (3, _change(5, _job(CloneJob.ACTIVE, [(0, 3)]))),
        (3, _change(6, _job(CloneJob.ADAPTING_OS, [(0, 3), (3, None)]))),
        (4, _change(7, _job(CloneJob.FAILED, [(0, 3), (3, 4)], end=4, error=(10, "R", "boom")))),
    ]:
        view.update(change, at=T0 + at)
        seen.append(change_line(view, T0 + at))

    assert seen == [
        "rev 2  ACTIVE  step 1 of 3 preparing_vm_disks 0% 0 B / 4.0 GiB data · 16.0 GiB virtual"
        "  running 0.0s",
        "rev 3  ACTIVE  step 1 of 3 preparing_vm_disks 25% 1.0 GiB / 4.0 GiB data"
        " · 16.0 GiB virtual  running 1.0s",
        "rev 4  ACTIVE  step 1 of 3 preparing_vm_disks 50% 2.0 GiB / 4.0 GiB data"
        " · 16.0 GiB virtual, 1.0 GiB/s, 2.0s left  running 2.0s",
        "rev 5  ACTIVE  preparing_vm_disks done",
        "rev 6  ADAPTING_OS  step 2 of 3 adapting_os  running 0.0s",
        "rev 7  FAILED  adapting_os failed: ABORTED R: boom",
    ]


# --- the summary -------------------------------------------------------------


def test_summary_of_a_vm_job_gives_each_step_the_target_and_the_instance() -> None:
    job = _job(CloneJob.SUCCEEDED, [(0, 65), (65, 67), (67, 67.5)], end=67.5)
    job.compute_engine_target_details.boot_option = ComputeEngineBootOption.Value(
        "COMPUTE_ENGINE_BOOT_OPTION_EFI"
    )
    job.compute_engine_target_details.applied_license.type = AppliedLicense.PAYG
    job.replication_cycle = "7"
    view = _view((1, _change(3, RUNNING_COPY, _copying(GIB))))

    lines = summary(job, view)

    assert _text(lines) == (
        "clone job job-1  SUCCEEDED\n"
        "  ✓ Preparing VM disks            1m05s  4.0 GiB data · 16.0 GiB virtual\n"
        "  ✓ Adapting OS                    2.0s\n"
        "  ✓ Instantiating migrated VM      0.5s\n"
        "  in all                          1m07s\n"
        "target    VM clone-vm in project p1, zone us-central1-a, machine type n2-standard-2\n"
        "cycle     replication cycle 7\n"
        "instance  projects/p1/zones/us-central1-a/instances/clone-vm\n"
        "files     {data dir}/targets/projects/p1/zones/us-central1-a/instances/clone-vm.json"
        " (and .xml)\n"
        "boot      EFI, license PAYG"
    )
    assert "bold green" in _styles(lines[0], "SUCCEEDED")


def test_summary_of_a_failed_job_gives_the_error_code_reason_and_message() -> None:
    job = _job(CloneJob.FAILED, [(0, 1), (1, 2)], end=2, error=(9, "INSTANCE_NAME_TAKEN", "taken"))

    text = _text(summary(job))

    assert re.search(r"^  ✗ Adapting OS\s+1\.0s  failed$", text, re.M)
    assert re.search(r"^  - Instantiating migrated VM  not run$", text, re.M)
    assert "instance  projects/p1/zones/us-central1-a/instances/clone-vm (not kept:" in text
    assert text.endswith("error     FAILED_PRECONDITION INSTANCE_NAME_TAKEN: taken")


def test_summary_of_a_disks_only_job_lists_its_disks() -> None:
    job = _job(CloneJob.SUCCEEDED, [(0, 3)], end=3, disks_only=True)
    job.compute_engine_disks_target_details.CopyFrom(
        ComputeEngineDisksTargetDetails(
            disks=[
                PersistentDisk(source_disk_number=0, disk_uri="projects/p1/zones/z/disks/d0"),
                PersistentDisk(source_disk_number=1, disk_uri="projects/p1/zones/z/disks/d1"),
            ]
        )
    )

    text = _text(summary(job))

    assert text.endswith(
        "target    disks only\n"
        "disk 0    projects/p1/zones/z/disks/d0\n"
        "disk 1    projects/p1/zones/z/disks/d1"
    )


# --- colour ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "colour"),
    [
        (CloneJob.PENDING, "36"),
        (CloneJob.ACTIVE, "34"),
        (CloneJob.ADAPTING_OS, "34"),
        (CloneJob.SUCCEEDED, "32"),
        (CloneJob.FAILED, "31"),
        (CloneJob.CANCELLING, "33"),
        (CloneJob.CANCELLED, "33"),
    ],
    ids=lambda v: CloneJob.State.Name(v) if isinstance(v, int) else v,
)
def test_states_are_coloured_by_meaning(state: CloneJob.State.ValueType, colour: str) -> None:
    header = screen(_view((0, _change(1, _job(state)))), T0)[:1]
    name = CloneJob.State.Name(state)

    assert f"\x1b[1;{colour}m{name}\x1b[0m" in _rendered(header)
    assert "\x1b[" not in _rendered(header, terminal=False)
    no_color = _rendered(header, no_color=True)
    assert not re.search(r"\x1b\[[0-9;]*(3[0-7]|9[0-7])m", no_color)
    assert name in no_color


def test_display_off_a_terminal_prints_plain_lines_and_reconnect_notices() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200)  # not a terminal
    clock = iter([T0, T0, T0 + 1, T0 + 1, T0 + 2, T0 + 2, T0 + 3])
    final = _job(CloneJob.SUCCEEDED, [(0, 1), (1, 2), (2, 3)], end=3)

    with WatchDisplay(console, clock=lambda: next(clock)) as display:
        display.update(_change(2, RUNNING_COPY, _copying(GIB)))
        display.reconnect(UnavailableError("down"))
        display.reconnect(UnavailableError("down"))  # another failed attempt: said once
        display.reconnect(None)
        display.update(_change(9, final))
    display.finish(final)

    lines = out.getvalue().splitlines()
    assert "\x1b[" not in out.getvalue()
    assert lines[0].startswith("rev 2  ACTIVE  step 1 of 3 preparing_vm_disks 25%")
    assert lines[1:4] == ["reconnecting… (UNAVAILABLE: down)", "resumed", "rev 9  SUCCEEDED"]
    assert lines[4] == "clone job job-1  SUCCEEDED"


# --- units -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (9 * MIB, "9.0 MiB"), (16 * GIB, "16.0 GiB")],
)
def test_human_bytes(count: int, text: str) -> None:
    assert human_bytes(count) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(-1, "0.0s"), (4.25, "4.2s"), (65, "1m05s"), (3725, "1h02m05s")]
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text
