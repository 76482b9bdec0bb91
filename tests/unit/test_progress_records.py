"""The stored record of a job's progress: data bytes, virtual size and a row per disk."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from server.domain.job import (
    CloneJob,
    DiskProgress,
    Progress,
    StepKind,
    TargetKind,
    TargetSpec,
)
from server.store import records

GIB = 1 << 30
NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
PER_DISK = Progress(
    percent=37,
    bytes_done=3 * GIB,
    bytes_total=8 * GIB + 7,
    virtual_bytes=100 * GIB,
    disks=(
        DiskProgress(
            source_disk_number=0, bytes_done=3 * GIB, bytes_total=3 * GIB, virtual_bytes=20 * GIB
        ),
        DiskProgress(
            source_disk_number=2, bytes_done=0, bytes_total=5 * GIB + 7, virtual_bytes=80 * GIB
        ),
    ),
)


def preparing(progress: Progress | None) -> CloneJob:
    job = CloneJob.new(
        name="projects/p/locations/l/sources/s/migratingVms/vm/cloneJobs/c",
        target=TargetSpec(kind=TargetKind.VM, project="p", zone="z", vm_name="web"),
        source_cycle="1",
        now=NOW,
    ).start_step(StepKind.PREPARING_VM_DISKS, NOW)
    return job if progress is None else job.with_progress(progress, NOW)


@pytest.mark.parametrize(
    "progress",
    [
        PER_DISK,
        Progress(percent=100, bytes_done=0, bytes_total=0, virtual_bytes=GIB, disks=()),
        Progress(percent=0),
        None,
    ],
    ids=["per-disk", "holes-only", "percent-only", "none"],
)
def test_progress_records_round_trip(progress: Progress | None) -> None:
    job = preparing(progress)
    assert records.load(records.dump(job)) == job


def test_progress_records_without_the_new_fields_load_with_defaults() -> None:
    """A record written before progress had a virtual size and disk rows."""
    record = json.loads(records.dump(preparing(PER_DISK)))
    del record["progress"]["virtual_bytes"], record["progress"]["disks"]

    loaded = records.load(json.dumps(record))

    assert loaded.progress == Progress(
        percent=37, bytes_done=3 * GIB, bytes_total=8 * GIB + 7, virtual_bytes=0, disks=()
    )
    assert loaded == preparing(Progress(percent=37, bytes_done=3 * GIB, bytes_total=8 * GIB + 7))


def test_progress_records_keep_disk_rows_in_their_order() -> None:
    record = json.loads(records.dump(preparing(PER_DISK)))
    assert [d["source_disk_number"] for d in record["progress"]["disks"]] == [0, 2]
    assert records.load(json.dumps(record)).progress == PER_DISK
