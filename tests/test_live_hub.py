"""The Redis live hub: many connections opening at once, a recipient who comes back."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from redis.asyncio import Redis

from clarion.broker.redis_client import connect
from clarion.realtime.base import Subscription
from clarion.realtime.redis import RedisHub

TENANT = "ten_hub"


async def _subscribe_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_subscribe", {}).get("calls", 0))


async def test_connections_opening_together_share_one_subscribe(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    hub = RedisHub(redis)
    try:
        before = await _subscribe_calls(redis)
        async with contextlib.AsyncExitStack() as stack:
            subs: list[Subscription] = await asyncio.gather(
                *(stack.enter_async_context(hub.subscribe(TENANT, f"r{i}")) for i in range(300))
            )
            # Each connection's own SUBSCRIBE was one round trip of the event loop: with
            # thousands of busy connections, longer than a subscription may wait.
            assert await _subscribe_calls(redis) - before < 10
            await hub.publish_many(
                [(TENANT, f"r{i}", {"type": "message", "n": i}) for i in range(300)]
            )
            for i, sub in enumerate(subs):
                assert await sub.next_batch() == [{"type": "message", "n": i}]
    finally:
        await hub.aclose()
        await redis.aclose()


async def test_a_recipient_who_closes_and_comes_back_at_once_still_receives(
    redis_url: str,
) -> None:
    redis = Redis.from_url(redis_url)
    hub = RedisHub(redis)
    try:
        async with hub.subscribe(TENANT, "keep"):
            pass
        # The unsubscribe and the new subscribe reach the hub's connection together.
        async with hub.subscribe(TENANT, "gone"), hub.subscribe(TENANT, "keep") as sub:
            await hub.publish(TENANT, "keep", {"type": "message", "n": 1})
            assert await sub.next_batch() == [{"type": "message", "n": 1}]
    finally:
        await hub.aclose()
        await redis.aclose()


@pytest.mark.slow
async def test_events_cross_a_redis_cluster_from_any_node_to_the_subscriber(
    redis_cluster_url: str,
) -> None:
    """Two API processes on a Redis Cluster: events published by one (channels of every
    slot, through every master) reach the connections held by the other."""
    holder_redis = connect(redis_cluster_url, max_connections=8, pool_timeout=5)
    sender_redis = connect(redis_cluster_url, max_connections=8, pool_timeout=5)
    holder, sender = RedisHub(holder_redis), RedisHub(sender_redis)
    try:
        async with contextlib.AsyncExitStack() as stack:
            subs: list[Subscription] = await asyncio.gather(
                *(stack.enter_async_context(holder.subscribe(TENANT, f"c{i}")) for i in range(60))
            )
            await sender.publish_many(
                [(TENANT, f"c{i}", {"type": "message", "n": i}) for i in range(60)]
            )
            await sender.publish(TENANT, "c0", {"type": "message", "n": "again"})
            for i, sub in enumerate(subs):
                got = await sub.next_batch()
                if i == 0 and len(got) == 1:
                    got += await sub.next_batch()
                assert got[0] == {"type": "message", "n": i}
            assert got == [{"type": "message", "n": 59}]
    finally:
        await holder.aclose()
        await sender.aclose()
        await holder_redis.aclose()
        await sender_redis.aclose()
