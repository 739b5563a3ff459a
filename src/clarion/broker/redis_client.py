"""Clarion's Redis clients: one server, or a Redis Cluster, chosen by the URL.

``redis://`` / ``rediss://`` / ``unix://``: one server (or a proxy in front of several).
``redis+cluster://`` / ``rediss+cluster://``: a Redis Cluster, reached through any of the
nodes listed, comma-separated (``redis+cluster://:secret@10.0.0.1:6379,10.0.0.2:6379``);
the client learns the rest of the cluster from them, follows ``MOVED`` and ``ASK``
redirections, and reads the cluster's layout again after a failover. Query options are
redis-py's (``?ssl_cert_reqs=none``). Every key that a script or a transaction uses
together carries the same hash tag, so that each touches one slot (docs/operations.md,
"Redis Cluster").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast
from urllib.parse import unquote

import hiredis
from redis._parsers.commands import AsyncCommandsParser
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from clarion.broker.reconnect import reconnecting

# Either client: the commands Clarion sends are the same, routed by key in a cluster.
RedisClient = Redis | RedisCluster

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SCHEMES = ("redis", "rediss", "unix", *CLUSTER_SCHEMES)

# A cluster's client opens connections per node as it needs them and fails a command,
# rather than waiting, when a node has this many busy: above anything one process uses
# (its consumers' blocking reads and its sends' rate-limit and breaker calls).
CLUSTER_CONNECTIONS_PER_NODE = 2048
# How many times a command that met a node that is down (a failover under way) or a
# cluster that is reshaping is sent again, the cluster's layout read afresh in between,
# before the caller sees the outage and waits it out.
CLUSTER_RETRIES = 3


def is_redis_url(url: str) -> bool:
    return url.partition("://")[0] in SCHEMES


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0] in CLUSTER_SCHEMES


def connect(url: str, *, max_connections: int, pool_timeout: float) -> RedisClient:
    """A client for ``url`` (no connection is made until first use). One server: a
    blocking pool of ``max_connections`` (a caller waits ``pool_timeout`` for a free
    one). A cluster: connections per node, up to ``CLUSTER_CONNECTIONS_PER_NODE``."""
    if is_cluster_url(url):
        return _cluster(url)
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=pool_timeout, protocol=2, **reconnecting()
    )
    pool.connection_class = packed_by_hiredis(pool.connection_class)
    # from_pool: closing the client closes the pool too.
    return Redis.from_pool(pool)


class _HiredisPacking:
    """Commands packed by hiredis's C function instead of redis-py's Python loop, which
    cost a worker about 2% of its CPU (a sixth of the time per command: 2.8 against
    16 µs for a stream entry's ``XADD``, docs/performance.md). The bytes are the same; an
    argument hiredis does not take (a bool, None, a bytearray) goes the Python way, which
    raises redis-py's own error for those it refuses."""

    def pack_command(self, *args: Any) -> list[bytes]:
        python: Any = super()
        encoder = cast(AbstractConnection, self).encoder
        if encoder.encoding != "utf-8" or encoder.encoding_errors != "strict":
            return list(python.pack_command(*args))
        words = args
        # A command name of several words ("CONFIG GET") is sent as that many arguments.
        name = _encoded(words[0]) if words and isinstance(words[0], str | bytes) else b""
        if b" " in name:
            words = (*name.split(), *words[1:])
        try:
            return [hiredis.pack_command(words)]
        except TypeError:
            return list(python.pack_command(*args))

    def pack_commands(self, commands: Iterable[Iterable[Any]]) -> list[bytes]:
        return [b"".join(part for command in commands for part in self.pack_command(*command))]


def _encoded(word: str | bytes) -> bytes:
    return word.encode() if isinstance(word, str) else word


_PACKED: dict[str, type[AbstractConnection]] = {}


def packed_by_hiredis(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """``cls`` (a plain, TLS or Unix socket connection) packing its commands by hiredis."""
    if issubclass(cls, _HiredisPacking):
        return cls
    key = f"{cls.__module__}.{cls.__qualname__}"
    packed = _PACKED.get(key)
    if packed is None:
        packed = _PACKED[key] = type(f"Hiredis{cls.__name__}", (_HiredisPacking, cls), {})
    return packed


def cluster_nodes(url: str) -> tuple[str, list[tuple[str, int]]]:
    """A cluster URL as redis-py's URL of its first node (credentials, TLS and options
    kept) and every node listed, as (host, port)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in CLUSTER_SCHEMES:
        raise ValueError("a Redis Cluster URL starts with redis+cluster:// or rediss+cluster://")
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, hosts = netloc.rpartition("@")
    nodes = [_host_port(part) for part in hosts.split(",") if part.strip()]
    if not nodes:
        raise ValueError("a Redis Cluster URL names at least one node: host:port[,host:port]")
    host, port = nodes[0]
    host = f"[{host}]" if ":" in host else host
    first = f"{scheme.partition('+')[0]}://{userinfo}{at}{host}:{port}{tail}"
    return first, nodes


def _host_port(part: str) -> tuple[str, int]:
    part = part.strip()
    if part.startswith("["):  # [IPv6]:port
        host, _, port = part[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = part.rpartition(":") if ":" in part else (part, "", "")
    if not host:
        raise ValueError(f"not a host:port in the Redis Cluster URL: {part!r}")
    try:
        number = int(port) if port else 6379
    except ValueError:
        raise ValueError(f"not a port in the Redis Cluster URL: {part!r}") from None
    return unquote(host), number


class _StreamKeys(AsyncCommandsParser):
    """redis-py's key finder, which routes a command by its keys, knowing where the
    stream reads name theirs: ``XREAD`` and ``XREADGROUP`` have no fixed key position
    (``movablekeys``), and redis-py asks the server (``COMMAND GETKEYS``, a round trip)
    for every one sent, which doubled a consumer's commands on a cluster. Their keys are
    the first half of what follows ``STREAMS``."""

    async def get_keys(self, *args: Any) -> tuple[str, ...] | None:
        name = str(args[0]).upper() if args else ""
        if name in ("XREADGROUP", "XREAD"):
            words = [a.upper() if isinstance(a, str) else a for a in args]
            for marker in ("STREAMS", b"STREAMS"):
                if marker in words:
                    rest = args[words.index(marker) + 1 :]
                    return tuple(rest[: len(rest) // 2])
        keys: tuple[str, ...] | None = await super().get_keys(*args)
        return keys


def _cluster(url: str) -> RedisCluster:
    first, nodes = cluster_nodes(url)
    settings: dict[str, Any] = reconnecting()
    # The cluster client retries a command itself (after reading the layout again): its
    # own Retry, not one per connection.
    settings.pop("retry_on_error")
    settings["retry"] = Retry(ExponentialBackoff(cap=1.0, base=0.1), CLUSTER_RETRIES)
    client = RedisCluster.from_url(
        first,
        startup_nodes=[ClusterNode(host, port) for host, port in nodes[1:]],
        max_connections=CLUSTER_CONNECTIONS_PER_NODE,
        protocol=2,
        **settings,
    )
    # Read by initialize(), which fills it from the server's COMMAND as it would its own.
    client.commands_parser = _StreamKeys()
    # Every node's connections, those of the nodes listed and of those learnt later.
    kwargs = client.nodes_manager.connection_kwargs
    kwargs["connection_class"] = packed_by_hiredis(kwargs.get("connection_class", Connection))
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = kwargs["connection_class"]
    return client
