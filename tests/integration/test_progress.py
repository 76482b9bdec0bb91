"""Watch progress while disks are prepared counts data, not the disks' virtual size."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clonejob_rpc import (
    MIB,
    PREPARING,
    State,
    cancel,
    changes,
    create,
    describe,
    read_to_end,
    read_until,
    running_step,
    vm_body,
    watch,
)

from clonejob_grpc import clone_job_service_pb2 as spb

if TYPE_CHECKING:
    from conftest import ServerPool

DISKS = 2
DISK_SIZE = 32 * MIB
HOLD = {"match": "cloneJobs/held", "step": PREPARING, "action": "hold"}


def data_bytes(path: Path) -> int:
    """What the image holds, by SEEK_DATA/SEEK_HOLE: the size of its data extents."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size, pos, data = os.fstat(fd).st_size, 0, 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as error:
                if error.errno == errno.ENXIO:  # only a hole after pos
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            data += end - start
            pos = end
        return data
    finally:
        os.close(fd)


def sparse_vm(data_dir: Path, sample_vm: Any) -> list[int]:
    """A sample VM of mostly-hole disks; the data each disk holds, in disk order."""
    folder = sample_vm(data_dir, disks=DISKS, disk_size=f"{DISK_SIZE // MIB}MiB")
    images = [folder / f"disk-{k}.img" for k in range(DISKS)]
    for image in images:
        assert image.stat().st_size == DISK_SIZE
        assert image.stat().st_blocks * 512 < DISK_SIZE // 2, "the sample disk is not sparse"
    data = [data_bytes(image) for image in images]
    assert all(0 < d < DISK_SIZE // 2 for d in data), data
    return data


def preparing(messages: list[spb.WatchCloneJobResponse]) -> list[spb.StepProgress]:
    """The progress of the messages while disks are prepared, once it has counts
    (the step's start carries none yet)."""
    return [
        m.progress
        for m in changes(messages)
        if running_step(m.clone_job) == PREPARING and m.progress.bytes_total
    ]


def assert_consistent(p: spb.StepProgress, data: list[int]) -> None:
    assert p.bytes_total == sum(data)
    assert p.virtual_bytes == DISKS * DISK_SIZE
    assert p.percent == p.bytes_done * 100 // p.bytes_total
    assert [d.source_disk_number for d in p.disks] == list(range(DISKS))
    assert [d.bytes_total for d in p.disks] == data
    assert [d.virtual_bytes for d in p.disks] == [DISK_SIZE] * DISKS
    assert sum(d.bytes_done for d in p.disks) == p.bytes_done
    assert all(0 <= d.bytes_done <= d.bytes_total for d in p.disks)


def test_progress_counts_the_data_of_sparse_disks(
    servers: ServerPool, data_dir: Path, sample_vm: Any
) -> None:
    data = sparse_vm(data_dir, sample_vm)
    stub = servers.start(data_dir).stub()
    job = create(stub, "sparse", vm_body("sparse-vm"))

    messages = read_to_end(watch(stub, job.name))

    assert changes(messages)[-1].clone_job.state == State.SUCCEEDED, describe(messages)
    seen = preparing(messages)
    for p in seen:
        assert_consistent(p, data)
    done = [p.bytes_done for p in seen]
    assert done == sorted(done)
    # The last progress of the step is the whole of the data, every disk done.
    last = seen[-1]
    assert (last.percent, last.bytes_done) == (100, last.bytes_total)
    assert [d.bytes_done for d in last.disks] == data


def test_progress_of_a_copy_stopped_between_disks_shows_each_disk_row(
    servers: ServerPool, data_dir: Path, sample_vm: Any
) -> None:
    """The hold comes after disk 0's copy: the progress committed then is disk 0
    whole and disk 1 untouched, even though no report follows it."""
    data = sparse_vm(data_dir, sample_vm)
    stub = servers.start(data_dir, fault_plan=[HOLD]).stub()
    job = create(stub, "held", vm_body("held-vm"))
    stream = watch(stub, job.name)

    def first_disk_done(m: spb.WatchCloneJobResponse) -> bool:
        rows = m.progress.disks
        return bool(rows) and rows[0].bytes_done == rows[0].bytes_total

    held = read_until(stream, first_disk_done)[-1].progress

    assert_consistent(held, data)
    assert [d.bytes_done for d in held.disks] == [data[0], 0]
    assert held.bytes_done == data[0]
    assert held.percent == data[0] * 100 // sum(data) < 100
    cancel(stub, job.name)
    assert changes(read_to_end(stream))[-1].clone_job.state == State.CANCELLED
