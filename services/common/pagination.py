"""Keyset pagination, newest first (AIP-158), shared by every List RPC over rows ordered by
(created_at DESC, id DESC).

A page token is opaque to clients: the base64 of the last row's creation time and id. The next
page starts strictly after that row, so rows inserted meanwhile (all newer) never shift it: no row
is repeated or skipped. A token this API did not return is INVALID_ARGUMENT on `page_token`.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeAlias, TypeVar

from services.common.errors import FieldViolation, InvalidInput

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100

# The row a page ended on: where the next page starts, exclusive.
Position: TypeAlias = tuple[datetime, uuid.UUID]
Row = TypeVar("Row")


def page_limit(page_size: int) -> int:
    """The rows a page holds: the caller's size (0 for the default), at most MAX_PAGE_SIZE."""
    return min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_page_token(position: Position) -> str:
    created_at, row_id = position
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{row_id}".encode()).decode()


def decode_page_token(token: str) -> Position | None:
    """Where the page starts: None for the first page (no token)."""
    if not token:
        return None
    try:
        created, _, row_id = base64.urlsafe_b64decode(token.encode()).decode().partition("|")
        created_at = datetime.fromisoformat(created)
        if created_at.tzinfo is None:  # every token we return carries its zone
            raise ValueError(created)
        return created_at, uuid.UUID(row_id)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput([FieldViolation("page_token", "is not a token this API returned")]) from None


def split_page(rows: Sequence[Row], limit: int, position: Callable[[Row], Position]) -> tuple[list[Row], str]:
    """A page and the next page's token, from `rows` read with limit + 1 (the extra row only
    says whether another page exists)."""
    next_token = encode_page_token(position(rows[limit - 1])) if len(rows) > limit else ""
    return list(rows[:limit]), next_token
