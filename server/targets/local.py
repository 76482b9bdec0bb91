"""The local target: clones into folders of the data directory.

Layout (all below the data directory)::

    snapshots/{migrating VM name}/cycles/{n}/manifest.json   one folder per replication cycle
    snapshots/{migrating VM name}/cycles/{n}/disk-{k}.img    one image per source disk
    targets/projects/{project}/zones/{zone}/disks/{base}-disk{k}-{uid}.img
    targets/projects/{project}/zones/{zone}/instances/{vm_name}.json   the instance definition
    targets/projects/{project}/zones/{zone}/instances/{vm_name}.xml    a libvirt domain booting it

`{uid}` is derived from the clone job's full name, so a disk file can belong to
one job only; an instance file records its job, and cleanup deletes it only when
it is this job's. A disk is copied to `{base}-disk{k}-{uid}.e{epoch}.tmp`, a
file of the runner's lease epoch, and renamed into place only after the fence
says the lease is still held: a runner that lost its lease (paused, then
resumed) never overwrites or deletes what the job's new runner is writing.
Every name that reaches a path was validated as an RFC 1035 label or a safe
name segment, and every path is checked to stay inside its root.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import os
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from server.domain.errors import (
    InstanceNameTakenError,
    MigratingVmNotFoundError,
    NoCompletedCycleError,
    StepCancelledError,
    StepFailedError,
    TargetStorageFullError,
)
from server.domain.job import (
    CloneJob,
    DiskProgress,
    ErrorCode,
    JobError,
    StepKind,
    TargetKind,
    TargetResult,
)
from server.domain.migrating_vm import MigratingVm
from server.domain.names import CloneJobName, MigratingVmName, SourceName
from server.targets import disk_image
from server.targets.base import Fence, ProgressFn
from server.targets.faults import FaultPlan

MANIFEST = "manifest.json"
COMPLETED = "COMPLETED"
_LICENSES = {
    "COMPUTE_ENGINE_LICENSE_TYPE_PAYG": "PAYG",
    "COMPUTE_ENGINE_LICENSE_TYPE_BYOL": "BYOL",
}
# What the snapshot store answered is cached, and trusted while every file and
# folder it was read from has the stat it had then. A folder's mtime may not move
# when it changes twice within one clock tick, so, as git does with "racy" index
# entries, an answer read from something changed less than this long before is
# not kept: it is read again until it has settled.
RACY_NS = 1_000_000_000
CACHE_ENTRIES = 4096

# (inode, size, mtime, ctime) of a path, or None when it is not there.
_Stamp = tuple[int, int, int, int] | None


def _stamp(path: str | Path) -> _Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _settled(stamps: list[tuple[str, _Stamp]], read_at_ns: int) -> bool:
    """Whether everything stamped was last changed well before `read_at_ns`."""
    limit = read_at_ns - RACY_NS
    return all(s is None or (s[2] < limit and s[3] < limit) for _, s in stamps)


def _still(stamps: tuple[tuple[str, _Stamp], ...]) -> bool:
    return all(_stamp(path) == stamp for path, stamp in stamps)


def _keep(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= CACHE_ENTRIES:  # bounded; a rare refill is cheap
        cache.clear()
    cache[key] = value


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotDisk:
    source_disk_number: int
    path: Path
    size_bytes: int
    boot: bool


class LocalTarget:
    def __init__(self, data_dir: Path, faults: FaultPlan | None = None) -> None:
        self.data_dir = data_dir
        self.faults = faults or FaultPlan()
        self.snapshots = data_dir / "snapshots"
        self.targets = data_dir / "targets"
        # Caches of the snapshot store (see RACY_NS), shared by the event loop and
        # worker threads: each entry is one dict item, replaced whole.
        # VM name -> (latest completed cycle, the stamps it was read from)
        self._latest: dict[str, tuple[str, tuple[tuple[str, _Stamp], ...]]] = {}
        # (VM name, cycle) -> (manifest path, its stamp, manifest, disks)
        self._cycles: dict[
            tuple[str, str], tuple[str, _Stamp, dict[str, Any], tuple[SnapshotDisk, ...]]
        ] = {}
        # source disk path -> (stamp, data bytes)
        self._data: dict[str, tuple[_Stamp, int]] = {}
        # checked folders by what names them (see vm_dir)
        self._paths: dict[Any, Path] = {}

    # -- paths --

    @staticmethod
    def _inside(root: Path, *parts: str) -> Path:
        for part in parts:
            if not part or part in (".", "..") or "/" in part or "\0" in part:
                raise ValueError(f"unsafe path component {part!r}")
        # Checked lexically: each part is one plain name, so the path is below root.
        # (Not resolved: an operator may link snapshots/ or targets/ to another disk.)
        return root.joinpath(*parts)

    # The folders below are made often (a few times per step) and pathlib is slow:
    # each is checked and made once per name, then kept.

    def _folder(self, key: Any, root: Path, *parts: str) -> Path:
        """`root` joined with `parts`, checked once per `key`."""
        path = self._paths.get(key)
        if path is None:
            path = self._inside(root, *parts)
            _keep(self._paths, key, path)
        return path

    def vm_dir(self, vm: MigratingVmName) -> Path:
        return self._folder(str(vm), self.snapshots, *vm.segments())

    def cycle_dir(self, vm: MigratingVmName, cycle: str) -> Path:
        return self._inside(self.vm_dir(vm), "cycles", cycle)

    def zone_dir(self, job: CloneJob) -> Path:
        project, zone = job.target.project, job.target.zone
        return self._folder(
            ("zone", project, zone), self.targets, "projects", project, "zones", zone
        )

    def _zone_folder(self, job: CloneJob, name: str) -> Path:
        key = (name, job.target.project, job.target.zone)
        return self._folder(key, self.zone_dir(job), name)

    def disk_path(self, job: CloneJob, number: int) -> Path:
        return self._inside(self._zone_folder(job, "disks"), f"{_disk_stem(job, number)}.img")

    def instance_paths(self, job: CloneJob) -> tuple[Path, Path]:
        folder = self._zone_folder(job, "instances")
        name = job.target.vm_name
        return self._inside(folder, f"{name}.json"), self._inside(folder, f"{name}.xml")

    # -- snapshots --

    async def latest_cycle(self, migrating_vm: MigratingVmName) -> str:
        # A cache hit costs a stat or two, answered here: cheaper than a thread hop.
        cached = self._latest.get(str(migrating_vm))
        if cached is not None and _still(cached[1]):
            return cached[0]
        return await asyncio.to_thread(self._latest_cycle, migrating_vm)

    def _latest_cycle(self, vm: MigratingVmName) -> str:
        read_at = time.time_ns()
        if not self.vm_dir(vm).is_dir():
            raise MigratingVmNotFoundError(str(vm))
        # Stamped before they are read: a change made meanwhile fails the next check.
        cycles = str(self._inside(self.vm_dir(vm), "cycles"))
        stamps: list[tuple[str, _Stamp]] = [(cycles, _stamp(cycles))]
        found = self._latest_completed(vm, self._cycle_numbers(vm), stamps)
        if found is None:
            raise NoCompletedCycleError(str(vm))
        number, _ = found
        try:
            # The disks' data, for the Create's preflight that comes next.
            for disk in self._read_cycle(vm, str(number))[1]:
                with contextlib.suppress(OSError):
                    self._data_bytes(disk.path)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if _settled(stamps, read_at):
            _keep(self._latest, str(vm), (str(number), tuple(stamps)))
        return str(number)

    def _cycle_numbers(self, vm: MigratingVmName) -> list[int]:
        """The numbers of the VM's cycle folders, completed or not, lowest first."""
        cycles = self._inside(self.vm_dir(vm), "cycles")
        try:
            return sorted(int(p.name) for p in cycles.iterdir() if p.name.isdigit())
        except OSError:  # no cycles folder (or no VM folder)
            return []

    def _latest_completed(
        self,
        vm: MigratingVmName,
        numbers: list[int],
        stamps: list[tuple[str, _Stamp]] | None = None,
    ) -> tuple[int, dict[str, Any]] | None:
        """The highest of `numbers` whose cycle is completed and readable, with its
        manifest; None when there is none. With `stamps`, each cycle looked at is
        stamped (its folder and its manifest) before it is read."""
        for number in reversed(numbers):
            folder = self.cycle_dir(vm, str(number))
            if stamps is not None:
                stamps.append((str(folder), _stamp(folder)))
                manifest_path = str(folder / MANIFEST)
                stamps.append((manifest_path, _stamp(manifest_path)))
            try:
                manifest, _ = self._read_cycle(vm, str(number))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            return number, manifest
        return None

    async def migrating_vm(self, name: MigratingVmName) -> MigratingVm:
        """The VM's cycles as the snapshot store holds them; MigratingVmNotFoundError
        when it has none."""
        found = await asyncio.to_thread(self._migrating_vm, name)
        if found is None:
            raise MigratingVmNotFoundError(str(name))
        return found

    async def migrating_vms(self, source: SourceName) -> list[MigratingVm]:
        """Every migrating VM of the source that has replication cycles, by name."""
        return await asyncio.to_thread(self._migrating_vms, source)

    def _migrating_vms(self, source: SourceName) -> list[MigratingVm]:
        folder = self._inside(self.snapshots, *str(source).split("/"), "migratingVms")
        try:
            ids = sorted(p.name for p in folder.iterdir() if p.is_dir())
        except OSError:
            return []
        found = []
        for vm_id in ids:
            try:
                name = MigratingVmName.parse(f"{source}/migratingVms/{vm_id}")
            except ValueError:  # a folder that is no migrating VM's
                continue
            vm = self._migrating_vm(name)
            if vm is not None:
                found.append(vm)
        return found

    def _migrating_vm(self, name: MigratingVmName) -> MigratingVm | None:
        numbers = self._cycle_numbers(name)
        if not numbers:
            return None
        first = self.cycle_dir(name, str(numbers[0]))
        try:
            create_time = _mtime(first / MANIFEST if (first / MANIFEST).exists() else first)
        except OSError:
            return None
        last_sync: datetime | None = None
        source_vm_id = ""
        found = self._latest_completed(name, numbers)
        if found is not None:
            number, manifest = found
            try:
                last_sync = _mtime(self.cycle_dir(name, str(number)) / MANIFEST)
            except OSError:  # removed since it was read
                pass
            source_vm_id = str(manifest.get("source_vm_id") or "")
        return MigratingVm(
            name=str(name),
            source_vm_id=source_vm_id or name.migrating_vm,
            create_time=create_time,
            last_sync=last_sync,
        )

    def read_cycle(self, vm: MigratingVmName, cycle: str) -> list[SnapshotDisk]:
        """The disks of a completed cycle; ValueError when the upload is incomplete."""
        return self._read_cycle(vm, cycle)[1]

    def _read_cycle(
        self, vm: MigratingVmName, cycle: str
    ) -> tuple[dict[str, Any], list[SnapshotDisk]]:
        """A completed cycle's manifest and its disks, parsed once while the manifest
        file keeps its stat (a completed manifest never changes; a removed one is seen)."""
        found = self._cached_cycle(str(vm), cycle)
        if found is not None:
            return found
        read_at = time.time_ns()
        folder = self.cycle_dir(vm, cycle)
        path = folder / MANIFEST
        stamp = _stamp(path)
        manifest = json.loads(path.read_text())
        if manifest.get("state") != COMPLETED:
            raise ValueError(f"cycle {cycle} is {manifest.get('state')!r}, not {COMPLETED}")
        disks = [
            SnapshotDisk(
                source_disk_number=int(d["source_disk_number"]),
                path=self._inside(folder, str(d["file"])),
                size_bytes=int(d["size_bytes"]),
                boot=bool(d.get("boot", False)),
            )
            for d in manifest["disks"]
        ]
        if not disks:
            raise ValueError(f"cycle {cycle} has no disks")
        disks.sort(key=lambda d: d.source_disk_number)
        if _settled([(str(path), stamp)], read_at):
            _keep(self._cycles, (str(vm), cycle), (str(path), stamp, manifest, tuple(disks)))
        return manifest, disks

    def _cached_cycle(
        self, vm: str, cycle: str
    ) -> tuple[dict[str, Any], list[SnapshotDisk]] | None:
        """The cached manifest and disks of a cycle while its manifest file is unchanged."""
        entry = self._cycles.get((vm, cycle))
        if entry is None:
            return None
        path, stamp, manifest, disks = entry
        if stamp is None or _stamp(path) != stamp:
            return None
        return manifest, list(disks)

    def _cached_data_bytes(self, path: Path, stamp: _Stamp) -> int | None:
        """The cached data figure of `path` while it has `stamp` (its stat now); None
        when none is cached for that stat."""
        entry = self._data.get(str(path))
        if entry is None or stamp is None or entry[0] != stamp:
            return None
        return entry[1]

    def _data_bytes(self, path: Path) -> int:
        """`disk_image.data_bytes`, cached while the file keeps its inode, size and times."""
        read_at = time.time_ns()
        stamp = _stamp(path)
        cached = self._cached_data_bytes(path, stamp)
        if cached is not None:
            return cached
        value = disk_image.data_bytes(path)
        if stamp is not None and _settled([(str(path), stamp)], read_at):
            _keep(self._data, str(path), (stamp, value))
        return value

    def _job_disks(self, job: CloneJob) -> list[SnapshotDisk]:
        vm = CloneJobName.parse(job.name).parent
        try:
            return self.read_cycle(vm, job.source_cycle)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise StepFailedError(
                JobError(
                    code=ErrorCode.FAILED_PRECONDITION,
                    reason="SNAPSHOT_UNAVAILABLE",
                    message=f"replication cycle {job.source_cycle} of {vm} cannot be read: {error}",
                    metadata={"migrating_vm": str(vm), "cycle": job.source_cycle},
                )
            ) from error

    # -- checks before the long copy --

    async def preflight(self, job: CloneJob) -> None:
        # When every answer is cached, the checks left are a few stats: made here,
        # without a thread hop. Anything else is decided by the full check.
        if self._preflight_cached(job):
            return
        await asyncio.to_thread(self._preflight, job)

    def _preflight_cached(self, job: CloneJob) -> bool:
        """True when the job passes every preflight check on cached answers and a
        few stats; False when `_preflight` must decide (it may still pass)."""
        # A stored or checked job's name is canonical: its parent is the text before.
        vm = job.name.rpartition("/cloneJobs/")[0]
        found = self._cached_cycle(vm, job.source_cycle)
        if found is None:
            return False
        if job.target.kind is TargetKind.VM:
            manifest_path, xml_path = self.instance_paths(job)
            if _stamp(manifest_path) is not None or _stamp(xml_path) is not None:
                return False  # whose it is needs a read
        needed = 0
        for disk in found[1]:
            data = self._cached_data_bytes(disk.path, _stamp(disk.path))
            if data is None:
                return False
            needed += data
        return needed <= self._available(job)

    def _available(self, job: CloneJob) -> int:
        """Bytes free where the job's disks would go (its nearest existing folder)."""
        # On strings, with access(): the zone often does not exist yet, and a
        # missing path costs no exception this way.
        folder, top = str(self.zone_dir(job)), str(self.data_dir)
        while folder != top and not os.access(folder, os.F_OK):
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
        stats = os.statvfs(folder)
        return stats.f_bavail * stats.f_frsize

    def _preflight(self, job: CloneJob) -> None:
        vm = CloneJobName.parse(job.name).parent
        try:
            disks = self.read_cycle(vm, job.source_cycle)
        except (OSError, ValueError, KeyError, TypeError):
            raise NoCompletedCycleError(str(vm)) from None
        if job.target.kind is TargetKind.VM:
            manifest_path, xml_path = self.instance_paths(job)
            owner = _owner(manifest_path) if manifest_path.exists() else None
            if manifest_path.exists() or xml_path.exists():
                owner = owner or _xml_owner(xml_path)
                if owner != job.name:
                    raise InstanceNameTakenError(
                        project=job.target.project,
                        zone=job.target.zone,
                        vm_name=job.target.vm_name,
                        owner=owner,
                    )
        # The data the copy writes: what each snapshot disk holds (its data extents;
        # holes are not written), against the room where it would go.
        needed = 0
        for disk in disks:
            with contextlib.suppress(OSError):  # a lost disk fails its step, with its reason
                needed += self._data_bytes(disk.path)
        available = self._available(job)
        if needed > available:
            raise TargetStorageFullError(needed=needed, available=available)

    # -- steps --

    async def prepare_disks(
        self, job: CloneJob, progress: ProgressFn, cancelled: threading.Event, fence: Fence
    ) -> TargetResult:
        return await asyncio.to_thread(self._prepare_disks, job, progress, cancelled, fence)

    def _prepare_disks(
        self, job: CloneJob, progress: ProgressFn, cancelled: threading.Event, fence: Fence
    ) -> TargetResult:
        disks = self._job_disks(job)
        # What every disk holds is found first, so that percent counts the data of
        # all disks from the first report on, and a lost disk fails before any copy.
        report = _CopyReport(progress, [_source_row(job, disk, self._data_bytes) for disk in disks])
        report.send()
        self.faults.delay(job, StepKind.PREPARING_VM_DISKS, cancelled)
        uris: list[tuple[int, str]] = []
        for index, disk in enumerate(disks):
            dst = self.disk_path(job, disk.source_disk_number)
            dst.parent.mkdir(parents=True, exist_ok=True)
            _remove_older_epochs(dst, fence.epoch)
            tmp = _epoch_path(dst, fence.epoch)
            try:
                disk_image.copy_sparse(
                    disk.path,
                    tmp,
                    on_progress=functools.partial(report.disk, index),
                    cancelled=cancelled,
                )
                fence.check()
                os.replace(tmp, dst)
            except disk_image.CopyCancelledError:
                tmp.unlink(missing_ok=True)
                raise StepCancelledError() from None
            except BaseException as error:
                tmp.unlink(missing_ok=True)
                if not isinstance(error, OSError) or error.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise _disk_lost(
                    disk,
                    "DISK_COPY_FAILED",
                    f"copying source disk {disk.source_disk_number} failed part-way:"
                    f" {error.strerror or error}",
                ) from error
            self.faults.apply(job, StepKind.PREPARING_VM_DISKS, cancelled)
            stem = _disk_stem(job, disk.source_disk_number)
            uris.append(
                (
                    disk.source_disk_number,
                    f"projects/{job.target.project}/zones/{job.target.zone}/disks/{stem}",
                )
            )
        if disks:  # the new names are durable before the step is committed as done
            _fsync_dir(self.disk_path(job, disks[0].source_disk_number).parent)
        report.finished()
        return TargetResult(disk_uris=tuple(uris))

    async def adapt_os(
        self, job: CloneJob, cancelled: threading.Event, fence: Fence
    ) -> TargetResult:
        return await asyncio.to_thread(self._adapt_os, job, cancelled)

    def _adapt_os(self, job: CloneJob, cancelled: threading.Event) -> TargetResult:
        # Reads the disks only: nothing to fence.
        self.faults.delay(job, StepKind.ADAPTING_OS, cancelled)
        if cancelled.is_set():
            raise StepCancelledError()
        self.faults.apply(job, StepKind.ADAPTING_OS, cancelled)
        disks = self._job_disks(job)
        boot = next((d for d in disks if d.boot), disks[0])
        try:
            info = disk_image.detect_boot(self.disk_path(job, boot.source_disk_number))
        except disk_image.UnbootableDiskError as error:
            raise StepFailedError(
                JobError(
                    code=ErrorCode.FAILED_PRECONDITION,
                    reason="BOOT_DISK_NOT_BOOTABLE",
                    message=f"cannot adapt the OS: boot disk {boot.source_disk_number}: {error}",
                    metadata={"source_disk_number": str(boot.source_disk_number)},
                )
            ) from error
        license_type = _LICENSES.get(str(job.target.details.get("license_type", "")), "NONE")
        return TargetResult(
            boot_option="EFI" if info.firmware == "efi" else "BIOS",
            license_type=license_type,
            disk_uris=job.result.disk_uris,
        )

    async def instantiate(
        self, job: CloneJob, cancelled: threading.Event, fence: Fence
    ) -> TargetResult:
        return await asyncio.to_thread(self._instantiate, job, cancelled, fence)

    def _instantiate(self, job: CloneJob, cancelled: threading.Event, fence: Fence) -> TargetResult:
        self.faults.delay(job, StepKind.INSTANTIATING_MIGRATED_VM, cancelled)
        if cancelled.is_set():
            raise StepCancelledError()
        self.faults.apply(job, StepKind.INSTANTIATING_MIGRATED_VM, cancelled)
        manifest_path, xml_path = self.instance_paths(job)
        manifest_path.parent.mkdir(parents=True, exist_ok=True)
        disks = self._job_disks(job)
        definition = self._definition(job, disks)
        body = json.dumps(definition, indent=2, sort_keys=True).encode()
        # Claim the instance name atomically: link() fails if the name is taken.
        folder = manifest_path.parent
        for path in (manifest_path, xml_path):
            _remove_older_epoch_files(folder, f".{path.name}.{_uid(job)}.e", fence.epoch)
        tmp = manifest_path.with_name(f".{manifest_path.name}.{_uid(job)}.e{fence.epoch}.tmp")
        _write_synced(tmp, body)
        try:
            fence.check()
            os.link(tmp, manifest_path)
        except FileExistsError:
            if _owner(manifest_path) != job.name:
                raise StepFailedError(
                    JobError(
                        code=ErrorCode.ALREADY_EXISTS,
                        reason="INSTANCE_ALREADY_EXISTS",
                        message=(
                            f"an instance named {job.target.vm_name!r} already exists in"
                            f" project {job.target.project!r}, zone {job.target.zone!r}"
                        ),
                        metadata={
                            "vm_name": job.target.vm_name,
                            "project": job.target.project,
                            "zone": job.target.zone,
                        },
                    )
                ) from None
        finally:
            tmp.unlink(missing_ok=True)
        xml_tmp = xml_path.with_name(f".{xml_path.name}.{_uid(job)}.e{fence.epoch}.tmp")
        _write_synced(xml_tmp, self._domain_xml(job, disks))
        try:
            fence.check()
            os.replace(xml_tmp, xml_path)
        finally:
            xml_tmp.unlink(missing_ok=True)
        _fsync_dir(manifest_path.parent)
        return job.result

    def _definition(self, job: CloneJob, disks: list[SnapshotDisk]) -> dict[str, Any]:
        details = dict(job.target.details)
        return {
            "clone_job": job.name,
            "name": job.target.vm_name,
            "project": job.target.project,
            "zone": job.target.zone,
            "machine_type": job.target.machine_type,
            "machine_type_series": details.get("machine_type_series", ""),
            "hostname": details.get("hostname", ""),
            "network_interfaces": details.get("network_interfaces", []),
            "network_tags": details.get("network_tags", []),
            "service_account": details.get("service_account", ""),
            "labels": details.get("labels", {}),
            "metadata": details.get("metadata", {}),
            "boot_option": job.result.boot_option,
            "applied_license": job.result.license_type,
            "secure_boot": bool(details.get("secure_boot", False)),
            "disks": [
                {
                    "source_disk_number": d.source_disk_number,
                    "boot": d.boot,
                    "size_bytes": d.size_bytes,
                    "path": str(
                        self.disk_path(job, d.source_disk_number).relative_to(self.data_dir)
                    ),
                }
                for d in disks
            ],
        }

    def _domain_xml(self, job: CloneJob, disks: list[SnapshotDisk]) -> bytes:
        domain = ET.Element("domain", type="kvm")
        ET.SubElement(domain, "name").text = job.target.vm_name
        metadata = ET.SubElement(domain, "metadata")
        owner = ET.SubElement(metadata, "{urn:clonejob}owner")
        owner.text = job.name
        ET.SubElement(domain, "memory", unit="MiB").text = "2048"
        ET.SubElement(domain, "vcpu").text = "2"
        os_el = ET.SubElement(domain, "os")
        if job.result.boot_option == "EFI":
            os_el.set("firmware", "efi")
        ET.SubElement(os_el, "type", arch="x86_64", machine="q35").text = "hvm"
        ET.SubElement(os_el, "boot", dev="hd")
        devices = ET.SubElement(domain, "devices")
        for index, d in enumerate(disks):
            disk = ET.SubElement(devices, "disk", type="file", device="disk")
            ET.SubElement(disk, "driver", name="qemu", type="raw")
            ET.SubElement(disk, "source", file=str(self.disk_path(job, d.source_disk_number)))
            ET.SubElement(disk, "target", dev=f"vd{chr(ord('a') + index % 26)}", bus="virtio")
        for _ in job.target.details.get("network_interfaces", []) or [{}]:
            iface = ET.SubElement(devices, "interface", type="user")
            ET.SubElement(iface, "model", type="virtio")
        ET.indent(domain)
        return bytes(ET.tostring(domain, encoding="utf-8", xml_declaration=True))

    # -- cleanup --

    async def cleanup(self, job: CloneJob) -> None:
        await asyncio.to_thread(self._cleanup, job)

    def _cleanup(self, job: CloneJob) -> None:
        zone = self.zone_dir(job)
        if not zone.exists():
            return
        disks = self._inside(zone, "disks")
        if disks.is_dir():
            prefix = f"{_disk_base(job)}-disk"
            uid = f"-{_uid(job)}."
            for path in disks.iterdir():
                name = path.name
                if name.startswith(prefix) and uid in name and name.endswith((".img", ".tmp")):
                    path.unlink(missing_ok=True)
        if job.target.kind is TargetKind.VM:
            manifest_path, xml_path = self.instance_paths(job)
            for tmp in manifest_path.parent.glob(f".*.{_uid(job)}.*tmp"):
                tmp.unlink(missing_ok=True)
            # The XML first: while our manifest stands, no other job can own this name.
            if xml_path.exists() and _xml_owner(xml_path) == job.name:
                xml_path.unlink(missing_ok=True)
            if manifest_path.exists() and _owner(manifest_path) == job.name:
                manifest_path.unlink(missing_ok=True)

    # -- sample VMs --

    def write_sample_vm(
        self,
        vm: MigratingVmName,
        *,
        disks: int = 2,
        disk_size: int = 64 * 1024 * 1024,
        bios: bool = False,
    ) -> Path:
        """Write a new completed replication cycle of synthetic disks; returns its folder."""
        cycles = self._inside(self.vm_dir(vm), "cycles")
        cycles.mkdir(parents=True, exist_ok=True)
        existing = [int(p.name) for p in cycles.iterdir() if p.name.isdigit()]
        number = max(existing, default=0) + 1
        folder = cycles / str(number)
        folder.mkdir()
        entries = []
        for k in range(disks):
            name = f"disk-{k}.img"
            disk_image.write_sample_disk(
                folder / name,
                disk_size,
                boot=k == 0,
                firmware="bios" if bios else "efi",
                seed=number * 1000 + k,
            )
            entries.append(
                {"source_disk_number": k, "file": name, "size_bytes": disk_size, "boot": k == 0}
            )
        manifest = {"state": COMPLETED, "cycle": number, "disks": entries}
        # The manifest is written last: its presence says the upload completed.
        _write_synced(folder / MANIFEST, json.dumps(manifest, indent=2).encode())
        return folder


