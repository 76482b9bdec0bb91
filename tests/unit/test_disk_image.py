"""Tests for server.targets.disk_image: sample disks, boot detection, sparse copy."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import struct
import threading
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest

from server.targets.disk_image import (
    CopyCancelledError,
    UnbootableDiskError,
    copy_sparse,
    data_bytes,
    detect_boot,
    write_sample_disk,
)

MIB = 1024 * 1024
ESP = uuid.UUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
LINUX = uuid.UUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def no_reflink(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the extent copy even on filesystems that support FICLONE."""

    def ioctl(*args: Any) -> None:
        raise OSError(errno.EOPNOTSUPP, "no reflink")

    monkeypatch.setattr(fcntl, "ioctl", ioctl)


@pytest.fixture
def sparse_disk(tmp_path: Path) -> Path:
    path = tmp_path / "src.img"
    write_sample_disk(path, 64 * MIB, boot=True, firmware="efi", seed=7)
    return path


def test_detect_boot_efi_sample_is_gpt_with_two_partitions(tmp_path: Path) -> None:
    path = tmp_path / "efi.img"
    write_sample_disk(path, 64 * MIB, boot=True, firmware="efi", seed=1)
    info = detect_boot(path)
    assert (info.firmware, info.partition_table, info.partitions) == ("efi", "gpt", 2)


def test_detect_boot_small_efi_sample_is_gpt(tmp_path: Path) -> None:
    path = tmp_path / "tiny.img"
    write_sample_disk(path, MIB, boot=True, firmware="efi", seed=1)
    info = detect_boot(path)
    assert (info.firmware, info.partition_table, info.partitions) == ("efi", "gpt", 2)


def test_detect_boot_bios_sample_is_mbr(tmp_path: Path) -> None:
    path = tmp_path / "bios.img"
    write_sample_disk(path, 8 * MIB, boot=True, firmware="bios", seed=2)
    info = detect_boot(path)
    assert (info.firmware, info.partition_table, info.partitions) == ("bios", "mbr", 1)


def test_detect_boot_gpt_without_esp_is_bios(tmp_path: Path) -> None:
    path = tmp_path / "gpt-bios.img"
    write_sample_disk(path, 8 * MIB, boot=True, firmware="efi", seed=3)
    with path.open("r+b") as f:
        f.seek(512)
        header = bytearray(f.read(92))
        f.seek(1024)
        entries = bytearray(f.read(128 * 128))
        entries[0:16] = LINUX.bytes_le  # ESP becomes a plain Linux partition
        struct.pack_into("<I", header, 88, zlib.crc32(entries))
        struct.pack_into("<I", header, 16, 0)
        struct.pack_into("<I", header, 16, zlib.crc32(header))
        f.seek(512)
        f.write(header)
        f.seek(1024)
        f.write(entries)
    info = detect_boot(path)
    assert (info.firmware, info.partition_table, info.partitions) == ("bios", "gpt", 2)


def test_detect_boot_non_boot_disk_raises(tmp_path: Path) -> None:
    path = tmp_path / "data.img"
    write_sample_disk(path, 4 * MIB, boot=False, firmware="efi", seed=4)
    with pytest.raises(UnbootableDiskError, match="no MBR or GPT partition table"):
        detect_boot(path)


@pytest.mark.parametrize("size", [0, 100, 511, 512, 1000, 4096, 64 * 1024])
def test_detect_boot_garbage_raises(tmp_path: Path, size: int) -> None:
    path = tmp_path / "garbage.img"
    path.write_bytes(os.urandom(size))
    with pytest.raises(UnbootableDiskError):
        detect_boot(path)


@pytest.mark.parametrize("size", [100, 512, 600, 1024, 2048, 17000])
def test_detect_boot_truncated_efi_disk_raises(tmp_path: Path, size: int) -> None:
    full = tmp_path / "full.img"
    write_sample_disk(full, MIB, boot=True, firmware="efi", seed=5)
    path = tmp_path / "truncated.img"
    path.write_bytes(full.read_bytes()[:size])
    with pytest.raises(UnbootableDiskError):
        detect_boot(path)


