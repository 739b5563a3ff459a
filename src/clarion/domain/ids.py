"""Identifiers: time-ordered random ids, and deterministic delivery ids."""

from __future__ import annotations

import hashlib
import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford's base32, lower case


# Every pair of characters, by the 10 bits they spell: the ids below are made on every
# notification and delivery, and a lookup per pair costs a third of one per character.
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)


def _b32(value: int, length: int) -> str:
    """The low ``5 * length`` bits of ``value`` in ``length`` characters."""
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def _b32_26(v: int) -> str:
    """``_b32(v, 26)``, a pair of characters at a time."""
    p = _PAIRS
    return "".join(
        (
            p[v >> 120 & 1023], p[v >> 110 & 1023], p[v >> 100 & 1023], p[v >> 90 & 1023],
            p[v >> 80 & 1023], p[v >> 70 & 1023], p[v >> 60 & 1023], p[v >> 50 & 1023],
            p[v >> 40 & 1023], p[v >> 30 & 1023], p[v >> 20 & 1023], p[v >> 10 & 1023],
            p[v & 1023],
        )
    )  # fmt: skip


def _b32_16(v: int) -> str:
    """``_b32(v, 16)``, a pair of characters at a time."""
    p = _PAIRS
    return "".join(
        (
            p[v >> 70 & 1023], p[v >> 60 & 1023], p[v >> 50 & 1023], p[v >> 40 & 1023],
            p[v >> 30 & 1023], p[v >> 20 & 1023], p[v >> 10 & 1023], p[v & 1023],
        )
    )  # fmt: skip


def new_id(prefix: str) -> str:
    """A 128-bit id: 48 bits of milliseconds, then 80 random bits, so ids sort by time."""
    millis = int(time.time() * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    return f"{prefix}_{_b32_26((millis << 80) | rand)}"


# The first ten characters of an id from `new_id` spell its milliseconds (with two zero
# bits above them): `time_part` reads them back, `time_prefix` writes those of a time.
TIME_CHARS = 10
# An id whose time part is not a time from `new_id` (a derived id) counts as this one: it
# sorts after every real time, so its rows gather in one place (store/retention.py).
NO_TIME = "z" * TIME_CHARS


def time_prefix(millis: int) -> str:
    """The time part of an id made at ``millis`` (milliseconds since the epoch)."""
    return _b32((millis & ((1 << 48) - 1)) << 80, 26)[:TIME_CHARS]


_VALUES = {char: value for value, char in enumerate(_ALPHABET)}


def time_millis(part: str) -> int:
    """The milliseconds a time part (:func:`time_prefix`) spells."""
    value = 0
    for char in part:
        value = value << 5 | _VALUES[char]
    return value


def time_part(any_id: str) -> str:
    """The time part of an id made by :func:`new_id`, or :data:`NO_TIME` for another."""
    _prefix, sep, body = any_id.partition("_")
    if not sep or len(body) != 26 or body[0] != "0":
        return NO_TIME
    return body[:TIME_CHARS]


def delivery_id(notification_id: str, recipient_id: str, channel: str) -> str:
    """The one id of the delivery of a notification to a recipient on a channel.

    A replayed plan derives the same id, so it can never create a second delivery. It
    starts with the notification's time part, so deliveries sort (and are partitioned) by
    the time their notification was accepted; 80 bits of a hash of the three follow.
    """
    digest = hashlib.sha256(f"{notification_id}\x1f{recipient_id}\x1f{channel}".encode()).digest()
    hashed = _b32_16(int.from_bytes(digest[:10], "big"))
    return f"dlv_{time_part(notification_id)}{hashed}"


def renamed_delivery_id(old: str) -> str:
    """A fresh random id for a delivery (an erasure unlinks it from the recipient) that
    keeps the old id's time part, so the row stays with its day (store/retention.py)."""
    return f"dlv_{time_part(old)}{_b32_16(int.from_bytes(os.urandom(10), 'big'))}"


def derived_timed_id(prefix: str, timed_id: str, *parts: str) -> str:
    """An id of ``prefix``'s shape with the time part of ``timed_id`` (an id from
    :func:`new_id`), its random part a hash of ``parts``: the same every time, and sorted by
    that time."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return f"{prefix}_{time_part(timed_id)}{_b32_16(int.from_bytes(digest[:10], 'big'))}"
