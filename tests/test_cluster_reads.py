"""The Redis broker's reads on a Redis Cluster (broker/redis_reads.py ClusterReads): loops
of one process that read under one consumer name never take each other's reads, and a
read is routed by its key without asking the server where the key is.

On the session's Redis Cluster (cluster_servers.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from clarion.broker.redis_client import connect
from clarion.broker.redis_reads import ClusterReads

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.timeout(60)]

GROUP = "clarion"
# Two streams in different slots, as the planner's plan and critical streams are.
PLAN = b"clarion:{plan}:s"
CRITICAL = b"clarion:{plan.critical}:s"


async def _client(url: str) -> RedisCluster:
    client = connect(url, max_connections=8, pool_timeout=5)
    assert isinstance(client, RedisCluster)
    for key in (PLAN, CRITICAL):
        await client.xgroup_create(key, GROUP, "0", mkstream=True)
    return client


@contextlib.asynccontextmanager
async def _reading(url: str) -> AsyncIterator[tuple[RedisCluster, ClusterReads]]:
    """A client of the cluster with the test streams' group, and its reads; both closed
    at the end."""
    client = await _client(url)
    reads = ClusterReads(client, GROUP, lease=30.0)
    try:
        yield client, reads
    finally:
        await reads.aclose()
        await client.aclose()


async def _getkeys_calls(client: RedisCluster) -> int:
    stats = await client.info("commandstats", target_nodes=RedisCluster.PRIMARIES)
    total = 0
    for node_stats in stats.values():
        entry = node_stats.get("cmdstat_command|getkeys")
        total += int(entry["calls"]) if entry else 0
    return total


async def _left_in_flight(reads: ClusterReads, key: bytes, count: int) -> asyncio.Future[Any]:
    """A blocking read of ``key`` by the consumer ``planner`` whose caller is stopped once
    the read is sent: the read stays in flight on the server; its task."""
    stop, started = asyncio.Event(), asyncio.Event()
    start = reads._start

    def starting(consumer: str, key: bytes, count: int, block: float) -> None:
        start(consumer, key, count, block)
        started.set()

    reads._start = starting  # type: ignore[method-assign]
    stopped = asyncio.create_task(reads.read("planner", {key: count}, 10.0, stop))
    await started.wait()
    pending = reads._inflight[("planner", key)]
    stop.set()
    assert await stopped == {}
    return pending


async def test_loops_under_one_consumer_keep_their_own_reads(redis_cluster_url: str) -> None:
    async with _reading(redis_cluster_url) as (client, reads):
        # The plan loop's blocking read is stopped; its read stays in flight on the server.
        pending = await _left_in_flight(reads, PLAN, 10)
        await client.xadd(PLAN, {"d": b"plan-1"})
        await pending  # the read in flight took the message after its caller returned
        # The critical loop, same consumer name, other key: it neither gets nor drops the
        # plan loop's message, and a blocking read of its own does not fail.
        waiting = asyncio.create_task(reads.read("planner", {CRITICAL: 10}, 2.0, None))
        await client.xadd(CRITICAL, {"d": b"critical-1"})
        got = await waiting
        assert set(got) == {CRITICAL}
        assert [fields[b"d"] for _, fields in got[CRITICAL][0]] == [b"critical-1"]
        # The plan loop's next call gets what its earlier read took.
        got = await reads.read("planner", {PLAN: 10}, None, None)
        assert set(got) == {PLAN}
        assert [fields[b"d"] for _, fields in got[PLAN][0]] == [b"plan-1"]


async def test_concurrent_loops_under_one_consumer_do_not_fail(redis_cluster_url: str) -> None:
    """Three loops read side by side under one name while messages come: none fails,
    and every message reaches the loop of its stream once."""
    async with _reading(redis_cluster_url) as (client, reads):
        third = b"clarion:{plan.chunks}:s"
        await client.xgroup_create(third, GROUP, "0", mkstream=True)
        keys = (PLAN, CRITICAL, third)
        seen: dict[bytes, list[bytes]] = {key: [] for key in keys}
        each = 40

        async def loop(key: bytes) -> None:
            while len(seen[key]) < each:
                got = await reads.read("planner", {key: 5}, 0.02, None)
                assert set(got) <= {key}
                for entries, _stale in got.values():
                    seen[key] += [fields[b"d"] for _, fields in entries]

        async def publish() -> None:
            for i in range(each):
                for key in keys:
                    await client.xadd(key, {"d": f"{key.decode()}-{i}".encode()})
                await asyncio.sleep(0)

        await asyncio.gather(publish(), *(loop(key) for key in keys))
        for key in keys:
            assert seen[key] == [f"{key.decode()}-{i}".encode() for i in range(each)]


async def test_a_read_is_routed_without_asking_the_server_for_its_keys(
    redis_cluster_url: str,
) -> None:
    """redis-py asks ``COMMAND GETKEYS`` for commands whose keys have no fixed place; the
    stream reads' keys are found by the client."""
    async with _reading(redis_cluster_url) as (client, reads):
        before = await _getkeys_calls(client)
        for _ in range(5):
            await reads.read("worker", {PLAN: 10, CRITICAL: 10}, None, None)
        await client.xreadgroup(GROUP, "worker", {PLAN: ">"}, count=1)
        await client.xread({CRITICAL: "0-0"}, count=1)
        assert await _getkeys_calls(client) == before


async def test_what_a_read_took_after_its_caller_returned_is_never_dropped(
    redis_cluster_url: str,
) -> None:
    """A read in flight takes messages after its caller returned, and more come to its
    key: the next call returns what the read took (it does not read the key again over
    them), and the call after returns the rest. Every message taken is handed out."""
    async with _reading(redis_cluster_url) as (client, reads):
        pending = await _left_in_flight(reads, PLAN, 2)
        for i in range(4):
            await client.xadd(PLAN, {"d": f"m{i}".encode()})
        await pending
        handed: list[bytes] = []
        for _ in range(3):
            got = await reads.read("planner", {PLAN: 2}, None, None)
            for entries, _stale in got.values():
                handed += [fields[b"d"] for _, fields in entries]
        assert handed == [b"m0", b"m1", b"m2", b"m3"]
        summary = await client.xpending(PLAN, GROUP)
        assert summary["pending"] == len(handed)
