"""Where `python -m bench` puts its files: folders that ext4 does not place among
the inodes an earlier run (or anything else) deleted a moment ago."""

from __future__ import annotations

import array
import fcntl
import os
from pathlib import Path

from bench import __main__ as bench_main
from bench.figures import Run


def _run(workdir: Path) -> Run:
    return Run(quick=True, workdir=workdir, server_cpus=None, load_cpus=None)


def test_a_runs_folders_are_named_for_that_run(tmp_path: Path) -> None:
    first, second = _run(tmp_path), _run(tmp_path)

    a = first.tmpdir("job_cost/vm-0")
    b = second.tmpdir("job_cost/vm-0")

    assert a.is_dir() and b.is_dir() and a != b
    for run, path in ((first, a), (second, b)):
        assert path.relative_to(tmp_path).parts == (f"job_cost.{run.tag}", "vm-0")
    # The same name within one run is the same folder.
    assert first.tmpdir("job_cost") == a.parent


def test_the_work_folder_is_a_top_of_directory_hierarchies_where_the_filesystem_has_one(
    tmp_path: Path,
) -> None:
    marked = bench_main._fresh_block_groups(tmp_path)

    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = array.array("i", [0])
        try:
            fcntl.ioctl(fd, bench_main._FS_IOC_GETFLAGS, flags, True)
        except OSError:  # a filesystem without inode flags: nothing to set
            assert not marked
            return
    finally:
        os.close(fd)
    # ext2/3/4 keep it (`chattr +T`, as `lsattr -d` shows); others may refuse it.
    assert marked == bool(flags[0] & bench_main._FS_TOPDIR_FL)
