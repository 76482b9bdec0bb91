"""Helpers of the end-to-end tests of `clonejob` and `clonejob-server`.

Each command runs as a subprocess of its own, the way an operator runs it. The
server under test is a `client.launcher.ServerProcess` (a real `python -m server`
process), started by a `Fleet`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.launcher import Fleet

REPO = Path(__file__).resolve().parents[2]
ServerPool = Fleet

CLI_TIMEOUT = 60.0


def _script(name: str, module: str) -> list[str]:
    """The installed console script next to sys.executable, else `python -c main()`."""
    installed = Path(sys.executable).with_name(name)
    if installed.exists():
        return [str(installed)]
    return [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())"]


CLONEJOB = _script("clonejob", "client.cli")
CLONEJOB_SERVER = _script("clonejob-server", "server.__main__")


def base_env(**extra: str) -> dict[str, str]:
    """The environment of a command: no colours, a wide console, no CLONEJOB_* leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLONEJOB_")}
    env.update(NO_COLOR="1", COLUMNS="200", TERM="dumb")
    env.update(extra)
    return env


@dataclass(frozen=True)
class Result:
    args: Sequence[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (
            f"$ {' '.join(self.args)}\nexit {self.returncode}\n"
            f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}"
        )


def run(
    command: Sequence[str],
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = CLI_TIMEOUT,
) -> Result:
    full = [*command, *args]
    done = subprocess.run(
        full,
        cwd=REPO,
        env=dict(env) if env is not None else base_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Result(full, done.returncode, done.stdout, done.stderr)


def wait_until(what: str, probe: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll `probe` (which itself waits on another process) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def write_sample_vm(data_dir: Path, name: str, *, disks: int = 2, disk_size: str = "4MiB") -> None:
    """`clonejob-server sample-vm NAME`: a completed replication cycle in `data_dir`."""
    result = run(
        CLONEJOB_SERVER,
        "sample-vm",
        name,
        "--data-dir",
        str(data_dir),
        "--disks",
        str(disks),
        "--disk-size",
        disk_size,
        timeout=120,
    )
    assert result.returncode == 0, result
