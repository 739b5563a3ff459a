"""A batch's column as one text parameter, split by PostgreSQL, instead of an array.

The hot statements (store/bulk.py, store/intake.py) send a batch as one parameter per
column. As an array, asyncpg encodes the column element by element and checks each element
against three abstract base classes on the way (is it a nested array?): about 0.8 µs of
the sending process's CPU per element, measured on the benchmark machine
(docs/performance.md, "Columns as one text"). Joined into one text, the same values cost
about 0.2 µs each to send, the joining included, and PostgreSQL's ``string_to_array``
splits them for no more than it spends reading the array. So a column travels as its
values joined by the unit separator (U+001F), with NULL as the record separator (U+001E),
and the statement reads it as ``string_to_array($n, E'\\x1f', E'\\x1e')::type[]``
(:func:`param`). Text (JSON as text), integers and booleans travel so; timestamps stay
arrays (:func:`columns`).

A value that holds either mark cannot travel so. JSON text never does (it escapes control
characters), nor do the ids Clarion makes, nor a provider's error text (control characters
are replaced before it is stored: domain/status.py); an id a client chose might.
:func:`pack` then answers None, and the statement goes with plain arrays (each hot
statement has both texts: :func:`param` with ``packed=False``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SEP = "\x1f"
NULL = "\x1e"


def param(number: int, kind: str, packed: bool) -> str:
    """Parameter ``$number`` as an array of ``kind``: split from one text when ``packed``
    (never a timestamp: see :func:`columns`)."""
    if packed and kind != "timestamptz":
        return f"string_to_array(${number}, E'\\x1f', E'\\x1e')::{kind}[]"
    return f"${number}::{kind}[]"


def pack(values: Sequence[str | None]) -> str | None:
    """``values`` as one text for :func:`param`, or None if one of them holds a mark (or
    the column is one empty string, which ``string_to_array`` reads as no element)."""
    if not values:
        return ""
    text = SEP.join([NULL if value is None else value for value in values])
    if text.count(SEP) != len(values) - 1 or text.count(NULL) != values.count(None) or not text:
        return None
    return text


def numbers(values: Sequence[int | None]) -> list[str | None]:
    """Integers as the texts :func:`pack` joins (a ``bool`` is not one)."""
    return [None if value is None else str(int(value)) for value in values]


def flags(values: Sequence[bool | None]) -> list[str | None]:
    return [None if value is None else ("t" if value else "f") for value in values]


def columns(kinds: Sequence[str], values: Sequence[Sequence[Any]]) -> list[Any] | None:
    """Each column of ``values`` packed as its kind (``text``, ``int`` or ``bool``; JSON as
    text) says, or None if one of them cannot be. A ``timestamptz`` column stays an array:
    as text, each value would cost an ISO 8601 formatting here and a parse in PostgreSQL,
    the busier side, which together measured more than the array's encoding."""
    out: list[Any] = []
    for kind, column in zip(kinds, values, strict=True):
        if kind == "timestamptz":
            out.append(column)
            continue
        texts = numbers(column) if kind == "int" else flags(column) if kind == "bool" else column
        text = pack(texts)
        if text is None:
            return None
        out.append(text)
    return out
