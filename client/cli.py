"""`clonejob`: the command line of the CloneJob service.

Exit codes: 0 success (a watched or waited-for job SUCCEEDED), 1 the job FAILED,
2 it was CANCELLED (or bad usage), 3 a call or a local check failed,
130 interrupted.

Errors go to stderr: a headline (status code, ErrorInfo reason, message), then
each bad field once, then a hint. With `--json` they are JSON too, on stderr so
that stdout only ever holds results: the proto3 JSON mapping of the
`google.rpc.Status` (`code`, `message`, `details` with `@type`), the server's
own when it sent one; a hint rides along as a `google.rpc.LocalizedMessage`
detail, and errors of the CLI itself (usage, files) carry an ErrorInfo of
domain `clonejob.cli`.

Defaults: `--server` from CLONEJOB_SERVER, `--parent` (the migrating VM that short
job ids are under: `get check-1`) from CLONEJOB_PARENT, then from the TOML file
$CLONEJOB_CONFIG or ~/.config/clonejob/config.toml ($XDG_CONFIG_HOME respected),
keys `server` and `parent`. `--timeout` bounds each command's calls, connecting
and retries included. gRPC's own log lines are off (CLONEJOB_GRPC_VERBOSITY=DEBUG
or INFO brings them back).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from client._names import WILDCARD, id_under

if TYPE_CHECKING:
    import grpc
    from google.protobuf.message import Message
    from google.protobuf.timestamp_pb2 import Timestamp
    from rich.console import Console

    from client._blocking import BlockingCloneJobClient
    from client.errors import CloneJobError
    from client.job_text import duration, state_name
    from client.retry import TERMINAL_STATES
    from clonejob_grpc.clone_job_pb2 import CloneJob, CloneStep

DEFAULT_SERVER = "127.0.0.1:50051"
EXIT_OK, EXIT_FAILED, EXIT_CANCELLED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_USAGE = 2
CONFIG_KEYS = ("server", "parent")
CLI_DOMAIN = "clonejob.cli"  # the ErrorInfo domain of the CLI's own errors

DEMO_VM = "projects/demo-project/locations/us-central1/sources/demo-source/migratingVms/demo-vm"
DEMO_JOB_ID = "demo-clone"
DEMO_STEPS = ("preparing_vm_disks", "adapting_os", "instantiating_migrated_vm")
DEMO_STEP_DELAY = 3.0
SERVER_START_TIMEOUT = 30.0
SERVER_STOP_TIMEOUT = 15.0


class OptionsError(Exception):
    """Command-line options (or files they name) that cannot be used.

    `reason` is the ErrorInfo reason of its `--json` form."""

    def __init__(self, message: str, *, reason: str = "BAD_OPTIONS") -> None:
        super().__init__(message)
        self.reason = reason


class DemoError(Exception):
    """The demo could not set up its server or sample VM."""


class UsageError(Exception):
    """A mistake in the command line, told with the usage of the (sub)command made."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises `UsageError` instead of printing and exiting,
    so that the error is printed with the usage of the parser that found it, and
    as JSON under `--json`. Subparsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `clonejob` command; returns the exit code."""
    _quiet_grpc()  # before anything imports grpc
    argv = list(sys.argv[1:] if argv is None else argv)
    options = argv[: argv.index("--")] if "--" in argv else argv
    as_json = "--json" in options
    started = time.monotonic()
    try:
        args = _parse(argv)
    except UsageError as error:
        return _usage_error(error, as_json)
    _load()  # after parsing: `--help` and usage errors never pay for it
    try:
        out = _console()
        if args.command == "demo":
            return _demo(args, out)
        _apply_defaults(args)
        with BlockingCloneJobClient(args.server, **_client_options(args)) as client:
            return int(args.run(client, args, out))
    except UsageError as error:
        return _usage_error(error, as_json)
    except (OptionsError, DemoError) as error:
        reason = error.reason if isinstance(error, OptionsError) else "DEMO_FAILED"
        code = 3 if isinstance(error, OptionsError) else 2  # INVALID_ARGUMENT, UNKNOWN
        _local_error(str(error), code=code, reason=reason, as_json=as_json)
        return EXIT_ERROR
    except CloneJobError as error:
        left = args.timeout - (time.monotonic() - started)
        hint = "" if args.command == "demo" else _hint(error, args, left)
        _print_error(error, hint, as_json=as_json)
        return EXIT_ERROR
    except KeyboardInterrupt:
        _local_error("interrupted", code=1, reason="INTERRUPTED", as_json=as_json)
        return EXIT_INTERRUPTED
    except OSError as error:
        _local_error(_os_problem(error), code=2, reason="OS_ERROR", as_json=as_json)
        return EXIT_ERROR


def _load() -> None:
    """Import what every command needs into this module's names.

    Not at the top of the module: `clonejob --help` and usage errors must start
    fast, without grpc, protobuf or rich (bench/cli_startup.py measures it). The
    functions below use these names as if they were imported at the top. What
    only some commands need (rich's Table and Live, client.top, the launcher)
    is imported where it is used.
    """
    global grpc, Timestamp, Console
    global BlockingCloneJobClient, CloneJobError, TERMINAL_STATES, CloneJob
    global duration, state_name
    import grpc
    from google.protobuf.timestamp_pb2 import Timestamp
    from rich.console import Console

    from client._blocking import BlockingCloneJobClient
    from client.errors import CloneJobError
    from client.job_text import duration, state_name
    from client.retry import TERMINAL_STATES
    from clonejob_grpc.clone_job_pb2 import CloneJob


def _quiet_grpc() -> None:
    """Keep gRPC's C-core log lines (handshake failures and the like) off the
    user's terminal: the error they explain is printed anyway, with a hint.
    Read by grpc when it is imported, so this runs first (and does nothing for
    a caller that imported grpc already)."""
    if "grpc" in sys.modules:
        return
    verbosity = os.environ.get("CLONEJOB_GRPC_VERBOSITY")
    if verbosity:
        os.environ["GRPC_VERBOSITY"] = verbosity
    else:
        os.environ["GRPC_VERBOSITY"] = "NONE"
        os.environ.pop("GRPC_TRACE", None)


# --- arguments ---------------------------------------------------------------


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser, commands = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Left over by the command's parser: its mistake, told with its usage.
        commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    args.command_parser = commands[args.command]
    if args.command == "create":
        _check_create(args)
    return args


def _check_create(args: argparse.Namespace) -> None:
    if len(args.names) > 2:
        args.command_parser.error(
            f"create takes [PARENT] CLONE_JOB_ID, not {len(args.names)} names"
        )
    if args.disks_only:
        vm_flags = [
            flag
            for flag in ("vm_name", "zone", "machine_type", "project", "network", "label")
            if getattr(args, flag)
        ]
        if vm_flags:
            named = ", ".join("--" + flag.replace("_", "-") for flag in vm_flags)
            args.command_parser.error(f"--disks-only clones disks, not a VM: drop {named}")
        return
    if args.body is not None:
        return
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
        args.command_parser.error(
            f"create needs {', '.join(missing)} (or --disks-only, or --body FILE)"
        )


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of either client: TLS, token, and --timeout as each
    call's whole deadline (connecting and retries included)."""
    from client.retry import RetryPolicy

    credentials, metadata = _security(args)
    return {
        "credentials": credentials,
        "metadata": metadata,
        "timeout": args.timeout,
        "retry": RetryPolicy(deadline=args.timeout),
    }


def _security(
    args: argparse.Namespace,
) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, str]]]:
    """TLS credentials from --tls-*, and the bearer token as call metadata."""
    credentials = None
    if args.tls_ca or args.tls_cert or args.tls_key:
        if bool(args.tls_cert) != bool(args.tls_key):
            raise OptionsError("--tls-cert and --tls-key go together")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read("--tls-ca", args.tls_ca) if args.tls_ca else None,
            private_key=_read("--tls-key", args.tls_key) if args.tls_key else None,
            certificate_chain=_read("--tls-cert", args.tls_cert) if args.tls_cert else None,
        )
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    return credentials, metadata


