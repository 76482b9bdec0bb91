"""`python -m server` in a process of its own: the one launcher of tests, benches and the demo.

A client of the server, not a part of it: nothing under server/ imports this
module. Options become flags (`max_concurrent_jobs=0` → `--max-concurrent-jobs 0`,
`True` → a bare flag, `None` or `False` → left out), so a new server flag needs
no change here. Each start logs the process's stdout and stderr to
`run_dir/server-N.log`; the port file, and the fault plan when there is one,
live in `run_dir` too. The process gets the caller's environment without any
CLONEJOB_* variable (the options are the whole configuration), plus `env`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc

from clonejob_grpc import clone_job_service_pb2_grpc as spb_grpc

# Where `python -m server` finds this very package.
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LISTEN = "127.0.0.1:0"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
_POLL_INTERVAL = 0.02
_READY_POLL = 0.1  # between checks that the process still runs
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})
# The start line of server/app.py: "... metrics http://HOST:PORT/metrics".
_METRICS_URL = re.compile(r"metrics http://\S+:(\d+)/metrics")
# Arguments of ServerProcess that are not server flags of their own.
_SETTINGS = frozenset({"tls", "fault_plan", "env", "extra_args"})


class ServerStartError(RuntimeError):
    """The server exited at start, or did not serve within the timeout."""

    def __init__(self, reason: str, *, returncode: int | None, log: str) -> None:
        super().__init__(f"{reason}:\n{log}")
        self.reason = reason
        self.returncode = returncode  # None: it did not exit by itself (it was killed)
        self.log = log


class ServerStopError(RuntimeError):
    """The server did not exit within the timeout after SIGTERM; it was killed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    """A TLS server and how the launcher's own channels reach it.

    `cert`/`key` are the server's; `client_ca` makes it require client
    certificates (mutual TLS). `ca` is what channels trust, `client_cert` and
    `client_key` what they present.
    """

    cert: Path
    key: Path
    ca: Path
    client_ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    def args(self) -> list[str]:
        """The server's TLS flags."""
        args = ["--tls-cert", str(self.cert), "--tls-key", str(self.key)]
        if self.client_ca is not None:
            args += ["--tls-client-ca", str(self.client_ca)]
        return args

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials trusting `ca`, with the client certificate if there is one."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.client_key.read_bytes() if self.client_key else None,
            certificate_chain=self.client_cert.read_bytes() if self.client_cert else None,
        )


def flags(options: Mapping[str, Any]) -> list[str]:
    """`{"max_watches": 1, "insecure": True, "store": None}` → `--max-watches 1 --insecure`."""
    args: list[str] = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return args


