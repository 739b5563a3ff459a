"""Newest-first pages: where one ended (the last row's (time, id)) and how the next is read.

The message log, the audit log, API keys, dead letters and the inbox list rows newest
first by ``(time, id)`` (:func:`newest_first`), each along an index that ends in those two
columns; the next page starts strictly after (older than) the position of the last row
shown. The API hands a position out as an opaque cursor (``api/paging.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, tuple_


@dataclass(frozen=True, slots=True)
class Position:
    at: datetime
    id: str


def newest_first(
    query: Select[Any], at: Any, ident: Any, after: Position | None, limit: int
) -> Select[Any]:
    """``query``'s rows newest first by ``(at, ident)``, their columns, at most ``limit``
    of them, only those after ``after``: one row-value comparison, a range of the index."""
    if after is not None:
        query = query.where(tuple_(at, ident) < tuple_(after.at, after.id))
    return query.order_by(at.desc(), ident.desc()).limit(limit)


def between(
    column: Any, after: datetime | None, before: datetime | None
) -> list[ColumnElement[bool]]:
    """``after <= column < before``, a bound left out when it is None."""
    where = []
    if after is not None:
        where.append(column >= after)
    if before is not None:
        where.append(column < before)
    return where