def _disk_lost(disk: SnapshotDisk, reason: str, message: str) -> StepFailedError:
    return StepFailedError(
        JobError(
            code=ErrorCode.DATA_LOSS,
            reason=reason,
            message=message,
            metadata={"source_disk_number": str(disk.source_disk_number)},
        )
    )


def _source_row(
    job: CloneJob, disk: SnapshotDisk, data_bytes: Callable[[Path], int]
) -> DiskProgress:
    """The disk's row before its copy: the data it holds, and its virtual size."""
    try:
        data = data_bytes(disk.path)
    except OSError as error:
        raise _disk_lost(
            disk,
            "SOURCE_DISK_UNREADABLE",
            f"source disk {disk.source_disk_number} of replication cycle"
            f" {job.source_cycle} cannot be read: {error.strerror}",
        ) from error
    return DiskProgress(
        source_disk_number=disk.source_disk_number,
        bytes_total=data,
        virtual_bytes=disk.size_bytes,
    )


class _CopyReport:
    """The disks' rows while they are copied, reported to the engine after each
    chunk; used from the copy's one thread."""

    def __init__(self, progress: ProgressFn, rows: list[DiskProgress]) -> None:
        self._progress = progress
        self._rows = rows
        self._total = sum(r.bytes_total for r in rows)
        self._virtual = sum(r.virtual_bytes for r in rows)

    def disk(self, index: int, done: int, _total: int) -> None:
        """copy_sparse's report for disk `index`: `done` bytes of its data."""
        row = self._rows[index]
        # The total found before the copy stands: the rows always add up to the step's.
        self._rows[index] = dataclasses.replace(row, bytes_done=min(done, row.bytes_total))
        self.send()

    def finished(self) -> None:
        self._rows = [dataclasses.replace(r, bytes_done=r.bytes_total) for r in self._rows]
        self.send()

    def send(self) -> None:
        rows = tuple(self._rows)
        done = sum(r.bytes_done for r in rows)
        self._progress(done, self._total, virtual_bytes=self._virtual, disks=rows)


