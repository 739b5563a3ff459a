"""Faults at the providers, on PostgreSQL + Redis: outages and failover, rejections, dead
letters, hanging providers, pacing, intake quotas.

Each provider is a local stand-in speaking its real protocol (``faultkit``), told to fail
as the test needs. Counts are by delivery id, as the stand-in received and accepted it.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import update

from clarion.store import tenants as tenant_store
from clarion.store.tables import tenants
from faultkit import (
    FAIL,
    HOLD,
    OK,
    SECRET_KEY,
    FaultySendgrid,
    TimedTwilio,
    breaker_states,
    count_by_status,
    deliveries_of,
    most_in_any_window,
    put_provider,
    put_recipients,
    send_batch,
)
from harness import Harness, make_settings, running
from standins import serving
from webhook_sink import WebhookSink

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

EMAIL = {"channels": {"email": {"subject": "Hi {{ recipient.id }}", "text": "Hello"}}}
SMS = {"channels": {"sms": {"text": "Hello {{ recipient.id }}"}}}
HOOK = {"channels": {"webhook": {"body": {"hello": "{{ recipient.id }}"}}}}


def _settings(postgres_url: str, redis_url: str, **overrides: Any) -> Any:
    return make_settings(postgres_url, redis_url, secret_key=SECRET_KEY, **overrides)


@pytest.fixture
async def sendgrid() -> AsyncIterator[FaultySendgrid]:
    async with serving(FaultySendgrid()) as server:
        yield server


@pytest.fixture
async def backup() -> AsyncIterator[FaultySendgrid]:
    async with serving(FaultySendgrid()) as server:
        yield server


@pytest.fixture
async def twilio() -> AsyncIterator[TimedTwilio]:
    async with serving(TimedTwilio()) as server:
        yield server


async def _emails(app: Harness, count: int, prefix: str = "u") -> str:
    """One notification by email to ``count`` new recipients; its id."""
    rids = [f"{prefix}{i}" for i in range(count)]
    await put_recipients(app, [{"id": r, "email": f"{r}@example.com"} for r in rids])
    [nid] = await send_batch(app, [{"template": "mail", "to": {"recipient_ids": rids}}])
    return nid


# -- 1. outage, failover, recovery ----------------------------------------------------------

# Opens after 4 calls in the window, half of them failed; lets a probe through after 1 s.
QUICK_BREAKER = {
    "breaker_min_calls": 4,
    "breaker_failure_threshold": 0.5,
    "breaker_window": 10.0,
    "breaker_cooldown": 1.0,
    # Attempts at the failing provider before its breaker opens must not kill a delivery.
    "max_attempts": 10,
}


async def test_outage_fails_over_and_recovers(
    postgres_url: str, redis_url: str, sendgrid: FaultySendgrid, backup: FaultySendgrid
) -> None:
    async with running(_settings(postgres_url, redis_url, **QUICK_BREAKER)) as app:
        await put_provider(
            app, "sg-main", channel="email", kind="sendgrid", config=sendgrid.config(), priority=1
        )
        await put_provider(
            app, "sg-backup", channel="email", kind="sendgrid", config=backup.config(), priority=2
        )
        await app.put_template("mail", EMAIL)
        sendgrid.mode = FAIL

        outage = await _emails(app, 20, "a")

        async def main_is_open() -> bool:
            return (await breaker_states(app)).get("sg-main", {}).get("state") == "open"

        await app.until(main_is_open)
        await app.until(lambda: _all(app, "sent", 20))
        sent = await deliveries_of(app, [outage])
        ids = {d["id"] for d in sent}
        assert {d["provider"] for d in sent} == {"sg-backup"}
        # Exactly once per delivery: the backup accepted each once, the main one none.
        assert backup.accepted == collections.Counter(ids)
        assert not sendgrid.accepted
        assert len(sendgrid.arrivals) >= QUICK_BREAKER["breaker_min_calls"]
        assert max(d["attempts"] for d in sent) >= 2

        # The main provider recovers; after the cool-down one probe goes to it and closes
        # the breaker, and the traffic is back on it.
        sendgrid.mode = OK

        async def cooled_down() -> bool:
            return (await breaker_states(app))["sg-main"]["state"] == "half_open"

        await app.until(cooled_down)
        probe = await _emails(app, 1, "p")
        await app.until(lambda: _all(app, "sent", 21))
        [probed] = await deliveries_of(app, [probe])
        assert probed["provider"] == "sg-main"
        assert (await breaker_states(app))["sg-main"]["state"] == "closed"

        after = await _emails(app, 10, "b")
        await app.until(lambda: _all(app, "sent", 31))
        back = await deliveries_of(app, [after])
        assert {d["provider"] for d in back} == {"sg-main"}
        assert sendgrid.accepted == collections.Counter({d["id"] for d in [probed, *back]})
        assert backup.accepted == collections.Counter(ids)


async def _all(app: Harness, status: str, count: int, channel: str | None = None) -> bool:
    return await count_by_status(app, channel) == {status: count}


# -- 2. a rejection is final -----------------------------------------------------------------


async def test_rejection_fails_at_once_without_retry(
    postgres_url: str, redis_url: str, twilio: TimedTwilio
) -> None:
    async with running(_settings(postgres_url, redis_url)) as app:
        await put_provider(app, "sms-main", channel="sms", kind="twilio", config=twilio.config())
        await app.put_template("text", SMS)
        await app.put_recipient("u", phone="+14155550100")
        twilio.fail_next(400)
        [nid] = await send_batch(app, [{"template": "text", "to": {"recipient_id": "u"}}])
        await app.drain()
        [delivery] = await deliveries_of(app, [nid])
        assert delivery["status"] == "failed"
        assert delivery["attempts"] == 1
        # Twilio's 400 error 21610: the number has unsubscribed (STOP).
        assert delivery["reason"] == "opted_out"
        assert "HTTP 400 error 21610" in delivery["last_error"]
        assert len(twilio.arrivals) == 1
        assert not twilio.received
        # The provider answered: nothing against its health.
        health = (await breaker_states(app))["sms-main"]
        assert (health["state"], health["failure_rate"]) == ("closed", 0)


# -- 3. out of attempts: dead letter, then replay ---------------------------------------------


async def test_dead_letter_then_replay_delivers_once(
    postgres_url: str, redis_url: str, sendgrid: FaultySendgrid
) -> None:
    # With one provider, an open breaker would make the delivery wait without spending
    # attempts (every provider unhealthy is "not attempted"); a lenient breaker lets the
    # attempts run out, which is what this test is about.
    settings = _settings(postgres_url, redis_url, breaker_min_calls=1000)
    async with running(settings) as app:
        await put_provider(
            app, "sg-main", channel="email", kind="sendgrid", config=sendgrid.config()
        )
        await app.put_template("mail", EMAIL)
        sendgrid.mode = FAIL
        nid = await _emails(app, 1)
        await app.drain()
        [dead] = await deliveries_of(app, [nid])
        assert (dead["status"], dead["attempts"]) == ("dead", settings.max_attempts)
        assert dead["reason"] == "http_503"
        assert [a.delivery_id for a in sendgrid.arrivals] == [dead["id"]] * settings.max_attempts

        listed = await app.client.get("/v1/dead-letters", headers=app.auth)
        assert listed.status_code == 200, listed.text
        [item] = listed.json()["data"]
        assert (item["id"], item["provider"]) == (dead["id"], "sg-main")

        sendgrid.mode = OK
        replay = await app.client.post(f"/v1/dead-letters/{dead['id']}/replay", headers=app.auth)
        assert replay.status_code == 202, replay.text
        await app.drain()
        [again] = await deliveries_of(app, [nid])
        assert (again["id"], again["status"]) == (dead["id"], "sent")
        assert sendgrid.accepted == collections.Counter([dead["id"]])
        listed = await app.client.get("/v1/dead-letters", headers=app.auth)
        assert listed.json()["data"] == []


# -- 4. a hanging provider holds back no other channel ----------------------------------------

CONCURRENCY = 4


async def test_hanging_provider_does_not_hold_back_another_channel(
    postgres_url: str, redis_url: str, sendgrid: FaultySendgrid, sink: WebhookSink
) -> None:
    settings = _settings(
        postgres_url,
        redis_url,
        webhook_timeout=0.5,  # a send may take 1 s
        worker_concurrency=CONCURRENCY,
        # One tenant, one endpoint and its retries may fill the whole pool here: the pool
        # is what is under test.
        worker_tenant_share=1.0,
        worker_endpoint_share=1.0,
        worker_retry_share=1.0,
        # Timeouts go on until the provider is let go: neither the attempts nor the
        # breaker may end them first.
        max_attempts=100,
        breaker_min_calls=1000,
    )
    async with running(settings) as app:
        await put_provider(
            app, "sg-main", channel="email", kind="sendgrid", config=sendgrid.config()
        )
        await app.put_template("mail", EMAIL)
        await app.put_template("hook", HOOK)
        sendgrid.mode = HOLD
        emails = await _emails(app, 2 * CONCURRENCY, "e")
        await app.until(lambda: _held(sendgrid, CONCURRENCY))

        hooks = [{"id": f"w{i}", "webhook_url": f"{sink.url}/w{i}"} for i in range(40)]
        await put_recipients(app, hooks)
        await send_batch(
            app, [{"template": "hook", "to": {"recipient_id": h["id"]}} for h in hooks]
        )
        await app.until(lambda: _all(app, "sent", 40, "webhook"))
        # Every webhook went out while the email pool was full of hanging calls.
        email_now = await count_by_status(app, "email")
        assert "sent" not in email_now, email_now
        assert not sendgrid.accepted
        assert sendgrid.most_held <= CONCURRENCY
        assert sink.count == 40

        # A call that timed out is tried again.
        await app.until(lambda: _some_tried_twice(sendgrid))
        sendgrid.let_go()
        await app.until(lambda: _all(app, "sent", 2 * CONCURRENCY, "email"))
        sent = await deliveries_of(app, [emails])
        assert sendgrid.accepted == collections.Counter(d["id"] for d in sent)
        tries = collections.Counter(a.delivery_id for a in sendgrid.arrivals)
        for delivery in sent:
            assert delivery["attempts"] == tries[delivery["id"]], delivery
        assert sendgrid.most_held <= CONCURRENCY


async def _held(stand_in: FaultySendgrid, count: int) -> bool:
    return stand_in.holding >= count


async def _some_tried_twice(stand_in: FaultySendgrid) -> bool:
    tries = collections.Counter(a.delivery_id for a in stand_in.arrivals)
    return any(n >= 2 for n in tries.values())


# -- 7. provider pacing ----------------------------------------------------------------------

RATE = 20


async def _paced(postgres_url: str, redis_url: str, twilio: TimedTwilio) -> list[float]:
    """Send 3 x RATE SMS through a provider paced at RATE per second; check each was
    delivered exactly once and return when each request reached the provider."""
    async with running(_settings(postgres_url, redis_url)) as app:
        await put_provider(
            app,
            "sms-main",
            channel="sms",
            kind="twilio",
            config=twilio.config(),
            rate_limit_per_second=RATE,
        )
        await app.put_template("text", SMS)
        rids = [f"u{i}" for i in range(3 * RATE)]
        phones = [{"id": r, "phone": f"+1415555{i:04d}"} for i, r in enumerate(rids)]
        await put_recipients(app, phones)
        [nid] = await send_batch(app, [{"template": "text", "to": {"recipient_ids": rids}}])
        await app.until(lambda: _all(app, "sent", 3 * RATE), timeout=60)
        sent = await deliveries_of(app, [nid])
        assert twilio.accepted == collections.Counter(d["id"] for d in sent)
        assert len(twilio.arrivals) == 3 * RATE
        return twilio.arrivals


# What lies between a send's paced slot and its arrival at the provider (scheduling, the
# loopback connection) varies by some milliseconds.
JITTER = 0.05


async def test_rate_limit_paces_the_provider(
    postgres_url: str, redis_url: str, twilio: TimedTwilio
) -> None:
    arrivals = await _paced(postgres_url, redis_url, twilio)
    assert most_in_any_window(arrivals, 1.0 - JITTER) <= RATE
    assert most_in_any_window(arrivals, 1.0) <= RATE + 1


async def test_rate_limit_holds_in_every_second_at_the_provider(
    postgres_url: str, redis_url: str, twilio: TimedTwilio
) -> None:
    arrivals = await _paced(postgres_url, redis_url, twilio)
    assert most_in_any_window(arrivals, 1.0) <= RATE


def test_most_in_any_window() -> None:
    assert most_in_any_window([]) == 0
    assert most_in_any_window([0.0, 0.5, 0.99, 1.0, 1.5]) == 3
    assert most_in_any_window([0.0, 0.999, 1.998]) == 2


# -- 8. intake over quota --------------------------------------------------------------------


async def test_intake_over_quota_is_refused_with_rate_limit_headers(
    postgres_url: str, redis_url: str
) -> None:
    async with running(_settings(postgres_url, redis_url)) as app:
        tenant = await tenant_store.create_tenant(app.ctx.engine, "small")
        async with app.ctx.engine.begin() as conn:
            # One notification per 100 s: the refill cannot interfere with the counts.
            small = {"intake_rate_per_second": 0.01, "intake_burst": 3}
            await conn.execute(
                update(tenants).where(tenants.c.id == tenant.id).values(settings=small)
            )
        key = await tenant_store.create_key(app.ctx.engine, tenant.id, ["send", "manage"])
        auth = {"Authorization": f"Bearer {key}"}
        for path, json in [("/v1/templates/hook", HOOK), ("/v1/recipients/u", {})]:
            put = await app.client.put(path, json=json, headers=auth)
            assert put.status_code == 200, put.text
        body = {"template": "hook", "to": {"recipient_id": "u"}}
        for remaining in (2, 1, 0):
            accepted = await app.client.post("/v1/notifications", json=body, headers=auth)
            assert accepted.status_code == 202, accepted.text
            assert accepted.headers["RateLimit-Remaining"] == str(remaining)
        refused = await app.client.post("/v1/notifications", json=body, headers=auth)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.headers["RateLimit-Limit"] == "3"
        assert refused.headers["RateLimit-Remaining"] == "0"
        assert int(refused.headers["RateLimit-Reset"]) >= 1
