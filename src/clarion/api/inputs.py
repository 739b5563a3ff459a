"""What every input must be before anything stores it: the rules checked once, at the edge.

A JSON body is parsed strictly and walked once: nesting at most :data:`MAX_DEPTH` levels,
integers within signed 64 bits, no NaN or infinities, strings free of NUL and of lone UTF-16
surrogates (neither PostgreSQL ``text`` nor UTF-8 can hold them). The path and the query
string carry no NUL either. Everything past this point is therefore storable on SQLite and
PostgreSQL alike; what is not is a 400 with the JSON error body, never a 5xx.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson

MAX_DEPTH = 32
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
# `json` accepts up to this many digits before it refuses a number outright (CPython's
# int-to-str limit); anything longer than 19 digits is outside 64 bits anyway.
_MAX_INT_DIGITS = 20


class InputRefused(ValueError):
    """The input breaks one of the edge rules; ``message`` says which, for the client."""

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.where = where


def _int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise InputRefused("an integer is outside the signed 64-bit range")
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise InputRefused("an integer is outside the signed 64-bit range")
    return value


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise InputRefused("a number is too large to be represented")
    return value


def _constant(name: str) -> Any:
    raise InputRefused(f"{name} is not a JSON value")


def check_text(value: str, where: str = "") -> None:
    """Refuse a string holding NUL or a lone surrogate."""
    if "\x00" in value:
        raise InputRefused("text may not contain the NUL character (U+0000)", where)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputRefused("text may not contain a lone UTF-16 surrogate", where) from exc


def _walk(value: Any, depth: int, path: list[str]) -> None:
    if depth > MAX_DEPTH:
        raise InputRefused(f"JSON nested more than {MAX_DEPTH} levels deep", ".".join(path))
    if isinstance(value, str):
        check_text(value, ".".join(path))
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, ".".join(path))
            path.append(key)
            _walk(item, depth + 1, path)
            path.pop()
    elif isinstance(value, list):
        for index, item in enumerate(value):
            path.append(str(index))
            _walk(item, depth + 1, path)
            path.pop()


# A run of 19 digits may be an integer outside signed 64 bits, which orjson would turn
# into a float (beyond 64 unsigned bits) or accept (up to them); with none, every integer
# in the body is within the range.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def parse_json(body: bytes) -> Any:
    """The body as JSON, or :class:`InputRefused` / :class:`json.JSONDecodeError`."""
    if not _LONG_DIGITS.search(body):
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # the standard parser below says exactly what is wrong
        else:
            _walk(value, 1, [])
            return value
    # The standard parser with hooks: slower, and exact about integers, NaN and infinity.
    try:
        value = json.loads(body, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except RecursionError as exc:
        raise InputRefused(f"JSON nested more than {MAX_DEPTH} levels deep") from exc
    except UnicodeDecodeError as exc:
        raise InputRefused("the body is not UTF-8") from exc
    _walk(value, 1, [])
    return value


def check_target(path: str, query: bytes) -> None:
    """Refuse a request whose path or query string carries what no store can hold."""
    check_text(path, "path")
    if b"%00" in query or b"\x00" in query:
        raise InputRefused("the query string may not contain the NUL character", "query")
    try:
        unquote_to_bytes(query.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputRefused("the query string is not UTF-8", "query") from exc
