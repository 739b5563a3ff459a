"""What the list endpoints share: pages, the cursors of newest-first lists, time ranges.

A page is ``{"data": [...], "next_cursor": ...}``, the cursor null on the last page. A list
kept by name (providers, templates, ...) hands out the last name shown as its cursor; a
list kept newest first hands out the last row's position (``store/pages.py``), encoded as
an opaque string.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query

from clarion.api.schemas import utc_timestamp
from clarion.errors import ValidationFailed
from clarion.store.pages import Position

Row = TypeVar("Row")
_ID = re.compile(r"^[A-Za-z0-9_\-]{1,40}$")
INVALID_CURSOR = "invalid_cursor"

# A page's size: described in the API document (the newest-first lists), or not.
Limit = Annotated[int, Query(ge=1, le=500, description="Page size (at most 500)")]
Size = Annotated[int, Query(ge=1, le=500)]
Cursor = Annotated[
    str | None, Query(max_length=200, description="`next_cursor` of the previous page")
]
# The cursors of the lists kept in key order (the last key shown), each as long as its keys.
ShortKeyCursor = Annotated[str | None, Query(max_length=100)]
KeyCursor = Annotated[str | None, Query(max_length=200)]
NameCursor = Annotated[str | None, Query(min_length=1, max_length=200)]
IdCursor = Annotated[str | None, Query(min_length=1, max_length=40)]


def page(rows: Sequence[Row], limit: int, cursor_of: Callable[[Row], str]) -> dict[str, Any]:
    """The first ``limit`` of ``rows`` (read as ``limit + 1``: one more means a next page)."""
    following = cursor_of(rows[limit - 1]) if len(rows) > limit else None
    return {"data": list(rows[:limit]), "next_cursor": following}


def by(field: str) -> Callable[[Mapping[str, Any]], str]:
    """The cursor after a row of a list kept in ``field`` order: that field's value."""
    return lambda row: str(row[field])


def cursor_of(position: Position) -> str:
    raw = f"{position.at.isoformat()}|{position.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def newest_first(row: Mapping[str, Any]) -> str:
    """The cursor after a row listed newest first by ``created_at``."""
    return cursor_of(Position(row["created_at"], row["id"]))


def position_of(text: str | None, code: str = INVALID_CURSOR) -> Position | None:
    """The position a cursor names; a 422 (``code``) for one this API did not make."""
    if text is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        stamp, _, ident = raw.partition("|")
        moment = utc_timestamp(datetime.fromisoformat(stamp))
        if not _ID.match(ident):
            raise ValueError("no id")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValidationFailed(
            "the cursor is not one this list returned",
            code=code,
            details=[{"field": "cursor", "message": "not a cursor from this list"}],
        ) from exc
    return Position(moment, ident)


@dataclass(frozen=True, slots=True)
class NewestPage:
    """The page a client asks of a list kept newest first: its size and the cursor it
    starts after."""

    size: int
    cursor: str | None

    @property
    def position(self) -> Position | None:
        """Where the page starts (a 422 for a cursor this API did not make). Read when the
        store is asked, so that the list's own filters are checked first."""
        return position_of(self.cursor)

    @property
    def read(self) -> int:
        """How many rows to read: one more than the page shows says there is a next one."""
        return self.size + 1

    def page(
        self,
        rows: Sequence[Mapping[str, Any]],
        cursor_of: Callable[[Mapping[str, Any]], str] = newest_first,
    ) -> dict[str, Any]:
        return page(rows, self.size, cursor_of)


async def newest_page(limit: Limit = 50, cursor: Cursor = None) -> NewestPage:
    return NewestPage(limit, cursor)


# The page parameters of a list kept newest first, as one dependency.
Newest = Annotated[NewestPage, Depends(newest_page)]


def aware(name: str, value: datetime | None) -> datetime | None:
    """A query parameter's time in UTC; a 422 naming ``name`` for one without a zone."""
    if value is None:
        return None
    try:
        return utc_timestamp(value)
    except ValueError as exc:
        raise ValidationFailed(
            f"{name}: {exc}", details=[{"field": name, "message": str(exc)}]
        ) from exc


def time_range(
    after: datetime | None,
    before: datetime | None,
    names: tuple[str, str] = ("created_after", "created_before"),
) -> tuple[datetime | None, datetime | None]:
    """The range between two query parameters (named ``names`` in errors)."""
    low_name, high_name = names
    low, high = aware(low_name, after), aware(high_name, before)
    if low is not None and high is not None and low >= high:
        raise ValidationFailed(
            f"{low_name} must be earlier than {high_name}",
            details=[{"field": low_name, "message": f"not earlier than {high_name}"}],
        )
    return low, high
