"""Durations written as ``90s``, ``15m``, ``1h`` or ``7d``."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^([1-9]\d{0,6})([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(value: str) -> int:
    """Seconds in a duration such as ``90s``, ``15m``, ``1h`` or ``7d``; ``ValueError``
    for anything else."""
    match = _DURATION.match(value)
    if match is None:
        raise ValueError("not a duration such as 15m, 1h or 1d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
