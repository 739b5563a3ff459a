"""Brokers: the interface in ``base``, one module per backend, chosen by URL scheme."""

from __future__ import annotations

from clarion.broker.base import Broker, Delayed, Message, StreamStats
from clarion.broker.redis_client import is_redis_url
from clarion.config import Settings

__all__ = ["Broker", "Delayed", "Message", "StreamStats", "create_broker"]


def create_broker(settings: Settings) -> Broker:
    url = settings.broker_url
    if url.startswith("embedded://"):
        from clarion.broker.embedded import EmbeddedBroker

        return EmbeddedBroker(lease=settings.broker_lease)
    if is_redis_url(url):
        from clarion.broker.redis_streams import RedisBroker

        return RedisBroker(url, lease=settings.broker_lease, shards=settings.broker_shards)
    if url.startswith(("nats://", "tls://")):
        from clarion.broker.nats_jetstream import NatsBroker

        return NatsBroker(url, lease=settings.broker_lease)
    raise ValueError(
        f"unknown broker URL scheme: {url!r} "
        "(use embedded://, redis://, redis+cluster:// or nats://)"
    )
