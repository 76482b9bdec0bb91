"""A real clonejob server process on 127.0.0.1:0, and the fixtures that start it.

Every server runs as `python -m server` in its own process, on its own data
directory; its stderr goes to a log file that is printed when the test ends
(pytest shows it only for a failing test).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from clonejob_rpc import VM1

from clonejob_grpc import clone_job_service_pb2_grpc as spb_grpc

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


def write_sample_vm(
    data_dir: Path,
    name: str = VM1,
    *,
    disks: int = 2,
    disk_size: str = "4MiB",
    bios: bool = False,
) -> Path:
    """Write a completed replication cycle with `python -m server sample-vm`; its folder."""
    args = [sys.executable, "-m", "server", "sample-vm", name, "--data-dir", str(data_dir)]
    args += ["--disks", str(disks), "--disk-size", disk_size]
    if bios:
        args.append("--bios")
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    cycles = data_dir / "snapshots" / name / "cycles"
    return cycles / str(max(int(p.name) for p in cycles.iterdir() if p.name.isdigit()))


class ServerStartError(Exception):
    """The server process exited or did not write its port in time."""


class Server:
    """One server process, restartable on the same data directory.

    `options` are the command-line options (fault_plan: a list of fault dicts,
    heartbeat_interval, max_concurrent_jobs, shutdown_grace); `restart(**changes)`
    changes some of them, e.g. `restart(fault_plan=None)`.
    """

    def __init__(self, data_dir: Path, run_dir: Path, **options: Any) -> None:
        self.data_dir = data_dir
        self.run_dir = run_dir
        self.options: dict[str, Any] = options
        self.port = 0
        self.logs: list[Path] = []
        self.process: subprocess.Popen[bytes] | None = None
        self._channel: grpc.Channel | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def targets(self) -> Path:
        return self.data_dir / "targets"

    def _args(self, port_file: Path) -> list[str]:
        args = [sys.executable, "-m", "server", "--listen", "127.0.0.1:0"]
        args += ["--data-dir", str(self.data_dir), "--port-file", str(port_file)]
        plan: Sequence[Mapping[str, str]] | None = self.options.get("fault_plan")
        if plan is not None:
            plan_file = self.run_dir / f"faults-{len(self.logs)}.json"
            plan_file.write_text(json.dumps({"faults": list(plan)}))
            args += ["--fault-plan", str(plan_file)]
        for key in (
            "heartbeat_interval",
            "max_concurrent_jobs",
            "shutdown_grace",
            "revision_retention",
        ):
            if self.options.get(key) is not None:
                args += ["--" + key.replace("_", "-"), str(self.options[key])]
        return args

    def start(self) -> Server:
        assert self.process is None, "already running"
        port_file = self.run_dir / "port"
        port_file.unlink(missing_ok=True)
        log = self.run_dir / f"server-{len(self.logs)}.log"
        args = self._args(port_file)
        self.logs.append(log)
        with log.open("wb") as err:
            self.process = subprocess.Popen(
                args, cwd=REPO, stdin=subprocess.DEVNULL, stdout=err, stderr=err
            )
        # Polling with a deadline is the one way to wait for another process to start.
        deadline = time.monotonic() + START_TIMEOUT
        while not port_file.exists():
            code = self.process.poll()
            if code is not None:
                self.process = None
                raise ServerStartError(f"server exited with {code} at start:\n{log.read_text()}")
            if time.monotonic() > deadline:
                self.kill()
                raise ServerStartError(f"no port after {START_TIMEOUT} s:\n{log.read_text()}")
            time.sleep(0.02)
        self.port = int(port_file.read_text())
        self._channel = grpc.insecure_channel(self.address)
        grpc.channel_ready_future(self._channel).result(timeout=START_TIMEOUT)
        return self

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _wait(self) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        finally:
            self.process = None
            self._close_channel()

    def stop(self) -> int:
        """SIGTERM (graceful stop); the exit code."""
        assert self.process is not None, "not running"
        self.process.send_signal(signal.SIGTERM)
        return self._wait()

    def kill(self) -> int:
        """SIGKILL: a crash."""
        assert self.process is not None, "not running"
        self.process.send_signal(signal.SIGKILL)
        return self._wait()

    def restart(self, **changes: Any) -> Server:
        """Start again on the same data directory (after stop or kill)."""
        if self.process is not None:
            self.stop()
        self.options.update(changes)
        return self.start()

    def stub(self) -> spb_grpc.CloneJobServiceStub:
        assert self._channel is not None, "not running"
        return spb_grpc.CloneJobServiceStub(self._channel)

    def channel(self) -> grpc.Channel:
        """A new channel of the caller's own (the caller closes it)."""
        return grpc.insecure_channel(self.address)

    def close(self) -> None:
        """Kill the process if it still runs (teardown)."""
        if self.process is not None:
            self.kill()
        self._close_channel()

    def log_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in self.logs)


class ServerPool:
    """Starts servers, and kills and reports every one of them at teardown."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.servers: list[Server] = []

    def start(self, data_dir: Path, **options: Any) -> Server:
        run_dir = self.run_dir / f"server{len(self.servers)}"
        run_dir.mkdir()
        data_dir.mkdir(parents=True, exist_ok=True)
        server = Server(data_dir, run_dir, **options)
        self.servers.append(server)
        return server.start()

    def close(self) -> None:
        for server in self.servers:
            server.close()
            if server.logs:
                print(server.log_text(), file=sys.stderr)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    """Servers for one test; their logs live outside the test's tmp_path."""
    pool = ServerPool(tmp_path_factory.mktemp("run"))
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def module_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    pool = ServerPool(tmp_path_factory.mktemp("run"))
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def sample_vm() -> Callable[..., Path]:
    """`sample_vm(data_dir, name=VM1, disks=2, disk_size="4MiB", bios=False)`."""
    return write_sample_vm


@pytest.fixture
def server(servers: ServerPool, data_dir: Path) -> Server:
    """A plain server with the sample VM `vm1` (two 4 MiB EFI disks)."""
    write_sample_vm(data_dir)
    return servers.start(data_dir)