class ServerProcess:
    """One server process on `data_dir`, restartable; `listen` defaults to 127.0.0.1:0.

    Also a context manager: `with ServerProcess(...) as server:` starts it and
    kills it on exit.
    """

    def __init__(
        self,
        data_dir: Path,
        run_dir: Path,
        *,
        store: str | None = None,
        tls: TlsConfig | None = None,
        tokens_file: Path | None = None,
        fault_plan: Sequence[Mapping[str, Any]] | None = None,
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        **options: Any,
    ) -> None:
        self.data_dir = data_dir
        self.run_dir = run_dir
        self.tls = tls
        self.fault_plan = fault_plan
        self.env: Mapping[str, str] = dict(env or {})
        self.extra_args: Sequence[str] = tuple(extra_args)
        self.options: dict[str, Any] = {
            "listen": DEFAULT_LISTEN,
            "store": store,
            "tokens_file": tokens_file,
            **options,
        }
        self.port = 0
        self.logs: list[Path] = []  # one per start
        self._process: subprocess.Popen[bytes] | None = None
        self._channel: grpc.Channel | None = None
        self._paused = False
        self._metrics_port: int | None = None
        self._exit_note = ""

    # -- what it is ---------------------------------------------------------------

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The running process (None before start and after stop or kill)."""
        return self._process

    @property
    def pid(self) -> int:
        return self._running().pid

    @property
    def address(self) -> str:
        """HOST:PORT to connect to (127.0.0.1 for a wildcard listen address)."""
        host = str(self.options["listen"]).rpartition(":")[0]
        return f"{'127.0.0.1' if host in _WILDCARD_HOSTS else host}:{self.port}"

    @property
    def port_file(self) -> Path:
        return self.run_dir / "port"

    @property
    def log_path(self) -> Path:
        """The log of the latest start."""
        if not self.logs:
            raise RuntimeError("never started")
        return self.logs[-1]

    @property
    def targets(self) -> Path:
        """Where the local target writes its disks and instances."""
        return self.data_dir / "targets"

    @property
    def metrics_port(self) -> int | None:
        """The /metrics port of the latest start (read from its start line); None without
        `metrics_listen`."""
        if self.options.get("metrics_listen") is None or not self.logs:
            return None
        if self._metrics_port is None:
            found = _METRICS_URL.search(self.log_path.read_text(errors="replace"))
            self._metrics_port = int(found.group(1)) if found else None
        return self._metrics_port

    def command(self) -> list[str]:
        """The command line of the next start."""
        args = [sys.executable, "-m", "server", "--listen", str(self.options["listen"])]
        args += ["--data-dir", str(self.data_dir), "--port-file", str(self.port_file)]
        if self.tls is not None:
            args += self.tls.args()
        if self.fault_plan is not None:
            args += ["--fault-plan", str(self._next_plan_file())]
        options = {k: v for k, v in self.options.items() if k != "listen"}
        return [*args, *flags(options), *self.extra_args]

    # -- its life -----------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> Self:
        """Start, and return once the port file is written and a channel is ready."""
        if self._process is not None:
            raise RuntimeError("already running")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.port_file.unlink(missing_ok=True)
        log = self.run_dir / f"server-{len(self.logs)}.log"
        if self.fault_plan is not None:
            self._next_plan_file().write_text(json.dumps({"faults": list(self.fault_plan)}))
        command = self.command()
        self.logs.append(log)
        self._metrics_port = None
        environment = {k: v for k, v in os.environ.items() if not k.startswith("CLONEJOB_")}
        environment["PYTHONFAULTHANDLER"] = "1"  # a crash shows its stacks in the log
        environment.update(self.env)
        with log.open("wb") as out:
            self._process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_until_serving(time.monotonic() + timeout)
        except BaseException:
            self.close()  # interrupted: no process is left behind
            raise
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM (the graceful stop); the exit code."""
        process = self._running()
        self.resume()  # a stopped process cannot act on SIGTERM
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise ServerStopError(
                f"no exit {timeout} s after SIGTERM; killed:\n{self.log_text()}"
            ) from None
        finally:
            self._ended()

    def kill(self) -> int:
        """SIGKILL (a crash); the exit code."""
        process = self._running()
        process.send_signal(signal.SIGKILL)
        try:
            return process.wait(timeout=STOP_TIMEOUT)
        finally:
            self._ended()

    def pause(self) -> None:
        """SIGSTOP: the process stays, unresponsive, until `resume()`."""
        self._running().send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after `pause()`."""
        if self._paused:
            self._running().send_signal(signal.SIGCONT)
            self._paused = False

    def restart(self, **changes: Any) -> Self:
        """Stop if running, apply `changes` (any argument of the constructor but the
        directories), and start again on the same data directory."""
        if self._process is not None:
            self.stop()
        for key, value in changes.items():
            if key in _SETTINGS:
                setattr(self, key, value)
            else:
                self.options[key] = value
        return self.start()

    def close(self) -> None:
        """Kill the process if it still runs (teardown)."""
        if self._process is not None:
            code = self._process.poll()
            if code is not None:
                self._exit_note = f"--- it had exited by itself with {code}"
            self.resume()
            self.kill()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- talking to it ------------------------------------------------------------

    def channel(self) -> grpc.Channel:
        """A new channel with the server's credentials (the caller closes it)."""
        if not self.port:
            raise RuntimeError("never started")
        if self.tls is None:
            return grpc.insecure_channel(self.address)
        return grpc.secure_channel(self.address, self.tls.credentials())

    def stub(self) -> spb_grpc.CloneJobServiceStub:
        """A stub on the channel kept for this run of the process."""
        if self._channel is None:
            raise RuntimeError("not running")
        return spb_grpc.CloneJobServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def log_text(self) -> str:
        """Every start's log, each under a `--- server-N.log` line."""
        parts = [f"--- {p.name}\n{p.read_text(errors='replace')}" for p in self.logs if p.exists()]
        return "\n".join([*parts, self._exit_note] if self._exit_note else parts)

    # -- inside ---------------------------------------------------------------------

    def _next_plan_file(self) -> Path:
        return self.run_dir / f"faults-{len(self.logs)}.json"

    def _running(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError("not running")
        return self._process

    def _wait_until_serving(self, deadline: float) -> None:
        # Polling with a deadline is the one way to wait for another process to start;
        # the server writes the port file (atomically) once it serves.
        while not self.port_file.exists():
            self._check_starting(deadline, "no port file")
            time.sleep(_POLL_INTERVAL)
        self.port = int(self.port_file.read_text())
        self._channel = self.channel()
        ready = grpc.channel_ready_future(self._channel)
        while True:
            try:
                ready.result(timeout=_READY_POLL)
                return
            except grpc.FutureTimeoutError:
                self._check_starting(deadline, "no ready channel")

    def _check_starting(self, deadline: float, waiting_for: str) -> None:
        process = self._running()
        code = process.poll()
        if code is not None:
            self._ended()
            raise ServerStartError(
                f"server exited with {code} at start", returncode=code, log=self._last_log()
            )
        if time.monotonic() > deadline:
            self.kill()
            raise ServerStartError(
                f"{waiting_for} in time: killed", returncode=None, log=self._last_log()
            )

    def _last_log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _ended(self) -> None:
        self._process = None
        self._paused = False
        if self._channel is not None:
            self._channel.close()
            self._channel = None


class Fleet:
    """Server processes of one test or run, each with a run directory of its own under
    `run_dir`; `close()` kills every one still running and prints their logs to stderr."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.servers: list[ServerProcess] = []

    def add(self, data_dir: Path, **arguments: Any) -> ServerProcess:
        """A server (not started) on `data_dir`, which is made if missing."""
        run_dir = self.run_dir / f"server{len(self.servers)}"
        run_dir.mkdir(parents=True)
        data_dir.mkdir(parents=True, exist_ok=True)
        server = ServerProcess(data_dir, run_dir, **arguments)
        self.servers.append(server)
        return server

    def start(self, data_dir: Path, **arguments: Any) -> ServerProcess:
        """`add(...)`, started."""
        return self.add(data_dir, **arguments).start()

    def replicas(
        self, count: int, data_dir: Path, *, store: str | None = None, **arguments: Any
    ) -> list[ServerProcess]:
        """`count` started servers on one data directory and one store, each on its own
        port (a shared store: SQLite lets one server at a time use a data directory)."""
        return [self.start(data_dir, store=store, **arguments) for _ in range(count)]

    def close(self) -> None:
        for server in self.servers:
            server.close()
            if server.logs:
                print(server.log_text(), file=sys.stderr)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
