"""Keyset pagination (AIP-158), shared by every List RPC: newest first over rows ordered by
(created_at DESC, id DESC), or by name for a list keyed by a unique name.

A page token is opaque to clients: base64 of JSON naming the last row served (its creation time
and id) and a fingerprint of the query it continues (a List's filter; empty when it has none).
The next page starts strictly after that row, so rows inserted meanwhile (all newer) never shift
it: no row is repeated or skipped. A token this API did not return, or one issued for another
filter, whose walk it does not describe, is INVALID_ARGUMENT on `page_token`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeAlias, TypeVar

import sqlalchemy as sa

from services.common.errors import FieldViolation, InvalidInput

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100

# The row a page ended on: where the next page starts, exclusive.
Position: TypeAlias = tuple[datetime, uuid.UUID]
Row = TypeVar("Row")


def page_limit(page_size: int) -> int:
    """The rows a page holds: the caller's size (0 for the default), at most MAX_PAGE_SIZE (the
    contract's rules refuse a larger or negative one before this)."""
    return min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def query_fingerprint(query: Mapping[str, Any]) -> str:
    """A short, stable digest of a List's filter, for its tokens."""
    fields = {
        name: value.isoformat() if isinstance(value, datetime) else value for name, value in query.items()
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def encode_page_token(position: Position, query: str = "") -> str:
    created_at, row_id = position
    token = {"c": created_at.isoformat(), "i": str(row_id), "q": query}
    return base64.urlsafe_b64encode(json.dumps(token).encode()).decode()


def decode_page_token(token: str, query: str = "") -> Position | None:
    """Where the page starts: None for the first page (no token)."""
    if not token:
        return None
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
        created_at, row_id, issued_for = (
            datetime.fromisoformat(decoded["c"]),
            uuid.UUID(decoded["i"]),
            decoded["q"],
        )
        if created_at.tzinfo is None:  # every token we return carries its zone
            raise ValueError(decoded["c"])
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
        raise InvalidInput([FieldViolation("page_token", "is not a token this API returned")]) from None
    if issued_for != query:
        raise InvalidInput(
            [FieldViolation("page_token", "was issued for another filter; list from the start with this one")]
        )
    return created_at, row_id


def encode_name_token(name: str) -> str:
    """A token for a List ordered by a unique name (the model catalog): the next page starts
    strictly after `name`, so an entry added meanwhile appears where its name sorts."""
    return base64.urlsafe_b64encode(json.dumps({"after": name}).encode()).decode()


def decode_name_token(token: str) -> str:
    """The name a page starts after: "" for the first page (no token)."""
    if not token:
        return ""
    try:
        after = json.loads(base64.urlsafe_b64decode(token.encode()))["after"]
        if not isinstance(after, str):
            raise TypeError(after)
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise InvalidInput([FieldViolation("page_token", "is not a token this API returned")]) from None
    return after


def split_page(
    rows: Sequence[Row], limit: int, position: Callable[[Row], Position], query: str = ""
) -> tuple[list[Row], str]:
    """A page and the next page's token, from `rows` read with limit + 1 (the extra row only
    says whether another page exists)."""
    next_token = encode_page_token(position(rows[limit - 1]), query) if len(rows) > limit else ""
    return list(rows[:limit]), next_token


def newest_first(
    query: sa.Select[Any], table: sa.Table, *, after: Position | None, limit: int
) -> sa.Select[Any]:
    """`query` as one page of the walk: newest first by (created_at, id), strictly after the row
    `after` names, at most `limit` rows. The repositories' half of this module."""
    if after is not None:
        query = query.where(sa.tuple_(table.c.created_at, table.c.id) < sa.tuple_(*after))
    return query.order_by(table.c.created_at.desc(), table.c.id.desc()).limit(limit)
