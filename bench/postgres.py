"""A throwaway PostgreSQL database per benchmark, and what the benchmarks read from it.

    with temporary_database() as url:      # CREATE DATABASE clonejob_bench_<random>
        ...                                # DROP DATABASE ... WITH (FORCE) on exit

The server is $CLONEJOB_BENCH_POSTGRES (default postgresql://postgres@127.0.0.1:5432/postgres),
reached as its maintenance database; the benchmark's database is made from it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CONNECT_TIMEOUT = 5


class PostgresUnreachableError(RuntimeError):
    """No PostgreSQL server where the benchmarks look for one."""


def server_url() -> str:
    return os.environ.get("CLONEJOB_BENCH_POSTGRES") or DEFAULT_URL


def _database_url(name: str) -> str:
    return urlsplit(server_url())._replace(path="/" + name).geturl()


def _admin(statement: sql.Composed) -> None:
    # A connection of its own per statement: a benchmark that kills its servers
    # cannot take the DROP's connection with them.
    try:
        conn = psycopg.connect(server_url(), autocommit=True, connect_timeout=CONNECT_TIMEOUT)
    except psycopg.OperationalError as error:
        parts = urlsplit(server_url())
        raise PostgresUnreachableError(
            f"PostgreSQL not reachable at {parts.hostname}:{parts.port or 5432}"
            f" ({' '.join(str(error).split())[:200]}); start one or set CLONEJOB_BENCH_POSTGRES"
        ) from None
    with conn:
        conn.execute(statement)


@contextlib.contextmanager
def temporary_database() -> Iterator[str]:
    """The URL of a new, empty database, dropped (with any connection still on it) on exit."""
    name = f"clonejob_bench_{secrets.token_hex(6)}"
    _admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _database_url(name)
    finally:
        _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def connect(url: str) -> psycopg.Connection[Any]:
    """A blocking autocommit connection to the benchmark's database (the caller closes it)."""
    return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)


def backend_pids(conn: psycopg.Connection[Any]) -> list[int]:
    """The server processes serving connections to `conn`'s database (the replicas' pools
    and feeds), but not `conn` itself."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid()"
    ).fetchall()
    return [int(row[0]) for row in rows]
