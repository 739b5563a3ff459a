"""How Clarion's Redis clients treat a broken connection."""

from __future__ import annotations

from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError


def reconnecting() -> dict[str, Any]:
    """Connection settings: a command that meets a broken connection (a pooled connection to
    a server that restarted) is sent again on a fresh one, twice at most, after a short
    pause; a server that stays away still fails the call, for the caller to wait out."""
    return {
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        "retry_on_error": [RedisConnectionError],
        "health_check_interval": 10,
    }
