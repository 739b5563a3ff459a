"""Redis URLs: one server or a Redis Cluster, and what a malformed cluster URL is told."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from clarion.broker import create_broker
from clarion.broker.redis_client import (
    cluster_nodes,
    connect,
    is_cluster_url,
    is_redis_url,
    packed_by_hiredis,
)
from clarion.broker.redis_streams import RedisBroker
from clarion.config import Settings


def test_a_cluster_url_names_its_nodes_and_keeps_credentials_tls_and_options() -> None:
    first, nodes = cluster_nodes(
        "rediss+cluster://user:p%40ss@10.0.0.11:6380,10.0.0.12,[::1]:7000/0?ssl_cert_reqs=none"
    )
    assert first == "rediss://user:p%40ss@10.0.0.11:6380/0?ssl_cert_reqs=none"
    assert nodes == [("10.0.0.11", 6380), ("10.0.0.12", 6379), ("::1", 7000)]
    assert cluster_nodes("redis+cluster://h1:1,h2:2") == ("redis://h1:1", [("h1", 1), ("h2", 2)])
    assert cluster_nodes("redis+cluster://h1:1?client_name=c")[0] == "redis://h1:1?client_name=c"


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://",
        "redis+cluster://:secret@/0",
        "redis+cluster://h1:port",
        "redis+cluster://h1:1,:2",
        "redis://h1:1",
    ],
)
def test_a_malformed_cluster_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="Redis Cluster URL"):
        cluster_nodes(url)


def test_schemes() -> None:
    assert is_cluster_url("redis+cluster://h:1")
    assert is_cluster_url("rediss+cluster://h:1")
    assert not is_cluster_url("redis://h:1")
    for url in ("redis://h", "rediss://h", "unix:///tmp/r.sock", "redis+cluster://h:1"):
        assert is_redis_url(url)
    assert not is_redis_url("embedded://")
    assert not is_redis_url("nats://h")


async def test_the_client_and_broker_follow_the_url() -> None:
    cluster = connect("redis+cluster://127.0.0.1:1,127.0.0.1:2", max_connections=1, pool_timeout=1)
    single = connect("redis://127.0.0.1:1/0", max_connections=1, pool_timeout=1)
    try:
        assert isinstance(cluster, RedisCluster)
        assert isinstance(single, Redis)
    finally:
        await cluster.aclose()
        await single.aclose()
    settings = Settings(broker_url="redis+cluster://127.0.0.1:1", broker_shards=4)
    broker = create_broker(settings)
    assert isinstance(broker, RedisBroker)
    assert broker.shards == 4
    # The broker's cluster serves the shared fast state too, unless another is named.
    assert settings.effective_redis_url == "redis+cluster://127.0.0.1:1"
    with pytest.raises(ValueError, match="broker_shards"):
        Settings(broker_shards=0)


@pytest.mark.parametrize(
    "args",
    [
        ("XADD", b"clarion:lane:webhook", "*", "d", b"\x00\xff" * 200),
        ("SET", "ké", "vé", "EX", 10),
        ("ZADD", "k", 1795000000.123456, b"m", 1e20, "n", float("inf"), "o"),
        ("CONFIG GET", "maxmemory"),
        (b"CLIENT SETNAME", "clarion"),
        ("SET", "k", memoryview(b"view")),
        ("SET", "k", 2**70),
        ("SET", "k", bytearray(b"array")),
    ],
)
def test_commands_are_packed_by_hiredis_into_the_same_bytes(args: tuple[Any, ...]) -> None:
    ours = packed_by_hiredis(Connection)()
    theirs = Connection()
    assert b"".join(ours.pack_command(*args)) == b"".join(theirs.pack_command(*args))
    commands = [args, ("GET", "k")]
    assert b"".join(ours.pack_commands(commands)) == b"".join(theirs.pack_commands(commands))


@pytest.mark.parametrize("value", [True, None, object()])
def test_an_argument_redis_refuses_is_refused_as_redis_py_does(value: object) -> None:
    with pytest.raises(DataError):
        packed_by_hiredis(Connection)().pack_command("SET", "k", value)


async def test_every_connection_kind_packs_by_hiredis() -> None:
    for kind in (Connection, SSLConnection, UnixDomainSocketConnection):
        packed = packed_by_hiredis(kind)
        assert issubclass(packed, kind)
        assert packed_by_hiredis(kind) is packed
        assert packed_by_hiredis(packed) is packed
    single = connect("redis://127.0.0.1:1/0", max_connections=1, pool_timeout=1)
    secure = connect("rediss://127.0.0.1:1/0", max_connections=1, pool_timeout=1)
    cluster = connect("redis+cluster://127.0.0.1:1,127.0.0.1:2", max_connections=1, pool_timeout=1)
    try:
        assert isinstance(cluster, RedisCluster)
        assert single.connection_pool.connection_class is packed_by_hiredis(Connection)
        assert secure.connection_pool.connection_class is packed_by_hiredis(SSLConnection)
        nodes = cluster.nodes_manager
        assert nodes.connection_kwargs["connection_class"] is packed_by_hiredis(Connection)
        for node in nodes.startup_nodes.values():
            assert node.connection_class is packed_by_hiredis(Connection)
    finally:
        for client in (single, secure, cluster):
            await client.aclose()


async def test_a_client_packed_by_hiredis_talks_to_a_real_server(redis_url: str) -> None:
    client = connect(redis_url, max_connections=2, pool_timeout=1)
    try:
        await client.set("ké", "vé")
        assert await client.get("ké") == "vé".encode()
        async with client.pipeline(transaction=False) as pipe:
            pipe.set("n", 2)
            pipe.incrbyfloat("n", 0.5)
            assert await pipe.execute() == [True, 2.5]
        assert "maxmemory" in await client.config_get("maxmemory")
    finally:
        await client.aclose()
