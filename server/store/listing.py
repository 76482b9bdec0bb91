"""List queries as SQL, shared by the stores: one builder, one placeholder each."""

from __future__ import annotations

from typing import Any

from server.domain.job import State
from server.domain.listing import AllOf, Comparison, Cursor, Field, ListQuery
from server.store import records

_COLUMNS = {Field.STATE: "state", Field.CREATE_TIME: "create_time_us", Field.NAME: "name"}

# The unfinished states as a literal list: a partial index (`WHERE state IN
# (…)`) is used only when the query spells its condition out the same way.
UNFINISHED_STATES = "(" + ", ".join(str(int(s)) for s in State if not s.terminal) + ")"


def list_sql(query: ListQuery, mark: str) -> tuple[str, list[Any]]:
    """`SELECT record …` for `query`, with `mark` as each parameter's placeholder."""
    where: list[str] = []
    args: list[Any] = []
    if has_wildcard(query.parent):
        where.append(f"parent LIKE {mark} ESCAPE '\\'")
        args.append(parent_pattern(query.parent))
    else:
        where.append(f"parent = {mark}")
        args.append(query.parent)
    if query.projects is not None:
        if not query.projects:
            where.append("1 = 0")
        else:
            each = [f"parent LIKE {mark} ESCAPE '\\'"] * len(query.projects)
            where.append("(" + " OR ".join(each) + ")")
            args.extend(f"projects/{_like_escape(p)}/%" for p in sorted(query.projects))
    if query.filter is not None:
        clause, values = _filter_sql(query.filter, mark)
        where.append(clause)
        args.extend(values)
    desc = query.order_by.descending
    direction = "DESC" if desc else "ASC"
    if query.order_by.field is Field.NAME:
        order = f"name {direction}"
        if query.after is not None:
            where.append(f"name {'<' if desc else '>'} {mark}")
            args.append(query.after.name)
    else:
        order = f"create_time_us {direction}, name {direction}"
        if query.after is not None:
            where.append(f"(create_time_us, name) {'<' if desc else '>'} ({mark}, {mark})")
            args.extend([query.after.create_time_us, query.after.name])
    sql = f"SELECT record FROM clone_jobs WHERE {' AND '.join(where)} ORDER BY {order} LIMIT {mark}"
    args.append(query.limit)
    return sql, args


def has_wildcard(parent: str) -> bool:
    return "-" in parent.split("/")[1::2]


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def parent_pattern(parent: str) -> str:
    """A LIKE pattern for a parent whose ids may be `-`. An id never holds a `/`
    and every parent has the same eight segments, so `%` in place of one id
    matches exactly that id."""
    parts = parent.split("/")
    return "/".join(
        "%" if i % 2 == 1 and part == "-" else _like_escape(part) for i, part in enumerate(parts)
    )


def _filter_sql(expr: AllOf, mark: str) -> tuple[str, list[Any]]:
    groups: list[str] = []
    args: list[Any] = []
    for any_of in expr.terms:
        parts: list[str] = []
        for term in any_of.terms:
            parts.append(f"{_COLUMNS[term.field]} {term.op} {mark}")
            args.append(_sql_value(term))
        groups.append("(" + " OR ".join(parts) + ")")
    return "(" + " AND ".join(groups) + ")", args


def _sql_value(term: Comparison) -> Any:
    if term.field is Field.STATE:
        return int(term.value)  # type: ignore[arg-type]
    if term.field is Field.CREATE_TIME:
        return records.to_us(term.value)  # type: ignore[arg-type]
    return term.value


def operations_sql(
    location: str, limit: int, after: Cursor | None, mark: str
) -> tuple[str, list[Any]]:
    """A location's operations, newest first (then by name, descending), after `after`."""
    sql = f"SELECT {records.OPERATION_COLUMNS} FROM operations WHERE location = {mark}"
    args: list[Any] = [location]
    if after is not None:
        sql += f" AND (create_time_us < {mark} OR (create_time_us = {mark} AND name < {mark}))"
        args.extend([after.create_time_us, after.create_time_us, after.name])
    sql += f" ORDER BY create_time_us DESC, name DESC LIMIT {mark}"
    args.append(limit)
    return sql, args
