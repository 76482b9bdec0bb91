"""Start-up of the `clonejob` CLI: `clonejob --help`, and `clonejob get NAME` against
the real server, each as a fresh process, against `python -c pass` (the same
interpreter, the same environment) measured in the same rounds.

The figures are medians of wall times over alternating rounds, so that noise on
a shared machine hits the baseline and the commands alike; byte code is cached,
as in an installation. `get` pays for one real call to a local server, a few
milliseconds of the total.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import fixtures, processes
from bench.figures import Figure, Run
from bench.processes import sample_vm

PYTHON = sys.executable


def _clonejob() -> list[str]:
    """The installed console script next to the interpreter, else the same entry point."""
    script = Path(PYTHON).with_name("clonejob")
    if script.exists():
        return [str(script)]
    return [PYTHON, "-c", "import sys; from client.cli import main; sys.exit(main())"]


def _env(pycache: Path) -> dict[str, str]:
    """The environment of every run. Byte code is cached (in the run's own folder):
    a user's installation has its .pyc files, and compiling every module at each
    start (PYTHONDONTWRITEBYTECODE) would measure the compiler instead."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLONEJOB_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(CLONEJOB_CONFIG=os.devnull, NO_COLOR="1", PYTHONPYCACHEPREFIX=str(pycache))
    return env


def _seconds(argv: Sequence[str], env: dict[str, str], cpus: set[int] | None) -> float:
    """Wall time of one run of `argv`, which must succeed."""
    # The child inherits this process's pinning. Not set in a preexec_fn: that
    # makes Python fork instead of vfork, and the fork handlers of the grpc this
    # process has loaded once aborted the child (epoll_wait: bad file descriptor).
    with fixtures.pinned(cpus):
        started = time.perf_counter()
        result = subprocess.run(
            list(argv),
            env=env,
            cwd=processes.ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
            timeout=60,
        )
        took = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr!r}")
    return took


def run(run: Run) -> list[Figure]:
    work = run.tmpdir("cli_startup")
    data = work / "data"
    sample_vm(data, fixtures.PARENT)
    name = fixtures.job_name("startup-1")
    rounds = run.scale(20, 5)
    env = _env(work / "pycache")
    cli = _clonejob()
    times: dict[str, list[float]] = {"baseline": [], "help": [], "get": []}
    with processes.real(data, workdir=work, cpus=run.server_cpus) as server:
        fixtures.create(server.address, "startup-1")
        fixtures.wait_state(server.address, name, {fixtures.State.SUCCEEDED})
        commands = {
            "baseline": [PYTHON, "-c", "pass"],
            "help": [*cli, "--help"],
            "get": [*cli, "--server", server.address, "get", name],
        }
        for argv in commands.values():  # write the .pyc files, warm the page cache
            _seconds(argv, env, run.load_cpus)
        for _ in range(rounds):
            for key, argv in commands.items():
                times[key].append(_seconds(argv, env, run.load_cpus))
    ms = {key: statistics.median(values) * 1000 for key, values in times.items()}
    run.details["cli_startup"] = {
        "rounds": rounds,
        "median_ms": ms,
        "min_ms": {key: min(values) * 1000 for key, values in times.items()},
    }
    note = f"median wall time of {rounds} fresh processes each, alternating with the baseline"
    figures: list[dict[str, Any]] = [
        {"name": "clonejob --help start-up", "key": "help", "goal": 3.0, "note": note},
        {
            "name": "clonejob get start-up",
            "key": "get",
            "goal": 8.0,
            "note": "one GetCloneJob against the real server on 127.0.0.1 included",
        },
    ]
    return [
        Figure(
            benchmark="cli_startup",
            name=f["name"],
            measured=ms[f["key"]],
            baseline=ms["baseline"],
            unit="ms",
            goal=f["goal"],
            higher_is_better=False,
            note=f["note"],
        )
        for f in figures
    ]
