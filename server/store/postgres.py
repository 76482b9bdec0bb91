"""The PostgreSQL store: any number of servers sharing one database.

Every write is one statement (data-modifying CTEs) and so one transaction,
which also keeps round trips to one per call. Leases are judged by the
database's clock (`now()`), so servers need not agree on the time. Claims lock
the rows they take with `FOR UPDATE SKIP LOCKED`, so concurrent claims never
wait on one another nor take the same job.

The change feed: a trigger announces every new revision on the channel
`clonejob_changes` (see migrations/postgres/0002_change_feed.sql); each store
keeps one connection listening to it, pinged, and reconnected when it drops.

Connection trouble of any kind (lost connections, a restarting server, a pool
with no free connection in time) surfaces as StoreUnavailableError; no psycopg
exception leaves this module. The pool checks each connection before handing
it out, so after connections were killed or the server restarted, the calls
that follow work again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import secrets
import select
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

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
    StoreUnavailableError,
)
from server.store.listing import UNFINISHED_STATES, list_sql, operations_sql

log = logging.getLogger(__name__)

CHANNEL = "clonejob_changes"
# Held (per database, for one transaction) while migrations run, so that servers
# starting at once on an empty database apply each migration exactly once.
MIGRATION_LOCK = 0x636C6F6E656A6F62  # "clonejob"
# How long a call waits for a free pooled connection before it is unavailable.
ACQUIRE_TIMEOUT = 5.0
# The listening connection is pinged this often when no notification came, so
# that a dead connection is noticed even when nothing changes.
PING_INTERVAL = 5.0
PING_TIMEOUT = 5.0
RECONNECT_GIVE_UP = 10.0
RECONNECT_DELAY_MIN = 0.1
RECONNECT_DELAY_MAX = 2.0
APPLICATION_NAME = "clonejob-server"
LISTEN_APPLICATION_NAME = "clonejob-server-listen"
PAGE_TOKEN_KEY = "page_token_key"

# Connection errors at start that waiting will not mend.
_PERMANENT = (
    "does not exist",
    "authentication failed",
    "no password supplied",
    "no pg_hba.conf entry",
    "permission denied",
    "invalid",
)
# A standby after a failover refuses writes until it is promoted: as unreachable.
_READ_ONLY = "25006"

Connection = AsyncConnection[TupleRow]
_CANCELLING_ONLY = f" AND state = {int(State.CANCELLING)}"


def redact(text: str) -> str:
    """`text` with the password of any URL in it replaced by ***."""
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)


def _where(url: str) -> str:
    """host:port/dbname of `url`, for messages: never its user or password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "(an invalid URL)"
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or ''}"


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    text = text.removeprefix("connection failed: ")
    return redact(text)[:300]


