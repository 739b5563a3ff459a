"""Crash tests: kill -9 a Clarion process part-way through delivery, start another, and
check that nothing accepted is lost and repeats are recognisable.

Clarion runs as real subprocesses (``procs.py``); the webhook sink runs in the test process.
For 5,000 notifications (webhook channel) the tests check that:

* every accepted notification's webhook reaches the sink at least once;
* every copy of a notification's webhook carries the same ``Idempotency-Key`` (its delivery
  id), so a receiver can drop the repeats that at-least-once delivery allows;
* every delivery ends ``sent`` in the database.

Nothing waits a fixed time for work: the kill is triggered by the sink's count, and the end
by polling the sink and the database against deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from clarion.store.tables import deliveries
from procs import Proc, Procs, clarion_env, create_tenant, free_port, wait_ready, wait_until
from webhook_sink import WebhookSink

TOTAL = 5000
BATCH = 1000
RECIPIENTS = 100
# Kill once the sink has this many requests; the test is only meaningful if, at the kill,
# most of the work is still to do.
KILL_AT = 300
KILL_BEFORE = 4000
DEADLINE = 90.0

FAST = {
    "allow_private_webhooks": "true",
    "broker_lease": 3,
    "sweep_after": 20,
    "outbox_grace": 2,
    "log_level": "WARNING",
    "shutdown_timeout": 3,
    "webhook_timeout": 5,
}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


class Run:
    """What one crash test drives: an API client, the sink and the database."""

    def __init__(
        self, port: int, key: str, sink: WebhookSink, database_url: str, procs: Procs
    ) -> None:
        self.base_url = f"http://127.0.0.1:{port}"
        self.auth = {"Authorization": f"Bearer {key}"}
        self.sink = sink
        self.procs = procs
        self.engine: AsyncEngine = create_async_engine(database_url)
        self._started = time.monotonic()
        # Seconds since the start at which each phase ended (for the record and failures).
        self.timeline: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        self.timeline[phase] = round(time.monotonic() - self._started, 1)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=60.0)

    async def aclose(self) -> None:
        await self.engine.dispose()

    async def prepare(self, client: httpx.AsyncClient) -> None:
        recipients = [
            {"id": f"r{i}", "webhook_url": f"{self.sink.url}/r{i}"} for i in range(RECIPIENTS)
        ]
        response = await client.post(
            "/v1/recipients/batch", json={"recipients": recipients}, headers=self.auth
        )
        assert response.status_code == 200, response.text
        template = {"channels": {"webhook": {"body": {"n": "{{ n }}"}}}}
        response = await client.put("/v1/templates/ping", json=template, headers=self.auth)
        assert response.status_code == 200, response.text

    async def submit(self, client: httpx.AsyncClient) -> set[str]:
        """Send TOTAL notifications in batches; return the ids of the accepted ones."""

        async def one(start: int) -> list[str]:
            items = [
                {"template": "ping", "to": {"recipient_id": f"r{n % RECIPIENTS}"}, "data": {"n": n}}
                for n in range(start, start + BATCH)
            ]
            response = await client.post(
                "/v1/notifications/batch", json={"notifications": items}, headers=self.auth
            )
            assert response.status_code == 202, response.text
            results = response.json()["results"]
            assert all(r.get("status") == "accepted" for r in results), results[:3]
            return [r["id"] for r in results]

        batches = await asyncio.gather(*(one(start) for start in range(0, TOTAL, BATCH)))
        accepted = {nid for batch in batches for nid in batch}
        assert len(accepted) == TOTAL
        self.mark("accepted")
        return accepted

    def received_by_notification(self) -> dict[str, list[dict[str, str]]]:
        copies: dict[str, list[dict[str, str]]] = defaultdict(list)
        for request in self.sink.received:
            copies[request.headers["clarion-notification-id"]].append(request.headers)
        return copies

    async def statuses(self) -> dict[str, int]:
        query = select(deliveries.c.status, func.count()).group_by(deliveries.c.status)
        async with self.engine.connect() as conn:
            return {status: count for status, count in (await conn.execute(query)).all()}

    async def delivery_ids(self) -> dict[str, str]:
        """Notification id → its (single, webhook) delivery's id."""
        query = select(deliveries.c.notification_id, deliveries.c.id)
        async with self.engine.connect() as conn:
            return {nid: did for nid, did in (await conn.execute(query)).all()}

    async def kill_part_way(self, victim: Proc) -> int:
        """Wait until the sink has KILL_AT requests, then kill -9 ``victim``; returns the
        sink's count at the kill."""
        deadline = time.monotonic() + DEADLINE
        while self.sink.count < KILL_AT:
            if not victim.alive() or time.monotonic() > deadline:
                raise AssertionError(
                    f"only {self.sink.count} webhooks arrived before the kill\n"
                    + self.procs.report()
                )
            with contextlib.suppress(TimeoutError):
                await self.sink.wait_for(KILL_AT, timeout=0.5)
        await victim.kill9()
        self.mark("killed")
        at_kill = self.sink.count
        assert at_kill < KILL_BEFORE, f"{at_kill} webhooks had arrived before the kill"
        return at_kill

    async def check_everything_arrived(self, accepted: set[str]) -> dict[str, Any]:
        """Wait for every accepted notification at the sink and every delivery `sent`, then
        check the idempotency keys of the copies. Returns some numbers for the record."""

        async def all_arrived() -> bool:
            return accepted <= self.received_by_notification().keys()

        def missing() -> str:
            gone = accepted - self.received_by_notification().keys()
            return (
                f"{len(gone)} notifications never reached the sink; {self.timeline}\n"
                + self.procs.report()
            )

        await wait_until(all_arrived, DEADLINE, "every notification at the sink", explain=missing)
        self.mark("all arrived")

        last: dict[str, int] = {}

        async def all_sent() -> bool:
            last.clear()
            last.update(await self.statuses())
            return last == {"sent": TOTAL}

        def statuses() -> str:
            return f"deliveries by status: {last}; {self.timeline}\n{self.procs.report()}"

        await wait_until(all_sent, DEADLINE, "every delivery sent", explain=statuses)
        self.mark("all sent")

        copies = self.received_by_notification()
        assert copies.keys() == accepted, "the sink got webhooks of unknown notifications"
        expected_key = await self.delivery_ids()
        wrong = {
            nid: sorted({h["idempotency-key"] for h in headers})
            for nid, headers in copies.items()
            if {h["idempotency-key"] for h in headers} != {expected_key[nid]}
        }
        assert not wrong, f"copies with another Idempotency-Key: {list(wrong.items())[:5]}"
        repeats = sum(len(headers) - 1 for headers in copies.values())
        return {"received": self.sink.count, "repeats": repeats, "timeline": self.timeline}


