"""Disk image files: synthetic sample disks, boot detection and sparse copies.

All functions block on file I/O; callers run them in a worker thread.
Sectors are always 512 bytes: the sample disks are written that way and
cloud disk images use 512-byte logical sectors.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import struct
import threading
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

SECTOR = 512
MIB = 1024 * 1024
MIN_DISK_BYTES = MIB
# Sample data: a quarter of the disk, but never more than this, so big
# sample disks stay cheap to create and to copy.
MAX_SAMPLE_DATA = 64 * MIB

ESP_TYPE = uuid.UUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
LINUX_FS_TYPE = uuid.UUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4")

# linux/fs.h: _IOW(0x94, 9, int); shares the source's extents (btrfs, XFS).
FICLONE = 0x40049409

_MBR_SIGNATURE = b"\x55\xaa"
_MBR_TABLE_OFFSET = 446
# status, CHS first, type, CHS last, first LBA, sector count
_MBR_ENTRY = struct.Struct("<B3sB3sII")
_MBR_PROTECTIVE = 0xEE
_MBR_LINUX = 0x83
_MBR_ACTIVE = 0x80

_GPT_SIGNATURE = b"EFI PART"
_GPT_REVISION = 0x00010000
_GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")  # 92 bytes
_GPT_ENTRY = struct.Struct("<16s16sQQQ72s")  # 128 bytes
_GPT_ENTRIES = 128
_GPT_ARRAY_SECTORS = _GPT_ENTRIES * _GPT_ENTRY.size // SECTOR  # 32
# Bound what a (CRC-valid but odd) header can make us read.
_GPT_MAX_ARRAY_BYTES = MIB
_ALIGN_SECTORS = 2048  # 1 MiB, what partitioning tools use

# copy_file_range errors that mean "not possible here", not "the copy failed".
_NO_COPY_FILE_RANGE = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP})


class DiskImageError(Exception):
    """Base class of this module's errors."""


class UnbootableDiskError(DiskImageError):
    """The image has no partition table a firmware could boot from."""


