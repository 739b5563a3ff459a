"""Where a newest-first page ended: the last row's (time, id).

The message log, the audit log, API keys, dead letters and the inbox list rows newest
first by ``(time, id)``, each along an index that ends in those two columns; the next page
starts strictly after (older than) the position of the last row shown. The API hands a
position out as an opaque cursor (``api/paging.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, tuple_


@dataclass(frozen=True, slots=True)
class Position:
    at: datetime
    id: str


def older_than(at: Any, ident: Any, position: Position) -> ColumnElement[bool]:
    """Rows after ``position`` in newest-first order, ``at`` and ``ident`` their columns:
    one row-value comparison, a range of the index."""
    return tuple_(at, ident) < tuple_(position.at, position.id)
