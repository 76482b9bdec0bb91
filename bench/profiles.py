"""CPU profiles of the real server during a benchmark (`python -m bench --profile DIR`).

py-spy samples the server process (nonblocking, so it does not pause it; only
samples holding the GIL, i.e. Python work on the one server core) while the load
generator runs; time in grpc's Cython layer shows as `Handle._run` (py-spy
cannot see into it without --native, which must pause the process). The
collapsed stacks are kept in DIR and summarised as the functions with the most
samples, on their own (self) and with what they call
(inclusive). Figures measured while profiled carry the sampler's overhead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

TOP = 15
# Frames on (nearly) every stack: the event loop, thread and interpreter plumbing.
# Left out of the inclusive list so that it shows where the time goes.
PLUMBING = (
    "asyncio/runners.py", "asyncio/base_events.py", "asyncio/events.py", "<frozen runpy>",
    "threading.py", "concurrent/futures/thread.py", "(server/__main__.py", "<module>",
)  # fmt: skip
ROOT = Path(__file__).resolve().parent.parent
_STDLIB = re.compile(r"^.*/lib/python3\.\d+/")


def py_spy() -> str | None:
    candidate = Path(sys.executable).with_name("py-spy")
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def profiled(run: Any, label: str, pid: int, seconds: float) -> Profile:
    """A Profile when the run asked for profiles (--profile), else one that does nothing."""
    profile = Profile(run.profile_dir, label, pid, seconds)
    run.profiles.append(profile)
    return profile


class Profile:
    """`with Profile(dir, label, pid, seconds):` samples `pid` for `seconds`."""

    def __init__(self, folder: Path | None, label: str, pid: int, seconds: float) -> None:
        self.folder = folder
        self.label = label
        self.pid = pid
        self.seconds = seconds
        self.proc: subprocess.Popen[bytes] | None = None
        self.summary: dict[str, Any] | None = None
        self.path = folder / f"{label}.collapsed.txt" if folder else None

    def __enter__(self) -> Profile:
        tool = py_spy()
        if self.folder is None or tool is None or self.path is None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        seconds = str(max(1, round(self.seconds)))
        self.proc = subprocess.Popen(
            [
                tool, "record", "--pid", str(self.pid), "--duration", seconds,
                "--rate", "200", "--format", "raw", "--function", "--nonblocking", "--gil",
                "--output", str(self.path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(self.seconds + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if self.path is not None and self.path.exists():
            self.summary = summarise(self.path)


def summarise(path: Path, top: int = TOP) -> dict[str, Any]:
    """Top functions by self and inclusive samples from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            if not any(p in frame for p in PLUMBING):
                inclusive[frame] += count
    return {
        "samples": total,
        "file": str(path),
        "self": [(f, round(100 * n / total, 1)) for f, n in own.most_common(top)] if total else [],
        "inclusive": [(f, round(100 * n / total, 1)) for f, n in inclusive.most_common(top)]
        if total
        else [],
    }


def _short(frame: str) -> str:
    """`fn (/long/path/pkg/mod.py:12)` -> `fn (pkg/mod.py:12)`."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("/site-packages/", f"{ROOT}/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    else:  # the standard library: /…/lib/python3.11/asyncio/x.py -> asyncio/x.py
        where = _STDLIB.sub("", where)
    return f"{name} ({where})" if where else name


def text(summary: dict[str, Any] | None, label: str) -> str:
    if not summary:
        return f"{label}: no profile"
    lines = [f"{label}: {summary['samples']} samples ({summary['file']})", "  self:"]
    lines += [f"    {pct:5.1f}%  {f}" for f, pct in summary["self"]]
    lines.append("  inclusive:")
    lines += [f"    {pct:5.1f}%  {f}" for f, pct in summary["inclusive"]]
    return "\n".join(lines)
