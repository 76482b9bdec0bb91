"""The README's worked session, run as written: each command of its block, in order,
in a fresh folder beside a link to the checkout's .venv, with the server it starts."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MARK = "<!-- worked-session -->"
PORT = 50051  # the server's default, which the session relies on
COMMAND_TIMEOUT = 120.0


def session_commands() -> list[str]:
    """The block's commands: comments dropped, continued lines joined."""
    text = (REPO / "README.md").read_text()
    assert MARK in text, "the README lost its worked session"
    block = text.split(MARK, 1)[1].lstrip()
    assert block.startswith("```sh\n")
    body = block.removeprefix("```sh\n").split("\n```", 1)[0]
    commands: list[str] = []
    pending = ""
    for line in body.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            commands.append(pending.strip())
            pending = ""
    return commands


def wait_for_port(port: int, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)  # polling another process's port, with a deadline
    raise AssertionError(f"the session's server never listened:\n{log.read_text()}")


def test_readme_worked_session_runs_as_written(tmp_path: Path) -> None:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", PORT)) == 0:
            pytest.fail(f"port {PORT} is taken: the worked session needs it free")
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLONEJOB_")}
    env["HOME"] = str(tmp_path)  # no config file of the machine's user
    server: subprocess.Popen[bytes] | None = None
    outputs: dict[str, subprocess.CompletedProcess[str]] = {}
    try:
        for command in session_commands():
            if command.startswith("export "):
                key, _, value = command.removeprefix("export ").partition("=")
                env[key] = value
                continue
            if command.endswith("&"):
                log = tmp_path / "server.log"
                with log.open("wb") as out:
                    server = subprocess.Popen(
                        shlex.split(command.removesuffix("&")),
                        cwd=tmp_path,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                wait_for_port(PORT, server, log)
                continue
            done = subprocess.run(
                ["bash", "-c", command],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
            )
            outputs[command] = done
            cancel_raced = (
                command.endswith("cancel check-2")
                and done.returncode == 3
                and "CLONE_JOB_FINISHED" in done.stderr
            )  # the README says so: check-2 may have finished before the cancel came
            watched_end = command.endswith("watch check-2") and done.returncode in (0, 2)
            if not (cancel_raced or watched_end):
                assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    by_end = {command.rsplit(" ", 1)[-1]: done for command, done in outputs.items()}
    validated = next(d for c, d in outputs.items() if c.endswith("--validate-only"))
    assert "nothing was created" in validated.stdout
    assert re.search(r"^cycle:\s+1$", validated.stdout, re.M)
    watched = next(d for c, d in outputs.items() if c.endswith("--watch"))
    assert "clone job check-1  SUCCEEDED" in watched.stdout
    assert "cycle     replication cycle 1" in watched.stdout
    assert re.search(r"^state:\s+SUCCEEDED", by_end["check-1"].stdout, re.M)
    listed = by_end["list"].stdout
    assert re.search(r"^check-1\s+SUCCEEDED\s+acme/us-central1-a/web-1-check", listed, re.M)
    across = next(d for c, d in outputs.items() if "migratingVms/-" in c).stdout
    assert "web-1/check-1" in across
    final = by_end["check-2"]  # the watch of check-2: CANCELLED, or SUCCEEDED if it won
    assert re.search(r"clone job check-2  (CANCELLED|SUCCEEDED)", final.stdout), final
