"""The live hubs between processes (Redis pub/sub, core NATS): each event reaches its own
recipient's connections in every process and no one else's, whatever the recipient ids;
many connections opening at once; a recipient who comes back; a lost connection."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import nats
import nats.errors
import pytest
from redis.asyncio import Redis

from clarion.broker.redis_client import connect
from clarion.config import Settings
from clarion.realtime import MemoryHub, create_hub
from clarion.realtime.base import RESYNC, Event, Hub, Subscription
from clarion.realtime.nats import MAX_SUBJECT, NatsHub, subject
from clarion.realtime.redis import RedisHub, channel
from servers import _free_port, nats_process

TENANT = "ten_hub"
OTHER_TENANT = "ten_other"
# Recipient ids that a careless subject or channel name would let cross: separators,
# wildcards, whitespace, escapes of each other, unicode (composed and not).
HOSTILE = [
    "a.b", "a-b", "a_b", "a_2eb", "a_2db", "a_5fb", "a", "b", "a.", ".b",
    "*", ">", "a.*", "a.>", "*.>", " ", "a b", "a\tb", "a\r\nb", "a:b",
    "ä", "a\u0308", "日本", "%2e", "_", "-", "__", "A.B", "a..b",
]  # fmt: skip
KINDS = ["redis", pytest.param("nats", marks=[pytest.mark.nats, pytest.mark.slow])]

MakeHub = Callable[[], Hub]


@pytest.fixture(params=KINDS)
async def hubs(request: pytest.FixtureRequest) -> AsyncIterator[MakeHub]:
    """Makes hubs of one kind, each with a connection of its own, as a process has."""
    kind = request.param
    url = request.getfixturevalue("redis_url" if kind == "redis" else "nats_url")
    made: list[Hub] = []
    clients: list[Redis] = []

    def make() -> Hub:
        hub: Hub
        if kind == "redis":
            clients.append(Redis.from_url(url))
            hub = RedisHub(clients[-1])
        else:
            hub = NatsHub(url)
        made.append(hub)
        return hub

    try:
        yield make
    finally:
        for hub in made:
            await hub.aclose()
        for client in clients:
            await client.aclose()


async def _until(sub: Subscription, last: Event) -> list[Event]:
    """Every event ``sub`` receives up to ``last``."""
    got: list[Event] = []
    async with asyncio.timeout(10):
        while last not in got:
            batch = await sub.next_batch()
            assert batch is not None, sub.reason
            got += batch
    return got


async def test_each_event_reaches_its_recipient_in_every_process_and_no_one_else(
    hubs: MakeHub,
) -> None:
    """Two processes hold connections of many recipients (ids made to collide, in two
    tenants); a third publishes one event to each: every connection gets its own and none
    of another's (each sees its own marker right after it: one publisher's events arrive
    in order)."""
    first, second, sender = hubs(), hubs(), hubs()
    keys = [(tenant, rid) for tenant in (TENANT, OTHER_TENANT) for rid in HOSTILE]
    async with contextlib.AsyncExitStack() as stack:
        pairs = [(n, hub, key) for n, hub in enumerate((first, second)) for key in keys]
        opened = await asyncio.gather(
            *(stack.enter_async_context(hub.subscribe(*key)) for _, hub, key in pairs)
        )
        subs = {(n, key): sub for (n, _, key), sub in zip(pairs, opened, strict=True)}
        assert not any(sub.closed.is_set() for sub in subs.values())
        await sender.publish_many([(*key, {"type": "message", "to": list(key)}) for key in keys])
        await sender.publish_many([(*key, {"type": "marker", "to": list(key)}) for key in keys])
        for (_, key), sub in subs.items():
            own = {"type": "message", "to": list(key)}
            assert await _until(sub, {"type": "marker", "to": list(key)}) == [
                own,
                {"type": "marker", "to": list(key)},
            ]


async def test_a_recipient_whose_last_connection_closed_gets_nothing_more(
    hubs: MakeHub,
) -> None:
    holder, sender = hubs(), hubs()
    async with holder.subscribe(TENANT, "gone.away"):
        pass
    # Subscribed after the other one's unsubscribe (in order, on the same connection).
    async with holder.subscribe(TENANT, "stays") as stays:
        assert not await _interest(holder, TENANT, "gone.away")
        await sender.publish(TENANT, "gone.away", {"type": "message", "n": 1})
        await sender.publish(TENANT, "stays", {"type": "message", "n": 2})
        assert await stays.next_batch() == [{"type": "message", "n": 2}]
        if isinstance(holder, NatsHub):
            assert holder._nc is not None
            # The process received only that one, besides its own subscriptions' echoes.
            assert holder._nc.stats["in_msgs"] - holder._echo_count == 1


async def _interest(hub: Hub, tenant_id: str, recipient_id: str) -> bool:
    """Whether the server holds a subscription to the recipient's events."""
    if isinstance(hub, RedisHub):
        [(_, count)] = await hub._redis.pubsub_numsub(channel(tenant_id, recipient_id))
        return bool(count)
    assert isinstance(hub, NatsHub)
    client = await nats.connect(hub._servers)
    try:
        # Nobody subscribed: the server says so at once. (Anybody: nobody answers.)
        await client.request(subject(tenant_id, recipient_id), b"", timeout=5)
    except nats.errors.NoRespondersError:
        return False
    except nats.errors.TimeoutError:
        return True
    finally:
        await client.close()
    return True


