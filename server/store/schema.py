"""The numbered migrations of each store, in `migrations/<dialect>/NNNN_*.sql`.

A database's schema version is how many of its dialect's migrations ran. Each
runs whole in one transaction: PostgreSQL takes a file as one multi-statement
query (so PL/pgSQL bodies keep their semicolons); SQLite gets it statement by
statement, split where `sqlite3.complete_statement` says one ends (so trigger
bodies, `BEGIN … END;`, stay whole).
"""

from __future__ import annotations

import sqlite3
from importlib import resources
from typing import Literal

Dialect = Literal["sqlite", "postgres"]


def migrations(dialect: Dialect) -> list[str]:
    """The text of each migration of `dialect`, in order."""
    folder = resources.files("server.store") / "migrations" / dialect
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(folder / n).read_text(encoding="utf-8") for n in names]


def sqlite_statements(sql: str) -> list[str]:
    """The statements of a SQLite script, without the comment-only pieces."""
    statements: list[str] = []
    pending = ""
    pieces = sql.split(";")
    for i, piece in enumerate(pieces):
        pending += piece if i == len(pieces) - 1 else piece + ";"
        if sqlite3.complete_statement(pending):
            if not _only_comments(pending):
                statements.append(pending.strip())
            pending = ""
    if not _only_comments(pending):  # a last statement without its semicolon
        statements.append(pending.strip())
    return statements


def _only_comments(text: str) -> bool:
    return all(
        not line.strip() or line.strip().startswith("--") or line.strip() == ";"
        for line in text.splitlines()
    )
