"""When to try a request again, and after how long."""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

import httpx

RETRY_STATUSES = frozenset({429, 503})


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = moment.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_retries`` tries after the first. A 429 or 503 waits what its ``Retry-After``
    says (up to ``max_wait``; longer is not waited for: the error is raised), else an
    exponential backoff with jitter from ``backoff`` seconds. A connection failure is
    retried only for requests safe to repeat (reads, PUT, DELETE, and POSTs carrying an
    idempotency key)."""

    max_retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_wait: float = 60.0

    def _backoff(self, attempt: int) -> float:
        delay: float = min(self.max_backoff, self.backoff * 2**attempt)
        return delay * (0.5 + random.random() / 2)

    def after_response(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before trying again, or None to stop."""
        if response.status_code not in RETRY_STATUSES or attempt >= self.max_retries:
            return None
        asked = parse_retry_after(response.headers.get("retry-after"))
        if asked is None:
            return self._backoff(attempt)
        return asked if asked <= self.max_wait else None

    def after_failure(self, attempt: int, repeatable: bool) -> float | None:
        if not repeatable or attempt >= self.max_retries:
            return None
        return self._backoff(attempt)
