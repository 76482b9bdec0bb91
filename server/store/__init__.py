"""Durable storage of clone jobs behind the `JobStore` protocol."""

from server.store.base import (
    ConflictError,
    DuplicateJobError,
    JobStore,
    StoreError,
)
from server.store.sqlite import SqliteJobStore

__all__ = ["ConflictError", "DuplicateJobError", "JobStore", "SqliteJobStore", "StoreError"]
