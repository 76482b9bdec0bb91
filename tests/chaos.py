"""The chaos test, longer: `python tests/chaos.py --seconds 600 [--seed N] [--keep]`.

Runs the scenario of tests/integration/test_chaos.py: three replicas on a fresh
PostgreSQL database (on $CLONEJOB_TEST_POSTGRES, default 127.0.0.1:5432, user
postgres) and one temporary data directory, killed, paused, restarted and cut
off from the database at random for `--seconds` while clients create, cancel
and watch jobs; then every job is followed to its end and checked. Prints the
summary and exits 0 when every check holds, 1 otherwise. `--seed` replays a
run's choices (not its timing); `--keep` keeps the data directory and the
server logs (kept anyway when a check fails).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE / "integration")]

from conftest import write_sample_vm  # noqa: E402
from test_chaos import chaos_seed, close_quietly, run_chaos  # noqa: E402
from test_crash import write_sample_vms  # noqa: E402

from client.launcher import Fleet  # noqa: E402
from tests.pg import temporary_database_sync  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="time of chaos (600)")
    parser.add_argument("--seed", type=int, help="the random seed (default: a new one)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    args = parser.parse_args()
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    seed = chaos_seed() if args.seed is None else args.seed
    print(f"chaos: seed={seed} seconds={args.seconds:g}", flush=True)

    root = Path(tempfile.mkdtemp(prefix="clonejob-chaos-"))
    data_dir, run_dir = root / "data", root / "run"
    data_dir.mkdir()
    run_dir.mkdir()
    write_sample_vms(data_dir, write_sample_vm)
    fleet = Fleet(run_dir)
    started = time.monotonic()
    ok = False
    try:
        with temporary_database_sync() as store_url:
            try:
                report = asyncio.run(
                    run_chaos(fleet, data_dir, store_url, seconds=args.seconds, seed=seed)
                )
            finally:
                close_quietly(fleet)  # before the database is dropped
        print(report.details())
        print(report.summary(), flush=True)
        try:
            report.check()
        except AssertionError as error:
            print(f"chaos: FAILED: {error}", file=sys.stderr)
        else:
            ok = True
    except (pytest.skip.Exception, pytest.fail.Exception) as error:  # no PostgreSQL
        print(f"chaos: {error}", file=sys.stderr)
    finally:
        elapsed = time.monotonic() - started
        print(f"chaos: {'passed' if ok else 'FAILED'} in {elapsed:.0f} s", flush=True)
        if args.keep or not ok:
            print(f"chaos: data and server logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
