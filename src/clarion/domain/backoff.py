"""Retry delays: the configured schedule, with full jitter."""

from __future__ import annotations

import random
from collections.abc import Sequence


def retry_delay(
    attempt: int,
    schedule: Sequence[float],
    *,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before attempt ``attempt + 1``, after ``attempt`` failed tries.

    Full jitter: a uniform draw between half the scheduled delay and the whole of it, so a
    burst of failures does not come back as a burst. A provider's ``Retry-After`` is a floor.
    """
    if not schedule:
        return retry_after or 0.0
    base = schedule[min(max(attempt, 1), len(schedule)) - 1]
    draw = (rng or random).uniform(base / 2, base)
    return max(draw, retry_after or 0.0)


# Doublings past this many cannot matter (any cap is reached long before), and a float
# raised further would overflow.
_MOST_DOUBLINGS = 64


def resting_pause(first: float, empty: int, most: float) -> float:
    """The pause of a loop that looks for work, after ``empty`` looks in a row that found
    nothing: ``first`` after one (or none), twice as long after each further one, up to
    ``most`` (no growth when ``most`` is not above ``first``). However long a deployment
    rests, the pause stays ``most``."""
    if most <= first or empty <= 1:
        return first
    return min(first * 2.0 ** min(empty - 1, _MOST_DOUBLINGS), most)
