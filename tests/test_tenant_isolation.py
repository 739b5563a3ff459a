"""One tenant's poisoned items never fail, delay or duplicate another tenant's work in a
shared batch: the intake's group commit, the planner's batch, the status writer."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web
from redis.asyncio import Redis
from sqlalchemy import func, select

from clarion.api.refusals import refusal_error
from clarion.broker.redis_streams import RedisBroker
from clarion.domain.refusal import Refused
from clarion.pipeline.intake import Intake
from clarion.store import notifications as store
from clarion.store import tenants as tenant_store
from clarion.store.batching import Batcher
from clarion.store.tables import deliveries
from harness import Harness, make_settings, running
from standins import serving
from webhook_sink import WebhookSink

HOOK = {"channels": {"webhook": {"body": {"n": "{{ n }}"}}}}
LONG_ID = "r" * 300


class Hostile:
    """Tenant A's receivers: a 200 with a 300-character X-Request-Id, and a 500 whose body
    holds NUL and other control characters."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/long-id", self._long_id)
        app.router.add_post("/nul-body", self._nul_body)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def _long_id(self, request: web.Request) -> web.Response:
        self.hits["long-id"] += 1
        return web.Response(status=200, headers={"X-Request-Id": LONG_ID})

    async def _nul_body(self, request: web.Request) -> web.Response:
        self.hits["nul-body"] += 1
        return web.Response(status=500, body=b"boom\x00\x01\xff\xfe broken \x00")

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def hostile() -> AsyncIterator[Hostile]:
    async with serving(Hostile()) as server:
        yield server


@pytest.fixture
async def pg_app(migrated_postgres_url: str, redis_url: str) -> AsyncIterator[Harness]:
    async with running(make_settings(migrated_postgres_url, redis_url)) as harness:
        yield harness


async def client_for(app: Harness, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=app.client._transport,
        base_url="http://clarion",
        headers={"Authorization": f"Bearer {key}"},
    )


async def test_a_poisoned_tenant_changes_nothing_for_another(
    pg_app: Harness, sink: WebhookSink, hostile: Hostile
) -> None:
    app = pg_app
    key_a, key_b = await app.new_tenant("tenant-a"), await app.new_tenant("tenant-b")
    a, b = await client_for(app, key_a), await client_for(app, key_b)
    async with a, b:
        for client in (a, b):
            response = await client.put("/v1/templates/hook", json=HOOK)
            assert response.status_code == 200, response.text
        for name in ("long-id", "nul-body"):
            response = await a.put(
                f"/v1/recipients/{name}", json={"webhook_url": f"{hostile.url}/{name}"}
            )
            assert response.status_code == 200, response.text
        recipients = [{"id": f"b{i}", "webhook_url": f"{sink.url}/b/{i}"} for i in range(100)]
        response = await b.post("/v1/recipients/batch", json={"recipients": recipients})
        assert response.status_code == 200, response.text

        async def tenant_b() -> list[httpx.Response]:
            answers = []
            for chunk in range(20):
                batch = [
                    {
                        "template": "hook",
                        "to": {"recipient_id": f"b{(chunk * 100 + i) % 100}"},
                        "data": {"n": chunk * 100 + i},
                        "idempotency_key": f"b-{chunk}-{i}",
                    }
                    for i in range(100)
                ]
                answers.append(
                    await b.post("/v1/notifications/batch", json={"notifications": batch})
                )
            return answers

        async def tenant_a() -> list[httpx.Response]:
            answers = []
            for i in range(20):
                nul_key = (
                    '{"template": "hook", "to": {"recipient_id": "long-id"}, '
                    f'"data": {{"n": {i}}}, "idempotency_key": "a-{i}\\u0000"}}'
                )
                answers.append(
                    await a.post(
                        "/v1/notifications",
                        content=nul_key.encode(),
                        headers={"content-type": "application/json"},
                    )
                )
                for rid in ("long-id", "nul-body"):
                    answers.append(
                        await a.post(
                            "/v1/notifications",
                            json={
                                "template": "hook",
                                "to": {"recipient_id": rid},
                                "data": {"n": i},
                            },
                        )
                    )
            return answers

        b_answers, a_answers = await asyncio.gather(tenant_b(), tenant_a())
        await app.drain(120)

        for response in b_answers:
            assert response.status_code == 202, response.text
            assert all("id" in item for item in response.json()["results"]), response.text
        refused = [r for r in a_answers if r.status_code == 400]
        assert len(refused) == 20
        assert all(r.json()["error"]["code"] == "invalid_input" for r in refused)
        assert all(r.status_code == 202 for r in a_answers if r.status_code != 400)

        # B: every one of 2,000 exactly once, none left behind.
        keys = Counter(hit.headers["idempotency-key"] for hit in sink.received)
        assert len(keys) == 2000
        assert max(keys.values()) == 1
        rows = await delivery_statuses(app, "tenant-b")
        assert rows == {"sent": 2000}

        # A: the long id is kept, bounded; the NUL body ends dead, its error made storable.
        statuses = await delivery_statuses(app, "tenant-a")
        assert statuses == {"sent": 20, "dead": 20}
        dead = (await a.get("/v1/dead-letters", params={"limit": 100})).json()["data"]
        assert len(dead) == 20
        assert all(d["recipient_id"] == "nul-body" for d in dead)
        assert all("\x00" not in (d["last_error"] or "") for d in dead)
        assert hostile.hits["nul-body"] == 20 * app.settings.max_attempts


