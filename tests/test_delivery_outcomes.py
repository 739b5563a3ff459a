"""What becomes of a delivery when its provider fails: retry, fail, or dead-letter."""

from __future__ import annotations

import collections
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from clarion.domain.delivery import Delivery, Stored
from clarion.domain.status import StatusChange
from clarion.pipeline.runtime import Roles
from clarion.store import deliveries as delivery_store
from clarion.store.db import as_utc, utcnow
from clarion.store.tables import outbox
from conftest import WITH_NATS
from harness import Harness, make_settings, running
from webhook_sink import Received, WebhookSink

TEMPLATE = {"channels": {"webhook": {"body": {"hello": "{{ recipient.id }}"}}}}


def _first_try(name: str, tenant: str, channel: str, provider: str) -> Delivery:
    """A delivery ``dlv_<name>`` of notification ``ntf_<name>``, before its first attempt."""
    return Delivery(
        id=f"dlv_{name}",
        tenant=tenant,
        notification=f"ntf_{name}",
        recipient="u1",
        channel=channel,
        provider=provider,
        priority="normal",
        attempt=1,
    )


async def _send_one(app: Harness, sink: WebhookSink, rid: str = "u") -> str:
    await app.put_recipient(rid, webhook_url=f"{sink.url}/{rid}")
    await app.put_template("hook", TEMPLATE)
    response = await app.send({"template": "hook", "to": {"recipient_id": rid}})
    assert response.status_code == 202
    nid: str = response.json()["id"]
    return nid


@pytest.mark.parametrize("backend", WITH_NATS, indirect=True)
async def test_transient_errors_are_retried_until_sent(app: Harness, sink: WebhookSink) -> None:
    seen: collections.Counter[str] = collections.Counter()

    def flaky(request: Received) -> int:
        seen[request.path] += 1
        return 503 if seen[request.path] <= 2 else 200

    sink.respond = flaky
    nid = await _send_one(app, sink)
    await app.drain()
    [delivery] = (await app.notification(nid))["deliveries"]
    assert delivery["status"] == "sent"
    assert delivery["attempts"] == 3
    keys = {r.headers["idempotency-key"] for r in sink.received}
    assert keys == {delivery["id"]}  # every try carried the same key


async def test_permanent_error_fails_at_once(app: Harness, sink: WebhookSink) -> None:
    sink.respond = lambda _: 400
    nid = await _send_one(app, sink)
    await app.drain()
    [delivery] = (await app.notification(nid))["deliveries"]
    assert delivery["status"] == "failed"
    assert delivery["reason"] == "provider_rejected"
    assert delivery["attempts"] == 1
    assert "400" in delivery["last_error"]
    assert sink.count == 1


async def test_out_of_attempts_is_dead(app: Harness, sink: WebhookSink) -> None:
    sink.respond = lambda _: 500
    nid = await _send_one(app, sink)
    await app.drain()
    [delivery] = (await app.notification(nid))["deliveries"]
    assert delivery["status"] == "dead"
    assert delivery["attempts"] == app.settings.max_attempts == sink.count
    assert delivery["reason"] == "http_500"


async def test_unreachable_endpoint_is_retried_then_dead(lite: Harness) -> None:
    await lite.put_recipient("u", webhook_url="http://127.0.0.1:9/nothing-listens")
    await lite.put_template("hook", TEMPLATE)
    response = await lite.send({"template": "hook", "to": {"recipient_id": "u"}})
    await lite.drain()
    [delivery] = (await lite.notification(response.json()["id"]))["deliveries"]
    assert delivery["status"] == "dead"
    assert delivery["reason"] == "connection_error"


async def test_private_webhook_urls_are_refused_by_default(
    strict: Harness, sink: WebhookSink
) -> None:
    nid = await _send_one(strict, sink)
    await strict.drain()
    [delivery] = (await strict.notification(nid))["deliveries"]
    assert delivery["status"] == "failed"
    assert delivery["reason"] == "address_refused"
    assert sink.count == 0


async def test_expired_notification_is_not_sent(lite: Harness, sink: WebhookSink) -> None:
    await lite.put_recipient("u", webhook_url=f"{sink.url}/u")
    await lite.put_template("hook", TEMPLATE)
    response = await lite.send(
        {"template": "hook", "to": {"recipient_id": "u"}, "expires_at": "2020-01-01T00:00:00Z"}
    )
    await lite.drain()
    [delivery] = (await lite.notification(response.json()["id"]))["deliveries"]
    assert (delivery["status"], delivery["reason"]) == ("failed", "expired")
    assert sink.count == 0


async def test_restart_plans_what_was_accepted_but_not_planned(
    migrated_sqlite_url: str, sink: WebhookSink
) -> None:
    """The in-process broker forgets on a stop; the outbox does not."""
    url = migrated_sqlite_url
    async with running(make_settings(url, "embedded://"), Roles(api=True)) as app:
        nid = await _send_one(app, sink)
    assert sink.count == 0
    async with running(make_settings(url, "embedded://")) as app:
        await app.drain()
        [delivery] = (await app.notification(nid))["deliveries"]
    assert delivery["status"] == "sent"
    assert sink.count == 1


async def test_restart_sends_what_was_planned_but_not_sent(
    migrated_sqlite_url: str, sink: WebhookSink
) -> None:
    url = migrated_sqlite_url
    async with running(make_settings(url, "embedded://"), Roles(api=True, planner=True)) as app:
        nid = await _send_one(app, sink)

        async def planned() -> bool:
            return len((await app.notification(nid))["deliveries"]) == 1

        await app.until(planned)
    assert sink.count == 0
    async with running(make_settings(url, "embedded://")) as app:
        await app.drain()
        [delivery] = (await app.notification(nid))["deliveries"]
    assert delivery["status"] == "sent"
    assert sink.count == 1