class CopyCancelledError(DiskImageError):
    """The copy stopped because its cancel event was set."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BootInfo:
    """How a boot disk boots, as read from its partition table."""

    firmware: Literal["efi", "bios"]
    partition_table: Literal["gpt", "mbr"]
    partitions: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CopyResult:
    """Outcome of copy_sparse; bytes_copied counts data bytes only, not holes."""

    bytes_total: int
    bytes_copied: int
    reflinked: bool


# --- sample disks -----------------------------------------------------------


def write_sample_disk(
    path: Path,
    size_bytes: int,
    *,
    boot: bool,
    firmware: Literal["efi", "bios"],
    seed: int,
) -> None:
    """Create a sparse synthetic disk image, deterministic from `seed`.

    Boot disks get a GPT (efi) or MBR (bios) partition table; data disks none.
    Pseudo-random data fills a few regions (about a quarter of the disk, at
    most 64 MiB); everything else is left as holes.
    """
    if size_bytes < MIN_DISK_BYTES or size_bytes % SECTOR:
        raise ValueError(
            f"disk size must be a multiple of {SECTOR} bytes and at least 1 MiB, got {size_bytes}"
        )
    if firmware not in ("efi", "bios"):
        raise ValueError(f"firmware must be 'efi' or 'bios', got {firmware!r}")
    rng = random.Random(seed)
    sectors = size_bytes // SECTOR
    writes: list[tuple[int, bytes]] = []
    head_sectors, tail_sectors = 1, 0  # LBA 0 stays empty even on data disks
    if boot and firmware == "efi":
        writes = _gpt_layout(sectors, rng)
        head_sectors, tail_sectors = 2 + _GPT_ARRAY_SECTORS, 1 + _GPT_ARRAY_SECTORS
    elif boot:
        writes = [(0, _bios_mbr(sectors, rng))]

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size_bytes)
        for offset, data in writes:
            _pwrite_all(fd, data, offset)
        lo = _align_up(head_sectors * SECTOR, 4096)
        hi = _align_down(size_bytes - tail_sectors * SECTOR, 4096)
        for offset, length in _data_regions(lo, hi, min(size_bytes // 4, MAX_SAMPLE_DATA)):
            for piece in range(offset, offset + length, MIB):
                _pwrite_all(fd, rng.randbytes(min(MIB, offset + length - piece)), piece)
        os.fsync(fd)
    finally:
        os.close(fd)


def _data_regions(lo: int, hi: int, budget: int) -> list[tuple[int, int]]:
    """(offset, length) of the data regions: one right after the tables, then
    whole 1 MiB blocks spread evenly over the rest of the disk."""
    first = min(MIB, budget, hi - lo)
    if first <= 0:
        return []
    regions = [(lo, first)]
    slot_start = _align_up(lo + first, MIB)
    slots = max(0, (hi - slot_start) // MIB)
    count = min(slots, (budget - first) // MIB)
    step = slots / count if count else 0.0
    for i in range(count):
        regions.append((slot_start + int(i * step) * MIB, MIB))
    return regions


def _gpt_layout(sectors: int, rng: random.Random) -> list[tuple[int, bytes]]:
    """Protective MBR, primary and backup GPT with an ESP and a Linux partition."""
    first_usable = 2 + _GPT_ARRAY_SECTORS
    last_usable = sectors - 2 - _GPT_ARRAY_SECTORS
    esp_start = _ALIGN_SECTORS
    esp_len = max(_ALIGN_SECTORS, sectors // 8 // _ALIGN_SECTORS * _ALIGN_SECTORS)
    if esp_start + esp_len > last_usable:
        # Too small to align and still leave room for the root partition.
        esp_start = first_usable
        esp_len = max(1, (last_usable - first_usable + 1) // 8)
    root_start = esp_start + esp_len

    disk_guid = _guid(rng)
    entries = bytearray(_GPT_ENTRIES * _GPT_ENTRY.size)
    for index, (type_guid, start, end, name) in enumerate(
        [
            (ESP_TYPE, esp_start, root_start - 1, "EFI System Partition"),
            (LINUX_FS_TYPE, root_start, last_usable, "Linux filesystem"),
        ]
    ):
        _GPT_ENTRY.pack_into(
            entries,
            index * _GPT_ENTRY.size,
            type_guid.bytes_le,
            _guid(rng).bytes_le,
            start,
            end,
            0,
            name.encode("utf-16-le"),
        )
    entries_crc = zlib.crc32(entries)
    backup_entries_lba = sectors - 1 - _GPT_ARRAY_SECTORS

    def header(my_lba: int, alternate_lba: int, entries_lba: int) -> bytes:
        fields = [
            _GPT_SIGNATURE,
            _GPT_REVISION,
            _GPT_HEADER.size,
            0,  # header CRC, computed with this field zero
            0,
            my_lba,
            alternate_lba,
            first_usable,
            last_usable,
            disk_guid.bytes_le,
            entries_lba,
            _GPT_ENTRIES,
            _GPT_ENTRY.size,
            entries_crc,
        ]
        fields[3] = zlib.crc32(_GPT_HEADER.pack(*fields))
        return _GPT_HEADER.pack(*fields).ljust(SECTOR, b"\0")

    protective = _mbr([(0, _MBR_PROTECTIVE, 1, min(sectors - 1, 0xFFFFFFFF))], disk_signature=0)
    return [
        (0, protective),
        (SECTOR, header(1, sectors - 1, 2)),
        (2 * SECTOR, bytes(entries)),
        (backup_entries_lba * SECTOR, bytes(entries)),
        ((sectors - 1) * SECTOR, header(sectors - 1, 1, backup_entries_lba)),
    ]


def _bios_mbr(sectors: int, rng: random.Random) -> bytes:
    """An MBR with one active Linux partition covering the disk."""
    start = _ALIGN_SECTORS if sectors > 2 * _ALIGN_SECTORS else 1
    return _mbr(
        [(_MBR_ACTIVE, _MBR_LINUX, start, min(sectors - start, 0xFFFFFFFF))],
        disk_signature=rng.getrandbits(32),
    )


def _mbr(partitions: list[tuple[int, int, int, int]], *, disk_signature: int) -> bytes:
    """An MBR sector from (status, type, first LBA, sector count) tuples."""
    sector = bytearray(SECTOR)
    struct.pack_into("<I", sector, 440, disk_signature)
    for index, (status, ptype, first, count) in enumerate(partitions):
        _MBR_ENTRY.pack_into(
            sector,
            _MBR_TABLE_OFFSET + index * _MBR_ENTRY.size,
            status,
            _chs(first),
            ptype,
            _chs(first + count - 1),
            first,
            count,
        )
    sector[510:512] = _MBR_SIGNATURE
    return bytes(sector)


def _chs(lba: int) -> bytes:
    """CHS address for the legacy MBR fields (255 heads, 63 sectors/track)."""
    if lba >= 1024 * 255 * 63:
        return b"\xfe\xff\xff"  # the conventional "beyond CHS" marker
    cylinder, rest = divmod(lba, 255 * 63)
    head, sector = divmod(rest, 63)
    return bytes([head, ((cylinder >> 2) & 0xC0) | (sector + 1), cylinder & 0xFF])


def _guid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


# --- boot detection ---------------------------------------------------------


def detect_boot(path: Path) -> BootInfo:
    """Read the partition table of a boot disk image and say how it boots.

    GPT with an EFI System Partition boots with UEFI; GPT without one (BIOS
    boot on GPT) or an MBR with an active partition boots with BIOS. Anything
    else raises UnbootableDiskError. A missing or unreadable file raises OSError.
    """
    with path.open("rb") as f:
        mbr = _read_exactly(f, 0, SECTOR)
        if mbr is None or mbr[510:512] != _MBR_SIGNATURE:
            raise UnbootableDiskError("boot disk has no MBR or GPT partition table")
        entries = [
            _MBR_ENTRY.unpack_from(mbr, _MBR_TABLE_OFFSET + i * _MBR_ENTRY.size) for i in range(4)
        ]
        # Real MBRs only use 0x00 and 0x80 here; anything else is, e.g., a
        # filesystem boot sector that happens to end in 0x55AA.
        if any(status not in (0, _MBR_ACTIVE) for status, *_ in entries):
            raise UnbootableDiskError("boot disk has no MBR or GPT partition table")
        if any(ptype == _MBR_PROTECTIVE for _, _, ptype, *_ in entries):
            return _detect_gpt(f)
    used = [e for e in entries if e[2] != 0 and e[5] != 0]
    if not used:
        raise UnbootableDiskError("boot disk's MBR partition table has no partitions")
    if not any(status == _MBR_ACTIVE for status, *_ in used):
        raise UnbootableDiskError(
            "boot disk's MBR has no active (bootable) partition, so a BIOS would not boot it"
        )
    return BootInfo(firmware="bios", partition_table="mbr", partitions=len(used))


def _detect_gpt(f: BinaryIO) -> BootInfo:
    sector = _read_exactly(f, SECTOR, SECTOR)
    if sector is None or sector[:8] != _GPT_SIGNATURE:
        raise UnbootableDiskError(
            "boot disk has a protective MBR but no GPT header after it; the image may be truncated"
        )
    fields = _GPT_HEADER.unpack_from(sector)
    header_size, header_crc, my_lba = fields[2], fields[3], fields[5]
    entries_lba, count, entry_size, entries_crc = fields[10:14]
    if not _GPT_HEADER.size <= header_size <= SECTOR:
        raise UnbootableDiskError("boot disk's GPT header is corrupt (bad header size)")
    zeroed = sector[:16] + b"\0\0\0\0" + sector[20:header_size]
    if zlib.crc32(zeroed) != header_crc or my_lba != 1:
        raise UnbootableDiskError("boot disk's GPT header is corrupt (checksum mismatch)")
    array_bytes = count * entry_size
    if (
        entry_size < _GPT_ENTRY.size
        or entry_size % 8
        or array_bytes > _GPT_MAX_ARRAY_BYTES
        or entries_lba < 2
    ):
        raise UnbootableDiskError("boot disk's GPT header describes an invalid partition array")
    array = _read_exactly(f, entries_lba * SECTOR, array_bytes)
    if array is None:
        raise UnbootableDiskError(
            "boot disk's GPT partition array is missing; the image may be truncated"
        )
    if zlib.crc32(array) != entries_crc:
        raise UnbootableDiskError("boot disk's GPT partition array is corrupt (checksum mismatch)")
    empty = bytes(16)
    types = [array[i : i + 16] for i in range(0, array_bytes, entry_size)]
    used = [t for t in types if t != empty]
    if not used:
        raise UnbootableDiskError("boot disk's GPT partition table has no partitions")
    firmware: Literal["efi", "bios"] = "efi" if ESP_TYPE.bytes_le in used else "bios"
    return BootInfo(firmware=firmware, partition_table="gpt", partitions=len(used))


def _read_exactly(f: BinaryIO, offset: int, size: int) -> bytes | None:
    """`size` bytes at `offset`, or None if the file ends before that."""
    f.seek(offset)
    data = f.read(size)
    while len(data) < size:
        more = f.read(size - len(data))
        if not more:
            return None
        data += more
    return data


# --- sparse copy ------------------------------------------------------------


def copy_sparse(
    src: Path,
    dst: Path,
    *,
    on_progress: Callable[[int, int], None],
    cancelled: threading.Event,
    chunk_size: int = 8 * MIB,
) -> CopyResult:
    """Copy `src` to `dst` (created or truncated), keeping holes as holes.

    Tries a reflink first; otherwise copies only the data extents, in chunks
    of `chunk_size`. After each chunk, reports `on_progress(done, total)` in
    bytes of data (`total` is data_bytes(src): holes count neither as done
    nor in the total) and raises CopyCancelledError if `cancelled` is set; on
    cancel or error `dst` is left partially written. OSError (ENOSPC, EIO,
    ...) propagates unchanged.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if cancelled.is_set():
        raise CopyCancelledError(f"copy of {src} cancelled before it started")
    src_fd = os.open(src, os.O_RDONLY)
    try:
        src_stat = os.fstat(src_fd)
        try:
            dst_stat = os.stat(dst)
        except FileNotFoundError:
            pass
        else:
            # O_TRUNC on the source itself would destroy it.
            if (dst_stat.st_dev, dst_stat.st_ino) == (src_stat.st_dev, src_stat.st_ino):
                raise ValueError(f"cannot copy {src} onto itself")
        total = src_stat.st_size
        # Found before the copy, so that every report has the same total.
        extents = list(_data_extents(src_fd, total))
        data = sum(end - start for start, end in extents)
        dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if _reflink(src_fd, dst_fd):
                os.fsync(dst_fd)
                on_progress(data, data)
                return CopyResult(bytes_total=total, bytes_copied=0, reflinked=True)
            copied = _copy_extents(
                src, src_fd, dst_fd, total, extents, data, on_progress, cancelled, chunk_size
            )
            os.fsync(dst_fd)
            return CopyResult(bytes_total=total, bytes_copied=copied, reflinked=False)
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)


