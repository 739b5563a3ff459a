"""Live events across API processes through Redis pub/sub, one channel per recipient.

``clarion:inbox:<tenant id>:<recipient id>``: a process subscribes to a recipient's channel
while it holds at least one connection of that recipient, and unsubscribes with the last.
So an event travels only to the processes that hold its recipient's connections, and a
connection's queue only ever receives its own recipient's events: routing is done by
Redis on the channel name, not by filtering in the process.

One task owns the subscriber connection and (un)subscribes between reads (every 50 ms at
most), so the connection is never used by two coroutines at once, and a connection that
ends never waits on Redis.

On a Redis Cluster a published event reaches every node (the cluster bus carries it), so
the subscriber connection may be to any node; it is opened again, to a node of the
cluster's current layout, when its node fails.

Pub/sub is fire-and-forget. When the subscriber connection is lost, events published
meanwhile are lost for this process: every local connection is closed with reason
``resync``, and its client resumes from its last event id (the inbox table is the truth).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import orjson
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from clarion.broker.redis_client import RedisClient
from clarion.realtime.base import RESYNC, Event, Hub, Key

log = logging.getLogger(__name__)

_PREFIX = "clarion:inbox:"
# How long a read waits before the owner looks for new (un)subscriptions again.
_POLL = 0.05
_SUBSCRIBE_TIMEOUT = 10.0
# Channels named in one SUBSCRIBE or UNSUBSCRIBE.
_PER_COMMAND = 1000
_CLOSE_WAIT = 15.0


def channel(tenant_id: str, recipient_id: str) -> str:
    # Tenant ids hold no ':' (ten_<base32>), so the name cannot be read two ways.
    return f"{_PREFIX}{tenant_id}:{recipient_id}"


def _key(name: str) -> Key:
    tenant_id, _, recipient_id = name.removeprefix(_PREFIX).partition(":")
    return tenant_id, recipient_id


class RedisHub(Hub):
    """One task owns the pub/sub connection: it subscribes and unsubscribes what the
    connections of this process ask for, between reads, so the connection is never used
    by two coroutines at once, and a connection that ends never waits on Redis."""

    def __init__(self, redis: RedisClient, queue_size: int = 256) -> None:
        super().__init__(queue_size)
        self._redis = redis
        self._owner: asyncio.Task[None] | None = None
        # Channels to subscribe (with who waits for it) or to unsubscribe, in order.
        self._requests: list[tuple[str, str, asyncio.Future[None] | None]] = []
        self._wake = asyncio.Event()
        # The owner's loops end on this flag: a cancellation alone can be lost (see
        # pipeline/inflight.py::holding).
        self._closing = False

    async def publish(self, tenant_id: str, recipient_id: str, event: Event) -> None:
        await self._redis.publish(channel(tenant_id, recipient_id), orjson.dumps(event))

    async def publish_many(self, items: list[tuple[str, str, Event]]) -> None:
        if not items:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for tenant_id, recipient_id, event in items:
                # As a plain command: a cluster's pipeline refuses its publish().
                pipe.execute_command(
                    "PUBLISH", channel(tenant_id, recipient_id), orjson.dumps(event)
                )
            await pipe.execute()

    async def start(self) -> None:
        if self._owner is None:
            self._owner = asyncio.create_task(self._own(), name="inbox-hub")

    async def _listen(self, key: Key) -> None:
        await self.start()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._requests.append(("subscribe", channel(*key), done))
        self._wake.set()
        async with asyncio.timeout(_SUBSCRIBE_TIMEOUT):
            await done

    async def _unlisten(self, key: Key) -> None:
        self._requests.append(("unsubscribe", channel(*key), None))
        self._wake.set()

    async def _own(self) -> None:
        pause = 0.1
        lost = False
        while not self._closing:
            pubsub: PubSub | None = None
            try:
                pubsub = await self._open(lost)
                await self._serve(pubsub)
            except (RedisError, RedisClusterException, OSError, RuntimeError) as exc:
                # RedisClusterException: a cluster whose layout cannot be read (a failover
                # under way), not a RedisError.
                log.warning("inbox pub/sub connection lost (%r): live connections resync", exc)
                self._fail_waiting(exc)
                self.close_all(RESYNC)
                lost = True
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(RedisError, OSError, RuntimeError):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _open(self, lost: bool) -> PubSub:
        """A pub/sub connection. In a cluster it goes to a node of the cluster's layout,
        which is read first (and read again after a lost connection: its node may have
        failed, and a replica taken over)."""
        if isinstance(self._redis, RedisCluster):
            if lost:
                await self._redis.nodes_manager.initialize()
            else:
                await self._redis.initialize()
        return self._redis.pubsub(ignore_subscribe_messages=True)

    async def _serve(self, pubsub: PubSub) -> None:
        while not self._closing:
            if not pubsub.subscribed and not self._requests:
                self._wake.clear()
                await self._wake.wait()
            await self._apply(pubsub)
            message = await pubsub.get_message(timeout=_POLL)
            if message is not None and message.get("type") == "message":
                self._route(message)

    async def _apply(self, pubsub: PubSub) -> None:
        """Everything asked since the last read, in one SUBSCRIBE and one UNSUBSCRIBE of
        many channels: a thousand connections opening at once cost two commands, not a
        thousand round trips of the event loop (which, with 10,000 connections busy, took
        longer than a subscription may wait)."""
        requests, self._requests = self._requests, []
        if not requests:
            return
        # Only the last word on a channel counts: a connection that closed and came back
        # since the last read is still wanted, one that came and went is not.
        last: dict[str, str] = {}
        for kind, name, _ in requests:
            last[name] = kind
        wanted = [name for name, kind in last.items() if kind == "subscribe"]
        gone = [
            n for n, kind in last.items() if kind != "subscribe" and not self._local.get(_key(n))
        ]
        try:
            for start in range(0, len(wanted), _PER_COMMAND):
                await pubsub.subscribe(*wanted[start : start + _PER_COMMAND])
            for start in range(0, len(gone), _PER_COMMAND):
                await pubsub.unsubscribe(*gone[start : start + _PER_COMMAND])
        except BaseException:
            self._requests[:0] = requests  # failed with the rest (see _own)
            raise
        for _, _, done in requests:
            if done is not None and not done.done():
                done.set_result(None)

    def _route(self, message: dict[str, object]) -> None:
        name = message["channel"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        try:
            event = orjson.loads(message["data"])  # type: ignore[arg-type]
        except orjson.JSONDecodeError:
            log.warning("undecodable inbox event on %s dropped", name)
            return
        self.deliver(_key(name), event)

    def _fail_waiting(self, exc: BaseException) -> None:
        requests, self._requests = self._requests, []
        for _, _, done in requests:
            if done is not None and not done.done():
                done.set_exception(ConnectionError(f"inbox pub/sub unavailable: {exc!r}"))

    async def aclose(self) -> None:
        await super().aclose()
        if self._owner is not None:
            self._closing = True
            self._wake.set()
            self._owner.cancel()
            # Its loops see the flag within a poll; a pub/sub call it is in is bounded by
            # the client's socket timeout.
            _, pending = await asyncio.wait([self._owner], timeout=_CLOSE_WAIT)
            if pending:
                log.warning("the inbox pub/sub task did not stop when asked")
            else:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._owner
