"""Faults of the servers Clarion stands on: Redis lost and restarted, PostgreSQL stopped and
started again, part-way through a load. Each test runs its own server so it may stop it.

Nothing accepted may be lost: the database is the truth, and the sweeper and the relay
publish again what a lost broker forgot. Deliveries are at-least-once: a broker loss may
send some twice, and the webhook sink counts them by ``Idempotency-Key`` (the delivery id).
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest
from sqlalchemy import select

from clarion.store.tables import deliveries
from faultkit import (
    check_roles_alive,
    count_by_status,
    private_postgres,
    private_redis,
    put_recipients,
    send_batch,
    submit_until_accepted,
    tolerant_client,
)
from harness import Harness, make_settings, running
from webhook_sink import WebhookSink

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

HOOK = {"channels": {"webhook": {"body": {"hello": "{{ recipient.id }}"}}}}
RECIPIENTS = 50


async def _hooks(app: Harness, sink: WebhookSink) -> None:
    await app.put_template("hook", HOOK)
    rows = [{"id": f"r{i}", "webhook_url": f"{sink.url}/r{i}"} for i in range(RECIPIENTS)]
    await put_recipients(app, rows)


def _items(start: int, stop: int) -> list[dict[str, Any]]:
    return [
        {
            "template": "hook",
            "to": {"recipient_id": f"r{i % RECIPIENTS}"},
            "data": {"n": i},
            "idempotency_key": f"n-{i}",
        }
        for i in range(start, stop)
    ]


async def _delivery_ids(app: Harness) -> set[str]:
    query = select(deliveries.c.id).where(deliveries.c.tenant_id == app.tenant_id)
    async with app.ctx.engine.connect() as conn:
        return set((await conn.execute(query)).scalars())


async def _all_sent(app: Harness, count: int) -> bool:
    check_roles_alive(app)
    return await count_by_status(app) == {"sent": count}


def _received(sink: WebhookSink) -> collections.Counter[str]:
    return collections.Counter(r.headers["idempotency-key"] for r in sink.received)


# -- 5. Redis lost -----------------------------------------------------------------------------

TOTAL = 5000


async def test_redis_restart_loses_nothing(postgres_url: str, sink: WebhookSink) -> None:
    with private_redis() as redis:
        settings = make_settings(
            postgres_url,
            redis.url,
            # What the lost broker held comes back from the database within seconds.
            sweep_after=2.0,
            outbox_grace=1.0,
            broker_lease=5.0,
        )
        async with running(settings) as app:
            await _hooks(app, sink)
            await send_batch(app, _items(0, 2000))
            await sink.wait_for(500, timeout=30)
            redis.kill()
            redis.start()
            refused = 0
            async with tolerant_client(app) as client:
                for start in range(2000, TOTAL, 1000):
                    refused += await submit_until_accepted(client, _items(start, start + 1000))

            await app.until(lambda: _all_sent(app, TOTAL), timeout=60)
            ids = await _delivery_ids(app)
            assert len(ids) == TOTAL
            received = _received(sink)
            assert set(received) == ids
            duplicates = sum(n - 1 for n in received.values())
            print(
                f"redis restart: {duplicates} duplicate sends of {TOTAL}, {refused} batches refused"
            )


async def test_api_while_redis_is_down_accepts_or_answers_503(
    postgres_url: str, sink: WebhookSink
) -> None:
    with private_redis() as redis:
        async with running(make_settings(postgres_url, redis.url)) as app:
            await _hooks(app, sink)
            redis.kill()
            async with tolerant_client(app) as client, asyncio.timeout(15):
                answer = await client.post("/v1/notifications", json=_items(0, 1)[0])
            # Accepted (the database is the truth: the relay publishes it later) or
            # unavailable for now, with a hint when to come back; never a 500.
            assert answer.status_code in (202, 503), answer.text
            if answer.status_code == 503:
                assert int(answer.headers["Retry-After"]) >= 1
                return
            redis.start()
            await app.until(lambda: _all_sent(app, 1))
            assert set(_received(sink)) == await _delivery_ids(app)


# -- 6. PostgreSQL stopped ---------------------------------------------------------------------

ACCEPTED = 500


async def test_postgres_stop_answers_503_then_delivers_everything(
    redis_url: str, sink: WebhookSink
) -> None:
    async with private_postgres() as pg:
        # A short lease: what a worker could not settle while the database was away comes
        # back soon after.
        settings = make_settings(pg.url, redis_url, broker_lease=2.0, sweep_after=3.0)
        async with running(settings) as app:
            await _hooks(app, sink)
            nids = await send_batch(app, _items(0, ACCEPTED))
            await sink.wait_for(50, timeout=30)
            await asyncio.to_thread(pg.stop, "fast")

            async with asyncio.timeout(15):
                refused = await app.send({"template": "hook", "to": {"recipient_id": "r0"}})
                looked = await app.client.get(f"/v1/notifications/{nids[0]}", headers=app.auth)
            for response in (refused, looked):
                assert response.status_code == 503, response.text
                assert response.json()["error"]["code"] == "unavailable"
                assert int(response.headers["Retry-After"]) >= 1

            await asyncio.to_thread(pg.start)
            await app.until(lambda: _all_sent(app, ACCEPTED), timeout=60)
            ids = await _delivery_ids(app)
            assert len(ids) == ACCEPTED
            received = _received(sink)
            assert set(received) == ids
            duplicates = sum(n - 1 for n in received.values())
            print(
                f"postgres restart: {duplicates} duplicate sends of {ACCEPTED}",
                collections.Counter(received.values()),
            )
