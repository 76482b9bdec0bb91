"""List queries: the AIP-160 filter subset, ordering and keyset cursors."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime

from server.domain.job import State


class InvalidQueryError(ValueError):
    """A filter or order_by that cannot be understood; the message says where."""


class Field(enum.Enum):
    STATE = "state"
    CREATE_TIME = "create_time"
    NAME = "name"


ORDERABLE = (Field.CREATE_TIME, Field.NAME)


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    field: Field
    op: str
    value: State | datetime | str


@dataclass(frozen=True, slots=True, kw_only=True)
class AnyOf:
    """Disjunction (OR)."""

    terms: tuple[Comparison, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AllOf:
    """Conjunction (AND) of disjunctions: AIP-160 binds OR tighter than AND."""

    terms: tuple[AnyOf, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderBy:
    field: Field = Field.CREATE_TIME
    descending: bool = False

    def __str__(self) -> str:
        return self.field.value + (" desc" if self.descending else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class Cursor:
    """The sort key of the last item of a page; the next page starts after it."""

    create_time_us: int
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ListQuery:
    # A migrating VM's name; any of its ids may be the wildcard `-` (AIP-159),
    # which matches every id of that collection.
    parent: str
    # When set, only jobs of these projects (what the caller may read).
    projects: frozenset[str] | None = None
    filter: AllOf | None = None
    order_by: OrderBy = OrderBy()
    after: Cursor | None = None
    limit: int = 500


_TOKEN = re.compile(
    r"""\s*(?:(?P<op>!=|<=|>=|=|<|>)|(?P<str>"(?:[^"\\]|\\.)*")|(?P<word>[A-Za-z0-9_.:+\-]+)|(?P<bad>\S))"""
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind is None:
            continue
        value = match.group(kind)
        if kind == "bad":
            raise InvalidQueryError(f"unexpected character {value!r}")
        if kind == "str":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        out.append((kind, value))
    return out


_RFC3339 = re.compile(
    r"(?P<base>\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2})(\.(?P<fraction>\d{1,9}))?"
    r"(?P<offset>[Zz]|[+-]\d{2}:\d{2})?"
)


def parse_timestamp(text: str) -> datetime:
    """An RFC 3339 timestamp with an explicit offset."""
    match = _RFC3339.fullmatch(text)
    if not match:
        raise InvalidQueryError(
            f'{text!r} is not an RFC 3339 timestamp such as "2026-11-01T00:00:00Z"'
        )
    if not match["offset"]:
        raise InvalidQueryError(f"{text!r} has no time zone offset (RFC 3339 needs one)")
    # Python keeps microseconds: digits beyond six are dropped.
    fraction = f".{match['fraction'][:6]:0<6}" if match["fraction"] else ""
    text = f"{match['base']}{fraction}{match['offset']}"
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidQueryError(f"{text!r} is not an RFC 3339 timestamp") from None
    if value.tzinfo is None:
        raise InvalidQueryError(f"{text!r} has no time zone offset (RFC 3339 needs one)")
    return value


def _comparison(field_name: str, op: str, raw: str) -> Comparison:
    try:
        field = Field(field_name)
    except ValueError:
        known = ", ".join(f.value for f in Field)
        raise InvalidQueryError(f"unknown field {field_name!r}; known fields: {known}") from None
    if field is Field.STATE:
        if op not in ("=", "!="):
            raise InvalidQueryError("state supports only = and !=")
        try:
            state: State | datetime | str = State[raw]
        except KeyError:
            names = ", ".join(s.name for s in State)
            raise InvalidQueryError(f"unknown state {raw!r}; states: {names}") from None
        return Comparison(field=field, op=op, value=state)
    if field is Field.CREATE_TIME:
        return Comparison(field=field, op=op, value=parse_timestamp(raw))
    if op not in ("=", "!="):
        raise InvalidQueryError("name supports only = and !=")
    return Comparison(field=field, op=op, value=raw)


def parse_filter(text: str) -> AllOf | None:
    """Parse `state = ACTIVE AND create_time > "2026-01-01T00:00:00Z"` and the like."""
    if len(text) > 2048:
        raise InvalidQueryError("is longer than 2048 characters")
    tokens = _tokens(text)
    if not tokens:
        return None
    groups: list[AnyOf] = []
    current: list[Comparison] = []
    i = 0
    while True:
        if i + 3 > len(tokens):
            raise InvalidQueryError("expected a comparison such as `state = ACTIVE`")
        (k1, field_name), (k2, op), (k3, raw) = tokens[i : i + 3]
        if k1 != "word" or k2 != "op" or k3 == "op":
            near = " ".join(t[1] for t in tokens[i : i + 3])
            raise InvalidQueryError(f"expected `field operator value` near {near!r}")
        current.append(_comparison(field_name, op, raw))
        i += 3
        if i == len(tokens):
            break
        kind, joiner = tokens[i]
        if kind != "word":
            raise InvalidQueryError(f"expected AND or OR, found {joiner!r}")
        if joiner == "OR":
            pass
        elif joiner == "AND":
            groups.append(AnyOf(terms=tuple(current)))
            current = []
        else:
            raise InvalidQueryError(f"expected AND or OR, found {joiner!r}")
        i += 1
    groups.append(AnyOf(terms=tuple(current)))
    return AllOf(terms=tuple(groups))


def parse_order_by(text: str) -> OrderBy:
    words = text.replace(",", " , ").split()
    if not words:
        return OrderBy()
    if "," in words:
        raise InvalidQueryError("orders by one field only")
    if len(words) > 2 or (len(words) == 2 and words[1] not in ("asc", "desc")):
        raise InvalidQueryError("must be a field name optionally followed by `asc` or `desc`")
    field = next((f for f in ORDERABLE if f.value == words[0]), None)
    if field is None:
        raise InvalidQueryError(f"cannot order by {words[0]!r}; use create_time or name")
    return OrderBy(field=field, descending=len(words) == 2 and words[1] == "desc")