class PostgresJobStore:
    def __init__(
        self,
        url: str,
        *,
        revision_retention: int = 1000,
        connect_timeout: float = 30.0,
        pool_size: int = 8,
    ) -> None:
        self.url = url
        # Revisions kept per job for watch resume; older ones are compacted away.
        self.revision_retention = revision_retention
        # How long open() keeps trying to reach the database.
        self.connect_timeout = connect_timeout
        self.pool_size = pool_size
        self._where = _where(url)
        self._settings: dict[str, Any] = {}
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._listen_task: asyncio.Task[None] | None = None

    # -- lifecycle --

    async def open(self) -> None:
        self._settings = self._connection_settings()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        while True:
            conn = await self._connect(APPLICATION_NAME, deadline)
            try:
                await self._migrate(conn)
                break
            except psycopg.OperationalError as error:
                # Cut off mid-way (a restart, pg_terminate_backend): the migration's
                # transaction rolled back; try again while the deadline allows.
                if loop.time() >= deadline:
                    raise self._error(error) from error
            except psycopg.Error as error:
                raise self._error(error) from error
            finally:
                await conn.close()
            await asyncio.sleep(0.2)
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            self.url,
            kwargs={**self._settings, "application_name": self._application(APPLICATION_NAME)},
            min_size=1,
            max_size=max(1, self.pool_size),
            open=False,
            timeout=ACQUIRE_TIMEOUT,
            # The pool's reconnect backoff doubles without bound (1 s, 2 s, 4 s, …):
            # giving up early lets the next call start over at 1 s, so the pool
            # is back within seconds of the database.
            reconnect_timeout=RECONNECT_GIVE_UP,
            name="clonejob-store",
        )
        try:
            await pool.open(wait=True, timeout=max(1.0, deadline - loop.time()))
        except psycopg.Error as error:
            await pool.close()
            raise StoreError(
                f"cannot reach PostgreSQL at {self._where}: {_short(error)}"
            ) from error
        self._pool = pool

    def _connection_settings(self) -> dict[str, Any]:
        """What every connection gets beside the URL; StoreError when the URL is bad."""
        try:
            params = conninfo_to_dict(self.url)
        except psycopg.Error as error:
            raise StoreError(f"the PostgreSQL URL is not valid: {_short(error)}") from None
        port = str(params.get("port") or "5432")
        if not all(p.strip().isdigit() for p in port.split(",")):
            raise StoreError(f"the PostgreSQL URL's port {port!r} is not a number")
        settings: dict[str, Any] = {"autocommit": True}
        # A peer that vanished without closing the connection is noticed in
        # about a minute, not the operating system's two hours.
        for key, value in (("keepalives_idle", 30), ("keepalives_interval", 10)):
            if key not in params:
                settings[key] = value
        if "connect_timeout" not in params:
            settings["connect_timeout"] = 10
        return settings

    def _application(self, default: str) -> str:
        return str(conninfo_to_dict(self.url).get("application_name") or default)

    async def _connect(
        self, application: str, deadline: float, *, once: bool = False
    ) -> Connection:
        """A new connection, retried with backoff until `deadline` (the loop's
        clock), or tried `once`."""
        loop = asyncio.get_running_loop()
        delay = RECONNECT_DELAY_MIN
        while True:
            settings = dict(self._settings)
            remaining = deadline - loop.time()
            if "connect_timeout" in settings:  # libpq counts whole seconds, at least 2
                settings["connect_timeout"] = max(2, min(10, math.ceil(remaining)))
            try:
                return await AsyncConnection.connect(
                    self.url, application_name=self._application(application), **settings
                )
            except psycopg.Error as error:
                reason = _short(error)
                if any(marker in reason for marker in _PERMANENT):
                    raise StoreError(
                        f"cannot connect to PostgreSQL at {self._where}: {reason}"
                    ) from error
                if once or loop.time() >= deadline:
                    raise StoreError(
                        f"cannot reach PostgreSQL at {self._where}: {reason}"
                    ) from error
            # The last attempt is made at the deadline.
            await asyncio.sleep(max(0.0, min(delay, deadline - loop.time())))
            delay = min(delay * 2, RECONNECT_DELAY_MAX)

    async def _migrate(self, conn: Connection) -> None:
        steps = schema.migrations("postgres")
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            cursor = await conn.execute("SELECT to_regclass('schema_version') IS NOT NULL")
            exists = await cursor.fetchone()
            if exists is None or not exists[0]:
                await conn.execute(
                    "CREATE TABLE schema_version ("
                    " version integer PRIMARY KEY,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
            cursor = await conn.execute("SELECT COALESCE(max(version), 0) FROM schema_version")
            row = await cursor.fetchone()
            version = 0 if row is None else int(row[0])
            if version > len(steps):
                raise StoreError(
                    f"PostgreSQL at {self._where} has schema version {version}, newer than"
                    f" this server's {len(steps)}; run a newer clonejob-server"
                )
            for number, sql in enumerate(steps[version:], start=version + 1):
                # The whole file as one simple query: PL/pgSQL bodies keep their `;`.
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))

    async def close(self) -> None:
        # 1. Stop the change feed (its task closes its own connection).
        task, self._listen_task = self._listen_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        # 2. Close the pool: calls still running finish or fail unavailable.
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    # Other replicas write too.
    exclusive = False

    def describe(self) -> str:
        return f"postgresql://{self._where}"

    # -- connections and errors --

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        pool = self._pool
        if pool is None:
            raise StoreError("the store is closed")
        try:
            conn = await self._healthy(pool)
            try:
                yield conn
            finally:
                await pool.putconn(conn)
        except psycopg.Error as error:
            raise self._error(error) from error

    async def _healthy(self, pool: AsyncConnectionPool[Connection]) -> Connection:
        """A pooled connection that the server has not closed.

        A connection the server closed while it sat in the pool (killed, or the
        server restarted) has its last words or its end-of-file waiting on the
        socket: it is closed and the next one tried, at once. (The pool's own
        `check` costs a round trip each time and waits 1 s, 2 s, 4 s, … between
        dead connections, longer than a call may wait.)
        """
        for _ in range(self.pool_size + 1):
            conn = await pool.getconn()
            if not _closed_by_server(conn):
                return conn
            await conn.close()
            await pool.putconn(conn)  # discarded; the pool makes a new one
        return await pool.getconn()

    def _error(self, error: psycopg.Error) -> StoreError:
        if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError) or (
            error.sqlstate == _READ_ONLY
        ):
            return StoreUnavailableError(
                f"PostgreSQL at {self._where} is unavailable: {_short(error)}"
            )
        return StoreError(f"PostgreSQL at {self._where}: {_short(error)}")

    async def _rows(self, sql: str, args: Sequence[Any] | Mapping[str, Any]) -> list[TupleRow]:
        async with self._connection() as conn:
            cursor = await conn.execute(sql, args)
            return await cursor.fetchall()

    async def _records(self, sql: str, args: Sequence[Any]) -> list[CloneJob]:
        return [records.load(row[0]) for row in await self._rows(sql, args)]

    async def _record(self, sql: str, args: Sequence[Any]) -> CloneJob | None:
        found = await self._records(sql, args)
        return found[0] if found else None

    # -- writes --

    async def create(self, job: CloneJob, *, operation: Operation | None = None) -> None:
        record = records.dump(job)
        # The operation, if any, is inserted by the same statement, only with the job.
        with_operation = (
            ", op AS ("
            f" INSERT INTO operations ({records.OPERATION_COLUMNS})"
            " SELECT %s, %s, %s, %s, %s, %s FROM new)"
            if operation is not None
            else ""
        )
        args = records.insert_values(job, record)
        if operation is not None:
            args += records.operation_values(operation)
        async with self._connection() as conn:
            cursor = await conn.execute(
                "WITH new AS ("
                " INSERT INTO clone_jobs (name, parent, request_id, state, create_time_us,"
                "  revision, record) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                f" ON CONFLICT DO NOTHING RETURNING name, revision, record){with_operation}"
                " INSERT INTO clone_job_revisions (name, revision, record)"
                " SELECT name, revision, record FROM new",
                args,
            )
            if cursor.rowcount == 1:
                return
            # ON CONFLICT waited for any rival insert to commit: this statement sees it.
            # The job with this request id first: a retry is told before a taken name.
            cursor = await conn.execute(
                "SELECT record FROM clone_jobs WHERE name = %s OR request_id = %s"
                " ORDER BY (request_id = %s) DESC NULLS LAST LIMIT 1",
                (job.name, job.request_id or None, job.request_id or None),
            )
            row = await cursor.fetchone()
        if row is None:
            raise StoreError(f"{job.name}: the insert conflicted with a job that is not there")
        raise DuplicateJobError(records.load(row[0]))

    async def update(
        self, job: CloneJob, *, expected_revision: int, epoch: int | None = None
    ) -> None:
        async with self._connection() as conn:
            await self._update(conn, job, expected_revision, epoch)

    async def update_chain(
        self, jobs: Sequence[CloneJob], *, expected_revision: int, epoch: int | None = None
    ) -> None:
        async with self._connection() as conn, conn.transaction():
            for job in jobs:
                await self._update(conn, job, expected_revision, epoch)
                expected_revision = job.revision

    async def _update(
        self, conn: Connection, job: CloneJob, expected_revision: int, epoch: int | None
    ) -> None:
        # A finished job needs no worker: its lease goes in the same commit.
        release = ", lease_owner = NULL, lease_expires = NULL" if job.state.terminal else ""
        fence = (
            " AND lease_epoch = %(epoch)s AND lease_expires > now()" if epoch is not None else ""
        )
        args = {
            "name": job.name,
            "state": int(job.state),
            "revision": job.revision,
            "record": records.dump(job),
            "expected": expected_revision,
            "epoch": epoch,
            "dropped": job.revision - self.revision_retention,
        }
        cursor = await conn.execute(
            "WITH changed AS ("
            " UPDATE clone_jobs SET state = %(state)s, revision = %(revision)s,"
            f"  record = %(record)s{release}"
            f" WHERE name = %(name)s AND revision = %(expected)s{fence}"
            " RETURNING name, revision, record),"
            " kept AS ("
            " INSERT INTO clone_job_revisions (name, revision, record)"
            " SELECT name, revision, record FROM changed),"
            " compacted AS ("
            " DELETE FROM clone_job_revisions WHERE name = %(name)s"
            "  AND revision <= %(dropped)s AND EXISTS (SELECT 1 FROM changed))"
            " SELECT count(*) FROM changed",
            args,
        )
        row = await cursor.fetchone()
        if row is not None and row[0] == 1:
            return
        # Nothing was written; say why, the lease first.
        cursor = await conn.execute(
            "SELECT lease_epoch, lease_expires > now() FROM clone_jobs WHERE name = %s",
            (job.name,),
        )
        current = await cursor.fetchone()
        if epoch is not None and (current is None or current[0] != epoch or not current[1]):
            raise LeaseLostError(f"{job.name}: epoch {epoch} is not its live lease")
        raise ConflictError(f"{job.name} is not at revision {expected_revision}")

    # -- leases --

    async def claim(
        self, owner: str, *, limit: int, ttl: float, cancelling: bool = False
    ) -> ClaimResult:
        # The earliest expiry counts the leases taken here (invisible to the rest
        # of the statement) and every other live one on a job this claim could take.
        states = _CANCELLING_ONLY if cancelling else ""
        rows = await self._rows(
            "WITH picked AS ("
            " SELECT name FROM clone_jobs"
            f" WHERE state IN {UNFINISHED_STATES}{states}"
            "  AND (lease_expires IS NULL OR lease_expires <= now())"
            " ORDER BY create_time_us, name LIMIT %(limit)s"
            " FOR UPDATE SKIP LOCKED),"
            " claimed AS ("
            " UPDATE clone_jobs AS j SET lease_owner = %(owner)s,"
            "  lease_epoch = j.lease_epoch + 1,"
            "  lease_expires = now() + make_interval(secs => %(ttl)s)"
            " FROM picked WHERE j.name = picked.name"
            " RETURNING j.create_time_us, j.name, j.lease_epoch, j.record, j.lease_expires)"
            " SELECT c.create_time_us, c.name, c.lease_epoch, c.record,"
            "  EXTRACT(EPOCH FROM LEAST("
            "   (SELECT min(lease_expires) FROM claimed),"
            "   (SELECT min(lease_expires) FROM clone_jobs"
            f"    WHERE state IN {UNFINISHED_STATES}{states} AND lease_expires > now())"
            "  ) - now())::float8"
            " FROM (SELECT 1) AS one LEFT JOIN claimed AS c ON true"
            " ORDER BY c.create_time_us, c.name",
            {"owner": owner, "limit": max(0, limit), "ttl": float(ttl)},
        )
        leases = [Lease(job=records.load(row[3]), epoch=int(row[2])) for row in rows if row[1]]
        earliest = rows[0][4] if rows else None
        return ClaimResult(
            leases=leases, next_expiry=None if earliest is None else max(0.0, float(earliest))
        )

    async def renew(self, name: str, epoch: int, *, ttl: float) -> bool:
        async with self._connection() as conn:
            cursor = await conn.execute(
                "UPDATE clone_jobs SET lease_expires = now() + make_interval(secs => %s)"
                " WHERE name = %s AND lease_epoch = %s AND lease_expires > now()",
                (float(ttl), name, epoch),
            )
            return cursor.rowcount == 1

    async def release(self, name: str, epoch: int) -> None:
        # Announced as claimable, in the same transaction: any worker may take it now.
        await self._rows(
            "WITH freed AS ("
            " UPDATE clone_jobs SET lease_owner = NULL, lease_expires = NULL"
            " WHERE name = %s AND lease_epoch = %s AND lease_expires IS NOT NULL"
            " RETURNING name, revision)"
            f" SELECT pg_notify('{CHANNEL}', revision::text || ' 1 ' || name) FROM freed",
            (name, epoch),
        )

    async def holds(self, name: str, epoch: int) -> bool:
        rows = await self._rows(
            "SELECT 1 FROM clone_jobs WHERE name = %s AND lease_epoch = %s"
            " AND lease_expires > now()",
            (name, epoch),
        )
        return bool(rows)

    # -- settings and the change feed --

    async def page_token_key(self, size: int) -> bytes:
        async with self._connection() as conn:
            # The first server to get here makes the key; every other one reads it.
            await conn.execute(
                "INSERT INTO settings (name, value) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (PAGE_TOKEN_KEY, secrets.token_bytes(size)),
            )
            cursor = await conn.execute(
                "SELECT value FROM settings WHERE name = %s", (PAGE_TOKEN_KEY,)
            )
            row = await cursor.fetchone()
        key = b"" if row is None else bytes(row[0])
        if len(key) != size:
            raise StoreError(
                f"the page-token key in PostgreSQL at {self._where} (table settings, name"
                f" {PAGE_TOKEN_KEY!r}) holds {len(key)} bytes, not {size}: delete that row"
                " (page tokens issued before become invalid) and start again"
            )
        return key

    async def listen(self, listener: ChangeListener) -> None:
        if self._pool is None:
            raise StoreError("the store is closed")
        if self._listen_task is not None:
            raise StoreError("the store is listening already")
        deadline = asyncio.get_running_loop().time() + self.connect_timeout
        try:
            conn = await self._listening(deadline)
        except StoreError as error:
            raise StoreUnavailableError(str(error)) from error
        self._listen_task = asyncio.create_task(
            self._feed(conn, listener), name="clonejob-store-listen"
        )
        _tell(listener.on_available, True)

    async def _listening(self, deadline: float, *, once: bool = False) -> Connection:
        conn = await self._connect(LISTEN_APPLICATION_NAME, deadline, once=once)
        try:
            await conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _feed(self, conn: Connection, listener: ChangeListener) -> None:
        """Deliver notifications; when the connection drops, reconnect and resync."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    await self._pump(conn, listener)
                except Exception as error:  # psycopg.Error, OSError, a ping's TimeoutError, …
                    log.warning("the change feed from %s dropped: %s", self._where, _short(error))
                await conn.close()
                _tell(listener.on_available, False)
                delay = RECONNECT_DELAY_MIN
                while True:
                    await asyncio.sleep(delay)
                    try:
                        conn = await self._listening(loop.time() + PING_TIMEOUT, once=True)
                        break
                    except Exception as error:
                        log.debug("change feed reconnect failed: %s", _short(error))
                    delay = min(delay * 2, RECONNECT_DELAY_MAX)
                _tell(listener.on_resync)
                _tell(listener.on_available, True)
        finally:
            await conn.close()

    async def _pump(self, conn: Connection, listener: ChangeListener) -> None:
        while True:
            async for notify in conn.notifies(timeout=PING_INTERVAL):
                _deliver(notify.payload, listener)
            async with asyncio.timeout(PING_TIMEOUT):
                await conn.execute("SELECT 1")

    # -- reads --

    async def get(self, name: str) -> CloneJob | None:
        return await self._record("SELECT record FROM clone_jobs WHERE name = %s", (name,))

    async def revision(self, name: str) -> int | None:
        rows = await self._rows("SELECT revision FROM clone_jobs WHERE name = %s", (name,))
        return int(rows[0][0]) if rows else None

    async def get_by_request_id(self, request_id: str) -> CloneJob | None:
        return await self._record(
            "SELECT record FROM clone_jobs WHERE request_id = %s", (request_id,)
        )

    async def revisions(self, name: str, *, after: int) -> Sequence[CloneJob]:
        return await self._records(
            "SELECT record FROM clone_job_revisions WHERE name = %s AND revision > %s"
            " ORDER BY revision",
            (name, after),
        )

    async def oldest_revision(self, name: str) -> int:
        rows = await self._rows(
            "SELECT min(revision) FROM clone_job_revisions WHERE name = %s", (name,)
        )
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    async def unfinished(self) -> Sequence[CloneJob]:
        return await self._records(
            f"SELECT record FROM clone_jobs WHERE state IN {UNFINISHED_STATES}"
            " ORDER BY create_time_us, name",
            (),
        )

    async def count_by_state(self) -> Mapping[State, int]:
        rows = await self._rows("SELECT state, count(*) FROM clone_jobs GROUP BY state", ())
        return {State(int(state)): int(count) for state, count in rows}

    # -- operations --

    async def add_operation(self, operation: Operation) -> Operation:
        async with self._connection() as conn:
            cursor = await conn.execute(
                f"INSERT INTO operations ({records.OPERATION_COLUMNS})"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                records.operation_values(operation),
            )
            if cursor.rowcount == 1:
                return operation
            # ON CONFLICT waited for any rival insert to commit: this statement sees it.
            cursor = await conn.execute(
                f"SELECT {records.OPERATION_COLUMNS} FROM operations"
                " WHERE target = %s AND verb = %s",
                (operation.target, operation.verb.value),
            )
            row = await cursor.fetchone()
        if row is None:
            raise StoreError(f"{operation.name}: the insert conflicted with no operation")
        return records.load_operation(row)

    async def get_operation(self, name: str) -> Operation | None:
        rows = await self._rows(
            f"SELECT {records.OPERATION_COLUMNS} FROM operations WHERE name = %s", (name,)
        )
        return records.load_operation(rows[0]) if rows else None

    async def list_operations(
        self, location: str, *, limit: int, after: Cursor | None = None
    ) -> Sequence[Operation]:
        sql, args = operations_sql(location, limit, after, "%s")
        return [records.load_operation(row) for row in await self._rows(sql, args)]

    async def delete_operation(self, name: str) -> bool:
        async with self._connection() as conn:
            cursor = await conn.execute("DELETE FROM operations WHERE name = %s", (name,))
            return cursor.rowcount == 1

    async def list(self, query: ListQuery) -> Sequence[CloneJob]:
        sql, args = list_sql(query, "%s")
        return await self._records(sql, args)


def _closed_by_server(conn: Connection) -> bool:
    """Whether an idle connection has something to read: an idle connection is
    told nothing unasked, except that it is being closed."""
    if conn.closed or conn.broken:
        return True
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return True
    return bool(readable)


def _deliver(payload: str, listener: ChangeListener) -> None:
    try:
        revision, claimable, name = payload.split(" ", 2)
        change = (name, int(revision), claimable == "1")
    except ValueError:
        log.warning("ignored a malformed change notification %r", payload[:200])
        return
    _tell(listener.on_change, *change)


def _tell(callback: Callable[..., object], *args: Any) -> None:
    # A listener must not raise; if one does, the feed goes on for the others.
    try:
        callback(*args)
    except Exception:
        log.exception("a change listener failed")
