"""Durable storage of clone jobs behind the `JobStore` protocol.

SQLite (a file in the data directory, one server) by default; PostgreSQL (any
number of servers on one database) for a `postgresql://` URL.
"""

from __future__ import annotations

from pathlib import Path

from server.store.base import (
    ChangeListener,
    ClaimResult,
    ConflictError,
    DuplicateJobError,
    JobStore,
    Lease,
    LeaseLostError,
    StoreError,
    StoreUnavailableError,
)
from server.store.postgres import PostgresJobStore, redact
from server.store.sqlite import SqliteJobStore

SQLITE_FILE = "clonejob.db"
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(text: str) -> bool:
    """Whether `text` names a PostgreSQL database (a `postgresql://` or `postgres://` URL)."""
    return text.strip().lower().startswith(_POSTGRES_SCHEMES)


def open_store(
    url: str | None,
    data_dir: Path,
    *,
    revision_retention: int = 1000,
    connect_timeout: float = 30.0,
) -> JobStore:
    """The store for `--store`: SQLite in `data_dir` when `url` is None, else
    PostgreSQL at `url`. Not opened yet: the caller awaits `open()`."""
    if url is None:
        return SqliteJobStore(data_dir / SQLITE_FILE, revision_retention=revision_retention)
    if not is_postgres_url(url):
        raise StoreError(f"--store: {redact(url)} is not a postgresql:// URL")
    return PostgresJobStore(
        url.strip(), revision_retention=revision_retention, connect_timeout=connect_timeout
    )


__all__ = [
    "SQLITE_FILE",
    "ChangeListener",
    "ClaimResult",
    "ConflictError",
    "DuplicateJobError",
    "JobStore",
    "Lease",
    "LeaseLostError",
    "PostgresJobStore",
    "SqliteJobStore",
    "StoreError",
    "StoreUnavailableError",
    "is_postgres_url",
    "open_store",
]