def _reflink(src_fd: int, dst_fd: int) -> bool:
    """Clone src into dst; False where the filesystem cannot."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError:
        # Any failure (EOPNOTSUPP, EXDEV, EINVAL, ...) leaves dst empty; the
        # extent copy that follows reports real I/O problems itself.
        return False
    return True


def _copy_extents(
    src: Path,
    src_fd: int,
    dst_fd: int,
    total: int,
    extents: list[tuple[int, int]],
    data: int,
    on_progress: Callable[[int, int], None],
    cancelled: threading.Event,
    chunk_size: int,
) -> int:
    os.ftruncate(dst_fd, total)  # holes everywhere; data extents are filled in
    copied = 0
    reported = -1
    use_copy_file_range = hasattr(os, "copy_file_range")
    for start, end in extents:
        offset = start
        while offset < end:
            n = min(chunk_size, end - offset)
            if use_copy_file_range:
                try:
                    _copy_file_range_all(src, src_fd, dst_fd, offset, n)
                except OSError as e:
                    if e.errno not in _NO_COPY_FILE_RANGE:
                        raise
                    use_copy_file_range = False
                    _pread_pwrite_all(src, src_fd, dst_fd, offset, n)
            else:
                _pread_pwrite_all(src, src_fd, dst_fd, offset, n)
            offset += n
            copied += n
            on_progress(copied, data)
            reported = copied
            # Checked after reporting so a cancel requested from on_progress
            # takes effect before another chunk is copied.
            if cancelled.is_set():
                raise CopyCancelledError(f"copy of {src} cancelled at byte {offset} of {total}")
    if reported != data:  # a source of holes only: nothing to copy, done at once
        on_progress(data, data)
    return copied


def data_bytes(path: Path) -> int:
    """Bytes of data `path` holds: the size of its data extents (holes left out;
    the whole file where the filesystem cannot tell holes)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return sum(end - start for start, end in _data_extents(fd, os.fstat(fd).st_size))
    finally:
        os.close(fd)


