"""Tests for server.domain.listing (filter and order_by) and server.api.page_tokens."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from server.api.page_tokens import InvalidPageTokenError, PageTokens
from server.domain.job import State
from server.domain.listing import (
    AllOf,
    AnyOf,
    Comparison,
    Cursor,
    Field,
    InvalidQueryError,
    OrderBy,
    parse_filter,
    parse_order_by,
)

JAN1 = datetime(2026, 1, 1, tzinfo=UTC)
PARENT = "projects/p/locations/l/sources/s/migratingVms/vm"


def state_is(op: str, state: State) -> Comparison:
    return Comparison(field=Field.STATE, op=op, value=state)


def only(*terms: Comparison) -> AllOf:
    return AllOf(terms=(AnyOf(terms=terms),))


# -- parse_filter --


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("op", ["=", "!="])
@pytest.mark.parametrize("spacing", ["{f} {op} {v}", "{f}{op}{v}", "  {f}  {op}\t{v}  "])
def test_parse_filter_state_comparison(state: State, op: str, spacing: str) -> None:
    text = spacing.format(f="state", op=op, v=state.name)
    assert parse_filter(text) == only(state_is(op, state))


def test_parse_filter_state_not_equal_without_spaces() -> None:
    assert parse_filter("state!=SUCCEEDED") == only(state_is("!=", State.SUCCEEDED))


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_parse_filter_empty_means_no_filter(text: str) -> None:
    assert parse_filter(text) is None


def test_parse_filter_or_binds_tighter_than_and() -> None:
    parsed = parse_filter(
        'state = ACTIVE OR state = PENDING AND create_time > "2026-01-01T00:00:00Z"'
        " AND state != FAILED"
    )
    assert parsed == AllOf(
        terms=(
            AnyOf(terms=(state_is("=", State.ACTIVE), state_is("=", State.PENDING))),
            AnyOf(terms=(Comparison(field=Field.CREATE_TIME, op=">", value=JAN1),)),
            AnyOf(terms=(state_is("!=", State.FAILED),)),
        )
    )


def test_parse_filter_and_of_single_terms() -> None:
    parsed = parse_filter("state = ACTIVE AND state != CANCELLING")
    assert parsed == AllOf(
        terms=(
            AnyOf(terms=(state_is("=", State.ACTIVE),)),
            AnyOf(terms=(state_is("!=", State.CANCELLING),)),
        )
    )


@pytest.mark.parametrize("op", ["=", "!=", "<", "<=", ">", ">="])
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('"2026-01-01T00:00:00Z"', JAN1),
        ("2026-01-01T00:00:00Z", JAN1),
        ('"2026-01-01T00:00:00z"', JAN1),
        ('"2026-01-01T02:00:00+02:00"', JAN1),
        ("2026-01-01T02:00:00+02:00", JAN1),
        ('"2025-12-31T19:00:00-05:00"', JAN1),
        ('"2026-01-01T00:00:00.250Z"', JAN1 + timedelta(milliseconds=250)),
    ],
    ids=[
        "quoted_z",
        "bare_z",
        "lower_z",
        "quoted_offset",
        "bare_offset",
        "negative_offset",
        "fraction",
    ],
)
def test_parse_filter_create_time_rfc3339(op: str, raw: str, expected: datetime) -> None:
    parsed = parse_filter(f"create_time {op} {raw}")
    assert parsed is not None
    (term,) = parsed.terms[0].terms
    assert (term.field, term.op) == (Field.CREATE_TIME, op)
    assert term.value == expected
    assert isinstance(term.value, datetime)
    assert term.value.utcoffset() is not None


def test_parse_filter_create_time_keeps_offset() -> None:
    parsed = parse_filter('create_time >= "2026-01-01T02:00:00+02:00"')
    assert parsed is not None
    value = parsed.terms[0].terms[0].value
    assert isinstance(value, datetime)
    assert value.utcoffset() == timezone(timedelta(hours=2)).utcoffset(None)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (f'name = "{PARENT}/cloneJobs/a"', f"{PARENT}/cloneJobs/a"),
        ('name != "with \\"quote\\" and \\\\ slash"', 'with "quote" and \\ slash'),
        ('name = "has AND inside OR"', "has AND inside OR"),
        ("name = plain-word", "plain-word"),
    ],
)
def test_parse_filter_name_value(text: str, value: str) -> None:
    parsed = parse_filter(text)
    assert parsed is not None
    (term,) = parsed.terms[0].terms
    assert term.field is Field.NAME
    assert term.value == value


def test_parse_filter_quoted_state_value() -> None:
    assert parse_filter('state = "ACTIVE"') == only(state_is("=", State.ACTIVE))


BAD_FILTERS = {
    "unknown_field": ("color = red", "unknown field 'color'"),
    "unknown_state": ("state = RUNNING", "unknown state 'RUNNING'"),
    "lowercase_state": ("state = active", "unknown state 'active'"),
    "state_less_than": ("state < ACTIVE", "state supports only = and !="),
    "state_greater_equal": ("state >= ACTIVE", "state supports only = and !="),
    "name_greater": ('name > "a"', "name supports only = and !="),
    "missing_value": ("state =", "expected a comparison"),
    "missing_value_then_and": ("state = AND state = ACTIVE", "unknown state 'AND'"),
    "operator_as_value": ("state = = ACTIVE", "expected `field operator value`"),
    "missing_operator": ("state ACTIVE", "expected"),
    "field_only": ("state", "expected a comparison"),
    "trailing_and": ("state = ACTIVE AND", "expected a comparison"),
    "trailing_or": ("state = ACTIVE OR", "expected a comparison"),
    "leading_and": ("AND state = ACTIVE", "expected"),
    "lowercase_and": ("state = ACTIVE and state = FAILED", "expected AND or OR"),
    "no_joiner": ("state = ACTIVE state = FAILED", "expected AND or OR"),
    "not_supported": ("NOT state = ACTIVE", "expected"),
    "semicolon": ("state = ACTIVE;", "unexpected character ';'"),
    "parenthesis": ("(state = ACTIVE)", "unexpected character '('"),
    "slash_unquoted": (f"name = {PARENT}", "unexpected character '/'"),
    "unterminated_quote": ('name = "abc', "unexpected character '\"'"),
    "has_operator": ("state : ACTIVE", "expected"),
    "non_ascii": ("state = ACTIVÉ", "unexpected character 'É'"),
    "nul": ("state = ACTIVE\0", "unexpected character"),
    "no_offset": ('create_time > "2026-01-01T00:00:00"', "has no time zone offset"),
    "date_only": ('create_time > "2026-01-01"', "is not an RFC 3339 timestamp"),
    "compact_timestamp": ('create_time > "20260101T000000+0000"', "is not an RFC 3339 timestamp"),
    "quoted_joiner": ('state = ACTIVE "AND" state = FAILED', "expected AND or OR"),
    "not_a_time": ('create_time > "yesterday"', "is not an RFC 3339 timestamp"),
    "bad_month": ('create_time > "2026-13-01T00:00:00Z"', "is not an RFC 3339 timestamp"),
    "too_long": ("state = ACTIVE OR " * 120 + "state = ACTIVE", "longer than 2048"),
}


@pytest.mark.parametrize(("text", "message"), list(BAD_FILTERS.values()), ids=list(BAD_FILTERS))
def test_parse_filter_rejects_bad_filter(text: str, message: str) -> None:
    with pytest.raises(InvalidQueryError) as caught:
        parse_filter(text)
    assert message in str(caught.value)


def test_parse_filter_length_limit_is_2048() -> None:
    ok = "state = ACTIVE" + " " * (2048 - len("state = ACTIVE"))
    assert parse_filter(ok) == only(state_is("=", State.ACTIVE))
    with pytest.raises(InvalidQueryError):
        parse_filter(ok + " ")


# -- parse_order_by --


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", OrderBy(field=Field.CREATE_TIME, descending=False)),
        ("  ", OrderBy(field=Field.CREATE_TIME, descending=False)),
        ("name", OrderBy(field=Field.NAME, descending=False)),
        ("name asc", OrderBy(field=Field.NAME, descending=False)),
        ("name desc", OrderBy(field=Field.NAME, descending=True)),
        ("  name   desc ", OrderBy(field=Field.NAME, descending=True)),
        ("create_time", OrderBy(field=Field.CREATE_TIME, descending=False)),
        ("create_time asc", OrderBy(field=Field.CREATE_TIME, descending=False)),
        ("create_time desc", OrderBy(field=Field.CREATE_TIME, descending=True)),
    ],
)
def test_parse_order_by_accepts(text: str, expected: OrderBy) -> None:
    assert parse_order_by(text) == expected


@pytest.mark.parametrize(
    ("order", "text"),
    [
        (OrderBy(field=Field.NAME), "name"),
        (OrderBy(field=Field.NAME, descending=True), "name desc"),
        (OrderBy(), "create_time"),
        (OrderBy(field=Field.CREATE_TIME, descending=True), "create_time desc"),
    ],
)
def test_order_by_str_parses_back(order: OrderBy, text: str) -> None:
    assert str(order) == text
    assert parse_order_by(text) == order


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("state", "cannot order by 'state'"),
        ("update_time desc", "cannot order by 'update_time'"),
        ("NAME", "cannot order by 'NAME'"),
        ("name,create_time", "one field only"),
        ("name desc, create_time", "one field only"),
        ("name descending", "optionally followed by `asc` or `desc`"),
        ("name DESC", "optionally followed by `asc` or `desc`"),
        ("name desc asc", "optionally followed by `asc` or `desc`"),
        ("desc", "cannot order by 'desc'"),
    ],
)
def test_parse_order_by_rejects(text: str, message: str) -> None:
    with pytest.raises(InvalidQueryError) as caught:
        parse_order_by(text)
    assert message in str(caught.value)


# -- page tokens --

KEY = b"k" * 32
CURSOR = Cursor(create_time_us=1_767_225_600_123_456, name=f"{PARENT}/cloneJobs/job-7")
QUERY = {"parent": PARENT, "filter_text": "state = ACTIVE", "order_by": "name desc"}


def token() -> str:
    return PageTokens(KEY).encode(CURSOR, **QUERY)


def test_page_tokens_round_trip() -> None:
    assert PageTokens(KEY).decode(token(), **QUERY) == CURSOR


def test_page_tokens_round_trip_with_odd_name() -> None:
    cursor = Cursor(create_time_us=0, name='a"\\é\0/..')
    tokens = PageTokens(KEY)
    assert tokens.decode(tokens.encode(cursor, **QUERY), **QUERY) == cursor


def test_page_tokens_survive_a_new_instance_with_same_key() -> None:
    assert PageTokens(bytes(KEY)).decode(token(), **QUERY) == CURSOR


def test_page_tokens_are_opaque_url_safe() -> None:
    text = token()
    assert CURSOR.name not in text
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.mark.parametrize("position", range(len(token())))
def test_page_tokens_tampered_char_rejected(position: int) -> None:
    original = token()
    for replacement in "AQgw_-9z":
        if replacement == original[position]:
            continue
        tampered = original[:position] + replacement + original[position + 1 :]
        if _b64(tampered) == _b64(original):
            continue  # only the unused low bits of the last character changed
        with pytest.raises(InvalidPageTokenError):
            PageTokens(KEY).decode(tampered, **QUERY)


def test_page_tokens_forged_payload_rejected() -> None:
    raw = _b64(token())
    payload = json.dumps([0, "other", json.loads(raw[:-16])[2]], separators=(",", ":")).encode()
    forged = base64.urlsafe_b64encode(payload + raw[-16:]).decode().rstrip("=")
    with pytest.raises(InvalidPageTokenError):
        PageTokens(KEY).decode(forged, **QUERY)


def test_page_tokens_other_key_rejected() -> None:
    with pytest.raises(InvalidPageTokenError):
        PageTokens(b"x" * 32).decode(token(), **QUERY)


@pytest.mark.parametrize(
    "changed",
    [
        {"parent": PARENT + "x"},
        {"filter_text": "state = FAILED"},
        {"filter_text": ""},
        {"order_by": "name"},
        {"order_by": "create_time desc"},
    ],
    ids=["parent", "filter", "no_filter", "order_asc", "order_field"],
)
def test_page_tokens_for_another_query_rejected(changed: dict[str, str]) -> None:
    with pytest.raises(InvalidPageTokenError) as caught:
        PageTokens(KEY).decode(token(), **{**QUERY, **changed})
    assert "different query" in str(caught.value)


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "=",
        "====",
        "A",
        "AB",
        "!!!!",
        "not a token",
        "é",
        "\0",
        "AAAA" * 4,
        "AAAA" * 5,
        base64.urlsafe_b64encode(b"x" * 40).decode(),
        base64.urlsafe_b64encode(b'[1,"n","q"]' + b"\0" * 16).decode(),
        token()[:-1],
        token()[:-4],
        token()[4:],
        token() + "A",
        token() + token(),
    ],
)
def test_page_tokens_garbage_rejected(garbage: str) -> None:
    with pytest.raises(InvalidPageTokenError):
        PageTokens(KEY).decode(garbage, **QUERY)
