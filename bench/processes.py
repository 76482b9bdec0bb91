"""Server processes for the benchmarks, on client.launcher: the real one
(`python -m server`) and the bare baseline, each pinned to the server core, with
their RSS and a clean stop."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from client.launcher import ServerProcess, ServerStopError

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def pin(pid: int, cpus: set[int] | None) -> None:
    """Pin every thread of `pid` to `cpus` (threads made later inherit it)."""
    if not cpus:
        return
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        tids = [pid]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except (ProcessLookupError, PermissionError):
            pass


def rss_bytes(pid: int) -> int:
    """VmRSS of `pid` from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """User + system CPU seconds of each of `pids` so far (from /proc/PID/stat); a process
    that is gone is left out."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, every core (from /proc/stat):
    what everyone on it used, not only the benchmark."""
    with open("/proc/stat") as f:
        # user nice system idle iowait irq softirq steal (guest time is inside user)
        values = [int(v) for v in f.readline().split()[1:9]]
    idle = values[3] + values[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values) - idle) / tick, sum(values) / tick


def strace_available() -> bool:
    """Whether `strace` is here and may trace this user's processes."""
    if shutil.which("strace") is None:
        return False
    probe = subprocess.run(
        ["strace", "-f", "-c", "-o", "/dev/null", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


def run_checked(argv: Sequence[str], *, timeout: float = 60.0) -> str:
    result = subprocess.run(
        list(argv), cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()[-2000:]}")
    return result.stdout


def sample_vm(data_dir: Path, name: str, *, disks: int = 1, disk_size: str = "1MiB") -> None:
    """`python -m server sample-vm NAME --data-dir DIR --disks N --disk-size S`."""
    run_checked(
        [
            PYTHON, "-m", "server", "sample-vm", name,
            "--data-dir", str(data_dir), "--disks", str(disks), "--disk-size", disk_size,
        ]
    )  # fmt: skip


class BaselineServer(ServerProcess):
    """The baseline: bench/baseline_server.py serving pre-built bytes, under the same harness."""

    def __init__(self, message_file: Path, run_dir: Path) -> None:
        super().__init__(message_file.parent, run_dir)
        self.message_file = message_file

    def command(self) -> list[str]:
        return [
            PYTHON, "-m", "bench.baseline_server",
            "--message-file", str(self.message_file), "--port-file", str(self.port_file),
        ]  # fmt: skip


@contextlib.contextmanager
def serving(server: ServerProcess, cpus: set[int] | None) -> Iterator[ServerProcess]:
    """`server` started and pinned to `cpus`; stopped (SIGTERM, else SIGKILL) on exit."""
    try:
        server.start(timeout=START_TIMEOUT)
        # Every thread it has by now; the threads they start later inherit it.
        pin(server.pid, cpus)
        yield server
    finally:
        if server.process is not None:
            with contextlib.suppress(ServerStopError):  # it was killed
                server.stop(timeout=STOP_TIMEOUT)
        server.close()


def real(
    data_dir: Path, *, workdir: Path, cpus: set[int] | None, **options: Any
) -> contextlib.AbstractContextManager[ServerProcess]:
    """`with real(DIR, ...) as server:` the real server on DIR (options: client.launcher's)."""
    run_dir = Path(tempfile.mkdtemp(prefix="real-", dir=workdir))
    return serving(ServerProcess(data_dir, run_dir, shutdown_grace=1, **options), cpus)


@contextlib.contextmanager
def replicas(
    count: int,
    data_dir: Path,
    *,
    store: str,
    workdir: Path,
    cpus: set[int] | None,
    **options: Any,
) -> Iterator[list[ServerProcess]]:
    """`with replicas(N, DIR, store=URL, ...) as servers:` N real servers on one store and
    one data directory, each on its own port, started together and pinned to `cpus`;
    stopped on exit (SIGTERM, else SIGKILL), a killed one left as it is."""
    servers = [
        ServerProcess(
            data_dir,
            Path(tempfile.mkdtemp(prefix="real-", dir=workdir)),
            shutdown_grace=1,
            store=store,
            **options,
        )
        for _ in range(count)
    ]

    def stop(server: ServerProcess) -> None:
        if server.process is not None:
            with contextlib.suppress(ServerStopError):  # it was killed
                server.stop(timeout=STOP_TIMEOUT)
        server.close()

    try:
        # Together: each start is mostly its own imports and connections.
        with ThreadPoolExecutor(max(1, count)) as pool:
            list(pool.map(lambda server: server.start(timeout=START_TIMEOUT), servers))
        for server in servers:
            pin(server.pid, cpus)
        yield servers
    finally:
        with ThreadPoolExecutor(max(1, count)) as pool:
            list(pool.map(stop, servers))


def bare(
    message_file: Path, *, workdir: Path, cpus: set[int] | None
) -> contextlib.AbstractContextManager[ServerProcess]:
    """`with bare(FILE, ...) as server:` the baseline server replying with FILE's bytes."""
    run_dir = Path(tempfile.mkdtemp(prefix="bare-", dir=workdir))
    return serving(BaselineServer(message_file, run_dir), cpus)


def check_alive(server: ServerProcess) -> None:
    """Raise if the server process has died (a crash is a result, not noise)."""
    code = None if server.process is None else server.process.poll()
    if server.process is None or code is not None:
        raise RuntimeError(
            f"server process exited with {code}"
            f"{' (SIGSEGV)' if code == -11 else ''}; log tail:\n{server.log_text()[-3000:]}"
        )
