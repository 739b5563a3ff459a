"""The Redis live hub: many connections opening at once, a recipient who comes back."""

from __future__ import annotations

import asyncio
import contextlib

from redis.asyncio import Redis

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
