"""Live events across API processes through Redis pub/sub, one channel per recipient.

``clarion:inbox:<tenant id>:<recipient id>``: a process subscribes to a recipient's channel
while it holds at least one connection of that recipient, and unsubscribes with the last.
So an event travels only to the processes that hold its recipient's connections, and a
connection's queue only ever receives its own recipient's events: routing is done by
Redis on the channel name, not by filtering in the process.

Pub/sub is fire-and-forget. When the subscriber connection is lost, events published
meanwhile are lost for this process: every local connection is closed with reason
``resync``, and its client resumes from its last event id (the inbox table is the truth).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from clarion.realtime.base import RESYNC, Event, Hub, Key

log = logging.getLogger(__name__)

_PREFIX = "clarion:inbox:"


def channel(tenant_id: str, recipient_id: str) -> str:
    # Tenant ids hold no ':' (ten_<base32>), so the name cannot be read two ways.
    return f"{_PREFIX}{tenant_id}:{recipient_id}"


def _key(name: str) -> Key:
    tenant_id, _, recipient_id = name.removeprefix(_PREFIX).partition(":")
    return tenant_id, recipient_id


class RedisHub(Hub):
    def __init__(self, redis: Redis, queue_size: int = 256) -> None:
        super().__init__(queue_size)
        self._redis = redis
        self._pubsub = redis.pubsub(ignore_subscribe_messages=True)
        self._lock = asyncio.Lock()  # subscribe/unsubscribe one at a time
        self._reader: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    async def publish(self, tenant_id: str, recipient_id: str, event: Event) -> None:
        await self._redis.publish(channel(tenant_id, recipient_id), orjson.dumps(event))

    async def publish_many(self, items: list[tuple[str, str, Event]]) -> None:
        if not items:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for tenant_id, recipient_id, event in items:
                pipe.publish(channel(tenant_id, recipient_id), orjson.dumps(event))
            await pipe.execute()

    async def start(self) -> None:
        if self._reader is None:
            self._reader = asyncio.create_task(self._read(), name="inbox-hub")

    async def _listen(self, key: Key) -> None:
        await self.start()
        async with self._lock:
            await self._pubsub.subscribe(channel(*key))
        self._listening.set()

    async def _unlisten(self, key: Key) -> None:
        async with self._lock:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.unsubscribe(channel(*key))

    async def _read(self) -> None:
        pause = 0.1
        while True:
            await self._listening.wait()
            try:
                message = await self._pubsub.get_message(timeout=1.0)
                pause = 0.1
            except (RedisError, OSError) as exc:
                log.warning("inbox pub/sub connection lost (%r): live connections resync", exc)
                self.close_all(RESYNC)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            if message is None or message.get("type") != "message":
                continue
            name = message["channel"]
            name = name.decode() if isinstance(name, bytes) else str(name)
            try:
                event = orjson.loads(message["data"])
            except orjson.JSONDecodeError:
                log.warning("undecodable inbox event on %s dropped", name)
                continue
            self.deliver(_key(name), event)

    async def aclose(self) -> None:
        await super().aclose()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
