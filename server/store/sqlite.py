"""The SQLite store: one file in WAL mode, every commit synced before it returns.

All SQLite calls run on two dedicated threads, one writing and one reading, so
the event loop never blocks and each connection stays on its own thread.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from server.domain.job import CloneJob, State
from server.domain.listing import AllOf, Comparison, Field, ListQuery
from server.store import records
from server.store.base import ConflictError, DuplicateJobError, StoreError

T = TypeVar("T")


def migrations() -> list[str]:
    """The numbered migrations, in order; the schema version is how many ran."""
    folder = resources.files("server.store") / "migrations"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(folder / n).read_text() for n in names]


# Changes committed together at most (one transaction, one fsync).
MAX_BATCH = 256
_UNFINISHED = tuple(int(s) for s in State if not s.terminal)
_COLUMNS = {Field.STATE: "state", Field.CREATE_TIME: "create_time_us", Field.NAME: "name"}


class SqliteJobStore:
    def __init__(self, path: Path, *, revision_retention: int = 1000) -> None:
        self.path = path
        # Revisions kept per job for watch resume; older ones are compacted away.
        self.revision_retention = revision_retention
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="sqlite-reader")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._pending: list[tuple[Callable[[sqlite3.Connection], None], asyncio.Future[None]]] = []
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
            self._migrate(conn)
            problems = conn.execute("PRAGMA quick_check").fetchall()
            if problems != [("ok",)]:
                found = "; ".join(str(row[0]) for row in problems[:3])
                raise StoreError(
                    f"{self.path}: the database file is corrupt ({found}); restore it from a backup"
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
                for statement in _statements(sql):
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

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn)
        except sqlite3.Error as error:  # disk full, I/O error, …: the store is unavailable
            raise StoreError(f"{self.path}: {self._explain(error)}") from error

    # -- writes --
    #
    # Group commit: changes that arrive while a commit is under way wait for it,
    # then go together in the next transaction, with one fsync. Each change runs
    # under its own savepoint, so one that fails (a duplicate, a conflict) fails
    # alone; every caller is answered only after the COMMIT that holds its change.

    async def create(self, job: CloneJob) -> None:
        await self._write(functools.partial(self._insert, job))

    async def update(self, job: CloneJob, *, expected_revision: int) -> None:
        await self._write(functools.partial(self._replace, job, expected_revision))

    async def _write(self, op: Callable[[sqlite3.Connection], None]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((op, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        await future

    async def _flush(self) -> None:
        while self._pending:
            batch = self._pending[:MAX_BATCH]
            del self._pending[:MAX_BATCH]
            ops = [op for op, _ in batch]
            try:
                outcomes = await self._run(self._writer, functools.partial(self._commit, ops))
            except asyncio.CancelledError:
                for _, future in batch:  # the commit may or may not have happened
                    future.cancel()
                raise
            except Exception as error:  # the COMMIT itself failed: nothing was written
                outcomes = [error] * len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if outcome is None:
                    future.set_result(None)
                else:
                    future.set_exception(outcome)

    def _commit(
        self, ops: list[Callable[[sqlite3.Connection], None]]
    ) -> list[BaseException | None]:
        conn = self._w()
        outcomes: list[BaseException | None] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                conn.execute("SAVEPOINT change")
                try:
                    op(conn)
                except (sqlite3.IntegrityError, ConflictError, DuplicateJobError) as error:
                    conn.execute("ROLLBACK TO change")
                    outcomes.append(error)
                else:
                    outcomes.append(None)
                conn.execute("RELEASE change")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return outcomes

    def _insert(self, job: CloneJob, conn: sqlite3.Connection) -> None:
        record = records.dump(job)
        try:
            conn.execute(
                "INSERT INTO clone_jobs (name, parent, request_id, state, create_time_us,"
                " revision, record) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    job.name,
                    job.name.rpartition("/cloneJobs/")[0],
                    job.request_id or None,
                    int(job.state),
                    records.to_us(job.create_time),
                    job.revision,
                    record,
                ),
            )
        except sqlite3.IntegrityError:
            row = conn.execute(
                "SELECT record FROM clone_jobs WHERE name = ? OR request_id = ?",
                (job.name, job.request_id or None),
            ).fetchone()
            if row is None:
                raise
            raise DuplicateJobError(records.load(row[0])) from None
        conn.execute(
            "INSERT INTO clone_job_revisions (name, revision, record) VALUES (?, ?, ?)",
            (job.name, job.revision, record),
        )

    def _replace(self, job: CloneJob, expected_revision: int, conn: sqlite3.Connection) -> None:
        record = records.dump(job)
        cursor = conn.execute(
            "UPDATE clone_jobs SET state = ?, revision = ?, record = ?"
            " WHERE name = ? AND revision = ?",
            (int(job.state), job.revision, record, job.name, expected_revision),
        )
        if cursor.rowcount != 1:
            raise ConflictError(f"{job.name} is not at revision {expected_revision}")
        conn.execute(
            "INSERT INTO clone_job_revisions (name, revision, record) VALUES (?, ?, ?)",
            (job.name, job.revision, record),
        )
        conn.execute(
            "DELETE FROM clone_job_revisions WHERE name = ? AND revision <= ?",
            (job.name, job.revision - self.revision_retention),
        )

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
        where = ["parent = ?"]
        args: list[Any] = [query.parent]
        if query.filter is not None:
            clause, values = _filter_sql(query.filter)
            where.append(clause)
            args.extend(values)
        desc = query.order_by.descending
        direction = "DESC" if desc else "ASC"
        if query.order_by.field is Field.NAME:
            order = f"name {direction}"
            if query.after is not None:
                where.append("name < ?" if desc else "name > ?")
                args.append(query.after.name)
        else:
            order = f"create_time_us {direction}, name {direction}"
            if query.after is not None:
                where.append(
                    "(create_time_us, name) < (?, ?)" if desc else "(create_time_us, name) > (?, ?)"
                )
                args.extend([query.after.create_time_us, query.after.name])
        sql = f"SELECT record FROM clone_jobs WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ?"
        args.append(query.limit)
        return await self._many(sql, tuple(args))


def _filter_sql(expr: AllOf) -> tuple[str, list[Any]]:
    groups: list[str] = []
    args: list[Any] = []
    for any_of in expr.terms:
        parts: list[str] = []
        for term in any_of.terms:
            parts.append(f"{_COLUMNS[term.field]} {term.op} ?")
            args.append(_sql_value(term))
        groups.append("(" + " OR ".join(parts) + ")")
    return "(" + " AND ".join(groups) + ")", args


def _sql_value(term: Comparison) -> Any:
    if term.field is Field.STATE:
        return int(term.value)  # type: ignore[arg-type]
    if term.field is Field.CREATE_TIME:
        return records.to_us(term.value)  # type: ignore[arg-type]
    return term.value


def _statements(sql: str) -> list[str]:
    return [s.strip() for s in sql.split(";") if s.strip() and not _only_comments(s)]


def _only_comments(text: str) -> bool:
    return all(line.strip().startswith("--") or not line.strip() for line in text.splitlines())
