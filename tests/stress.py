"""The crash test, longer: `python tests/stress.py --kills 200 --seconds 600`.

Runs the scenario of tests/integration/test_crash.py against a real server
process on a temporary data directory: clients create, cancel and watch jobs
while the server is SIGKILLed 0.05 to 0.5 s after each restart, up to `--kills`
times or for `--seconds`, whichever ends first; then every job is followed to
its end and checked. Prints the summary line and exits 0 when every check
holds, 1 otherwise. `--seed` replays a run's choices (not its timing);
`--keep` keeps the data directory and the server logs.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE / "integration")]

from conftest import Server, write_sample_vm  # noqa: E402
from test_crash import FAULT_PLAN, crash_seed, run_crash, write_sample_vms  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200, help="SIGKILLs at most (200)")
    parser.add_argument("--seconds", type=float, default=600.0, help="time for the kills (600)")
    parser.add_argument("--seed", type=int, help="the random seed (default: a new one)")
    parser.add_argument("--workers", type=int, default=3, help="creators and watchers (3 each)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    args = parser.parse_args()
    if args.kills < 1 or args.seconds <= 0 or args.workers < 1:
        parser.error("--kills, --seconds and --workers must be positive")
    seed = crash_seed() if args.seed is None else args.seed
    print(f"stress: seed={seed} kills<={args.kills} seconds<={args.seconds}", flush=True)

    root = Path(tempfile.mkdtemp(prefix="clonejob-stress-"))
    data_dir, run_dir = root / "data", root / "run"
    data_dir.mkdir()
    run_dir.mkdir()
    write_sample_vms(data_dir, write_sample_vm)
    server = Server(
        data_dir, run_dir, fault_plan=FAULT_PLAN, max_concurrent_jobs=4, heartbeat_interval=1
    )
    started = time.monotonic()
    ok = False
    try:
        server.start()
        report = asyncio.run(
            run_crash(
                server, kills=args.kills, seconds=args.seconds, seed=seed, workers=args.workers
            )
        )
        print(report.details())
        print(report.summary(), flush=True)
        try:
            report.check(min_kills=1)
        except AssertionError as error:
            print(f"stress: FAILED: {error}", file=sys.stderr)
        else:
            ok = True
    finally:
        server.close()
        elapsed = time.monotonic() - started
        print(f"stress: {'passed' if ok else 'FAILED'} in {elapsed:.0f} s", flush=True)
        if args.keep or not ok:
            print(f"stress: data and server logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
