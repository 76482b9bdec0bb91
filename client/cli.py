"""`clonejob`: the command line of the CloneJob service.

Exit codes: 0 success (a watched job SUCCEEDED), 1 the watched job FAILED,
2 it was CANCELLED (or bad usage, from argparse), 3 a call failed,
130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from client._blocking import BlockingCloneJobClient
from client.errors import CloneJobError
from client.retry import TERMINAL_STATES
from clonejob_grpc.clone_job_pb2 import (
    CloneJob,
    CloneStep,
    ComputeEngineDisksTargetDetails,
    ComputeEngineTargetDetails,
    NetworkInterface,
)
from clonejob_grpc.clone_job_service_pb2 import ListCloneJobsResponse, WatchCloneJobResponse

DEFAULT_SERVER = "127.0.0.1:50051"
EXIT_OK, EXIT_FAILED, EXIT_CANCELLED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

DEMO_VM = "projects/demo-project/locations/us-central1/sources/demo-source/migratingVms/demo-vm"
DEMO_JOB_ID = "demo-clone"
SERVER_START_TIMEOUT = 30.0
SERVER_STOP_TIMEOUT = 15.0

_STEP_TITLES = {
    "adapting_os": "Adapting OS",
    "preparing_vm_disks": "Preparing VM disks",
    "instantiating_migrated_vm": "Instantiating migrated VM",
}


class OptionsError(Exception):
    """Command-line options that do not fit together."""


class DemoError(Exception):
    """The demo could not set up its server or sample VM."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `clonejob` command; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "create" and not args.disks_only:
        missing = [
            flag
            for flag, value in (
                ("--vm-name", args.vm_name),
                ("--zone", args.zone),
                ("--machine-type", args.machine_type),
            )
            if not value
        ]
        if missing:
            parser.error(f"create needs {', '.join(missing)} (or --disks-only)")
    out = _console()
    try:
        if args.command == "demo":
            return _demo(args, out)
        credentials, metadata = _security(args)
        with BlockingCloneJobClient(
            args.server, timeout=args.timeout, credentials=credentials, metadata=metadata
        ) as client:
            return int(args.run(client, args, out))
    except CloneJobError as error:
        _print_error(error, args.server if args.command != "demo" else None)
        return EXIT_ERROR
    except (DemoError, OptionsError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# --- arguments ---------------------------------------------------------------


def _security(
    args: argparse.Namespace,
) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, str]]]:
    """TLS credentials from --tls-*, and the bearer token as call metadata."""
    credentials = None
    if args.tls_ca or args.tls_cert or args.tls_key:
        if bool(args.tls_cert) != bool(args.tls_key):
            raise OptionsError("--tls-cert and --tls-key go together")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=args.tls_ca.read_bytes() if args.tls_ca else None,
            private_key=args.tls_key.read_bytes() if args.tls_key else None,
            certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None,
        )
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    return credentials, metadata


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clonejob", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--server",
        metavar="HOST:PORT",
        default=os.environ.get("CLONEJOB_SERVER", DEFAULT_SERVER),
        help=f"the service's address (env CLONEJOB_SERVER, default {DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the protobuf JSON mapping of the results"
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="deadline of each call, in seconds"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("CLONEJOB_TOKEN", ""),
        help="bearer token sent as `authorization` metadata (env CLONEJOB_TOKEN)",
    )
    parser.add_argument(
        "--tls-ca", type=Path, help="PEM CA bundle to verify the server with: use TLS"
    )
    parser.add_argument("--tls-cert", type=Path, help="PEM client certificate (mutual TLS)")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    # The global options are accepted after the command too (`clonejob get NAME --json`).
    anywhere = argparse.ArgumentParser(add_help=False)
    anywhere.add_argument("--server", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    anywhere.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    anywhere.add_argument(
        "--timeout", type=float, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    create = commands.add_parser("create", parents=[anywhere], help="create a clone job")
    create.add_argument("parent", metavar="PARENT", help="the migrating VM's name")
    create.add_argument("clone_job_id", metavar="CLONE_JOB_ID")
    create.add_argument("--vm-name", help="the VM to create (required unless --disks-only)")
    create.add_argument("--zone", help="e.g. us-central1-a (required unless --disks-only)")
    create.add_argument("--machine-type", help="e.g. n2-standard-4 (required unless --disks-only)")
    create.add_argument("--project", default="", help="target project (default: the parent's)")
    create.add_argument("--network", default="", help="connect one NIC to this network")
    create.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", type=_label, help="repeatable"
    )
    create.add_argument("--disks-only", action="store_true", help="clone the disks only, not a VM")
    create.add_argument("--request-id", help="a UUID making retries safe (default: a new one)")
    create.set_defaults(run=_create)

    get = commands.add_parser("get", parents=[anywhere], help="show a clone job")
    get.add_argument("name", metavar="NAME")
    get.set_defaults(run=_get)

    list_ = commands.add_parser(
        "list", parents=[anywhere], help="list the clone jobs of a migrating VM"
    )
    list_.add_argument("parent", metavar="PARENT")
    list_.add_argument("--filter", default="", help='e.g. "state = FAILED"')
    list_.add_argument("--order-by", default="", help='e.g. "create_time desc"')
    list_.add_argument("--page-size", type=int, default=0, help="jobs per call (0: default)")
    list_.set_defaults(run=_list)

    cancel = commands.add_parser("cancel", parents=[anywhere], help="cancel a clone job")
    cancel.add_argument("name", metavar="NAME")
    cancel.set_defaults(run=_cancel)

    watch = commands.add_parser(
        "watch",
        parents=[anywhere],
        help="follow a clone job until it ends (exit 0 SUCCEEDED, 1 FAILED, 2 CANCELLED)",
    )
    watch.add_argument("name", metavar="NAME")
    watch.set_defaults(run=_watch)

    demo = commands.add_parser(
        "demo",
        parents=[anywhere],
        help="start a server on a temporary directory and clone a sample VM",
    )
    demo.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return parser


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


# --- commands ----------------------------------------------------------------


def _create(client: BlockingCloneJobClient, args: argparse.Namespace, out: Console) -> int:
    if args.disks_only:
        job = CloneJob(compute_engine_disks_target_details=ComputeEngineDisksTargetDetails())
    else:
        details = ComputeEngineTargetDetails(
            vm_name=args.vm_name,
            zone=args.zone,
            machine_type=args.machine_type,
            project=args.project,
            labels=dict(args.label),
        )
        if args.network:
            details.network_interfaces.append(NetworkInterface(network=args.network))
        job = CloneJob(compute_engine_target_details=details)
    created = client.create(args.parent, args.clone_job_id, job, request_id=args.request_id)
    _show_job(created, args, out)
    return EXIT_OK


def _get(client: BlockingCloneJobClient, args: argparse.Namespace, out: Console) -> int:
    _show_job(client.get(args.name), args, out)
    return EXIT_OK


def _cancel(client: BlockingCloneJobClient, args: argparse.Namespace, out: Console) -> int:
    _show_job(client.cancel(args.name), args, out)
    return EXIT_OK


def _list(client: BlockingCloneJobClient, args: argparse.Namespace, out: Console) -> int:
    jobs = client.list(
        args.parent, filter=args.filter, order_by=args.order_by, page_size=args.page_size
    )
    if args.json:
        _print_json(ListCloneJobsResponse(clone_jobs=jobs), out)
        return EXIT_OK
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "STATE", "CREATED", "ENDED"):
        table.add_column(column, no_wrap=True)
    for job in jobs:
        table.add_row(
            job.name.rpartition("/")[2],
            _state(job),
            _time(_field(job, "create_time")),
            _time(_field(job, "end_time")),
        )
    out.print(table)
    return EXIT_OK


