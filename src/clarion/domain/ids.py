"""Identifiers: time-ordered random ids, and deterministic delivery ids."""

from __future__ import annotations

import hashlib
import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford's base32, lower case


def _b32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """A 128-bit id: 48 bits of milliseconds, then 80 random bits, so ids sort by time."""
    millis = int(time.time() * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    return f"{prefix}_{_b32((millis << 80) | rand, 26)}"


def delivery_id(notification_id: str, recipient_id: str, channel: str) -> str:
    """The one id of the delivery of a notification to a recipient on a channel.

    A replayed plan derives the same id, so it can never create a second delivery.
    """
    digest = hashlib.sha256(f"{notification_id}\x1f{recipient_id}\x1f{channel}".encode()).digest()
    return f"dlv_{_b32(int.from_bytes(digest[:16], 'big') >> 2, 25)}"


def derived_id(prefix: str, *parts: str) -> str:
    """An id of ``prefix``'s shape that depends on ``parts`` alone (the same every time)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return f"{prefix}_{_b32(int.from_bytes(digest[:17], 'big') >> 6, 26)}"