async def delivery_statuses(app: Harness, tenant: str) -> dict[str, int]:
    found = await tenant_store.get_tenant_by_name(app.ctx.engine, tenant)
    assert found is not None
    async with app.ctx.engine.connect() as conn:
        rows = await conn.execute(
            select(deliveries.c.status, func.count())
            .where(deliveries.c.tenant_id == found.id)
            .group_by(deliveries.c.status)
        )
        return {status: count for status, count in rows.all()}


async def test_the_intake_refuses_an_unstorable_item_alone(pg_app: Harness) -> None:
    """Past the edge, an item the database refuses is refused alone: its neighbours in the
    same group commit are stored."""
    intake = pg_app.runtime.intake
    assert isinstance(intake, Intake)
    await pg_app.put_recipient("u", email="u@example.com")
    await pg_app.put_template("t", {"channels": {"email": {"subject": "s", "text": "t"}}})

    def item(key: str) -> store.NewNotification:
        return store.NewNotification(
            tenant_id=pg_app.tenant_id,
            template="t",
            recipient_ids=["u"],
            data={},
            priority="normal",
            channels=None,
            send_at=None,
            expires_at=None,
            idempotency_key=key,
            request_hash="h",
        )

    outcomes = await intake.accept([item("good-1"), item("bad\x00"), item("good-2")])
    assert isinstance(outcomes[0], store.Accepted)
    assert isinstance(outcomes[1], Refused)
    assert outcomes[1].code == "unstorable"
    assert refusal_error(outcomes[1]).status == 422
    assert isinstance(outcomes[2], store.Accepted)


async def test_the_batcher_bisects_item_errors_and_fails_fast_on_outages() -> None:
    calls: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        calls.append(items)
        if 7 in items:
            raise ValueError("seven is poison")
        if -1 in items:
            raise ConnectionRefusedError("the store is down")
        return [i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher(flush, max_items=100)
    batcher.start()
    try:
        results = await asyncio.gather(
            *(batcher.put_nowait(i) for i in range(16)), return_exceptions=True
        )
        assert [r for i, r in enumerate(results) if i != 7] == [i * 10 for i in range(16) if i != 7]
        assert isinstance(results[7], ValueError)
        calls.clear()
        down = await asyncio.gather(
            *(batcher.put_nowait(i) for i in (-1, 1, 2, 3)), return_exceptions=True
        )
        assert all(isinstance(r, ConnectionRefusedError) for r in down)
        assert len(calls) == 1  # an outage is not bisected: one round trip fails them all
    finally:
        await batcher.close()


async def test_posted_items_are_written_and_a_failing_one_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    written: list[int] = []

    async def flush(items: list[int]) -> list[None]:
        if 7 in items:
            raise ValueError("seven is poison")
        written.extend(items)
        return [None] * len(items)

    batcher: Batcher[int, None] = Batcher(flush, max_items=100, name="acks")
    batcher.start()
    try:
        for i in range(16):
            batcher.post(i)
        waited = batcher.put_nowait(16)  # a waited item in the same batch still gets its result
        assert await waited is None  # written after the halves before it
    finally:
        await batcher.close()
    assert sorted(written) == [i for i in range(17) if i != 7]
    assert "acks: 1 posted item(s) failed" in caplog.text


async def test_an_undecodable_entry_is_set_aside(redis_url: str) -> None:
    broker = RedisBroker(redis_url, lease=0.2, prefix="poison-test")
    await broker.start()
    raw = Redis.from_url(redis_url)
    try:
        await broker.publish("s", [{"n": 1}])
        await raw.xadd("poison-test:{s}:s", {"d": b"\xff not json"})
        await raw.xadd("poison-test:{s}:s", {"x": b"no payload field"})
        await broker.publish("s", [{"n": 2}])
        taken = await broker.consume(["s"], "c1", 10, 0.5)
        assert [m.payload for m in taken] == [{"n": 1}, {"n": 2}]
        await broker.ack(taken)
        assert await broker.consume(["s"], "c1", 10, 0.5) == []
        aside = await raw.xrange(broker.poison_key("s"))
        assert len(aside) == 2
        assert all(b"error" in fields for _, fields in aside)
        assert await raw.xlen("poison-test:{s}:s") == 0
    finally:
        await raw.delete("poison-test:{s}:s", broker.poison_key("s"))
        await raw.aclose()
        await broker.close()