async def test_a_recipient_who_closes_and_comes_back_at_once_still_receives(
    hubs: MakeHub,
) -> None:
    hub = hubs()
    async with hub.subscribe(TENANT, "keep"):
        pass
    # The unsubscribe and the new subscribe reach the hub's connection together.
    async with hub.subscribe(TENANT, "gone"), hub.subscribe(TENANT, "keep") as sub:
        await hub.publish(TENANT, "keep", {"type": "message", "n": 1})
        assert await sub.next_batch() == [{"type": "message", "n": 1}]


async def test_many_connections_opening_together_each_receive_their_own(hubs: MakeHub) -> None:
    hub = hubs()
    async with contextlib.AsyncExitStack() as stack:
        subs: list[Subscription] = await asyncio.gather(
            *(stack.enter_async_context(hub.subscribe(TENANT, f"r{i}")) for i in range(300))
        )
        await hub.publish_many([(TENANT, f"r{i}", {"type": "message", "n": i}) for i in range(300)])
        for i, sub in enumerate(subs):
            assert await sub.next_batch() == [{"type": "message", "n": i}]


def test_nats_subjects_are_one_per_recipient_and_never_a_wildcard() -> None:
    names = {subject(tenant, rid) for tenant in (TENANT, OTHER_TENANT) for rid in HOSTILE}
    assert len(names) == 2 * len(HOSTILE)
    for name in names:
        tokens = name.split(".")
        assert len(tokens) == 4
        assert tokens[:2] == ["clarion", "inbox"]
        assert all(
            t and t.isascii() and (t.replace("-", "").replace("_", "").isalnum()) for t in tokens
        )
    # The longest ids the API takes fit; longer ones are refused here, before the server,
    # which would close the connection on a protocol line past its limit.
    assert len(subject(TENANT, "日" * 200)) <= MAX_SUBJECT
    with pytest.raises(ValueError, match="no live inbox subject"):
        subject(TENANT, "日" * 400)
    with pytest.raises(ValueError, match="no live inbox subject"):
        subject(TENANT, "")


@pytest.mark.nats
@pytest.mark.slow
async def test_an_unusable_recipient_id_costs_only_its_own_event(nats_url: str) -> None:
    holder, sender = NatsHub(nats_url), NatsHub(nats_url)
    try:
        async with (
            holder.subscribe(TENANT, "日" * 400) as refused,
            holder.subscribe(TENANT, "ok") as ok,
        ):
            assert refused.reason == RESYNC
            await sender.publish_many(
                [
                    (TENANT, "日" * 400, {"type": "message", "n": 1}),
                    (TENANT, "ok", {"type": "message", "n": 2}),
                ]
            )
            assert await ok.next_batch() == [{"type": "message", "n": 2}]
    finally:
        await holder.aclose()
        await sender.aclose()