def _watch(client: BlockingCloneJobClient, args: argparse.Namespace, out: Console) -> int:
    final = _follow(client, args.name, json=args.json, out=out)
    return _exit_code(final)


# --- watch display -----------------------------------------------------------


def _follow(client: BlockingCloneJobClient, name: str, *, json: bool, out: Console) -> CloneJob:
    """Show each change of the job until it ends; returns the last job seen."""
    changes = client.watch(name)
    last: CloneJob | None = None
    if json:
        for change in changes:
            _print_json(change, out, indent=None)
            last = change.clone_job
    elif out.is_terminal:
        last = _follow_live(changes, out)
    else:
        for change in changes:
            out.print(_change_line(change), highlight=False, markup=False, soft_wrap=True)
            last = change.clone_job
    if last is None or last.state not in TERMINAL_STATES:
        # The stream ended without a final state (it should not): ask directly.
        last = client.get(name)
    if last.state == CloneJob.FAILED:
        print(f"error: the clone job failed: {_job_error(last)}", file=sys.stderr)
    return last


def _follow_live(changes: Iterable[WatchCloneJobResponse], out: Console) -> CloneJob | None:
    progress = Progress(
        SpinnerColumn(finished_text="[green]✓[/]"),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=out,
    )
    tasks: dict[int, TaskID] = {}
    last: CloneJob | None = None
    state = None
    with progress:
        for change in changes:
            job = last = change.clone_job
            if job.state != state:
                state = job.state
                progress.console.print(
                    f"{_time_now()}  {job.name.rpartition('/')[2]}  [bold]{_state(job)}[/]"
                )
            for index, step in enumerate(job.steps):
                _update_step(progress, tasks, index, step, change)
    return last


