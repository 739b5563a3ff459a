"""A Redis Cluster master killed (-9) part-way through delivery: its replica takes over, the
killed node comes back as a replica, and nothing accepted is lost; and the live inbox hub
on a master that is killed comes back.

Clarion runs in this process on PostgreSQL and the session's Redis Cluster (three masters,
three replicas; cluster_servers.py), each stream in three shards. The kill takes the master
of a shard of the webhook lane, so the broker's reads, acks and publishes, the rate limits
and the breakers all meet the failover. What was taken and not acked is taken back after
its lease; what the dead master had not yet passed to its replica (replication is
asynchronous) is published again by the sweeper from the database, the truth. Nothing waits
a fixed time: the kill is triggered by the sink's count, the end by polling the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from sqlalchemy import func, select

from clarion.broker.redis_client import connect
from clarion.realtime.base import RESYNC
from clarion.realtime.redis import RedisHub, channel
from clarion.store.tables import deliveries
from faultkit import put_recipients, send_batch
from harness import Harness, make_settings, running
from private_servers import LocalCluster
from webhook_sink import WebhookSink

TOTAL = 600
RECIPIENTS = 30
KILL_AT = 60
SHARDS = 3

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(240)]


async def _sent(app: Harness) -> int:
    query = select(func.count()).where(
        deliveries.c.tenant_id == app.tenant_id, deliveries.c.status == "sent"
    )
    async with app.ctx.engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def test_a_master_killed_mid_delivery_loses_nothing(
    migrated_postgres_url: str, local_cluster: LocalCluster, sink: WebhookSink
) -> None:
    settings = make_settings(
        migrated_postgres_url,
        local_cluster.url,
        broker_shards=SHARDS,
        broker_lease=3.0,
        sweep_after=5.0,
    )
    async with running(settings) as app:
        await put_recipients(
            app, [{"id": f"r{i}", "webhook_url": f"{sink.url}/r{i}"} for i in range(RECIPIENTS)]
        )
        await app.put_template("ping", {"channels": {"webhook": {"body": {"n": "{{ n }}"}}}})
        items = [
            {"template": "ping", "to": {"recipient_id": f"r{i % RECIPIENTS}"}, "data": {"n": i}}
            for i in range(TOTAL)
        ]
        accepted = await send_batch(app, items)
        assert len(accepted) == TOTAL

        await sink.wait_for(KILL_AT, timeout=60)
        victim = local_cluster.master_of("clarion:{send.webhook.normal}:s")
        replica = local_cluster.replica_of(victim)
        local_cluster.kill(victim)
        at_kill = sink.count
        # The replica takes over once the others count its master failed (node timeout).
        await asyncio.to_thread(local_cluster.wait_for_master, replica)
        local_cluster.restart(victim)

        await app.until(lambda: _all_sent(app), timeout=150)
        await asyncio.to_thread(local_cluster.wait_healthy)

        async with app.ctx.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(deliveries.c.id, deliveries.c.status).where(
                        deliveries.c.tenant_id == app.tenant_id
                    )
                )
            ).all()

    assert at_kill < TOTAL, "the kill came after all the work was done"
    assert len(rows) == TOTAL
    assert {status for _, status in rows} == {"sent"}
    # Every delivery reached the sink, at least once, under its own Idempotency-Key.
    keys = {r.headers["idempotency-key"] for r in sink.received}
    assert keys == {delivery_id for delivery_id, _ in rows}
    numbers = {int(json.loads(r.body)["n"]) for r in sink.received}
    assert numbers == set(range(TOTAL))
    print(f"killed a master at {at_kill} of {TOTAL}; {sink.count} webhooks in all")


async def _all_sent(app: Harness) -> bool:
    return await _sent(app) == TOTAL


async def test_the_live_hub_comes_back_after_its_node_fails(local_cluster: LocalCluster) -> None:
    """The API process's subscriber connection is on the master that a recipient's channel
    hashes to; killed, the process's live connections are told to resync, and once the
    replica has taken over a reconnecting client receives its events again."""
    holder_redis = connect(local_cluster.url, max_connections=8, pool_timeout=5)
    sender_redis = connect(local_cluster.url, max_connections=8, pool_timeout=5)
    holder, sender = RedisHub(holder_redis), RedisHub(sender_redis)
    try:
        async with holder.subscribe("ten_live", "alex") as first:
            await sender.publish("ten_live", "alex", {"type": "message", "n": 1})
            assert await first.next_batch() == [{"type": "message", "n": 1}]
            victim = local_cluster.master_of(channel("ten_live", "alex"))
            replica = local_cluster.replica_of(victim)
            local_cluster.kill(victim)
            async with asyncio.timeout(60):
                await first.closed.wait()
            assert first.reason == RESYNC
        await asyncio.to_thread(local_cluster.wait_for_master, replica)
        local_cluster.restart(victim)
        await asyncio.to_thread(local_cluster.wait_healthy)

        # The client comes back (as the web inbox does after a resync) until its
        # subscription holds; then what is published reaches it. Pub/sub may drop an event
        # while the cluster settles (a reconnecting client reads what it missed from the
        # inbox table), so the sender publishes until one arrives.
        async with asyncio.timeout(60):
            while True:
                async with holder.subscribe("ten_live", "alex") as again:
                    if again.closed.is_set():
                        continue
                    got = None
                    while not got and not again.closed.is_set():
                        await sender.publish("ten_live", "alex", {"type": "message", "n": 2})
                        with contextlib.suppress(TimeoutError):
                            got = await again.next_batch(timeout=1.0)
                    if got:
                        assert got[0] == {"type": "message", "n": 2}
                        break
    finally:
        await holder.aclose()
        await sender.aclose()
        await holder_redis.aclose()
        await sender_redis.aclose()
