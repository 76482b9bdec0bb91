"""The store at process level: a bad database stops the server at start, never a
silent reset; and revisions older than the server keeps are OUT_OF_RANGE."""

from __future__ import annotations

import fcntl
import os
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from clonejob_rpc import (
    create,
    disks_body,
    error_info,
    run_to_end,
    stream_error,
    watch,
)
from conftest import Server, ServerPool

from client.launcher import ServerStartError


def start_fails(servers: ServerPool, data_dir: Path) -> ServerStartError:
    """Start a server on `data_dir`; it must exit by itself, with 2."""
    with pytest.raises(ServerStartError) as caught:
        servers.start(data_dir)
    assert caught.value.returncode == 2, (caught.value.returncode, caught.value.log)
    return caught.value


def test_store_corrupt_database_stops_the_server_and_is_left_alone(
    servers: ServerPool, data_dir: Path
) -> None:
    database = data_dir / "clonejob.db"
    garbage = random.Random(3).randbytes(32 * 1024)
    database.write_bytes(garbage)

    failed = start_fails(servers, data_dir)

    assert "corrupt" in failed.log and str(database) in failed.log
    assert database.read_bytes() == garbage  # never reset


def test_store_newer_schema_stops_the_server(servers: ServerPool, data_dir: Path) -> None:
    database = data_dir / "clonejob.db"
    with sqlite3.connect(database) as conn:
        conn.execute("PRAGMA user_version = 999")
    conn.close()

    failed = start_fails(servers, data_dir)

    assert "newer" in failed.log
    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 999
    conn.close()


def test_store_in_use_by_another_server_stops_the_second(
    servers: ServerPool, data_dir: Path
) -> None:
    lock = os.open(data_dir / "clonejob.db.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running server holds it
        failed = start_fails(servers, data_dir)
    finally:
        os.close(lock)
    assert "in use by another clonejob-server" in failed.log


def test_store_resume_from_a_compacted_revision_is_out_of_range(
    servers: ServerPool, data_dir: Path, sample_vm: Callable[..., Path]
) -> None:
    sample_vm(data_dir)
    server = servers.start(data_dir, revision_retention=2)
    stub = server.stub()
    job = run_to_end(stub, create(stub, "compact", disks_body()).name)

    error, seen = stream_error(watch(stub, job.name, after_revision=1))

    assert seen == []
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE  # type: ignore[attr-defined]
    info = error_info(error)
    assert info.reason == "REVISION_COMPACTED"
    assert info.metadata["requested_revision"] == "1"
    oldest = int(info.metadata["oldest_revision"])
    assert oldest > 2
    # From the oldest revision kept on, resuming works and ends with the final state.
    messages = list(watch(stub, job.name, after_revision=oldest - 1))
    assert [m.revision for m in messages][-1] == int(info.metadata["current_revision"])
    assert messages[-1].clone_job.state == job.state


def test_store_resume_from_a_future_revision_is_out_of_range(server: Server) -> None:
    stub = server.stub()
    job = run_to_end(stub, create(stub, "future", disks_body()).name)
    error, _ = stream_error(watch(stub, job.name, after_revision=10_000))
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE  # type: ignore[attr-defined]
    assert error_info(error).reason == "REVISION_NOT_REACHED"
