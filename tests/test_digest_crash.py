"""A digest window survives kill -9 of the planner and the scheduler (PostgreSQL + Redis).

A category holds its notifications for a minute. Part of them are held, then the worker
(which plans, and whose run waker closes windows: each is carried by a stored run) and the
scheduler (which relays the outbox) are killed; more notifications are accepted while
they are down; a new worker and two schedulers start. When the window closes there is
exactly one digest, holding every notification, delivered once, and the window's carrier
run has completed. Progress is read from the database, polled against deadlines.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from clarion.store.tables import (
    deliveries,
    digest_items,
    digest_windows,
    notifications,
    workflow_runs,
)
from procs import Procs, clarion_env, create_tenant, free_port, wait_ready, wait_until

DEADLINE = 150.0
FAST = {
    "broker_lease": 3,
    "sweep_after": 10,
    "outbox_grace": 2,
    "log_level": "WARNING",
    "shutdown_timeout": 3,
}
TEMPLATE = {
    "category": "updates",
    "channels": {
        "inapp": {
            "title": "Update",
            "body": "{{ what }}",
            "digest": {
                "title": "{{ count }} updates",
                "body": "{% for item in items %}{{ item.what }} {% endfor %}",
            },
        }
    },
}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300), pytest.mark.postgres, pytest.mark.redis]


async def _count(engine: AsyncEngine, query: Any) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar() or 0)


async def _send(client: httpx.AsyncClient, auth: dict[str, str], names: list[str]) -> None:
    for what in names:
        body = {"template": "news", "to": {"recipient_id": "u1"}, "data": {"what": what}}
        response = await client.post("/v1/notifications", json=body, headers=auth)
        assert response.status_code == 202, response.text


async def test_planner_and_scheduler_killed_during_a_digest_window(
    postgres_url: str, redis_url: str, procs: Procs
) -> None:
    port = free_port()
    env = clarion_env(postgres_url, redis_url, http_port=port, **FAST)
    key = await asyncio.to_thread(create_tenant, env, "digests")
    auth = {"Authorization": f"Bearer {key}"}
    api = procs.start("api", ["api"], env)
    scheduler = procs.start("scheduler-1", ["scheduler"], env)
    worker = procs.start("worker-1", ["worker"], env)
    engine = create_async_engine(postgres_url)
    held = select(func.count()).select_from(digest_items)
    digests = (
        select(func.count())
        .select_from(notifications)
        .where(notifications.c.digest_of.is_not(None))
    )
    first = [f"a{n}" for n in range(6)]
    second = [f"b{n}" for n in range(6)]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            await wait_ready(client, api)
            for path, body in (
                ("/v1/categories/updates", {"digest": {"window": "1m"}}),
                ("/v1/templates/news", TEMPLATE),
                ("/v1/recipients/u1", {}),
            ):
                response = await client.put(path, json=body, headers=auth)
                assert response.status_code == 200, response.text
            await _send(client, auth, first)

            async def first_held() -> bool:
                assert worker.alive(), worker.output()
                return await _count(engine, held) == len(first)

            await wait_until(first_held, DEADLINE, "the first notifications held")
            await worker.kill9()
            await scheduler.kill9()
            # Accepted while nothing plans or closes: they wait in the outbox and the stream.
            await _send(client, auth, second)
            procs.start("worker-2", ["worker"], env)
            procs.start("scheduler-2", ["scheduler"], env)
            procs.start("scheduler-3", ["scheduler"], env)

            async def digest_sent() -> bool:
                sent = (
                    select(func.count())
                    .select_from(deliveries)
                    .where(
                        deliveries.c.notification_id.in_(
                            select(notifications.c.id).where(notifications.c.digest_of.is_not(None))
                        ),
                        deliveries.c.status == "sent",
                    )
                )
                return await _count(engine, sent) >= 1

            await wait_until(digest_sent, DEADLINE, "the digest sent", explain=procs.report)
            assert await _count(engine, digests) == 1
            async with engine.connect() as conn:
                note = (
                    await conn.execute(
                        select(notifications.c.id, notifications.c.data).where(
                            notifications.c.digest_of.is_not(None)
                        )
                    )
                ).one()
                windows = (
                    await conn.execute(select(digest_windows.c.closed_at, digest_windows.c.held))
                ).all()
                rows = (
                    await conn.execute(
                        select(deliveries.c.status, deliveries.c.content).where(
                            deliveries.c.reason.is_(None)
                        )
                    )
                ).all()
                carriers = (
                    await conn.execute(
                        select(workflow_runs.c.status, workflow_runs.c.notification_id).where(
                            workflow_runs.c.workflow == "~digest"
                        )
                    )
                ).all()
            # Every notification of both halves, held in one window, in one digest.
            assert note.data["count"] == len(first) + len(second)
            assert sorted(item["what"] for item in note.data["items"]) == sorted(first + second)
            # Items arrive in order within each half (one sender, one at a time).
            order = [item["what"] for item in note.data["items"]]
            assert [w for w in order if w.startswith("a")] == first
            assert len(windows) == 1
            assert windows[0].closed_at is not None
            [(status, content)] = rows
            assert [(c.status, c.notification_id) for c in carriers] == [("completed", note.id)]
            assert status == "sent"
            assert content["title"] == "12 updates"
    finally:
        await engine.dispose()
