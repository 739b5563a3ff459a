"""Live inbox events across API processes: ``base`` (the interface), ``memory`` (in
process, the embedded default), ``redis`` (Redis pub/sub, one channel per recipient) and
``nats`` (core NATS, one subject per recipient)."""

from __future__ import annotations

from clarion.broker.redis_client import RedisClient
from clarion.config import Settings
from clarion.realtime.base import Event, Hub, Subscription
from clarion.realtime.memory import MemoryHub

__all__ = ["Event", "Hub", "MemoryHub", "Subscription", "create_hub"]


def create_hub(settings: Settings, redis: RedisClient | None) -> Hub:
    """The hub ``settings.live_hub`` names: NATS with the NATS broker (on the broker's
    servers), else Redis when the deployment has Redis (``redis``), else in process."""
    kind = settings.live_hub
    if kind == "nats":
        from clarion.realtime.nats import NatsHub

        return NatsHub(settings.broker_url, settings.inbox_queue_size)
    if kind == "redis" and redis is not None:
        from clarion.realtime.redis import RedisHub

        return RedisHub(redis, settings.inbox_queue_size)
    return MemoryHub(settings.inbox_queue_size)
