"""A fresh PostgreSQL database per test, on the server at $CLONEJOB_TEST_POSTGRES.

    async with temporary_database() as url:   # or `with temporary_database_sync()`
        store = PostgresJobStore(url)

The database is created empty (CREATE DATABASE clonejob_test_<random>) and
dropped at the end, with any connection still on it. When no PostgreSQL can be
reached the test is skipped, except in CI (env CI set), where it fails.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import NoReturn
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CONNECT_TIMEOUT = 5
# Why the server could not be reached, once found out: the tests after skip at
# once instead of waiting CONNECT_TIMEOUT each.
_unreachable: list[str] = []


def server_url() -> str:
    """The maintenance database on the test server; new databases are made from it."""
    return os.environ.get("CLONEJOB_TEST_POSTGRES") or DEFAULT_URL


def database_url(name: str) -> str:
    """The server's URL, naming database `name` instead."""
    return urlsplit(server_url())._replace(path="/" + name).geturl()


def where() -> str:
    """The test server, as host:port, without user or password."""
    parts = urlsplit(server_url())
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"


def unreachable(error: Exception | str) -> NoReturn:
    """Skip the test (fail it in CI): the test server is not there."""
    if not _unreachable:
        _unreachable.append(" ".join(str(error).split())[:200])
    message = (
        f"PostgreSQL not reachable at {where()} ({_unreachable[0]});"
        " start one (apt-get install postgresql) or set CLONEJOB_TEST_POSTGRES"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _new_name() -> str:
    return f"clonejob_test_{secrets.token_hex(6)}"


def _create(name: str) -> sql.Composed:
    return sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))


def _drop(name: str) -> sql.Composed:
    return sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))


# A connection of its own for the CREATE and another for the DROP: a test that
# kills connections cannot take the DROP's with it.


async def _admin_async(statement: sql.Composed) -> None:
    if _unreachable:
        unreachable(_unreachable[0])
    try:
        conn = await psycopg.AsyncConnection.connect(
            server_url(), autocommit=True, connect_timeout=CONNECT_TIMEOUT
        )
    except psycopg.OperationalError as error:
        unreachable(error)
    async with conn:
        await conn.execute(statement)


def _admin_sync(statement: sql.Composed) -> None:
    if _unreachable:
        unreachable(_unreachable[0])
    try:
        conn = psycopg.connect(server_url(), autocommit=True, connect_timeout=CONNECT_TIMEOUT)
    except psycopg.OperationalError as error:
        unreachable(error)
    with conn:
        conn.execute(statement)


@contextlib.asynccontextmanager
async def temporary_database() -> AsyncIterator[str]:
    """The URL of a new, empty database, dropped on exit."""
    name = _new_name()
    await _admin_async(_create(name))
    try:
        yield database_url(name)
    finally:
        await _admin_async(_drop(name))


@contextlib.contextmanager
def temporary_database_sync() -> Iterator[str]:
    """`temporary_database` for code without an event loop."""
    name = _new_name()
    _admin_sync(_create(name))
    try:
        yield database_url(name)
    finally:
        _admin_sync(_drop(name))