def _read(flag: str, path: Path) -> bytes:
    """The bytes of a file a flag names (`-`: standard input), or an error in plain words."""
    if str(path) == "-":
        return sys.stdin.buffer.read()
    try:
        return path.read_bytes()
    except OSError as error:
        raise OptionsError(f"{flag} {path}: {_os_words(error)}", reason="FILE_UNREADABLE") from None


def _os_words(error: OSError) -> str:
    """What went wrong with a file, in words: "no such file", not `[Errno 2] ...`."""
    import errno

    words = {
        errno.ENOENT: "no such file",
        errno.EACCES: "permission denied: it cannot be read",
        errno.EPERM: "permission denied: it cannot be read",
        errno.EISDIR: "is a directory, not a file",
        errno.ENOTDIR: "a part of the path is not a directory",
        errno.ENAMETOOLONG: "the name is too long",
    }
    return words.get(error.errno or 0, (error.strerror or str(error)).lower())


def _os_problem(error: OSError) -> str:
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{_os_words(error)}"


def _apply_defaults(args: argparse.Namespace) -> None:
    """--server: the flag, else CLONEJOB_SERVER, else the config file, else the
    default. The config file is read only when needed (see `_parent`)."""
    server = args.server or os.environ.get("CLONEJOB_SERVER", "")
    if not server:
        server = _config().get("server", "")
    args.server = server or DEFAULT_SERVER


