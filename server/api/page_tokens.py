"""Opaque, tamper-evident page tokens (AIP-158).

A token is the keyset cursor of the last item of a page plus the query it
belongs to, signed with HMAC-SHA256 under a key kept in the data directory, so
tokens stay valid across restarts and a tampered one, or one reused with
another parent, filter or order, is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from server.domain.listing import Cursor
from server.domain.validation import Violation


class InvalidPageTokenError(ValueError):
    pass


class PageTokens:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:16]

    @staticmethod
    def _query_id(parent: str, filter_text: str, order_by: str) -> str:
        return hashlib.sha256(f"{parent}\0{filter_text}\0{order_by}".encode()).hexdigest()[:16]

    def encode(self, cursor: Cursor, *, parent: str, filter_text: str, order_by: str) -> str:
        payload = json.dumps(
            [cursor.create_time_us, cursor.name, self._query_id(parent, filter_text, order_by)],
            separators=(",", ":"),
        ).encode()
        return base64.urlsafe_b64encode(payload + self._mac(payload)).decode().rstrip("=")

    def decode(self, token: str, *, parent: str, filter_text: str, order_by: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, UnicodeEncodeError):
            raise InvalidPageTokenError("is not a page token this server issued") from None
        payload, mac = raw[:-16], raw[-16:]
        if len(raw) <= 16 or not hmac.compare_digest(mac, self._mac(payload)):
            raise InvalidPageTokenError("is not a page token this server issued")
        create_time_us, name, query = json.loads(payload)
        if query != self._query_id(parent, filter_text, order_by):
            raise InvalidPageTokenError(
                "belongs to a different query: keep parent, filter and order_by unchanged"
                " while paging"
            )
        return Cursor(create_time_us=int(create_time_us), name=str(name))

    def read(
        self,
        token: str,
        out: list[Violation],
        *,
        parent: str,
        filter_text: str = "",
        order_by: str = "",
    ) -> Cursor | None:
        """The cursor of a request's `page_token`: None for the first page, or when
        the token is refused (its violation is added to `out`)."""
        if not token:
            return None
        try:
            return self.decode(token, parent=parent, filter_text=filter_text, order_by=order_by)
        except (ValueError, TypeError) as error:  # InvalidPageTokenError is a ValueError
            reason = str(error) if isinstance(error, InvalidPageTokenError) else ""
            out.append(Violation("page_token", reason or "is not a page token this server issued"))
            return None
