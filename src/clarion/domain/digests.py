"""Digests, the pure part: which window a held notification joins, and the digest's id.

A category with ``"digest": {"window": "1h", "key": "project"}`` holds its non-critical
notifications per (recipient, channel, key value); the key names a field of the
notification's data (a dotted path reaches into objects), and a notification without it
joins the window of the empty key. When the window closes, one notification, whose id
derives from the window's, carries ``items`` (each held notification's data, in arrival
order) and ``count``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from clarion.domain.ids import derived_timed_id

# A window closes early once it holds this many notifications: a digest stays readable, and
# its notification's data stays bounded.
MAX_ITEMS = 100
# Longest key value stored as it is; a longer one is stored as its hash.
MAX_KEY = 200


def digest_key(data: Mapping[str, Any] | None, path: str | None) -> str:
    """The value of the field ``path`` names in ``data``, as text; "" when there is none."""
    if path is None or data is None:
        return ""
    value: Any = data
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return ""
        value = value[part]
    if value is None:
        return ""
    text = value if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    if isinstance(text, bytes):
        text = text.decode()
    if len(text) > MAX_KEY:
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    return text


def digest_notification_id(window_id: str) -> str:
    """The one notification a window's closing creates: closing it again finds it there.
    It carries the window's time, as an accepted notification carries its own."""
    return derived_timed_id("ntf", window_id, "digest", window_id)