def _update_step(
    progress: Progress,
    tasks: dict[int, TaskID],
    index: int,
    step: CloneStep,
    change: WatchCloneJobResponse,
) -> None:
    kind = step.WhichOneof("step") or "step"
    is_disks = kind == "preparing_vm_disks"
    if index not in tasks:
        tasks[index] = progress.add_task(_STEP_TITLES.get(kind, kind), total=100, detail="")
    task = tasks[index]
    if step.HasField("end_time"):
        progress.update(task, completed=100)
        progress.stop_task(task)
    elif change.HasField("progress"):
        p = change.progress
        detail = ""
        if is_disks and p.bytes_total:
            detail = _bytes(p.bytes_done, p.bytes_total)
        progress.update(task, completed=p.percent, detail=detail)


def _change_line(change: WatchCloneJobResponse) -> str:
    job = change.clone_job
    line = f"rev {change.revision}  {_state(job)}"
    running = [s for s in job.steps if not s.HasField("end_time")]
    if running:
        line += f"  {running[-1].WhichOneof('step')}"
        if change.HasField("progress"):
            p = change.progress
            line += f" {p.percent}%"
            if p.bytes_total:
                line += f" ({_bytes(p.bytes_done, p.bytes_total)})"
    elif job.steps and job.state not in TERMINAL_STATES:
        line += f"  {job.steps[-1].WhichOneof('step')} done"
    return line


def _exit_code(job: CloneJob) -> int:
    return {CloneJob.SUCCEEDED: EXIT_OK, CloneJob.CANCELLED: EXIT_CANCELLED}.get(
        job.state, EXIT_FAILED
    )


# --- demo --------------------------------------------------------------------


def _demo(args: argparse.Namespace, out: Console) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="clonejob-demo-"))
    try:
        with _demo_server(data_dir) as address:
            out.print(f"server listening on {address}, data in {data_dir}", highlight=False)
            _sample_vm(data_dir, out)
            with BlockingCloneJobClient(address, timeout=args.timeout) as client:
                details = ComputeEngineTargetDetails(
                    vm_name="demo-clone-vm", zone="us-central1-a", machine_type="n2-standard-4"
                )
                job = client.create(
                    DEMO_VM, DEMO_JOB_ID, CloneJob(compute_engine_target_details=details)
                )
                out.print(f"created {job.name}", highlight=False, soft_wrap=True)
                final = _follow(client, job.name, json=args.json, out=out)
            if final.state == CloneJob.SUCCEEDED:
                where = f"cloned files are in {data_dir / 'targets'}"
                if not args.keep:
                    where += " (removed on exit; --keep keeps them)"
                out.print(where, highlight=False, soft_wrap=True)
            return _exit_code(final)
    finally:
        if args.keep:
            out.print(f"kept {data_dir}", highlight=False)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


@contextmanager
def _demo_server(data_dir: Path) -> Iterator[str]:
    """Run the server on a free port of 127.0.0.1; yields its address."""
    # Imported here: only the demo needs the server package.
    from client.launcher import ServerProcess, ServerStartError, ServerStopError

    server = ServerProcess(data_dir, data_dir)
    try:
        try:
            server.start(timeout=SERVER_START_TIMEOUT)
        except ServerStartError as error:
            raise DemoError(f"{error.reason}:\n{_tail(error.log)}") from None
        yield server.address
    finally:
        # SIGTERM is the graceful stop; the launcher kills it if it does not come back.
        if server.process is not None:
            with suppress(ServerStopError):
                server.stop(timeout=SERVER_STOP_TIMEOUT)
        server.close()


