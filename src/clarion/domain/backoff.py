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