def _parent(args: argparse.Namespace) -> str:
    """The default parent: --parent, else CLONEJOB_PARENT, else the config file;
    "" when there is none."""
    parent = args.default_parent or os.environ.get("CLONEJOB_PARENT", "")
    if not parent:
        parent = _config().get("parent", "")
    return str(parent).rstrip("/")


def _config_path() -> tuple[Path, bool]:
    """The config file, and whether CLONEJOB_CONFIG named it."""
    named = os.environ.get("CLONEJOB_CONFIG")
    if named:
        return Path(named), True
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "clonejob" / "config.toml", False


def _config() -> dict[str, str]:
    """The settings of the config file (TOML: `server = "HOST:PORT"`, `parent = "..."`);
    none when there is no such file (unless CLONEJOB_CONFIG named it)."""
    path, named = _config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if named:
            raise OptionsError(
                f"CLONEJOB_CONFIG {path}: no such file", reason="FILE_UNREADABLE"
            ) from None
        return {}
    except (OSError, UnicodeDecodeError) as error:
        words = _os_words(error) if isinstance(error, OSError) else "not UTF-8 text"
        raise OptionsError(f"config file {path}: {words}", reason="FILE_UNREADABLE") from None
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise OptionsError(
            f"config file {path} is not valid TOML: {error}", reason="BAD_CONFIG"
        ) from None
    for key, value in data.items():
        if key not in CONFIG_KEYS:
            raise OptionsError(
                f"config file {path}: unknown setting {key!r} (known: {', '.join(CONFIG_KEYS)})",
                reason="BAD_CONFIG",
            )
        if not isinstance(value, str):
            raise OptionsError(f"config file {path}: {key} must be a string", reason="BAD_CONFIG")
    return dict(data)