async def test_a_delivered_report_before_the_workers_outcome_is_kept(lite: Harness) -> None:
    """A provider may report `delivered` before the worker has stored `sent`: the delivery
    stays `delivered` when the worker's write comes."""
    now = utcnow()
    early = _first_try("early", lite.tenant_id, "sms", "twilio-main")
    assert await delivery_store.insert_one(lite.ctx.engine, Stored(early), now)
    assert await delivery_store.apply_provider_report(
        lite.ctx.engine, lite.tenant_id, "dlv_early", "delivered"
    )
    await delivery_store.apply_changes(
        lite.ctx.engine,
        [StatusChange("dlv_early", lite.tenant_id, "sent", attempts=1, sent_at=utcnow())],
    )
    found = await delivery_store.get_one(lite.ctx.engine, lite.tenant_id, "dlv_early")
    assert found is not None
    assert found["status"] == "delivered"


async def test_an_outcome_never_overwrites_that_of_a_later_attempt(app: Harness) -> None:
    """A retry's message is published before the first outcome is stored, so the retry can
    run and store its outcome first: the late, older outcome is an event, not the state."""
    now = utcnow()
    race = _first_try("race", app.tenant_id, "webhook", "webhook")
    assert await delivery_store.insert_one(app.ctx.engine, Stored(race), now)
    retry_at = now + timedelta(seconds=1)
    engine, tenant, pg = app.ctx.engine, app.tenant_id, app.ctx.pg
    await delivery_store.apply_changes(
        engine,
        [
            StatusChange("dlv_race", tenant, "queued", attempts=2, scheduled_for=retry_at),
            StatusChange("dlv_race", tenant, "dead", attempts=3, reason="http_500"),
        ],
        pg,
    )
    await delivery_store.apply_changes(
        engine,
        [StatusChange("dlv_race", tenant, "queued", attempts=1, scheduled_for=retry_at)],
        pg,
    )

    found = await delivery_store.get_one(engine, tenant, "dlv_race")
    assert found is not None
    assert (found["status"], found["attempts"], found["reason"]) == ("dead", 3, "http_500")


async def test_a_large_batch_of_outcomes_is_stored_whole(app: Harness) -> None:
    """A status writer's batch of 300 (on SQLite a statement of 256 rows and one of 64, 20
    of them no delivery's), one delivery changed twice in it (the later change is its
    state), every field kept."""
    now = utcnow()
    engine, tenant = app.ctx.engine, app.tenant_id
    for i in range(300):
        assert await delivery_store.insert_one(
            engine, Stored(_first_try(f"b{i}", tenant, "webhook", "webhook")), now
        )
    sent_at = now + timedelta(seconds=2)
    changes = [
        StatusChange(
            f"dlv_b{i}",
            tenant,
            "sent",
            attempts=1,
            provider_message_id=f"m{i}",
            sent_at=sent_at,
            latency_ms=i,
            provider="hooks-b" if i % 2 else None,
        )
        for i in range(300)
    ]
    changes.insert(0, StatusChange("dlv_b7", tenant, "failed", attempts=1, reason="http_500"))
    await delivery_store.apply_changes(engine, changes, app.ctx.pg)
    for i in (0, 7, 99, 255, 256, 299):
        found = await delivery_store.get_one(engine, tenant, f"dlv_b{i}")
        assert found is not None
        assert (found["status"], found["attempts"], found["provider_message_id"]) == (
            "sent",
            1,
            f"m{i}",
        )
        assert found["latency_ms"] == i
        assert as_utc(found["sent_at"]) == sent_at
        # A change without a provider leaves the delivery's own.
        assert found["provider"] == ("hooks-b" if i % 2 else "webhook")


async def test_a_restart_plans_the_unplanned_at_once_not_after_the_grace(
    migrated_sqlite_url: str, sink: WebhookSink
) -> None:
    """`serve` is the only process of the embedded mode: at its start no broker holds the
    notifications it had accepted, so it publishes them at once rather than after the
    outbox's grace (here a minute, far beyond the wait below); a scheduled one keeps its
    time."""
    url = migrated_sqlite_url
    settings = make_settings(url, "embedded://", outbox_grace=60.0)
    async with running(settings, Roles(api=True)) as app:
        ids = [await _send_one(app, sink, rid) for rid in ("a", "b", "c")]
        send_at = (utcnow() + timedelta(hours=1)).isoformat()
        later = await app.send(
            {"template": "hook", "to": {"recipient_id": "a"}, "send_at": send_at}
        )
        assert later.status_code == 202, later.text
    assert sink.count == 0
    async with running(settings) as app:

        async def sent() -> bool:
            notes = [await app.notification(nid) for nid in ids]
            statuses = [[d["status"] for d in n["deliveries"]] for n in notes]
            return statuses == [["sent"]] * len(ids)

        await app.until(sent, timeout=20.0)
        assert sink.count == 3
        waiting = await app.notification(later.json()["id"])
        assert (waiting["status"], waiting["deliveries"]) == ("scheduled", [])
        async with app.ctx.engine.connect() as conn:
            query = select(outbox.c.available_at).where(
                outbox.c.notification_id == later.json()["id"]
            )
            [available_at] = (await conn.execute(query)).scalars()
        assert as_utc(available_at) == datetime.fromisoformat(send_at)
