"""Live inbox events across API processes: ``base`` (the interface), ``memory`` (in
process, the embedded default) and ``redis`` (Redis pub/sub, one channel per recipient)."""

from __future__ import annotations

from clarion.broker.redis_client import RedisClient
from clarion.realtime.base import Event, Hub, Subscription
from clarion.realtime.memory import MemoryHub

__all__ = ["Event", "Hub", "MemoryHub", "Subscription", "create_hub"]


def create_hub(redis: RedisClient | None, queue_size: int) -> Hub:
    """The Redis hub when the deployment has Redis, else the in-process one."""
    if redis is None:
        return MemoryHub(queue_size)
    from clarion.realtime.redis import RedisHub

    return RedisHub(redis, queue_size)
