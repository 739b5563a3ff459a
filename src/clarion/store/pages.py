"""Newest-first pages: where one ended (the last row's (time, id)) and how the next is read.

The message log, the audit log, API keys, dead letters and the inbox list rows newest
first by ``(time, id)`` (:func:`newest_first`), each along an index that ends in those two
columns; the next page starts strictly after (older than) the position of the last row
shown. The API hands a position out as an opaque cursor (``api/paging.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, Subquery, and_, func, or_, select, tuple_


@dataclass(frozen=True, slots=True)
class Position:
    at: datetime
    id: str


Row = TypeVar("Row", bound=Mapping[str, Any])


def page_of(
    rows: Sequence[Row], limit: int, position: Callable[[Row], Position]
) -> tuple[list[Row], Position | None]:
    """The page of ``limit`` rows in ``rows`` (read ``limit + 1``, newest first) and where
    the next page starts (None: nothing more).

    The rows of a bounded walk (a list filtered by what no index holds: store/message_log.py
    ``_examined``, store/dead_letters.py ``_walked``) say which matched, which was the last
    one examined (``walk_end``) and whether more is left to examine (``walk_goes_on``): the
    page is the matches, fewer than ``limit`` (even none) when the walk stopped at its bound
    first, the next page then starting after the last row examined. A full page ends at its
    last row, as an unfiltered one does."""
    examined: Position | None = None
    if rows and "walk_end" in rows[0]:
        last = next((row for row in rows if row["walk_end"]), None)
        if last is not None and any(row["walk_goes_on"] for row in rows):
            examined = position(last)
        rows = [row for row in rows if row["matched"]]
    page = list(rows[:limit])
    if len(rows) > limit or (examined is not None and len(page) == limit):
        return page, position(page[-1])
    return page, examined


def newest_first(
    query: Select[Any], at: Any, ident: Any, after: Position | None, limit: int
) -> Select[Any]:
    """``query``'s rows newest first by ``(at, ident)``, their columns, at most ``limit``
    of them, only those after ``after``: one row-value comparison, a range of the index."""
    if after is not None:
        query = query.where(tuple_(at, ident) < tuple_(after.at, after.id))
    return query.order_by(at.desc(), ident.desc()).limit(limit)


def bounded_walk(
    walk: Select[Any], at: Any, ident: Any, after: Position | None, limit: int, bound: int
) -> Subquery:
    """The rows a filtered page keeps of a bounded walk, for :func:`page_of`.

    ``walk`` selects ``ident``, ``at`` and ``matched`` (whether the list's filter keeps the
    row) from a range of an index ending in ``(at, ident)``. Of its next ``bound`` rows after
    ``after``, newest first: those ``matched``, the last one examined (``walk_end``) and the
    one after it (``walk_goes_on``: more is left to examine). At most ``limit + 1`` rows:
    ``limit`` matches fill the caller's page and its row more, and fewer come with those
    last two rows. The walk is numbered and read one row past its bound; only the rows
    kept are then read whole, by the caller's join on ``ident``."""
    newest = (at.desc(), ident.desc())
    numbered = walk.add_columns(func.row_number().over(order_by=newest).label("n"))
    walked = newest_first(numbered, at, ident, after, bound + 1).subquery("walked")
    w_id, w_at, n = walked.c[ident.name], walked.c[at.name], walked.c.n
    return (
        select(
            w_id,
            w_at,
            and_(walked.c.matched, n <= bound).label("matched"),
            (n == bound).label("walk_end"),
            (n > bound).label("walk_goes_on"),
        )
        .where(or_(walked.c.matched, n >= bound))
        .order_by(w_at.desc(), w_id.desc())
        .limit(limit + 1)
        .subquery("kept")
    )


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
