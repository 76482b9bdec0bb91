"""`python -m bench [--quick] [--only NAME[,NAME]]`: run the benchmarks, print a table
of ratios against same-run baselines, write bench/results/latest.json."""

from __future__ import annotations

import argparse
import array
import fcntl
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench.figures import BENCHMARKS, OPTIONAL, Figure, Run, cpu_plan

RESULTS = Path(__file__).resolve().parent / "results"
# "memory" is measured during the watch run, so both names run the watch module;
# bench/pg_drivers.py is a program of its own, whose figures another module reports.
MODULES = {"memory": "watch", "pg_drivers": "pg_driver_figures"}
# linux/fs.h: the inode flags' ioctls, and "top of directory hierarchies" (chattr +T).
_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_TOPDIR_FL = 0x00020000


def machine() -> dict[str, Any]:
    import grpc

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "kernel": platform.release(),
        "git_commit": commit,
    }


def _fresh_block_groups(folder: Path) -> bool:
    """Mark `folder` a top of directory hierarchy (chattr +T), so that ext2/3/4 put
    each folder made in it in a block group of its own choosing (Orlov), away from
    the parent's; whether that could be set (other filesystems have no such flag).

    Why: ext4 without a journal (this machine's root) never reuses an inode freed
    in the last minute or more, and finds that out one freed inode at a time, on
    every file it creates in that group. After a few thousand deletions nearby (the
    test suite, an earlier bench run's cleanup) a new file was measured at 170-560 us
    of CPU instead of 15 us, which made a VM clone job cost twice what the service
    spends on it. Folders of their own take the benchmarks out of that history."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags, True)
        flags[0] |= _FS_TOPDIR_FL
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, flags)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def table(figures: list[Figure]) -> str:
    header = ("benchmark", "figure", "measured", "baseline", "unit", "ratio", "goal", "met?")
    rows = [header]
    for f in figures:
        ratio = f.ratio
        met = {True: "yes", False: "NO", None: "-"}[f.met]
        rows.append(
            (
                f.benchmark,
                f.name,
                _fmt(f.measured),
                _fmt(f.baseline),
                f.unit,
                "-" if ratio is None else f"{ratio:.2f}x",
                f.goal_text,
                met,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"  {f.benchmark} / {f.name}: {f.note}" for f in figures if f.note]
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a much smaller run")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run only these benchmarks (repeat or comma-separate):"
        f" {', '.join(BENCHMARKS)}; or, never run unless named, {', '.join(OPTIONAL)}",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample the real server with py-spy while get, job_cost, create, watch and"
        " pg_store measure, and print each profiled figure's top functions; stacks go to DIR"
        " (the figures then carry the sampler's overhead)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    chosen = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
    known = BENCHMARKS + OPTIONAL
    unknown = [n for n in chosen if n not in known]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(known)}")
    modules: list[str] = []
    for name in known:
        module = MODULES.get(name, name)
        wanted = name in chosen if chosen else name not in OPTIONAL
        if wanted and module not in modules:
            modules.append(module)

    info = machine()
    server_cpus, load_cpus = cpu_plan()
    print(
        f"machine: {info['nproc']} cpus ({info['cpu_model']}), python {info['python']},"
        f" grpcio {info['grpcio']}; server on cpus {sorted(server_cpus or [])},"
        f" load generator on {sorted(load_cpus or [])}"
        + ("" if server_cpus else " (fewer than 2 cpus: not pinned)"),
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="clonejob-bench-"))
    info["fresh_block_groups"] = _fresh_block_groups(workdir)
    run = Run(
        quick=args.quick,
        workdir=workdir,
        server_cpus=server_cpus,
        load_cpus=load_cpus,
        profile_dir=args.profile.resolve() if args.profile else None,
    )
    figures: list[Figure] = []
    timings: dict[str, float] = {}
    failures: dict[str, str] = {}
    started = time.monotonic()
    try:
        for module_name in modules:
            print(f"running {module_name} ...", flush=True)
            t = time.monotonic()
            try:
                module = importlib.import_module(f"bench.{module_name}")
                got = module.run(run)
            except Exception as error:
                failures[module_name] = "".join(traceback.format_exception(error))[-4000:]
                print(f"  {module_name} FAILED: {error}", file=sys.stderr, flush=True)
                got = []
            timings[module_name] = time.monotonic() - t
            figures.extend(got)
            print(f"  {module_name}: {timings[module_name]:.1f} s", flush=True)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    total = time.monotonic() - started
    print()
    print(table(figures))
    print()
    print(f"total {total:.1f} s ({'quick' if args.quick else 'full'} run);", end=" ")
    print(", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    if run.profile_dir is not None:
        from bench import profiles

        for profile in run.profiles:
            print()
            print(profiles.text(profile.summary, profile.label))
    for name, text in failures.items():
        print(f"\n{name} failed:\n{text}", file=sys.stderr)
    RESULTS.mkdir(exist_ok=True)
    out = {
        "quick": args.quick,
        "only": chosen,
        "machine": info,
        "cpus": {"server": sorted(server_cpus or []), "load_generator": sorted(load_cpus or [])},
        "total_s": total,
        "timings_s": timings,
        "figures": [f.to_json() for f in figures],
        "failures": failures,
        "details": run.details,
        "profiles": {p.label: p.summary for p in run.profiles if p.summary},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = RESULTS / "latest.json"
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