def test_detect_boot_corrupt_gpt_header_raises(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.img"
    write_sample_disk(path, 4 * MIB, boot=True, firmware="efi", seed=6)
    with path.open("r+b") as f:
        f.seek(512 + 40)  # first usable LBA, covered by the header CRC
        f.write(b"\xff")
    with pytest.raises(UnbootableDiskError, match="checksum"):
        detect_boot(path)


def test_detect_boot_protective_mbr_with_garbage_after_raises(tmp_path: Path) -> None:
    path = tmp_path / "protective.img"
    write_sample_disk(path, 4 * MIB, boot=True, firmware="efi", seed=6)
    data = bytearray(path.read_bytes())
    data[512 : 2 * MIB] = os.urandom(2 * MIB - 512)
    path.write_bytes(bytes(data))
    with pytest.raises(UnbootableDiskError):
        detect_boot(path)


def test_write_sample_disk_gpt_header_and_esp_entry_are_valid(tmp_path: Path) -> None:
    path = tmp_path / "efi.img"
    size = 64 * MIB
    write_sample_disk(path, size, boot=True, firmware="efi", seed=8)
    data = path.read_bytes()
    assert len(data) == size
    assert data[510:512] == b"\x55\xaa"
    assert data[446 + 4] == 0xEE
    sectors = size // 512

    for header_lba, entries_lba in [(1, 2), (sectors - 1, sectors - 33)]:
        header = data[header_lba * 512 : header_lba * 512 + 92]
        assert header[:8] == b"EFI PART"
        revision, header_size, crc = struct.unpack_from("<III", header, 8)
        assert (revision, header_size) == (0x00010000, 92)
        assert zlib.crc32(header[:16] + b"\0\0\0\0" + header[20:]) == crc
        my_lba, alt_lba = struct.unpack_from("<QQ", header, 24)
        assert (my_lba, alt_lba) == (header_lba, 1 if header_lba != 1 else sectors - 1)
        array_lba, count, entry_size, array_crc = struct.unpack_from("<QIII", header, 72)
        assert (array_lba, count, entry_size) == (entries_lba, 128, 128)
        array = data[array_lba * 512 : array_lba * 512 + count * entry_size]
        assert zlib.crc32(array) == array_crc

    array = data[1024 : 1024 + 128 * 128]
    assert array[0:16] == ESP.bytes_le
    assert array[128 : 128 + 16] == LINUX.bytes_le
    esp_first, esp_last = struct.unpack_from("<QQ", array, 32)
    root_first, root_last = struct.unpack_from("<QQ", array, 128 + 32)
    assert esp_first % 2048 == 0 and root_first % 2048 == 0
    assert esp_last - esp_first + 1 == sectors // 8
    assert root_first == esp_last + 1
    assert root_last == sectors - 34


def test_write_sample_disk_is_deterministic_and_sparse(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.img", tmp_path / "b.img", tmp_path / "c.img"
    for path, seed in [(a, 9), (b, 9), (c, 10)]:
        write_sample_disk(path, 32 * MIB, boot=False, firmware="bios", seed=seed)
    assert _sha256(a) == _sha256(b) != _sha256(c)
    assert a.stat().st_blocks * 512 <= 32 * MIB // 2


def test_write_sample_disk_rejects_bad_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_sample_disk(tmp_path / "x.img", MIB + 1, boot=False, firmware="efi", seed=0)
    with pytest.raises(ValueError):
        write_sample_disk(tmp_path / "x.img", MIB // 2, boot=False, firmware="efi", seed=0)


@pytest.mark.usefixtures("no_reflink")
def test_copy_sparse_copies_identically_and_keeps_holes(tmp_path: Path, sparse_disk: Path) -> None:
    dst = tmp_path / "dst.img"
    size = sparse_disk.stat().st_size
    result = copy_sparse(
        sparse_disk, dst, on_progress=lambda done, total: None, cancelled=threading.Event()
    )
    assert _sha256(dst) == _sha256(sparse_disk)
    assert dst.stat().st_size == size
    assert dst.stat().st_blocks * 512 <= size // 2
    assert result.bytes_total == size
    assert not result.reflinked
    assert 0 < result.bytes_copied < size
    assert (dst.stat().st_mode & 0o777) == 0o644 & ~_umask()


@pytest.mark.usefixtures("no_reflink")
def test_copy_sparse_overwrites_existing_destination(tmp_path: Path, sparse_disk: Path) -> None:
    dst = tmp_path / "dst.img"
    dst.write_bytes(b"\x01" * (80 * MIB))
    copy_sparse(sparse_disk, dst, on_progress=lambda d, t: None, cancelled=threading.Event())
    assert _sha256(dst) == _sha256(sparse_disk)


@pytest.mark.usefixtures("no_reflink")
def test_copy_sparse_progress_is_monotonic_and_ends_at_total(
    tmp_path: Path, sparse_disk: Path
) -> None:
    calls: list[tuple[int, int]] = []
    result = copy_sparse(
        sparse_disk,
        tmp_path / "dst.img",
        on_progress=lambda done, total: calls.append((done, total)),
        cancelled=threading.Event(),
        chunk_size=256 * 1024,
    )
    size = result.bytes_copied  # progress counts data: holes are neither done nor in the total
    assert len(calls) > 2
    assert all(total == size for _, total in calls)
    dones = [done for done, _ in calls]
    assert dones == sorted(dones)
    assert calls[-1] == (size, size)


@pytest.mark.usefixtures("no_reflink")
def test_copy_sparse_without_seek_data_copies_whole_file(
    tmp_path: Path, sparse_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "SEEK_DATA")
    dst = tmp_path / "dst.img"
    result = copy_sparse(
        sparse_disk, dst, on_progress=lambda d, t: None, cancelled=threading.Event()
    )
    assert _sha256(dst) == _sha256(sparse_disk)
    assert result.bytes_copied == result.bytes_total


@pytest.mark.usefixtures("no_reflink")
def test_copy_sparse_falls_back_to_pread_when_copy_file_range_fails(
    tmp_path: Path, sparse_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def copy_file_range(*args: Any) -> int:
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", copy_file_range)
    dst = tmp_path / "dst.img"
    result = copy_sparse(
        sparse_disk, dst, on_progress=lambda d, t: None, cancelled=threading.Event()
    )
    assert _sha256(dst) == _sha256(sparse_disk)
    assert result.bytes_copied < result.bytes_total


@pytest.mark.usefixtures("no_reflink")
def test_copy_sparse_cancel_from_progress_raises(tmp_path: Path, sparse_disk: Path) -> None:
    cancelled = threading.Event()
    calls: list[int] = []

    def on_progress(done: int, total: int) -> None:
        calls.append(done)
        cancelled.set()

    with pytest.raises(CopyCancelledError):
        copy_sparse(
            sparse_disk,
            tmp_path / "dst.img",
            on_progress=on_progress,
            cancelled=cancelled,
            chunk_size=MIB,
        )
    assert len(calls) == 1


def test_copy_sparse_already_cancelled_raises(tmp_path: Path, sparse_disk: Path) -> None:
    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(CopyCancelledError):
        copy_sparse(
            sparse_disk, tmp_path / "dst.img", on_progress=lambda d, t: None, cancelled=cancelled
        )


@pytest.mark.usefixtures("no_reflink")
def test_copy_sparse_enospc_propagates(
    tmp_path: Path, sparse_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def copy_file_range(*args: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "copy_file_range", copy_file_range)
    with pytest.raises(OSError) as excinfo:
        copy_sparse(
            sparse_disk,
            tmp_path / "dst.img",
            on_progress=lambda d, t: None,
            cancelled=threading.Event(),
        )
    assert excinfo.value.errno == errno.ENOSPC
    assert not isinstance(excinfo.value, CopyCancelledError)


def test_copy_sparse_reflink_reports_total_without_copying(
    tmp_path: Path, sparse_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests: list[int] = []

    def ioctl(fd: int, request: int, arg: int) -> int:
        requests.append(request)
        return 0

    monkeypatch.setattr(fcntl, "ioctl", ioctl)
    calls: list[tuple[int, int]] = []
    result = copy_sparse(
        sparse_disk,
        tmp_path / "dst.img",
        on_progress=lambda d, t: calls.append((d, t)),
        cancelled=threading.Event(),
    )
    size = sparse_disk.stat().st_size
    assert requests == [0x40049409]
    assert result.reflinked and result.bytes_copied == 0 and result.bytes_total == size
    assert calls == [(data_bytes(sparse_disk), data_bytes(sparse_disk))]


def test_copy_sparse_refuses_to_copy_onto_itself(sparse_disk: Path) -> None:
    digest = _sha256(sparse_disk)
    with pytest.raises(ValueError):
        copy_sparse(
            sparse_disk, sparse_disk, on_progress=lambda d, t: None, cancelled=threading.Event()
        )
    assert _sha256(sparse_disk) == digest


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