async def kill_a_worker(
    env: dict[str, str], database_url: str, sink: WebhookSink, procs: Procs, label: str
) -> None:
    """An API, a scheduler and a worker; the worker is killed part-way through and another
    started: everything accepted arrives."""
    port = int(env["CLARION_HTTP_PORT"])
    key = await asyncio.to_thread(create_tenant, env, "crash")
    api = procs.start("api", ["api"], env)
    procs.start("scheduler", ["scheduler"], env)
    first = procs.start("worker-1", ["worker"], env)
    run = Run(port, key, sink, database_url, procs)

    async def crash() -> int:
        at_kill = await run.kill_part_way(first)
        procs.start("worker-2", ["worker"], env)
        return at_kill

    try:
        async with run.client() as client:
            await wait_ready(client, api)
            run.mark("ready")
            await run.prepare(client)
            # The kill may come while batches are still being accepted: only the worker
            # dies, so the API accepts all of them.
            async with asyncio.TaskGroup() as group:
                submitted = group.create_task(run.submit(client))
                killed = group.create_task(crash())
        numbers = await run.check_everything_arrived(submitted.result())
        print(f"{label}: killed at {killed.result()}, then {numbers}")
    finally:
        await run.aclose()


@pytest.mark.postgres
@pytest.mark.redis
async def test_worker_killed_mid_delivery_on_postgres_and_redis(
    postgres_url: str, redis_url: str, sink: WebhookSink, procs: Procs
) -> None:
    env = clarion_env(postgres_url, redis_url, http_port=free_port(), **FAST)
    await kill_a_worker(env, postgres_url, sink, procs, "postgres+redis")


@pytest.mark.postgres
@pytest.mark.nats
@pytest.mark.redis
async def test_worker_killed_mid_delivery_on_postgres_and_nats(
    postgres_url: str, nats_url: str, redis_url: str, sink: WebhookSink, procs: Procs
) -> None:
    """The NATS broker; Redis holds only the shared rate limits, breakers and live events."""
    env = clarion_env(postgres_url, nats_url, redis_url=redis_url, http_port=free_port(), **FAST)
    await kill_a_worker(env, postgres_url, sink, procs, "postgres+nats")


@pytest.mark.postgres
@pytest.mark.redis
async def test_worker_killed_mid_delivery_on_postgres_and_redis_cluster(
    postgres_url: str, redis_cluster_url: str, sink: WebhookSink, procs: Procs
) -> None:
    """The session's Redis Cluster (three masters; cluster_servers.py), each stream in
    three shards: the killed worker's unacked messages come back from every shard."""
    env = clarion_env(
        postgres_url, redis_cluster_url, broker_shards=3, http_port=free_port(), **FAST
    )
    await kill_a_worker(env, postgres_url, sink, procs, "postgres+redis-cluster")


async def test_serve_killed_mid_delivery_on_sqlite(
    tmp_path: Path, sink: WebhookSink, procs: Procs
) -> None:
    port = free_port()
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'clarion.db'}"
    env = clarion_env(database_url, "embedded://", http_port=port, **FAST)
    key = await asyncio.to_thread(create_tenant, env, "crash")
    first = procs.start("serve-1", ["serve"], env)
    run = Run(port, key, sink, database_url, procs)
    try:
        async with run.client() as client:
            await wait_ready(client, first)
            run.mark("ready")
            await run.prepare(client)
            # Everything is accepted (202: durably committed) before the kill; the kill
            # then lands part-way through delivery.
            accepted = await run.submit(client)
        at_kill = await run.kill_part_way(first)
        second = procs.start("serve-2", ["serve"], env)
        async with run.client() as client:
            await wait_ready(client, second)
            run.mark("restarted")
        numbers = await run.check_everything_arrived(accepted)
        print(f"sqlite+embedded: killed at {at_kill}, then {numbers}")
    finally:
        await run.aclose()
