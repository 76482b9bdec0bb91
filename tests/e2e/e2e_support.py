"""Helpers of the end-to-end tests of `clonejob` and `clonejob-server`.

Each command runs as a subprocess of its own, the way an operator runs it. The
server under test is a `client.launcher.ServerProcess` (a real `python -m server`
process), started by a `Fleet`.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import struct
import subprocess
import sys
import termios
import threading
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


def closed_port() -> int:
    """A port of 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


# --- a real terminal ---------------------------------------------------------

# CSI sequences (colours, cursor moves, erase), OSC sequences, and lone carriage returns.
_ESCAPES = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\r(?!\n)")
# Rich's live display goes back to its first line before each redraw (erase, up, ...)
# and when it ends (up, erase, ...): what follows is a new frame.
_REDRAW = re.compile(rb"\r(?:\x1b\[2K\x1b\[1A)*\x1b\[2K|\r(?:\x1b\[1A\x1b\[2K)+")
_SGR = re.compile(rb"\x1b\[([0-9;]*)m")


def plain(raw: bytes) -> str:
    """What `raw` shows, escape codes left out."""
    return _ESCAPES.sub(b"", raw).decode(errors="replace").replace("\r\n", "\n")


def _frames(raw: bytes) -> list[str]:
    return [plain(part) for part in _REDRAW.split(raw)]


def colour_codes(raw: bytes) -> list[str]:
    """The SGR colour parameters in `raw` (30-37, 90-97, 38;…): empty when nothing is coloured."""
    found = []
    for match in _SGR.finditer(raw):
        params = match.group(1).decode().split(";")
        for i, param in enumerate(params):
            if param.isdigit() and (30 <= int(param) <= 37 or 90 <= int(param) <= 97):
                found.append(param)
            elif param == "38" and i + 1 < len(params):
                found.append(";".join(params[i:]))
                break
    return found


class Terminal:
    """A command on a pseudo-terminal of its own (COLUMNS x LINES), as a person runs it.

    A thread reads everything it writes; `wait_for` waits until a whole frame of
    the output (a redraw of a live display, or the text after the last one)
    matches, without polling: the reader wakes the waiters. A live display
    redraws several times a second, so each frame is soon followed by the next.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str],
        columns: int = 160,
        lines: int = 40,
    ) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        self.args = list(command)
        self._master = master
        self._raw = bytearray()
        self._changed = threading.Condition()
        self._eof = False
        try:
            self.process = subprocess.Popen(
                self.args,
                cwd=REPO,
                env={**env, "COLUMNS": str(columns), "LINES": str(lines)},
                stdin=slave,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
            )
        finally:
            os.close(slave)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO: every holder of the terminal's other side is gone
                chunk = b""
            with self._changed:
                if not chunk:
                    self._eof = True
                    self._changed.notify_all()
                    return
                self._raw += chunk
                self._changed.notify_all()

    @property
    def raw(self) -> bytes:
        with self._changed:
            return bytes(self._raw)

    def frames(self, since: int = 0) -> list[str]:
        """Each redraw written after byte `since`, as text."""
        return _frames(self.raw[since:])

    def wait_for(
        self, pattern: str, *, unless: str | None = None, since: int = 0, timeout: float = 30.0
    ) -> tuple[str, int]:
        """The first frame after byte `since` that matches the regex `pattern` (and not
        `unless`), and the byte offset where the output stood when it was found."""
        regex = re.compile(pattern, re.M)
        exclude = re.compile(unless, re.M) if unless is not None else None
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                frames = _frames(bytes(self._raw[since:]))
                # The last frame may be half written until the next redraw (or the end).
                for frame in frames if self._eof else frames[:-1]:
                    if regex.search(frame) and not (exclude and exclude.search(frame)):
                        return frame, len(self._raw)
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    raise AssertionError(
                        f"no frame matching {pattern!r} in {timeout} s; the terminal shows:\n"
                        + plain(bytes(self._raw[since:]))[-4000:]
                    )
                self._changed.wait(left)

    def finish(self, timeout: float = 60.0) -> int:
        """Wait for the command to exit and for its last output; its exit code."""
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=10)
        os.close(self._master)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"$ {' '.join(self.args)}\n{plain(self.raw)[-6000:]}"
