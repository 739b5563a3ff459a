"""An outage names the component that failed: in the log line, in the 503's body and in
``/readyz`` — never the database when only Redis is gone."""

from __future__ import annotations

import asyncio
import logging

import pytest

from clarion.realtime.nats import NatsHub
from faultkit import private_postgres, private_redis, tolerant_client
from harness import make_settings, running

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def test_redis_down_is_named_and_the_database_is_not(
    migrated_postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with private_redis() as redis:
        async with running(make_settings(migrated_postgres_url, redis.url)) as app:
            await app.put_template("hello", {"channels": {"webhook": {"body": {"hi": "x"}}}})
            took = _Watch("clarion.pipeline.consumer", "taking work failed (broker (redis) ")
            consumer_log = logging.getLogger("clarion.pipeline.consumer")
            consumer_log.addHandler(took)
            redis.kill()
            caplog.set_level(logging.WARNING, logger="clarion")
            try:
                async with tolerant_client(app) as client, asyncio.timeout(30):
                    refused = await client.post(
                        "/v1/notifications",
                        json={"template": "hello", "to": {"recipient_id": "r1"}},
                    )
                    ready = await client.get("/readyz")
                    # The database is fine: what needs only it still answers.
                    listed = await client.get("/v1/notifications")
                    # The workers' next take meets the outage, and says where.
                    await took.seen.wait()
            finally:
                consumer_log.removeHandler(took)
    assert listed.status_code == 200, listed.text

    # The intake quota is taken in Redis before anything is stored.
    assert refused.status_code == 503, refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    error = refused.json()["error"]
    assert error["code"] == "unavailable"
    assert error["details"] == [{"component": "rate limiter", "server": "redis"}]
    assert error["message"] == "the rate limiter (redis) is unavailable; try again shortly"
    lines = [r.getMessage() for r in caplog.records if r.name == "clarion.api.errors"]
    assert any(line.startswith("rate limiter (redis) unavailable: ") for line in lines), lines
    assert not any("database" in line or "storage" in line for line in lines), lines

    assert ready.status_code == 503, ready.text
    body = ready.json()["error"]
    [checks] = body["details"]
    assert checks["database"] == "ok"
    for component in ("broker", "rate_limiter", "circuit_breakers", "realtime_hub"):
        assert checks[component].startswith("unavailable (redis): "), checks
    assert body["message"] == (
        "not ready: broker, rate limiter, circuit breakers, realtime hub unavailable"
    )


class _Watch(logging.Handler):
    """Sets ``seen`` once a record of ``logger`` holding ``text`` is logged."""

    def __init__(self, logger: str, text: str) -> None:
        super().__init__(logging.WARNING)
        self.logger, self.text = logger, text
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == self.logger and self.text in record.getMessage():
            self.seen.set()


async def test_readyz_names_each_component_when_all_is_well(
    migrated_postgres_url: str, redis_url: str
) -> None:
    async with running(make_settings(migrated_postgres_url, redis_url)) as app:
        ready = await app.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {
        "status": "ready",
        "checks": {
            "database": "ok",
            "broker": "ok",
            "rate_limiter": "ok",
            "circuit_breakers": "ok",
            "realtime_hub": "ok",
        },
    }


@pytest.mark.nats
@pytest.mark.slow
async def test_readyz_checks_the_live_hub_on_nats_with_the_nats_broker(
    migrated_postgres_url: str, nats_url: str, redis_url: str
) -> None:
    settings = make_settings(migrated_postgres_url, nats_url, redis_url=redis_url)
    async with running(settings) as app:
        ready = await app.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {
        "database": "ok",
        "broker": "ok",
        "rate_limiter": "ok",
        "circuit_breakers": "ok",
        "realtime_hub": "ok",
    }
    assert isinstance(app.ctx.hub, NatsHub)


async def test_database_down_is_named_and_the_broker_is_not(redis_url: str) -> None:
    async with private_postgres() as pg, running(make_settings(pg.url, redis_url)) as app:
        await asyncio.to_thread(pg.stop, "fast")
        async with tolerant_client(app) as client, asyncio.timeout(30):
            looked = await client.get("/v1/notifications")
            ready = await client.get("/readyz")
        await asyncio.to_thread(pg.start)
    assert looked.status_code == 503, looked.text
    error = looked.json()["error"]
    assert error["details"] == [{"component": "database", "server": "postgresql"}]
    assert error["message"] == "the database (postgresql) is unavailable; try again shortly"
    assert ready.status_code == 503, ready.text
    [checks] = ready.json()["error"]["details"]
    assert checks["database"].startswith("unavailable (postgresql): ")
    assert {checks[c] for c in checks if c != "database"} == {"ok"}
