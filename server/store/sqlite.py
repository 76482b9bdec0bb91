"""The SQLite store: one file in WAL mode, every commit synced before it returns.

All SQLite calls run on two dedicated threads, one writing and one reading, so
the event loop never blocks and each connection stays on its own thread.

One server per database (a lock file beside it makes sure): leases are judged
by this process's clock, and the server publishes its own commits, so the
change feed tells nothing.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

from server.domain.job import CloneJob, State
from server.domain.listing import Cursor, ListQuery
from server.domain.operation import Operation
from server.store import records, schema
from server.store.base import (
    ChangeListener,
    ClaimResult,
    ConflictError,
    DuplicateJobError,
    Lease,
    LeaseLostError,
    StoreError,
)
from server.store.lane import Lane
from server.store.listing import UNFINISHED_STATES, list_sql, operations_sql

T = TypeVar("T")

PAGE_TOKEN_KEY_FILE = "page-token.key"


def migrations() -> list[str]:
    """The numbered SQLite migrations, in order; the schema version is how many ran."""
    return schema.migrations("sqlite")


# Changes committed together at most (one transaction, one fsync).
MAX_BATCH = 256
# Group commit: changes queued while a transaction runs go in the next one. When
# some did queue (writers contend), that next batch first lingers for LINGER, so a
# steady stream of changes shares each fsync among many, not one or two: at 64
# Creates in flight batches went from 1-2 to 5-8 changes and a Create's server CPU
# fell by a quarter. A lone writer (nothing queued behind it) never waits.
LINGER = 0.001
_UNFINISHED = tuple(int(s) for s in State if not s.terminal)
# A change that fails with one of these fails alone; the rest of its batch commits.
_FAILS_ALONE = (sqlite3.IntegrityError, ConflictError, DuplicateJobError, LeaseLostError)

_Op = Callable[[sqlite3.Connection], Any]

# Without statistics SQLite would rather walk the state index and sort; the
# claim index yields the oldest claimable jobs first and stops at the limit.
CLAIM_SQL = (
    "UPDATE clone_jobs SET lease_owner = ?, lease_epoch = lease_epoch + 1, lease_expires = ?"
    " WHERE name IN ("
    "  SELECT name FROM clone_jobs INDEXED BY clone_jobs_claim"
    f"  WHERE state IN {UNFINISHED_STATES} AND (lease_expires IS NULL OR lease_expires <= ?)"
    "  ORDER BY create_time_us, name LIMIT ?"
    ") RETURNING create_time_us, name, lease_epoch, record"
)
# CANCELLING jobs are few: found by the state index, then sorted.
CLAIM_CANCELLING_SQL = (
    "UPDATE clone_jobs SET lease_owner = ?, lease_epoch = lease_epoch + 1, lease_expires = ?"
    " WHERE name IN ("
    f"  SELECT name FROM clone_jobs WHERE state = {int(State.CANCELLING)}"
    "   AND (lease_expires IS NULL OR lease_expires <= ?)"
    "  ORDER BY create_time_us, name LIMIT ?"
    ") RETURNING create_time_us, name, lease_epoch, record"
)


_INSERT_OPERATION_SQL = (
    f"INSERT INTO operations ({records.OPERATION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
)


class SqliteJobStore:
    def __init__(self, path: Path, *, revision_retention: int = 1000) -> None:
        self.path = path
        # Revisions kept per job for watch resume; older ones are compacted away.
        self.revision_retention = revision_retention
        self._writer = Lane("sqlite-writer")
        self._reader = Lane("sqlite-reader")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        # (change, whether it must be durable, its caller's future)
        self._pending: list[tuple[_Op, bool, asyncio.Future[Any]]] = []
        self._synced = True  # the writer connection's synchronous setting is FULL
        self._flusher: asyncio.Future[None] | None = None

    # -- lifecycle --

    async def open(self) -> None:
        await self._run(self._writer, self._open_writer)
        await self._run(self._reader, self._open_reader)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=0.5
        )
        conn.execute("PRAGMA busy_timeout = 2000")
        # Ids are case-sensitive: a wildcard List's LIKE must be too, as in PostgreSQL.
        conn.execute("PRAGMA case_sensitive_like = ON")
        return conn

    def _open_writer(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One server per database: a second one would run the same jobs twice.
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(
                f"{self.path} is in use by another clonejob-server (lock {self.path}.lock is held)"
            ) from None
        self._lock_fd = fd
        try:
            conn = self._connect()
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"{self.path}: cannot switch to WAL journal mode (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            self._synced = True
            self._migrate(conn)
            problems = conn.execute("PRAGMA quick_check").fetchall()
            if problems != [("ok",)]:
                found = "; ".join(str(row[0]) for row in problems[:3])
                raise StoreError(
                    f"{self.path}: the database file is corrupt ({found}); restore it from a backup"
                )
            # The lock file says no other process runs: every lease left behind is
            # a crashed server's, and must not delay resuming its jobs.
            conn.execute(
                "UPDATE clone_jobs SET lease_owner = NULL, lease_expires = NULL"
                " WHERE lease_owner IS NOT NULL OR lease_expires IS NOT NULL"
            )
        except sqlite3.DatabaseError as error:
            raise StoreError(f"{self.path}: {self._explain(error)}") from error
        self._wconn = conn

    @staticmethod
    def _explain(error: sqlite3.Error) -> str:
        text = str(error)
        if "locked" in text or "busy" in text:
            return f"the database is locked by another process ({text})"
        if "not a database" in text or "malformed" in text:
            return f"the database file is corrupt ({text}); restore it from a backup"
        return text

    def _migrate(self, conn: sqlite3.Connection) -> None:
        steps = migrations()
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(steps):
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this server's"
                f" {len(steps)}; run a newer clonejob-server"
            )
        for number, sql in enumerate(steps[version:], start=version + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in schema.sqlite_statements(sql):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _open_reader(self) -> None:
        try:
            self._rconn = self._connect()
            self._rconn.execute("PRAGMA query_only = ON")
        except sqlite3.DatabaseError as error:
            raise StoreError(f"{self.path}: {self._explain(error)}") from error

    async def close(self) -> None:
        # Changes already handed to the store are committed before it closes.
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)

        def close_writer() -> None:
            if self._wconn is not None:
                self._wconn.close()
                self._wconn = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

        def close_reader() -> None:
            if self._rconn is not None:
                self._rconn.close()
                self._rconn = None

        await self._run(self._reader, close_reader)
        await self._run(self._writer, close_writer)
        self._reader.shutdown()
        self._writer.shutdown()

    async def _run(self, lane: Lane, fn: Callable[[], T]) -> T:
        try:
            return await lane.run(fn)
        except sqlite3.Error as error:  # disk full, I/O error, …: the store is unavailable
            raise StoreError(f"{self.path}: {self._explain(error)}") from error

    # The lock file keeps every other server off this database.
    exclusive = True

    def describe(self) -> str:
        return str(self.path)

    # -- writes --
    #
    # Group commit: changes that arrive while a commit is under way wait for it,
    # then go together in the next transaction, with one fsync. Each change runs
    # under its own savepoint, so one that fails (a duplicate, a conflict, a lost
    # lease) fails alone; every caller is answered only after the COMMIT that
    # holds its change.

    async def create(self, job: CloneJob, *, operation: Operation | None = None) -> None:
        await self._write(functools.partial(self._insert, job, operation))

    async def update(
        self, job: CloneJob, *, expected_revision: int, epoch: int | None = None
    ) -> None:
        await self._write(functools.partial(self._replace, job, expected_revision, epoch))

    async def update_chain(
        self, jobs: Sequence[CloneJob], *, expected_revision: int, epoch: int | None = None
    ) -> None:
        # One operation, so one savepoint: a refused change undoes the ones before it.
        await self._write(functools.partial(self._replace_chain, jobs, expected_revision, epoch))

    def _replace_chain(
        self,
        jobs: Sequence[CloneJob],
        expected_revision: int,
        epoch: int | None,
        conn: sqlite3.Connection,
    ) -> None:
        for job in jobs:
            self._replace(job, expected_revision, epoch, conn)
            expected_revision = job.revision

    async def _write(self, op: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """`op` committed in the next transaction. A transaction of only changes that
        need not be `durable` (leases, which last the process and are cleared at
        open) is committed without an fsync: a later durable commit syncs the log
        up to and including it."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((op, durable, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        return cast(T, await future)

    async def _flush(self) -> None:
        contended = False
        while self._pending:
            if contended:
                await asyncio.sleep(LINGER)
            batch = self._pending[:MAX_BATCH]
            del self._pending[:MAX_BATCH]
            ops = [op for op, _, _ in batch]
            durable = any(d for _, d, _ in batch)
            outcomes: list[tuple[Any, BaseException | None]]
            try:
                outcomes = await self._run(
                    self._writer, functools.partial(self._commit, ops, durable=durable)
                )
            except asyncio.CancelledError:
                for _, _, future in batch:  # the commit may or may not have happened
                    future.cancel()
                raise
            except Exception as error:  # the COMMIT itself failed: nothing was written
                outcomes = [(None, error)] * len(batch)
            contended = bool(self._pending)
            for (_, _, future), (value, failure) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if failure is None:
                    future.set_result(value)
                else:
                    future.set_exception(failure)

    def _commit(
        self, ops: list[_Op], *, durable: bool = True
    ) -> list[tuple[Any, BaseException | None]]:
        conn = self._w()
        if durable is not self._synced:
            conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'OFF'}")
            self._synced = durable
        outcomes: list[tuple[Any, BaseException | None]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            if len(ops) == 1:  # alone in its transaction: no savepoint to fail alone
                try:
                    outcomes.append((ops[0](conn), None))
                except _FAILS_ALONE as error:
                    conn.execute("ROLLBACK")
                    return [(None, error)]
                conn.execute("COMMIT")
                return outcomes
            for op in ops:
                conn.execute("SAVEPOINT change")
                try:
                    value = op(conn)
                except _FAILS_ALONE as error:
                    conn.execute("ROLLBACK TO change")
                    outcomes.append((None, error))
                else:
                    outcomes.append((value, None))
                conn.execute("RELEASE change")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return outcomes

    def _insert(self, job: CloneJob, operation: Operation | None, conn: sqlite3.Connection) -> None:
        record = records.dump(job)
        try:
            conn.execute(
                "INSERT INTO clone_jobs (name, parent, request_id, state, create_time_us,"
                " revision, record) VALUES (?, ?, ?, ?, ?, ?, ?)",
                records.insert_values(job, record),
            )
        except sqlite3.IntegrityError:
            # The job with this request id first: a retry is told before a taken name.
            row = conn.execute(
                "SELECT record FROM clone_jobs WHERE name = ? OR request_id = ?"
                " ORDER BY request_id IS ? DESC LIMIT 1",
                (job.name, job.request_id or None, job.request_id or None),
            ).fetchone()
            if row is None:
                raise
            raise DuplicateJobError(records.load(row[0])) from None
        conn.execute(
            "INSERT INTO clone_job_revisions (name, revision, record) VALUES (?, ?, ?)",
            (job.name, job.revision, record),
        )
        if operation is not None:
            conn.execute(_INSERT_OPERATION_SQL, records.operation_values(operation))

    def _replace(
        self, job: CloneJob, expected_revision: int, epoch: int | None, conn: sqlite3.Connection
    ) -> None:
        record = records.dump(job)
        # A finished job needs no worker: its lease goes in the same commit.
        release = ", lease_owner = NULL, lease_expires = NULL" if job.state.terminal else ""
        args: tuple[Any, ...] = (int(job.state), job.revision, record, job.name, expected_revision)
        fence = ""
        now = time.time()
        if epoch is not None:  # in the same statement: one call into SQLite, not two
            fence = " AND lease_epoch = ? AND lease_expires > ?"
            args += (epoch, now)
        cursor = conn.execute(
            f"UPDATE clone_jobs SET state = ?, revision = ?, record = ?{release}"
            f" WHERE name = ? AND revision = ?{fence}",
            args,
        )
        if cursor.rowcount != 1:
            # Nothing was written; say why, the lease first.
            if epoch is not None and not _live(conn, job.name, epoch, now):
                raise LeaseLostError(f"{job.name}: epoch {epoch} is not its live lease")
            raise ConflictError(f"{job.name} is not at revision {expected_revision}")
        conn.execute(
            "INSERT INTO clone_job_revisions (name, revision, record) VALUES (?, ?, ?)",
            (job.name, job.revision, record),
        )
        if job.revision > self.revision_retention:  # else there is nothing that old
            conn.execute(
                "DELETE FROM clone_job_revisions WHERE name = ? AND revision <= ?",
                (job.name, job.revision - self.revision_retention),
            )

    # -- leases --
    #
    # Lease changes go through group commit like any write, but write no revision.

    async def claim(
        self, owner: str, *, limit: int, ttl: float, cancelling: bool = False
    ) -> ClaimResult:
        return await self._write(
            functools.partial(self._claim, owner, limit, ttl, cancelling), durable=False
        )

    def _claim(
        self, owner: str, limit: int, ttl: float, cancelling: bool, conn: sqlite3.Connection
    ) -> ClaimResult:
        now = time.time()
        rows: list[Any] = []
        if limit > 0:
            sql = CLAIM_CANCELLING_SQL if cancelling else CLAIM_SQL
            rows = conn.execute(sql, (owner, now + ttl, now, limit)).fetchall()
        rows.sort(key=lambda row: (row[0], row[1]))  # RETURNING keeps no order
        # The earliest expiry among the jobs this claim could take.
        states = f"= {int(State.CANCELLING)}" if cancelling else f"IN {UNFINISHED_STATES}"
        (earliest,) = conn.execute(
            f"SELECT MIN(lease_expires) FROM clone_jobs WHERE state {states} AND lease_expires > ?",
            (now,),
        ).fetchone()
        return ClaimResult(
            leases=[Lease(job=records.load(row[3]), epoch=int(row[2])) for row in rows],
            next_expiry=None if earliest is None else max(0.0, float(earliest) - now),
        )

    async def renew(self, name: str, epoch: int, *, ttl: float) -> bool:
        def renew(conn: sqlite3.Connection) -> bool:
            now = time.time()
            cursor = conn.execute(
                "UPDATE clone_jobs SET lease_expires = ?"
                " WHERE name = ? AND lease_epoch = ? AND lease_expires > ?",
                (now + ttl, name, epoch, now),
            )
            return cursor.rowcount == 1

        return await self._write(renew, durable=False)

    async def release(self, name: str, epoch: int) -> None:
        def release(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE clone_jobs SET lease_owner = NULL, lease_expires = NULL"
                " WHERE name = ? AND lease_epoch = ? AND lease_expires IS NOT NULL",
                (name, epoch),
            )

        await self._write(release, durable=False)

    async def holds(self, name: str, epoch: int) -> bool:
        return await self._run(self._reader, lambda: _live(self._r(), name, epoch, time.time()))

    # -- settings and the change feed --

    async def page_token_key(self, size: int) -> bytes:
        # On the writer thread: two calls never race to make the file.
        return await self._run(self._writer, functools.partial(self._page_token_key, size))

    def _page_token_key(self, size: int) -> bytes:
        path = self.path.parent / PAGE_TOKEN_KEY_FILE
        try:
            try:
                key = path.read_bytes()
            except FileNotFoundError:
                # Written whole under another name, then renamed: a crash never
                # leaves a short key behind.
                key = secrets.token_bytes(size)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(key)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
        except OSError as error:
            raise StoreError(
                f"{path}: cannot read or write the page-token key ({error})"
            ) from error
        if len(key) != size:
            raise StoreError(
                f"{path} holds {len(key)} bytes, not a {size}-byte key: delete it"
                " (page tokens issued before become invalid) and start again"
            )
        return key

    async def listen(self, listener: ChangeListener) -> None:
        # One server per database: the engine publishes its own commits.
        listener.on_available(True)

    # -- reads --

    def _w(self) -> sqlite3.Connection:
        if self._wconn is None:
            raise StoreError("the store is closed")
        return self._wconn

    def _r(self) -> sqlite3.Connection:
        if self._rconn is None:
            raise StoreError("the store is closed")
        return self._rconn

    # Records are decoded on the reader thread too: a job may be up to 1 MiB of JSON.

    async def _one(self, sql: str, args: tuple[Any, ...]) -> CloneJob | None:
        def read() -> CloneJob | None:
            row = self._r().execute(sql, args).fetchone()
            return None if row is None else records.load(row[0])

        return await self._run(self._reader, read)

    async def _many(self, sql: str, args: tuple[Any, ...]) -> list[CloneJob]:
        def read() -> list[CloneJob]:
            return [records.load(r[0]) for r in self._r().execute(sql, args).fetchall()]

        return await self._run(self._reader, read)

    async def get(self, name: str) -> CloneJob | None:
        return await self._one("SELECT record FROM clone_jobs WHERE name = ?", (name,))

    async def revision(self, name: str) -> int | None:
        def read() -> int | None:
            row = (
                self._r()
                .execute("SELECT revision FROM clone_jobs WHERE name = ?", (name,))
                .fetchone()
            )
            return None if row is None else int(row[0])

        return await self._run(self._reader, read)

    async def get_by_request_id(self, request_id: str) -> CloneJob | None:
        return await self._one("SELECT record FROM clone_jobs WHERE request_id = ?", (request_id,))

    async def revisions(self, name: str, *, after: int) -> Sequence[CloneJob]:
        return await self._many(
            "SELECT record FROM clone_job_revisions WHERE name = ? AND revision > ?"
            " ORDER BY revision",
            (name, after),
        )

    async def oldest_revision(self, name: str) -> int:
        row = await self._run(
            self._reader,
            lambda: (
                self._r()
                .execute("SELECT MIN(revision) FROM clone_job_revisions WHERE name = ?", (name,))
                .fetchone()
            ),
        )
        return int(row[0]) if row and row[0] is not None else 0

    async def unfinished(self) -> Sequence[CloneJob]:
        marks = ",".join("?" * len(_UNFINISHED))
        return await self._many(
            f"SELECT record FROM clone_jobs WHERE state IN ({marks}) ORDER BY create_time_us, name",
            _UNFINISHED,
        )

    async def count_by_state(self) -> Mapping[State, int]:
        rows = await self._run(
            self._reader,
            lambda: (
                self._r()
                .execute("SELECT state, COUNT(*) FROM clone_jobs GROUP BY state")
                .fetchall()
            ),
        )
        return {State(int(state)): int(count) for state, count in rows}

    async def list(self, query: ListQuery) -> Sequence[CloneJob]:
        sql, args = list_sql(query, "?")
        return await self._many(sql, tuple(args))

    # -- operations --

    async def add_operation(self, operation: Operation) -> Operation:
        def add(conn: sqlite3.Connection) -> Operation:
            conn.execute(
                _INSERT_OPERATION_SQL.replace("INSERT", "INSERT OR IGNORE", 1),
                records.operation_values(operation),
            )
            row = conn.execute(
                f"SELECT {records.OPERATION_COLUMNS} FROM operations WHERE target = ? AND verb = ?",
                (operation.target, operation.verb.value),
            ).fetchone()
            return records.load_operation(row)

        return await self._write(add)

    async def get_operation(self, name: str) -> Operation | None:
        def read() -> Operation | None:
            row = (
                self._r()
                .execute(
                    f"SELECT {records.OPERATION_COLUMNS} FROM operations WHERE name = ?", (name,)
                )
                .fetchone()
            )
            return None if row is None else records.load_operation(row)

        return await self._run(self._reader, read)

    async def list_operations(
        self, location: str, *, limit: int, after: Cursor | None = None
    ) -> Sequence[Operation]:
        sql, args = operations_sql(location, limit, after, "?")

        def read() -> list[Operation]:
            return [records.load_operation(r) for r in self._r().execute(sql, args).fetchall()]

        return await self._run(self._reader, read)

    async def delete_operation(self, name: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM operations WHERE name = ?", (name,)).rowcount == 1

        return await self._write(delete)


def _live(conn: sqlite3.Connection, name: str, epoch: int, now: float) -> bool:
    """Whether `epoch` is the job's lease and has not expired at `now`."""
    row = conn.execute(
        "SELECT 1 FROM clone_jobs WHERE name = ? AND lease_epoch = ? AND lease_expires > ?",
        (name, epoch, now),
    ).fetchone()
    return row is not None