def _uid(job: CloneJob) -> str:
    return _name_uid(job.name)


@functools.lru_cache(maxsize=4096)
def _name_uid(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:8]


def _disk_base(job: CloneJob) -> str:
    if job.target.kind is TargetKind.VM:
        return job.target.vm_name
    return CloneJobName.parse(job.name).clone_job_id


def _disk_stem(job: CloneJob, number: int) -> str:
    return f"{_disk_base(job)}-disk{number}-{_uid(job)}"


def _epoch_path(disk: Path, epoch: int) -> Path:
    """Where the runner of lease `epoch` copies `disk` before renaming it into place."""
    return disk.with_name(f"{disk.stem}.e{epoch}.tmp")


def _remove_older_epochs(disk: Path, epoch: int) -> None:
    """Delete the copies of `disk` left by runners of earlier leases."""
    _remove_older_epoch_files(disk.parent, f"{disk.stem}.e", epoch)


def _remove_older_epoch_files(folder: Path, prefix: str, epoch: int) -> None:
    """Delete `{prefix}{n}.tmp` for every n < `epoch`: what runners of earlier leases
    (killed, or woken too late) left. A paused runner still writing to one writes to
    an unlinked file, and its fenced check fails before it could rename it."""
    if epoch <= 1:
        return  # the first lease: no earlier runner left anything
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(prefix) and name.endswith(".tmp"):
                number = name[len(prefix) : -len(".tmp")]
                if number.isdigit() and int(number) < epoch:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)


def _mtime(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC)


def _write_synced(path: Path, body: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(body)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _owner(manifest_path: Path) -> str | None:
    try:
        value = json.loads(manifest_path.read_text()).get("clone_job")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _xml_owner(xml_path: Path) -> str | None:
    try:
        owner = ET.parse(xml_path).getroot().find("metadata/{urn:clonejob}owner")
    except (OSError, ET.ParseError):
        return None
    return None if owner is None else owner.text