def _sample_vm(data_dir: Path, out: Console) -> None:
    command = [sys.executable, "-m", "server", "sample-vm", DEMO_VM, "--data-dir", str(data_dir)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DemoError(f"writing the sample VM failed:\n{result.stderr.strip()}")
    out.print(result.stdout.strip(), highlight=False, markup=False, soft_wrap=True)


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.splitlines()[-lines:]) or "(no server output)"


# --- output ------------------------------------------------------------------


def _console() -> Console:
    # Rich turns colour off by itself when not on a terminal and honours NO_COLOR;
    # the explicit check also covers an empty NO_COLOR.
    return Console(no_color="NO_COLOR" in os.environ or None)


def _print_error(error: CloneJobError, server: str | None) -> None:
    print(f"error: {error.code_name}: {error.message}", file=sys.stderr)
    for field, description in error.violations:
        print(f"  {field}: {description}", file=sys.stderr)
    if server is not None and error.code_name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        print(
            f"hint: is the server running at {server}? Set --server HOST:PORT or CLONEJOB_SERVER.",
            file=sys.stderr,
        )


def _print_json(message: Message, out: Console, indent: int | None = 2) -> None:
    text = json_format.MessageToJson(message, indent=indent)
    out.print(text, highlight=False, markup=False, soft_wrap=True)


def _show_job(job: CloneJob, args: argparse.Namespace, out: Console) -> None:
    if args.json:
        _print_json(job, out)
        return
    for line in _summary(job):
        out.print(line, highlight=False, markup=False, soft_wrap=True)


def _summary(job: CloneJob) -> list[str]:
    lines = [
        f"name:     {job.name}",
        f"state:    {_state(job)} (since {_time(_field(job, 'state_time'))})",
        f"created:  {_time(_field(job, 'create_time'))}",
        f"ended:    {_time(_field(job, 'end_time'))}",
    ]
    if job.HasField("compute_engine_target_details"):
        t = job.compute_engine_target_details
        lines.append("target:   Compute Engine VM")
        lines += [
            f"  {label}: {value}"
            for label, value in (
                ("vm_name", t.vm_name),
                ("project", t.project),
                ("zone", t.zone),
                ("machine_type", t.machine_type),
                ("networks", ", ".join(n.network for n in t.network_interfaces)),
                ("labels", ", ".join(f"{k}={v}" for k, v in sorted(t.labels.items()))),
            )
            if value
        ]
    elif job.HasField("compute_engine_disks_target_details"):
        disks = job.compute_engine_disks_target_details.disks
        lines.append("target:   Compute Engine disks only")
        lines += [f"  disk {d.source_disk_number}: {d.disk_uri}" for d in disks]
    if job.steps:
        lines.append("steps:")
        for step in job.steps:
            kind = step.WhichOneof("step") or "step"
            lines.append(f"  {kind:<26} {_duration(step)}")
    if job.HasField("error"):
        lines.append(f"error:    {_job_error(job)}")
    return lines


def _field(message: Message, name: str) -> Timestamp | None:
    value = getattr(message, name)
    return value if message.HasField(name) and isinstance(value, Timestamp) else None


def _duration(step: CloneStep) -> str:
    if not step.HasField("start_time"):
        return "not started"
    start = step.start_time.ToDatetime(tzinfo=UTC)
    if step.HasField("end_time"):
        return _seconds((step.end_time.ToDatetime(tzinfo=UTC) - start).total_seconds())
    return f"running for {_seconds((datetime.now(UTC) - start).total_seconds())}"


def _seconds(total: float) -> str:
    if total < 60:
        return f"{total:.1f}s"
    minutes, seconds = divmod(int(total), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def _state(job: CloneJob) -> str:
    try:
        return str(CloneJob.State.Name(job.state))
    except ValueError:  # a state added after this client was built
        return f"STATE_{job.state}"


def _time(ts: Timestamp | None) -> str:
    if ts is None:
        return "-"
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _time_now() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S")


def _job_error(job: CloneJob) -> str:
    if not job.HasField("error"):
        return "(no error details)"
    code = job.error.code
    return f"{_code_name(code)}: {job.error.message}"


def _code_name(code: int) -> str:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return str(status.name)
    return f"CODE_{code}"


def _bytes(done: int, total: int) -> str:
    mib = 1024 * 1024
    return f"{done / mib:.1f}/{total / mib:.1f} MiB"
