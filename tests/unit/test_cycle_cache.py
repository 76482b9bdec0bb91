"""The local target's snapshot caches: the latest cycle of a migrating VM, each
cycle's manifest and each source disk's data figure are kept between Creates,
and a change to the snapshot store is seen by the very next call, even within
one clock tick (answers read from something changed in the last second are not
kept: see server.targets.local.RACY_NS)."""

from __future__ import annotations

import json
import os
import time
import types
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from server.domain.errors import NoCompletedCycleError
from server.domain.job import CloneJob, TargetKind, TargetSpec
from server.domain.names import MigratingVmName
from server.targets import local
from server.targets.local import MANIFEST, LocalTarget

VM = MigratingVmName.parse("projects/p1/locations/us-central1/sources/s1/migratingVms/vm1")
MIB = 1024 * 1024


@pytest.fixture
def target(tmp_path: Path) -> LocalTarget:
    return LocalTarget(tmp_path)


@pytest.fixture
def reads(target: LocalTarget, monkeypatch: pytest.MonkeyPatch) -> list[MigratingVmName]:
    """Every time the latest cycle is read from the snapshot store, not the cache."""
    seen: list[MigratingVmName] = []
    read = target._latest_cycle

    def counted(vm: MigratingVmName) -> str:
        seen.append(vm)
        return read(vm)

    monkeypatch.setattr(target, "_latest_cycle", counted)
    return seen


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """The target's clock runs a minute ahead: whatever the test wrote has settled, so
    every answer is cached (and must still be dropped when what it was read from changes)."""
    ahead = types.SimpleNamespace(time_ns=lambda: time.time_ns() + 60 * 10**9)
    monkeypatch.setattr(local, "time", ahead)


def write_cycle(target: LocalTarget) -> Path:
    return target.write_sample_vm(VM, disks=1, disk_size=MIB)


def backdate(target: LocalTarget) -> None:
    """Set back the mtime of everything in the VM's snapshot folder, so that what is
    written next changes every mtime it touches (not within the same clock tick)."""
    past = time.time() - 30
    for root, dirs, files in os.walk(target.vm_dir(VM)):
        for name in [*dirs, *files]:
            os.utime(Path(root) / name, (past, past))
        os.utime(root, (past, past))


async def test_cycle_cache_keeps_the_latest_cycle_while_nothing_changes(
    target: LocalTarget, reads: list[MigratingVmName], settled: None
) -> None:
    write_cycle(target)
    assert [await target.latest_cycle(VM) for _ in range(3)] == ["1", "1", "1"]
    assert len(reads) == 1


async def test_cycle_cache_a_new_cycle_is_used_by_the_next_call(
    target: LocalTarget, reads: list[MigratingVmName], settled: None
) -> None:
    write_cycle(target)
    backdate(target)
    assert await target.latest_cycle(VM) == "1"
    assert await target.latest_cycle(VM) == "1"
    write_cycle(target)
    assert await target.latest_cycle(VM) == "2"
    assert len(reads) == 2


async def test_cycle_cache_a_new_cycle_within_the_same_second_is_used(
    target: LocalTarget, reads: list[MigratingVmName]
) -> None:
    # The real clock: both cycles written now, the second right after the first
    # was read; an answer read from folders changed this recently is not kept.
    write_cycle(target)
    assert await target.latest_cycle(VM) == "1"
    write_cycle(target)
    assert await target.latest_cycle(VM) == "2"
    assert reads == [VM, VM]


