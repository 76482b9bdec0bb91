"""Disk preparation: server.targets.disk_image.copy_sparse against `cp --sparse=always`.

A full image (random bytes, written once per run) copied by each, twice,
alternating, best of two; neither cache is dropped. copy_sparse fsyncs its
destination, so the cp time includes an fsync of cp's destination too (cp alone
is kept in the details). Then a sparse image (1 GiB with 64 MiB of data, the
server's own sample disk): bytes written (st_blocks * 512) and bytes_copied
against the data in the source.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from bench import fixtures
from bench.figures import Figure, Run
from server.targets import disk_image

MIB = 1024 * 1024


def _write_random(path: Path, size: int) -> None:
    rng = random.Random(20261127)
    with open(path, "wb") as f:
        for _ in range(0, size, 16 * MIB):
            f.write(rng.randbytes(16 * MIB))
        f.flush()
        os.fsync(f.fileno())


def _data_bytes(path: Path) -> int:
    """Bytes in the data extents of `path` (SEEK_DATA / SEEK_HOLE)."""
    size = path.stat().st_size
    total = 0
    with open(path, "rb") as f:
        fd = f.fileno()
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            total += min(end, size) - start
            pos = end
    return total


def _copy_sparse(src: Path, dst: Path) -> tuple[float, disk_image.CopyResult]:
    dst.unlink(missing_ok=True)
    start = time.perf_counter()
    result = disk_image.copy_sparse(
        src, dst, on_progress=lambda done, total: None, cancelled=threading.Event()
    )
    return time.perf_counter() - start, result


def _cp(src: Path, dst: Path) -> tuple[float, float]:
    """(seconds with an fsync of the destination, seconds of cp alone)."""
    dst.unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True, timeout=300)
    copied = time.perf_counter()
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    end = time.perf_counter()
    return end - start, copied - start


def _written(path: Path) -> int:
    return path.stat().st_blocks * 512


def run(run: Run) -> list[Figure]:
    work = run.tmpdir("disk")
    size = run.scale(1024 * MIB, 64 * MIB)
    details: dict[str, Any] = {"size": size, "dir": str(work)}
    src = work / "full.img"
    with fixtures.pinned(run.server_cpus):
        start = time.perf_counter()
        _write_random(src, size)
        details["write_source_s"] = time.perf_counter() - start
        ours: list[float] = []
        theirs: list[float] = []
        theirs_no_sync: list[float] = []
        reflinked = False
        for _ in range(2):
            seconds, result = _copy_sparse(src, work / "full-ours.img")
            ours.append(seconds)
            reflinked = reflinked or result.reflinked
            with_sync, alone = _cp(src, work / "full-cp.img")
            theirs.append(with_sync)
            theirs_no_sync.append(alone)
        details.update(
            copy_sparse_s=ours, cp_fsync_s=theirs, cp_alone_s=theirs_no_sync, reflinked=reflinked
        )
        for name in ("full-ours.img", "full-cp.img", "full.img"):
            (work / name).unlink(missing_ok=True)

        sparse = work / "sparse.img"
        sparse_size = run.scale(1024 * MIB, 256 * MIB)
        disk_image.write_sample_disk(sparse, sparse_size, boot=True, firmware="efi", seed=7)
        data = _data_bytes(sparse)
        sparse_seconds, sparse_result = _copy_sparse(sparse, work / "sparse-ours.img")
        cp_seconds, _ = _cp(sparse, work / "sparse-cp.img")
        written = _written(work / "sparse-ours.img")
        details.update(
            sparse_size=sparse_size,
            sparse_data_bytes=data,
            sparse_source_blocks_bytes=_written(sparse),
            sparse_written_bytes=written,
            sparse_bytes_copied=sparse_result.bytes_copied,
            sparse_reflinked=sparse_result.reflinked,
            sparse_copy_s=sparse_seconds,
            sparse_cp_fsync_s=cp_seconds,
            sparse_cp_written_bytes=_written(work / "sparse-cp.img"),
        )
    run.details["disk"] = details
    best_ours, best_cp = min(ours), min(theirs)
    gib = size / 2**30
    reflink_note = (
        "REFLINKED: the copy shared extents, so its time is not a data copy"
        if reflinked
        else "no reflink on this file system (extent copy with copy_file_range)"
    )
    return [
        Figure(
            benchmark="disk",
            name=f"copy {size // MIB} MiB of data, throughput",
            measured=gib / best_ours * 1024,
            baseline=gib / best_cp * 1024,
            unit="MiB/s",
            goal=0.9,
            note=(
                f"copy_sparse best {best_ours:.2f} s vs cp --sparse=always + fsync best"
                f" {best_cp:.2f} s (cp alone {min(theirs_no_sync):.2f} s); {reflink_note}"
            ),
        ),
        Figure(
            benchmark="disk",
            name=f"sparse {sparse_size // MIB} MiB image: bytes written vs data",
            measured=written,
            baseline=data,
            unit="bytes",
            note=(
                f"st_blocks*512 of the copy {written / MIB:.1f} MiB, data {data / MIB:.1f} MiB,"
                f" bytes_copied {sparse_result.bytes_copied / MIB:.1f} MiB; cp wrote"
                f" {details['sparse_cp_written_bytes'] / MIB:.1f} MiB;"
                f" {sparse_seconds * 1000:.0f} ms vs cp {cp_seconds * 1000:.0f} ms"
                + ("; REFLINKED" if sparse_result.reflinked else "")
            ),
        ),
        Figure(
            benchmark="disk",
            name="sparse image: bytes_copied vs data",
            measured=sparse_result.bytes_copied,
            baseline=data,
            unit="bytes",
        ),
    ]