class _Watched(NatsHub):
    """A NATS hub that says when its connection is back."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.back = asyncio.Event()

    async def _reconnected(self) -> None:
        await super()._reconnected()
        self.back.set()


@pytest.mark.nats
@pytest.mark.slow
async def test_a_lost_nats_connection_makes_every_live_connection_resync(
    tmp_path: Path,
) -> None:
    """The server goes away (killed): the process's connections are closed ``resync`` (what
    was published meanwhile is lost for them), one opened while it is away too; once the
    server is back a connection opened again receives its events."""
    port = _free_port()
    url = f"nats://127.0.0.1:{port}"
    holder, sender = _Watched(url), _Watched(url)
    try:
        with nats_process(port, str(tmp_path / "one")) as server:
            async with (
                holder.subscribe(TENANT, "u.1") as one,
                holder.subscribe(TENANT, "u.2") as two,
            ):
                await sender.publish(TENANT, "u.1", {"type": "message", "n": 1})
                assert await one.next_batch() == [{"type": "message", "n": 1}]
                os.kill(server.pid, signal.SIGKILL)
                server.wait()
                async with asyncio.timeout(10):
                    assert await one.next_batch() is None
                    assert await two.next_batch() is None
                assert (one.reason, two.reason) == (RESYNC, RESYNC)
            async with holder.subscribe(TENANT, "u.1") as meanwhile:
                assert meanwhile.reason == RESYNC
        with nats_process(port, str(tmp_path / "two")):
            # Both connections back: the sender's own reconnection (its next try may come
            # seconds after the holder's) is not what is tested here.
            async with asyncio.timeout(30):
                await holder.back.wait()
                await sender.back.wait()
            async with holder.subscribe(TENANT, "u.1") as again:
                assert not again.closed.is_set()
                await sender.publish(TENANT, "u.1", {"type": "message", "n": 2})
                async with asyncio.timeout(10):
                    assert await again.next_batch() == [{"type": "message", "n": 2}]
    finally:
        await holder.aclose()
        await sender.aclose()


@contextlib.contextmanager
def _holding_proxy(upstream: str, hold: float) -> Iterator[int]:
    """A TCP proxy to the NATS server ``upstream`` (host:port) on a port of its own that
    keeps every byte's order but holds, ``hold`` seconds, each chunk from a client that
    carries a SUB of an inbox subject (and so what comes behind it): a slow network
    between one API process and the server."""
    host, _, port = upstream.rpartition(":")
    listener = socket.create_server(("127.0.0.1", 0))
    sockets: list[socket.socket] = [listener]

    def pump(src: socket.socket, dst: socket.socket, holding: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if holding and b"SUB clarion.inbox." in data:
                    time.sleep(hold)
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                server = socket.create_connection((host, int(port)))
                sockets.extend((client, server))
                for args in ((client, server, True), (server, client, False)):
                    threading.Thread(target=pump, args=args, daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.mark.nats
@pytest.mark.slow
async def test_a_subscription_is_in_place_on_the_server_before_it_is_confirmed(
    nats_url: str,
) -> None:
    """Between an API process and the server the network is slow, so its SUB reaches the
    server late: the connection is not told it is subscribed (and does not read the table)
    until the server has it, so an event published at once, from another process, is not
    lost."""
    with _holding_proxy(urlsplit(nats_url).netloc, hold=0.5) as port:
        holder, sender = NatsHub(f"nats://127.0.0.1:{port}"), NatsHub(nats_url)
        try:
            await holder.ping()
            await sender.ping()
            for n in range(3):
                async with holder.subscribe(TENANT, f"u.{n}") as sub:
                    assert not sub.closed.is_set()
                    await sender.publish(TENANT, f"u.{n}", {"type": "message", "n": n})
                    async with asyncio.timeout(10):
                        assert await sub.next_batch() == [{"type": "message", "n": n}]
        finally:
            await holder.aclose()
            await sender.aclose()


@pytest.mark.nats
@pytest.mark.slow
async def test_a_nats_server_away_at_start_is_a_resync_and_an_outage() -> None:
    hub = NatsHub(f"nats://127.0.0.1:{_free_port()}")
    try:
        async with hub.subscribe(TENANT, "u") as sub:
            assert sub.reason == RESYNC
        with pytest.raises(ConnectionError):
            await hub.publish(TENANT, "u", {"type": "message"})
    finally:
        await hub.aclose()


def test_the_hub_follows_the_broker_unless_told() -> None:
    def kind(**settings: str) -> type[Hub]:
        return type(create_hub(Settings(**settings), None))  # type: ignore[arg-type]

    nats_url, redis_url = "nats://127.0.0.1:4222", "redis://127.0.0.1:6379/0"
    assert kind() is MemoryHub
    assert kind(broker_url=nats_url) is NatsHub
    assert kind(broker_url=nats_url, redis_url=redis_url) is NatsHub
    assert Settings(broker_url=redis_url).live_hub == "redis"
    assert Settings(broker_url=nats_url, redis_url=redis_url, inbox_hub="redis").live_hub == "redis"
    with pytest.raises(ValueError, match="needs the NATS broker"):
        Settings(broker_url=redis_url, inbox_hub="nats")
    with pytest.raises(ValueError, match="needs CLARION_REDIS_URL"):
        Settings(broker_url=nats_url, inbox_hub="redis")


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
