"""Helpers of the end-to-end tests of `clonejob` and `clonejob-server`.

Each command runs as a subprocess of its own, the way an operator runs it. The
server under test is the integration tests' `Server` helper (a real
`python -m server` process), loaded from tests/integration/conftest.py under a
module name of its own so that it does not clash with this conftest.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
INTEGRATION = REPO / "tests" / "integration"
if str(INTEGRATION) not in sys.path:
    sys.path.insert(0, str(INTEGRATION))  # for clonejob_rpc, which the helper imports


def _load_integration_conftest() -> ModuleType:
    name = "_clonejob_integration_conftest"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, INTEGRATION / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_helper = _load_integration_conftest()
Server = _helper.Server
ServerPool = _helper.ServerPool
write_sample_vm: Callable[..., Path] = _helper.write_sample_vm

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
