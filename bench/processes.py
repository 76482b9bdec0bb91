"""Server processes for the benchmarks: the real one (`python -m server`) and the
bare baseline, each pinned to the server core, with their RSS and a clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

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


def stop(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL if it does not exit in `timeout` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


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


class ServerProcess:
    """A server started in its own process, serving on 127.0.0.1 at `port`.

    Use as a context manager: the process is always stopped (and killed if it
    does not stop) on exit.
    """

    def __init__(self, argv: Sequence[str], *, workdir: Path, cpus: set[int] | None) -> None:
        self.argv = list(argv)
        self.workdir = workdir
        self.cpus = cpus
        self.port_file = workdir / f"port-{time.monotonic_ns()}"
        self.log_path = workdir / f"{self.port_file.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @classmethod
    def real(
        cls,
        data_dir: Path,
        *,
        workdir: Path,
        cpus: set[int] | None,
        extra: Sequence[str] = (),
    ) -> ServerProcess:
        """`python -m server --listen 127.0.0.1:0 --data-dir DIR --port-file F ...`."""
        argv = [
            PYTHON, "-m", "server", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir),
            "--shutdown-grace", "1", *extra,
        ]  # fmt: skip
        return cls(argv, workdir=workdir, cpus=cpus)

    @classmethod
    def bare(cls, message_file: Path, *, workdir: Path, cpus: set[int] | None) -> ServerProcess:
        """The baseline: bench/baseline_server.py serving pre-built bytes."""
        argv = [PYTHON, "-m", "bench.baseline_server", "--message-file", str(message_file)]
        return cls(argv, workdir=workdir, cpus=cpus)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*self.argv, "--port-file", str(self.port_file)],
                cwd=ROOT,
                # A crash prints the Python stack of every thread into the log.
                env=dict(os.environ, PYTHONFAULTHANDLER="1"),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        # Pinned at once, before the interpreter starts any thread of its own.
        pin(self.proc.pid, self.cpus)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{' '.join(self.argv)} exited with {self.proc.returncode}: {self.log()}"
                    )
                try:
                    text = self.port_file.read_text().strip()
                except FileNotFoundError:
                    text = ""
                if text:
                    self.port = int(text)
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{' '.join(self.argv)} did not start: {self.log()}")
                time.sleep(0.02)  # polling a file another process writes; bounded above
            pin(self.proc.pid, self.cpus)  # and every thread it has started since
        except BaseException:
            self.close()
            raise

    def check_alive(self) -> None:
        """Raise if the server process has died (a crash is a result, not noise)."""
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None:
            raise RuntimeError(
                f"server process exited with {code}"
                f"{' (SIGSEGV)' if code == -11 else ''}; log tail:\n{self.log()}"
            )

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc)
