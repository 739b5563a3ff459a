"""How Clarion's Redis clients treat a broken or silent connection."""

from __future__ import annotations

from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

# A reply (or a write) that has not come in this many seconds will not come: the connection
# is dropped and the call fails (redis TimeoutError, an outage to the callers) instead of
# waiting forever on a half-open socket. Set here rather than left to redis-py, whose
# default changed between versions (none before 8, 5 s since). Above any command Clarion
# sends: its longest, a blocking XREADGROUP, blocks for 0.5 s at most while busy and 8 s
# at most at rest (broker/redis_streams.py).
SOCKET_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0


def reconnecting() -> dict[str, Any]:
    """Connection settings: a command that meets a broken connection (a pooled connection to
    a server that restarted) is sent again on a fresh one, twice at most, after a short
    pause; a server that stays away, or does not answer within ``SOCKET_TIMEOUT``, still
    fails the call, for the caller to wait out."""
    return {
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        "retry_on_error": [RedisConnectionError],
        "health_check_interval": 10,
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
    }