async def test_cycle_cache_a_change_the_mtimes_do_not_show_is_seen_while_racy(
    target: LocalTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A filesystem whose timestamps did not move (one clock tick): every stamp stays
    # as it was, so only the racy rule keeps the first answer from being trusted.
    now = time.time_ns()

    def frozen(path: str | Path) -> local._Stamp:
        try:
            return (os.stat(path).st_ino, 0, now, now)
        except OSError:
            return None

    monkeypatch.setattr(local, "_stamp", frozen)
    write_cycle(target)
    assert await target.latest_cycle(VM) == "1"
    write_cycle(target)
    assert await target.latest_cycle(VM) == "2"


@pytest.mark.parametrize("upload", ["no manifest yet", "manifest not completed"])
async def test_cycle_cache_a_cycle_whose_manifest_appears_later_is_used(
    target: LocalTarget, reads: list[MigratingVmName], settled: None, upload: str
) -> None:
    write_cycle(target)
    second = write_cycle(target)
    manifest = (second / MANIFEST).read_text()
    if upload == "no manifest yet":
        (second / MANIFEST).unlink()
    else:  # rewritten in place once the upload completes
        (second / MANIFEST).write_text(json.dumps({"state": "RUNNING", "disks": []}))
    backdate(target)
    assert await target.latest_cycle(VM) == "1"
    assert await target.latest_cycle(VM) == "1"
    assert len(reads) == 1
    (second / MANIFEST).write_text(manifest)
    assert await target.latest_cycle(VM) == "2"


async def test_cycle_cache_a_removed_cycle_is_not_answered(
    target: LocalTarget, settled: None
) -> None:
    first = write_cycle(target)
    second = write_cycle(target)
    backdate(target)
    assert await target.latest_cycle(VM) == "2"
    (second / MANIFEST).unlink()
    assert await target.latest_cycle(VM) == "1"
    (first / MANIFEST).unlink()
    with pytest.raises(NoCompletedCycleError):
        await target.latest_cycle(VM)


def counting_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    parsed: list[str] = []

    def loads(text: str, **kwargs: Any) -> Any:
        parsed.append(text)
        return json.loads(text, **kwargs)

    monkeypatch.setattr(local, "json", types.SimpleNamespace(loads=loads, dumps=json.dumps))
    return parsed


def test_cycle_cache_read_cycle_parses_a_manifest_once_and_sees_it_removed(
    target: LocalTarget, settled: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    cycle = write_cycle(target)
    parsed = counting_loads(monkeypatch)
    first = target.read_cycle(VM, "1")
    assert target.read_cycle(VM, "1") == first
    assert len(parsed) == 1
    (cycle / MANIFEST).unlink()
    with pytest.raises(FileNotFoundError):
        target.read_cycle(VM, "1")


def test_cycle_cache_a_recent_manifest_is_parsed_again(
    target: LocalTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_cycle(target)
    parsed = counting_loads(monkeypatch)
    target.read_cycle(VM, "1")
    target.read_cycle(VM, "1")
    assert len(parsed) == 2


def test_cycle_cache_data_bytes_follow_the_disk_file(target: LocalTarget, settled: None) -> None:
    (disk,) = target.read_cycle(VM, write_cycle(target).name)
    before = target._data_bytes(disk.path)
    assert before == target._data_bytes(disk.path) > 0
    with open(disk.path, "r+b") as f:  # 4 KiB more data, past the old end
        f.seek(disk.size_bytes)
        f.write(b"\1" * 4096)
    assert target._data_bytes(disk.path) == before + 4096


async def test_cycle_cache_preflight_answers_from_the_cache_without_a_thread(
    target: LocalTarget, settled: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_cycle(target)
    job = CloneJob.new(
        name=f"{VM}/cloneJobs/a",
        target=TargetSpec(kind=TargetKind.DISKS, project="p1", zone="us-central1"),
        source_cycle=await target.latest_cycle(VM),
        now=datetime.now(UTC),
    )
    hops: list[Callable[..., Any]] = []

    async def to_thread(fn: Callable[..., Any], *args: Any) -> Any:
        hops.append(fn)
        return fn(*args)

    monkeypatch.setattr(local.asyncio, "to_thread", to_thread)
    assert await target.latest_cycle(VM) == "1"
    await target.preflight(job)
    assert hops == []