def _parser() -> tuple[_Parser, dict[str, _Parser]]:
    parser = _Parser(
        prog="clonejob",
        description=__doc__.splitlines()[0],
        epilog="Short job ids (`get check-1`) are under the default parent: --parent,"
        " CLONEJOB_PARENT, or `parent` in ~/.config/clonejob/config.toml.",
    )
    parser.add_argument(
        "--server",
        metavar="HOST:PORT",
        help=f"the service's address (env CLONEJOB_SERVER, config `server`,"
        f" default {DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--parent",
        dest="default_parent",
        metavar="MIGRATING_VM",
        help="the migrating VM short job ids are under, and the default of list"
        " (env CLONEJOB_PARENT, config `parent`)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the protobuf JSON mapping of the results (and of errors, on stderr)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=30.0,
        help="seconds each call may take, connecting and retries included (default 30)",
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
    anywhere = _Parser(add_help=False)
    anywhere.add_argument("--server", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    anywhere.add_argument(
        "--parent", dest="default_parent", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    anywhere.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    anywhere.add_argument(
        "--timeout", type=_positive_seconds, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: dict[str, _Parser] = {}

    def command(name: str, run: Any, **kwargs: Any) -> _Parser:
        made: _Parser = sub.add_parser(name, parents=[anywhere], **kwargs)
        made.set_defaults(run=run)
        commands[name] = made
        return made

    create = command(
        "create",
        _create,
        help="create a clone job",
        usage="clonejob create [PARENT] CLONE_JOB_ID"
        " (--vm-name NAME --zone ZONE --machine-type TYPE | --disks-only | --body FILE)"
        " [options]",
        description="Create a clone job: `create PARENT CLONE_JOB_ID`, `create CLONE_JOB_ID`"
        " under the default parent, or `create` with the job's full name.",
    )
    create.add_argument(
        "names",
        nargs="+",
        metavar="[PARENT] CLONE_JOB_ID",
        help="the migrating VM's name and the new job's id (or the job's full name)",
    )
    create.add_argument("--vm-name", help="the VM to create (required unless --disks-only)")
    create.add_argument("--zone", help="e.g. us-central1-a (required unless --disks-only)")
    create.add_argument("--machine-type", help="e.g. n2-standard-4 (required unless --disks-only)")
    create.add_argument("--project", default="", help="target project (default: the parent's)")
    create.add_argument("--network", default="", help="connect one NIC to this network")
    create.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", type=_label, help="repeatable"
    )
    create.add_argument("--disks-only", action="store_true", help="clone the disks only, not a VM")
    create.add_argument(
        "--body",
        type=Path,
        metavar="FILE",
        help="the CloneJob in the proto3 JSON mapping (`-`: stdin); the flags above"
        " set fields on top of it",
    )
    create.add_argument("--request-id", help="a UUID making retries safe (default: a new one)")
    then = create.add_mutually_exclusive_group()
    then.add_argument(
        "--watch",
        action="store_true",
        help="then follow the job live; exit 0 SUCCEEDED, 1 FAILED, 2 CANCELLED",
    )
    then.add_argument(
        "--wait",
        action="store_true",
        help="then wait quietly for the end and show the result; exit code as --watch",
    )
    then.add_argument(
        "--validate-only",
        action="store_true",
        help="make every check of a create and show the job as it would be; create nothing",
    )

    get = command("get", _get, help="show a clone job")
    get.add_argument("name", metavar="NAME", help="the job's full name, or its id")

    list_ = command(
        "list",
        _list,
        help="list the clone jobs of a migrating VM (`-` for any id: AIP-159)",
    )
    list_.add_argument(
        "parent", metavar="PARENT", nargs="?", help="default: the default parent (--parent)"
    )
    list_.add_argument("--filter", default="", help='e.g. "state = FAILED"')
    list_.add_argument("--order-by", default="", help='e.g. "create_time desc"')
    list_.add_argument("--page-size", type=int, default=0, help="jobs per call (0: default)")
    _live_table_options(list_, flag=True)

    top = command(
        "top",
        _top,
        help="a live table of a parent's clone jobs (list --watch); Ctrl-C quits",
    )
    top.add_argument(
        "parent", metavar="PARENT", nargs="?", help="default: the default parent (--parent)"
    )
    top.add_argument("--filter", default="", help='e.g. "state != SUCCEEDED"')
    _live_table_options(top, flag=False)

    cancel = command("cancel", _cancel, help="cancel a clone job")
    cancel.add_argument("name", metavar="NAME", help="the job's full name, or its id")

    watch = command(
        "watch",
        _watch,
        help="follow a clone job until it ends (exit 0 SUCCEEDED, 1 FAILED, 2 CANCELLED)",
    )
    watch.add_argument("name", metavar="NAME", help="the job's full name, or its id")

    demo = command(
        "demo",
        _demo,
        help="start a server on a temporary directory and clone a sample VM",
    )
    demo.add_argument("--keep", action="store_true", help="keep the temporary directory")
    demo.add_argument(
        "--step-delay",
        type=_seconds_or_none,
        default=DEMO_STEP_DELAY,
        metavar="SECONDS",
        help=f"pace: each step waits this long at its start (default {DEMO_STEP_DELAY:g}; 0: none)",
    )
    return parser, commands


def _live_table_options(parser: _Parser, *, flag: bool) -> None:
    if flag:
        parser.add_argument(
            "--watch",
            action="store_true",
            help="a live table, updated as jobs change and appear (same as `clonejob top`)",
        )
    else:
        parser.set_defaults(watch=True, order_by="", page_size=0)
    parser.add_argument(
        "--interval",
        type=_positive_seconds,
        default=2.0,
        metavar="SECONDS",
        help="with a live table: how often to list, to find new jobs (default 2)",
    )


def _positive_seconds(text: str) -> float:
    seconds = _seconds_or_none(text)
    if seconds == 0:
        raise argparse.ArgumentTypeError("0 seconds leaves no time: give more than 0")
    return seconds


def _seconds_or_none(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
    return seconds


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


# --- names -------------------------------------------------------------------


def _default_parent(args: argparse.Namespace, short_id: str) -> str:
    parent = _parent(args)
    if not parent:
        path, _ = _config_path()
        args.command_parser.error(
            f"{short_id!r} is a short id and there is no default parent: give the job's"
            f" full name, or set one with --parent, CLONEJOB_PARENT or `parent` in {path}"
        )
    return parent


def _job_name(client: BlockingCloneJobClient, args: argparse.Namespace, value: str) -> str:
    """A job's full name from NAME: as given if it has a slash, else the id of a
    job under the default parent (found by List when that parent has wildcards)."""
    if "/" in value:
        return value
    parent = _default_parent(args, value)
    if WILDCARD not in parent.split("/"):
        return f"{parent}/cloneJobs/{value}"
    from client.errors import NotFoundError

    found = [job.name for job in client.list(parent) if job.name.rpartition("/")[2] == value]
    if not found:
        raise NotFoundError(f"no clone job {value!r} under {parent}", reason="CLONE_JOB_NOT_FOUND")
    if len(found) > 1:
        raise OptionsError(
            f"{len(found)} clone jobs have the id {value!r} under {parent}; give the full"
            " name of one:\n  " + "\n  ".join(found),
            reason="AMBIGUOUS_ID",
        )
    return found[0]


def _create_names(args: argparse.Namespace) -> tuple[str, str]:
    """(parent, clone_job_id) from `create [PARENT] CLONE_JOB_ID` or a full name."""
    if len(args.names) == 2:
        return str(args.names[0]), str(args.names[1])
    value = str(args.names[0])
    if "/" not in value:
        parent = _default_parent(args, value)
        if WILDCARD in parent.split("/"):
            args.command_parser.error(
                f"the default parent {parent} has wildcards: give create the migrating VM"
            )
        return parent, value
    parent, sep, job_id = value.rpartition("/cloneJobs/")
    if not sep or not job_id:
        args.command_parser.error(
            f"{value!r} is not a clone job's full name (.../migratingVms/VM/cloneJobs/ID):"
            " give PARENT CLONE_JOB_ID"
        )
    return parent, job_id


def _list_parent(args: argparse.Namespace) -> str:
    parent = args.parent or _parent(args)
    if not parent:
        args.command_parser.error(
            "which parent? give PARENT, or set a default with --parent or CLONEJOB_PARENT"
        )
    return str(parent)


# --- commands ----------------------------------------------------------------


def _create(client: BlockingCloneJobClient, args: argparse.Namespace, out: Console) -> int:
    parent, job_id = _create_names(args)
    job = _job_body(args)
    if args.validate_only:
        would_be = client.create(
            parent, job_id, job, request_id=args.request_id, validate_only=True
        )
        if not args.json:
            out.print(
                "valid: nothing was created; the clone job would be:",
                highlight=False,
                markup=False,
            )
        _show_job(would_be, args, out)
        return EXIT_OK
    created = client.create(parent, job_id, job, request_id=args.request_id)
    if args.watch:
        if not args.json:
            out.print(f"created {created.name}", highlight=False, markup=False, soft_wrap=True)
        return _exit_code(_follow(client, created.name, json=args.json, out=out))
    if args.wait:
        final = _wait(client, created.name)
        _show_job(final, args, out)
        if final.state == CloneJob.FAILED:
            print(f"error: the clone job failed: {_job_error(final)}", file=sys.stderr)
        return _exit_code(final)
    _show_job(created, args, out)
    return EXIT_OK


def _job_body(args: argparse.Namespace) -> CloneJob:
    """The CloneJob to create: --body, with the target flags set on top."""
    from clonejob_grpc.clone_job_pb2 import NetworkInterface

    job = CloneJob()
    if args.body is not None:
        from google.protobuf import json_format

        text = _read("--body", args.body)
        try:
            json_format.Parse(text, job)
        except (json_format.ParseError, UnicodeDecodeError) as error:
            raise OptionsError(
                f"--body {args.body}: not a CloneJob in the proto3 JSON mapping: {error}",
                reason="BAD_BODY",
            ) from None
    if args.disks_only:
        job.compute_engine_disks_target_details.SetInParent()
    if args.vm_name or args.zone or args.machine_type or args.project or args.network:
        details = job.compute_engine_target_details
        for field in ("vm_name", "zone", "machine_type", "project"):
            if getattr(args, field):
                setattr(details, field, getattr(args, field))
        if args.network:
            details.network_interfaces.append(NetworkInterface(network=args.network))
    if args.label:
        job.compute_engine_target_details.labels.update(dict(args.label))
    return job


def _wait(client: BlockingCloneJobClient, name: str) -> CloneJob:
    """The job once it has ended, quietly."""
    last: CloneJob | None = None
    for change in client.watch(name):
        last = change.clone_job
    if last is None or last.state not in TERMINAL_STATES:
        last = client.get(name)  # the stream ended without a final state (it should not)
    return last


def _get(client: BlockingCloneJobClient, args: argparse.Namespace, out: Console) -> int:
    _show_job(client.get(_job_name(client, args, args.name)), args, out)
    return EXIT_OK


def _cancel(client: BlockingCloneJobClient, args: argparse.Namespace, out: Console) -> int:
    _show_job(client.cancel(_job_name(client, args, args.name)), args, out)
    return EXIT_OK


def _list(client: BlockingCloneJobClient, args: argparse.Namespace, out: Console) -> int:
    if args.watch:
        return _top(client, args, out)
    from rich.table import Table

    from clonejob_grpc.clone_job_service_pb2 import ListCloneJobsResponse

    parent = _list_parent(args)
    jobs = client.list(parent, filter=args.filter, order_by=args.order_by, page_size=args.page_size)
    if args.json:
        _print_json(ListCloneJobsResponse(clone_jobs=jobs), out)
        return EXIT_OK
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "STATE", "TARGET", "CREATED", "ENDED", "REASON"):
        table.add_column(column, no_wrap=True)
    for job in jobs:
        table.add_row(
            id_under(job.name, parent),
            state_name(job),
            _target(job),
            _time(_field(job, "create_time")),
            _time(_field(job, "end_time")),
            _error_reason(job) if job.state == CloneJob.FAILED else "-",
        )
    _print_whole(table, out)
    return EXIT_OK


def _print_whole(table: Any, out: Console) -> None:
    """A table at its natural width, never cut to the console's (80 columns when
    not a terminal): ids and names are what a person greps for."""
    from rich.measure import Measurement

    natural = Measurement.get(out, out.options.update_width(10_000), table).maximum
    narrow = out.width
    out.width = max(natural, narrow)  # print() never renders wider than the console
    try:
        out.print(table, crop=False)
    finally:
        out.width = narrow


def _top(client: BlockingCloneJobClient, args: argparse.Namespace, out: Console) -> int:
    """The live table of client.top, on the asyncio client; Ctrl-C ends it (exit 0)."""
    parent = _list_parent(args)
    if args.json:
        raise OptionsError(
            "a live table has no JSON form: use `list --json` for the jobs, or"
            " `watch --json NAME` for one job's changes"
        )
    if args.order_by or args.page_size:
        raise OptionsError("a live table shows jobs in creation order: drop --order-by/--page-size")
    import asyncio

    from client import top
    from client._async import CloneJobClient

    async def show() -> None:
        async with CloneJobClient(args.server, **_client_options(args)) as live_client:
            await top.run(live_client, parent, out=out, interval=args.interval, filter=args.filter)

    try:
        asyncio.run(show())
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _watch(client: BlockingCloneJobClient, args: argparse.Namespace, out: Console) -> int:
    name = _job_name(client, args, args.name)
    # A Get first: an unknown job, or a server that cannot be reached, fails
    # within --timeout, before the watch (which keeps reconnecting) begins.
    client.get(name)
    final = _follow(client, name, json=args.json, out=out)
    return _exit_code(final)


# --- watch display -----------------------------------------------------------


def _follow(client: BlockingCloneJobClient, name: str, *, json: bool, out: Console) -> CloneJob:
    """Show each change of the job until it ends, then its summary; returns the
    last job seen. On a terminal the display is live (see client.watch_display)."""
    # Imported here: only the commands that follow a job need the display.
    from client.watch_display import WatchDisplay, job_error

    last: CloneJob | None = None
    display = None if json else WatchDisplay(out)
    if display is None:
        for change in client.watch(name):
            _print_json(change, out, indent=None)
            last = change.clone_job
    else:
        with display:
            for change in client.watch(name, on_reconnect=display.reconnect):
                display.update(change)
        last = display.view.job
    if last is None or last.state not in TERMINAL_STATES:
        # The stream ended without a final state (it should not): ask directly.
        last = client.get(name)
    if display is not None:
        display.finish(last)
    if last.state == CloneJob.FAILED:
        print(f"error: the clone job failed: {job_error(last)}", file=sys.stderr)
    return last


def _exit_code(job: CloneJob) -> int:
    return {CloneJob.SUCCEEDED: EXIT_OK, CloneJob.CANCELLED: EXIT_CANCELLED}.get(
        job.state, EXIT_FAILED
    )


# --- demo --------------------------------------------------------------------


def _demo(args: argparse.Namespace, out: Console) -> int:
    import shutil
    import tempfile

    from client.retry import RetryPolicy
    from clonejob_grpc.clone_job_pb2 import ComputeEngineTargetDetails

    data_dir = Path(tempfile.mkdtemp(prefix="clonejob-demo-"))
    try:
        with _demo_server(data_dir, args.step_delay) as address:
            out.print(f"server listening on {address}, data in {data_dir}", highlight=False)
            if args.step_delay > 0:
                out.print(
                    f"paced so that the display can be followed: each step waits"
                    f" {args.step_delay:g} s at its start (a `delay` fault in the demo server's"
                    " --fault-plan; --step-delay 0 turns it off). A real clone takes as long"
                    " as its data.",
                    highlight=False,
                    markup=False,
                )
            _sample_vm(data_dir, out)
            with BlockingCloneJobClient(
                address, timeout=args.timeout, retry=RetryPolicy(deadline=args.timeout)
            ) as client:
                details = ComputeEngineTargetDetails(
                    vm_name="demo-clone-vm", zone="us-central1-a", machine_type="n2-standard-4"
                )
                job = client.create(
                    DEMO_VM, DEMO_JOB_ID, CloneJob(compute_engine_target_details=details)
                )
                out.print(f"created {job.name}", highlight=False, soft_wrap=True)
                final = _follow(client, job.name, json=args.json, out=out)
        for line in _demo_made(final, data_dir):
            out.print(line, highlight=False, markup=False, soft_wrap=True)
        return _exit_code(final)
    finally:
        if args.keep:
            for line in _demo_kept(data_dir):
                out.print(line, highlight=False, markup=False, soft_wrap=True)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
            out.print(
                f"removed {data_dir} and all it held (`clonejob demo --keep` keeps it)",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )


def _demo_made(job: CloneJob, data_dir: Path) -> list[str]:
    """What the demo made, and where."""
    lines = [f"made: the clone job {job.name}, {state_name(job)}"]
    if job.state != CloneJob.SUCCEEDED:
        return [*lines, "  (it kept nothing in the target)"]
    zone = data_dir / "targets/projects/demo-project/zones/us-central1-a"
    found = [
        ("instance definition", zone / "instances/demo-clone-vm.json"),
        ("libvirt domain", zone / "instances/demo-clone-vm.xml"),
    ]
    disks = sorted((zone / "disks").glob("*.img"))
    lines += [f"  {what:<20} {path}" for what, path in found if path.exists()]
    lines += [f"  {'disk image':<20} {path}" for path in disks]
    lines.append(f"  {'job database':<20} {data_dir / 'clonejob.db'}")
    return lines


def _demo_kept(data_dir: Path) -> list[str]:
    """How to go on with a kept demo directory."""
    return [
        f"kept {data_dir}; to serve it again:",
        f"  clonejob-server --data-dir {data_dir}",
        "and then, from another terminal:",
        f"  clonejob --parent {DEMO_VM} get {DEMO_JOB_ID}",
    ]


@contextmanager
def _demo_server(data_dir: Path, step_delay: float) -> Iterator[str]:
    """Run the server on a free port of 127.0.0.1, each step of the demo's job
    delayed by `step_delay` seconds; yields its address."""
    from contextlib import suppress

    # Imported here: only the demo needs the launcher.
    from client.launcher import ServerProcess, ServerStartError, ServerStopError

    plan = [
        {
            "match": f"cloneJobs/{DEMO_JOB_ID}",
            "step": step,
            "action": "delay",
            "seconds": step_delay,
        }
        for step in DEMO_STEPS
        if step_delay > 0
    ]
    server = ServerProcess(data_dir, data_dir, fault_plan=plan or None)
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
    import subprocess

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


def _print_error(error: CloneJobError, hint: str, *, as_json: bool) -> None:
    """A failed call: a headline with the code and reason, each bad field once,
    then the hint; or, under --json, its google.rpc.Status."""
    if as_json:
        from client.errors import to_status

        _print_status(to_status(error), hint)
        return
    headline = error.message
    if error.violations:
        field, description = error.violations[0]
        if headline.startswith(f"{field}: {description}"):
            # The message is the first violation again (and a count): say it once.
            import re

            count = len(error.violations)
            more = re.search(r"\(and (\d+) more\)$", headline)
            if more:  # the server lists at most 16
                count = max(count, int(more.group(1)) + 1)
            headline = f"the request has {count} invalid field{'s' if count != 1 else ''}"
    reason = f" {error.reason}" if error.reason and error.reason != error.code_name else ""
    lines = [f"error: {error.code_name}{reason}: {headline}"]
    lines += [f"  {field}: {description}" for field, description in error.violations]
    if hint:
        lines.append(f"hint: {hint}")
    print("\n".join(lines), file=sys.stderr)


def _hint(error: CloneJobError, args: argparse.Namespace, time_left: float) -> str:
    """What to do about a call that did not reach the service: told apart by a
    short look at the port (client._probe), within what is left of --timeout."""
    if error.reason or error.code_name not in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        return ""  # the service itself answered
    from client._probe import Listener, probe

    server = args.server
    tls = bool(args.tls_ca or args.tls_cert or args.tls_key)
    found = probe(server, timeout=min(1.0, max(0.2, time_left)))
    if found is Listener.TLS and not tls:
        return (
            f"the server at {server} speaks TLS: pass --tls-ca with the CA that signed"
            " its certificate"
        )
    if found is Listener.PLAINTEXT and tls:
        return (
            f"the server at {server} does not speak TLS: drop --tls-ca (and --tls-cert, --tls-key)"
        )
    if found is Listener.TLS:
        if "CERTIFICATE_VERIFY_FAILED" in error.message:
            return (
                f"the certificate of the server at {server} is not signed by the CA in"
                f" --tls-ca {args.tls_ca}: pass the CA that signed it"
            )
        return (
            f"the TLS handshake with {server} failed: check --tls-ca, and --tls-cert and"
            " --tls-key if it asks for a client certificate"
        )
    if found is Listener.PLAINTEXT and error.code_name == "DEADLINE_EXCEEDED":
        return (
            f"the server at {server} is up but did not answer within --timeout {args.timeout:g} s"
        )
    return f"is the server running at {server}? Set --server HOST:PORT or CLONEJOB_SERVER."


def _usage_error(error: UsageError, as_json: bool) -> int:
    """A command-line mistake, with the usage of the (sub)command that found it."""
    usage = error.parser.format_usage().strip()
    if as_json:
        from google.rpc import error_details_pb2, status_pb2

        status = status_pb2.Status(code=3, message=f"{error.parser.prog}: {error.message}")
        status.details.add().Pack(error_details_pb2.ErrorInfo(reason="USAGE", domain=CLI_DOMAIN))
        _print_status(status, usage)
    else:
        print(f"{usage}\n{error.parser.prog}: error: {error.message}", file=sys.stderr)
    return EXIT_USAGE


def _local_error(message: str, *, code: int, reason: str, as_json: bool) -> None:
    """An error of the CLI itself (options, files, the demo): `error: message`,
    or a google.rpc.Status of `code` with an ErrorInfo of domain clonejob.cli."""
    if not as_json:
        print(f"error: {message}", file=sys.stderr)
        return
    from google.rpc import error_details_pb2, status_pb2

    status = status_pb2.Status(code=code, message=message)
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain=CLI_DOMAIN))
    _print_status(status, "")


def _print_status(status: Any, hint: str) -> None:
    """A google.rpc.Status in the proto3 JSON mapping on stderr; the hint, if
    any, as a LocalizedMessage detail."""
    from google.protobuf import json_format as mapping
    from google.rpc import error_details_pb2

    if hint:
        status.details.add().Pack(error_details_pb2.LocalizedMessage(locale="en-US", message=hint))
    print(mapping.MessageToJson(status, indent=2), file=sys.stderr)


def _print_json(message: Message, out: Console, indent: int | None = 2) -> None:
    from google.protobuf import json_format  # only --json needs it

    text = json_format.MessageToJson(message, indent=indent)
    out.print(text, highlight=False, markup=False, soft_wrap=True)


def _show_job(job: CloneJob, args: argparse.Namespace, out: Console) -> None:
    if args.json:
        _print_json(job, out)
        return
    for line in [*_summary(job), *_job_facts(job)]:
        out.print(line, highlight=False, markup=False, soft_wrap=True)


def _job_facts(job: CloneJob) -> list[str]:
    """The replication cycle a job is made from and, for a VM job, the boot option
    and the license, which the server learns while adapting the OS."""
    cycle = [f"cycle:    {job.replication_cycle}"] if job.replication_cycle else []
    if not job.HasField("compute_engine_target_details"):
        return cycle
    from clonejob_grpc.clone_job_pb2 import (
        AppliedLicense,
        ComputeEngineBootOption,
        ComputeEngineLicenseType,
    )

    t = job.compute_engine_target_details
    unknown = "not reported" if job.state in TERMINAL_STATES else "known once the OS is adapted"
    boot = unknown
    if t.boot_option:
        boot = _enum(ComputeEngineBootOption.Name, t.boot_option, "COMPUTE_ENGINE_BOOT_OPTION_")
    requested = _enum(ComputeEngineLicenseType.Name, t.license_type, "COMPUTE_ENGINE_LICENSE_TYPE_")
    if t.HasField("applied_license") and t.applied_license.type:
        license = f"{_enum(AppliedLicense.Type.Name, t.applied_license.type, '')}"
        license += f" (requested {requested})"
        if t.applied_license.os_license:
            license += f", OS license {t.applied_license.os_license}"
    else:
        license = f"requested {requested}; applied: {unknown}"
    return [*cycle, f"boot:     {boot}", f"license:  {license}"]


def _summary(job: CloneJob) -> list[str]:
    lines = [
        f"name:     {job.name}",
        f"state:    {state_name(job)} (since {_time(_field(job, 'state_time'))})",
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
        return duration((step.end_time.ToDatetime(tzinfo=UTC) - start).total_seconds())
    return f"running for {duration((datetime.now(UTC) - start).total_seconds())}"


def _time(ts: Timestamp | None) -> str:
    if ts is None:
        return "-"
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _code_name(code: int) -> str:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return str(status.name)
    return f"CODE_{code}"


def _job_error(job: CloneJob) -> str:
    """`CODE REASON: message` of a failed job."""
    if not job.HasField("error"):
        return "(no error details)"
    code = _code_name(job.error.code)
    reason = _error_reason(job)
    if reason and reason != code:
        return f"{code} {reason}: {job.error.message}"
    return f"{code}: {job.error.message}"


def _error_reason(job: CloneJob) -> str:
    """The ErrorInfo reason of a job's error, else its code; "-" without an error."""
    if not job.HasField("error"):
        return "-"
    from google.rpc import error_details_pb2

    info = error_details_pb2.ErrorInfo()
    for detail in job.error.details:
        if detail.Unpack(info) and info.reason:
            return str(info.reason)
    return _code_name(job.error.code)


def _target(job: CloneJob) -> str:
    """project/zone/instance of a VM job, or the disks of a disks-only one."""
    if job.HasField("compute_engine_target_details"):
        t = job.compute_engine_target_details
        return f"{t.project or '-'}/{t.zone or '-'}/{t.vm_name or '-'}"
    if job.HasField("compute_engine_disks_target_details"):
        count = len(job.compute_engine_disks_target_details.disks)
        return f"disks ({count})" if count else "disks"
    return "-"


def _enum(name: Any, value: int, prefix: str) -> str:
    try:
        return str(name(value)).removeprefix(prefix)
    except ValueError:  # a value added after this client was built
        return str(value)