def _data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each data extent; the whole file where holes are unknown."""
    seek_data = getattr(os, "SEEK_DATA", None)
    seek_hole = getattr(os, "SEEK_HOLE", None)
    if seek_data is None or seek_hole is None:
        if size:
            yield 0, size
        return
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, seek_data)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after pos: the rest is a hole
                return
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield pos, size
                return
            raise
        if start >= size:
            return
        try:
            end = min(os.lseek(fd, start, seek_hole), size)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                end = size
            else:
                raise
        yield start, end
        pos = end


def _copy_file_range_all(src: Path, src_fd: int, dst_fd: int, offset: int, n: int) -> None:
    done = 0
    while done < n:
        count = os.copy_file_range(src_fd, dst_fd, n - done, offset + done, offset + done)
        if count == 0:
            raise _source_shrank(src, offset + done)
        done += count


def _pread_pwrite_all(src: Path, src_fd: int, dst_fd: int, offset: int, n: int) -> None:
    done = 0
    while done < n:
        data = os.pread(src_fd, n - done, offset + done)
        if not data:
            raise _source_shrank(src, offset + done)
        _pwrite_all(dst_fd, data, offset + done)
        done += len(data)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _source_shrank(src: Path, offset: int) -> OSError:
    return OSError(
        errno.EIO, f"{src} ended early at byte {offset}; was it changed during the copy?"
    )


def _align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def _align_down(value: int, alignment: int) -> int:
    return value // alignment * alignment
