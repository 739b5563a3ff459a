"""The Python SDK (clients/python) against a running Clarion: a real HTTP server on
127.0.0.1 serving the in-process app, so that the tests can drain its workers. Sync calls
run in a thread while the event loop serves them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvicorn

from clarion.api.app import create_app
from clarion.pipeline.recurring import Recurring
from clarion.store import message_log
from clarion_client import (
    AsyncClarion,
    AuthenticationError,
    Clarion,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    SignatureVerificationError,
    UnprocessableError,
    models,
    parse_event,
    verify_signature,
)
from clarion_client.webhooks import sign
from harness import Harness, make_settings, running, stored_deliveries
from test_suppressions import dsn
from webhook_sink import WebhookSink

R = TypeVar("R")
EMAIL = {"email": {"subject": "Order {{ orderId }}", "text": "Hello {{ firstName }}"}}
HOOK = {"webhook": {"body": {"order": "{{ orderId }}"}}}


@contextlib.asynccontextmanager
async def served(harness: Harness) -> AsyncIterator[str]:
    """Serve the harness's app over HTTP on 127.0.0.1; yields its base URL. The socket
    listens before the server starts, so the first request simply waits in its backlog."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    app = create_app(harness.ctx, harness.runtime.intake)
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def server(lite: Harness) -> AsyncIterator[str]:
    async with served(lite) as url:
        yield url


async def in_thread(fn: Callable[[], R]) -> R:
    return await asyncio.to_thread(fn)


async def _setup(app: Harness, sink: WebhookSink | None = None) -> None:
    await app.put_recipient("u-1", email="u1@example.com", data={"firstName": "Alex"})
    await app.put_template("order", {"channels": EMAIL})
    if sink is not None:
        await app.put_recipient("hooked", webhook_url=f"{sink.url}/hooked")
        await app.put_template("hook", {"channels": HOOK})


async def test_sync_client_sends_in_three_lines_and_reads_back(lite: Harness, server: str) -> None:
    await _setup(lite)

    def scenario() -> tuple[models.Accepted, models.Notification]:
        client = Clarion(api_key=lite.key, base_url=server)
        accepted = client.notifications.send(template="order", to="u-1", data={"orderId": "A1"})
        found = client.notifications.get(accepted.id)
        client.close()
        return accepted, found

    accepted, found = await in_thread(scenario)
    assert accepted.id.startswith("ntf_")
    assert accepted.status == "accepted"
    assert found.id == accepted.id
    assert found.template == "order"
    assert found.to.recipient_ids == ["u-1"]
    await lite.drain()

    def read_log() -> tuple[models.Notification, list[models.NotificationSummary]]:
        with Clarion(api_key=lite.key, base_url=server) as client:
            return client.notifications.get(accepted.id), list(client.notifications.list())

    found, listed = await in_thread(read_log)
    assert found.status == "completed"
    assert found.totals == {"sent": 1}
    [delivery] = found.deliveries
    assert delivery.status == "sent"
    assert [n.id for n in listed] == [accepted.id]


async def test_async_client_covers_every_resource(lite: Harness, server: str) -> None:
    async with AsyncClarion(api_key=lite.key, base_url=server) as client:
        recipient = await client.recipients.put(
            "u-2", email="u2@example.com", locale="fr", data={"firstName": "Léa"}
        )
        assert recipient.id == "u-2"
        assert recipient.locale == "fr"
        assert (await client.recipients.get("u-2")).email == "u2@example.com"
        prefs = await client.recipients.put_preferences("u-2", channels={"sms": False})
        assert prefs.channels == {"sms": False}
        assert (await client.recipients.get_preferences("u-2")).channels == {"sms": False}
        token = await client.recipients.token("u-2", expires_in=3600)
        assert token.token

        stored = await client.templates.put("order", channels=EMAIL)
        assert (stored.name, stored.version) == ("order", 1)
        second = await client.templates.put(
            "order", channels={"email": {"subject": "v2 {{ orderId }}", "text": "t"}}
        )
        assert second.version == 2
        assert (await client.templates.get("order")).version == 2
        assert (await client.templates.get("order", version=1)).channels == EMAIL
        names = [t.name async for t in client.templates.list()]
        assert names == ["order"]
        back = await client.templates.rollback("order", version=1)
        assert back.version == 1
        preview = await client.templates.preview(
            "order", recipient_id="u-2", data={"orderId": "B2"}, channel="email"
        )
        assert preview.channels["email"]["subject"] == "Order B2"

        batch = await client.notifications.send_batch(
            [
                {"template": "order", "to": {"recipient_id": "u-2"}, "data": {"orderId": "1"}},
                models.NotificationRequest(
                    template="nope", to=models.To(recipient_id="u-2"), data={}
                ),
            ]
        )
        first, refused = batch.results
        assert isinstance(first, models.Accepted)
        assert isinstance(refused, models.BatchItemError)
        assert refused.error.code == "unknown_template"
        await lite.drain()

        deliveries = [d async for d in client.deliveries.list(recipient_id="u-2")]
        assert [d.notification_id for d in deliveries] == [first.id]
        detail = await client.deliveries.get(deliveries[0].id)
        assert [e.type for e in detail.events] == ["queued", "attempt", "sent"]
        attempt = detail.events[1]
        assert (attempt.attempt, attempt.outcome, attempt.provider) == (1, "success", "sandbox")
        summaries = [n async for n in client.notifications.list(status="completed")]
        assert [n.id for n in summaries] == [first.id]

        await client.recipients.delete("u-2")
        with pytest.raises(NotFoundError):
            await client.recipients.get("u-2")


async def test_configuration_resources(lite: Harness, server: str) -> None:
    async with AsyncClarion(api_key=lite.key, base_url=server) as client:
        category = await client.categories.put("news", default_channels=["email"], max_per_hour=5)
        assert (category.name, category.max_per_hour, category.built_in) == ("news", 5, False)
        assert (await client.categories.get("security")).critical is True
        names = [c.name async for c in client.categories.list(page_size=2)]
        assert names == sorted(names)
        assert {"news", "marketing", "security", "transactional"} <= set(names)

        provider = await client.providers.put(
            "capture", channel="email", kind="sandbox", priority=2, rate_limit_per_second=50
        )
        assert (provider.kind, provider.priority, provider.enabled) == ("sandbox", 2, True)
        assert (await client.providers.get("capture")).rate_limit_per_second == 50
        assert [p.name async for p in client.providers.list()] == ["capture"]
        await client.providers.delete("capture")
        with pytest.raises(NotFoundError):
            await client.providers.get("capture")
        with pytest.raises(UnprocessableError):
            await client.providers.put("bad", channel="email", kind="carrier-pigeon")

        hook = await client.webhooks.put(
            "ops", url="https://hooks.example.com/clarion", events=["delivery.failed"]
        )
        assert len(hook.secret) >= 16  # made by Clarion, shown this once
        assert (await client.webhooks.get("ops")).secret == "***"
        assert [w.name async for w in client.webhooks.list()] == ["ops"]
        await client.webhooks.delete("ops")
        with pytest.raises(NotFoundError):
            await client.webhooks.delete("ops")


async def test_dead_letters_and_sandbox(lite: Harness, server: str, sink: WebhookSink) -> None:
    sink.respond = lambda _: 500
    await _setup(lite, sink)
    async with AsyncClarion(api_key=lite.key, base_url=server) as client:
        email = await client.notifications.send(template="order", to="u-1", data={"orderId": 1})
        failing = await client.notifications.send(template="hook", to="hooked", data={"orderId": 2})
        await lite.drain()
        [captured] = [m async for m in client.sandbox.messages(channel="email")]
        assert captured.recipient_id == "u-1"
        assert captured.content["subject"] == "Order 1"
        assert (await client.notifications.get(email.id)).status == "completed"

        [dead] = [d async for d in client.dead_letters.list(channel="webhook")]
        assert dead.notification_id == failing.id
        assert dead.status == "dead"
        sink.respond = lambda _: 200
        replayed = await client.dead_letters.replay(dead.id)
        assert replayed.status == "queued"
        with pytest.raises(ConflictError) as not_dead:
            await client.dead_letters.replay(dead.id)
        assert not_dead.value.code == "not_dead"
        await lite.drain()
        assert (await client.deliveries.get(dead.id)).status == "sent"
        assert (await client.dead_letters.replay_matching()).replayed == 0


async def test_pagination_iterates_every_page(lite: Harness, server: str) -> None:
    await _setup(lite)
    async with AsyncClarion(api_key=lite.key, base_url=server) as client:
        sent = [
            (await client.notifications.send(template="order", to="u-1", data={"orderId": i})).id
            for i in range(7)
        ]
        pager = client.notifications.list(page_size=3)
        pages = [page async for page in pager.pages()]
        assert [len(p.data) for p in pages] == [3, 3, 1]
        assert pages[-1].next_cursor is None
        items = [n.id async for n in client.notifications.list(page_size=2)]
        assert sorted(items) == sorted(sent)
        assert len(items) == 7

    def sync_pages() -> list[str]:
        with Clarion(api_key=lite.key, base_url=server) as client:
            return [n.id for n in client.notifications.list(page_size=4)]

    assert await in_thread(sync_pages) == items


async def test_pagination_goes_on_past_short_and_empty_pages(
    lite: Harness, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Filtered by status, a page of deliveries examines a bounded number of them
    (docs/message-log.md): a page may be short or empty while `next_cursor` is set, and
    both clients follow it to the end."""
    monkeypatch.setattr(message_log, "SCAN_LIMIT", 3)
    await stored_deliveries(lite, ["failed" if i in (0, 11) else "sent" for i in range(12)])
    async with AsyncClarion(api_key=lite.key, base_url=server) as client:
        pager = client.deliveries.list(status="failed", page_size=2)
        pages = [page async for page in pager.pages()]
        # 11..9 examined, 8..6, 5..3, then 2..0 and nothing more.
        assert [[d.id for d in p.data] for p in pages] == [["dlv_0011"], [], [], ["dlv_0000"]]
        assert pages[-1].next_cursor is None
        items = [d.id async for d in client.deliveries.list(status="failed", page_size=2)]
        assert items == ["dlv_0011", "dlv_0000"]

    def sync_items() -> list[str]:
        with Clarion(api_key=lite.key, base_url=server) as client:
            return [d.id for d in client.deliveries.list(status="failed", page_size=2)]

    assert await in_thread(sync_items) == items


async def test_errors_carry_the_api_code(lite: Harness, server: str) -> None:
    await _setup(lite)
    reader = await lite.new_tenant("reader", ["read"])
    async with AsyncClarion(api_key=lite.key, base_url=server) as client:
        with pytest.raises(NotFoundError) as missing:
            await client.notifications.get("ntf_nothing")
        assert missing.value.status == 404
        assert missing.value.code == "not_found"
        with pytest.raises(UnprocessableError) as unknown:
            await client.notifications.send(template="nope", to="u-1")
        assert unknown.value.code == "unknown_template"
        with pytest.raises(UnprocessableError) as bad_cursor:
            await client.deliveries.list().first_page(cursor="garbage")
        assert bad_cursor.value.code == "invalid_cursor"
    async with AsyncClarion(api_key="ck_wrong", base_url=server) as client:
        with pytest.raises(AuthenticationError) as wrong:
            await client.notifications.get("ntf_x")
        assert wrong.value.code == "unauthorized"
    async with AsyncClarion(api_key=reader, base_url=server) as client:
        with pytest.raises(PermissionDeniedError) as scope:
            await client.notifications.send(template="order", to="u-1")
        assert scope.value.code == "insufficient_scope"


async def test_idempotent_replay_and_conflict(lite: Harness, server: str) -> None:
    await _setup(lite)
    async with AsyncClarion(api_key=lite.key, base_url=server) as client:
        first = await client.notifications.send(
            template="order", to="u-1", data={"orderId": "X"}, idempotency_key="order-X"
        )
        again = await client.notifications.send(
            template="order", to="u-1", data={"orderId": "X"}, idempotency_key="order-X"
        )
        assert again.id == first.id
        with pytest.raises(ConflictError) as conflict:
            await client.notifications.send(
                template="order", to="u-1", data={"orderId": "Y"}, idempotency_key="order-X"
            )
        assert conflict.value.code == "idempotency_conflict"
        # Without a key, each call gets its own: two sends are two notifications.
        one = await client.notifications.send(template="order", to="u-1")
        two = await client.notifications.send(template="order", to="u-1")
        assert one.id != two.id


async def test_schedules_audit_and_topics(lite: Harness, server: str) -> None:
    await _setup(lite)
    await lite.put_recipient("u-2", email="u2@example.com")
    reader = await lite.new_tenant("reader", ["read"])
    async with AsyncClarion(api_key=lite.key, base_url=server) as client:
        body = {"template": "order", "to": "u-1", "data": {"orderId": "R"}}
        made = await client.schedules.put(
            "nightly", cron="0 3 * * *", timezone="Europe/Paris", notification=body
        )
        assert (made.name, made.cron, made.enabled) == ("nightly", "0 3 * * *", True)
        assert made.notification["to"] == {"recipient_id": "u-1"}
        assert made.next_run_at is not None
        off = await client.schedules.put(
            "weekly", cron="0 9 * * MON", notification=body, enabled=False
        )
        assert (off.timezone, off.next_run_at) == ("UTC", None)
        assert [s.name async for s in client.schedules.list(page_size=1)] == ["nightly", "weekly"]
        assert [r async for r in client.schedules.runs("nightly")] == []
        with pytest.raises(UnprocessableError) as bad_cron:
            await client.schedules.put("bad", cron="61 * * * *", notification=body)
        assert bad_cron.value.code == "validation_error"
        with pytest.raises(UnprocessableError) as unknown:
            await client.schedules.put("bad", cron="* * * * *", notification={**body, "to": "x"})
        assert unknown.value.code == "unknown_recipient"

        # It fires once the scheduler's clock passes its due time.
        due = made.next_run_at
        lite.ctx.clock = lambda: due + timedelta(seconds=1)
        scheduler = Recurring(lite.ctx)
        while await scheduler.run_once():
            pass
        await lite.drain()
        [run] = [r async for r in client.schedules.runs("nightly")]
        assert (run.due_at, run.zone, run.status, run.recipients) == (
            due,
            "Europe/Paris",
            "completed",
            1,
        )
        assert run.notification_id is not None
        assert (await client.notifications.get(run.notification_id)).template == "order"
        await client.schedules.delete("nightly")
        with pytest.raises(NotFoundError):
            await client.schedules.get("nightly")
        with pytest.raises(NotFoundError):
            await client.schedules.delete("nightly")

        # The audit log: newest first, filtered, iterated page after page.
        await client.templates.put("order", channels={"sms": {"text": "Order {{ orderId }}"}})
        changes = [e async for e in client.audit.list(resource="template", page_size=1)]
        assert [(e.action, e.name, e.diff["version"]) for e in changes] == [
            ("update", "order", {"from": 1, "to": 2}),
            ("create", "order", {"to": 1}),
        ]
        assert changes[0].at >= changes[1].at
        assert [e async for e in client.audit.list(resource="template", before=changes[1].at)] == []
        with pytest.raises(UnprocessableError):
            await client.audit.list(action="explode").first_page()

        # Topics: subscribe (an unknown id reported), page through, unsubscribe.
        change = await client.topics.subscribe("news", ["u-1", "u-2", "ghost"])
        assert (change.added, change.subscribers) == (2, 2)
        assert [e["recipient_id"] for e in change.errors] == ["ghost"]
        assert (await client.topics.get("news")).subscribers == 2
        members = [m.recipient_id async for m in client.topics.subscribers("news", page_size=1)]
        assert members == ["u-1", "u-2"]
        removed = await client.topics.unsubscribe("news", ["u-1"])
        assert (removed.removed, removed.subscribers) == (1, 1)
        with pytest.raises(NotFoundError):
            await client.topics.get("nobody-here")
        # Created empty, then deleted.
        assert (await client.topics.create("later")).subscribers == 0
        assert (await client.topics.get("later")).subscribers == 0
        await client.topics.delete("later")
        with pytest.raises(NotFoundError):
            await client.topics.get("later")
    async with AsyncClarion(api_key=reader, base_url=server) as client:
        with pytest.raises(PermissionDeniedError):
            await client.audit.list().first_page()
        with pytest.raises(NotFoundError):  # another tenant's schedule
            await client.schedules.get("weekly")


async def test_api_keys_made_listed_and_revoked(lite: Harness, server: str) -> None:
    stranger = await lite.new_tenant("stranger")
    async with AsyncClarion(api_key=stranger, base_url=server) as client:
        [their_key] = [k async for k in client.keys.list()]
    async with AsyncClarion(api_key=lite.key, base_url=server) as client:
        made = await client.keys.create(name="billing job", scopes=["send", "read"])
        assert isinstance(made, models.ApiKeyCreated)
        assert made.secret.startswith(f"ck_{made.prefix}_")
        assert (made.name, made.scopes, made.revoked_at) == ("billing job", ["read", "send"], None)
        listed = [k async for k in client.keys.list(page_size=1)]
        assert listed[0].id == made.id
        assert len(listed) == 2
        assert all("secret" not in k.model_dump() for k in listed)
        own = listed[1]
        with pytest.raises(UnprocessableError) as bad_scope:
            await client.keys.create(name="x", scopes=["root"])  # type: ignore[list-item]
        assert bad_scope.value.code == "validation_error"
        with pytest.raises(UnprocessableError):
            await client.keys.create(name="x" * 101, scopes=["send"])
        with pytest.raises(ConflictError) as itself:
            await client.keys.revoke(own.id)
        assert itself.value.code == "cannot_revoke_own_key"
        with pytest.raises(NotFoundError):
            await client.keys.revoke("key_00000000")
        with pytest.raises(NotFoundError):  # another tenant's key
            await client.keys.revoke(their_key.id)

    def with_the_new_key() -> int:
        with Clarion(api_key=made.secret, base_url=server) as other:
            templates = len(list(other.templates.list()))
            with pytest.raises(PermissionDeniedError):
                other.keys.list().first_page()
            return templates

    assert await in_thread(with_the_new_key) == 0

    def revoke_then_use() -> None:
        with Clarion(api_key=lite.key, base_url=server) as client:
            client.keys.revoke(made.id)
            client.keys.revoke(made.id)  # again: nothing changes
            [revoked] = [k for k in client.keys.list() if k.id == made.id]
            assert revoked.revoked_at is not None
        with (
            Clarion(api_key=made.secret, base_url=server) as other,
            pytest.raises(AuthenticationError),
        ):
            other.templates.list().first_page()

    await in_thread(revoke_then_use)


async def test_stats_draft_preview_and_provider_test(lite: Harness, server: str) -> None:
    await _setup(lite)
    await lite.put_recipient("silent")
    sent = await lite.send(
        {"template": "order", "to": {"recipient_id": "u-1"}, "data": {"orderId": "S"}}
    )
    assert sent.status_code == 202, sent.text
    await lite.drain()

    def sync_calls() -> tuple[Any, ...]:
        with Clarion(api_key=lite.key, base_url=server) as client:
            stats = client.stats.get(minutes=5)
            draft = client.templates.preview_draft(
                channels={"email": {"subject": "Hi {{ firstName }}", "text": "x"}},
                recipient_id="u-1",
            )
            with pytest.raises(UnprocessableError) as missing:
                client.templates.preview_draft(channels={"sms": {"text": "{{ nobody }}"}})
            client.providers.put("capture", channel="email", kind="sandbox")
            tested = client.providers.test("capture", recipient_id="u-1")
            with pytest.raises(UnprocessableError) as no_address:
                client.providers.test("capture", recipient_id="silent")
            with pytest.raises(NotFoundError):
                client.providers.test("nope", recipient_id="u-1")
            return stats, draft, missing.value.code, tested, no_address.value.code

    stats, draft, missing, tested, no_address = await in_thread(sync_calls)
    assert sum(m.sent for m in stats.per_minute if m.channel == "email") == 1, stats
    assert stats.latency_ms["email"].samples == 1
    assert (stats.dead_letters, stats.truncated) == (0, False)
    assert draft.channels["email"]["subject"] == "Hi Alex"
    assert missing == "missing_variable"
    assert (tested.ok, tested.channel, tested.error) == (True, "email", None)
    assert tested.provider_message_id
    assert no_address == "no_address"


async def test_retries_honour_retry_after(migrated_sqlite_url: str) -> None:
    settings = make_settings(
        migrated_sqlite_url,
        "embedded://",
        intake_rate_per_second=1.0,
        intake_burst=1,
    )
    async with running(settings) as app, served(app) as url:
        await _setup(app)
        async with AsyncClarion(api_key=app.key, base_url=url, max_retries=0) as client:
            await client.notifications.send(template="order", to="u-1")
            with pytest.raises(RateLimitError) as limited:
                await client.notifications.send(template="order", to="u-1")
            assert limited.value.code == "rate_limited"
            assert limited.value.retry_after is not None
            assert 0 < limited.value.retry_after <= 2
        async with AsyncClarion(api_key=app.key, base_url=url, max_retries=3) as client:
            started = time.monotonic()
            accepted = await client.notifications.send(
                template="order", to="u-1", idempotency_key="retried"
            )
            waited = time.monotonic() - started
        # The 429 said when to come back; the client waited that long, then got through
        # with the same idempotency key: one notification.
        assert waited >= 0.5
        assert accepted.status == "accepted"
        found = await app.client.get(f"/v1/notifications/{accepted.id}", headers=app.auth)
        assert found.json()["idempotency_key"] == "retried"

        def sync_send() -> tuple[float, models.Accepted]:
            with Clarion(api_key=app.key, base_url=url) as client:
                started = time.monotonic()
                sent = client.notifications.send(template="order", to="u-1")
                return time.monotonic() - started, sent

        waited, sent = await in_thread(sync_send)
        assert waited >= 0.5  # the sync client waits out the 429 the same way
        assert sent.status == "accepted"


async def test_webhook_signatures_verify(lite: Harness, server: str, sink: WebhookSink) -> None:
    await _setup(lite, sink)
    secret = "s3cret-s3cret-s3cret"
    response = await lite.client.put(
        "/v1/webhooks/events",
        json={"url": f"{sink.url}/events", "events": ["delivery.sent"], "secret": secret},
        headers=lite.auth,
    )
    assert response.status_code == 200, response.text
    async with AsyncClarion(api_key=lite.key, base_url=server) as client:
        await client.notifications.send(template="hook", to="hooked", data={"orderId": "W"})
    await lite.drain()
    await sink.wait_for(2, timeout=30)
    [event_request] = [r for r in sink.received if r.path == "/events"]
    body, headers = event_request.body, dict(event_request.headers)
    event = parse_event(body, headers, secret)
    assert event["type"] == "delivery.sent"
    verify_signature(body, headers["clarion-signature"], secret)
    with pytest.raises(SignatureVerificationError):
        verify_signature(body + b" ", headers["clarion-signature"], secret)
    with pytest.raises(SignatureVerificationError):
        verify_signature(body, headers["clarion-signature"], "another-secret-entirely")
    with pytest.raises(SignatureVerificationError):
        verify_signature(body, None, secret)
    with pytest.raises(SignatureVerificationError):
        verify_signature(body, "t=abc,v1=00", secret)
    stale = sign(secret, body, int(time.time()) - 3600)
    with pytest.raises(SignatureVerificationError):
        verify_signature(body, stale, secret)
    verify_signature(body, stale, secret, tolerance=7200)


async def test_models_match_the_openapi_document(lite: Harness) -> None:
    """Every SDK model has the fields, required-ness and JSON types of the server's schema
    of the same shape, so the two cannot drift apart."""
    doc = (await lite.client.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    for model, name in models.SCHEMAS.items():
        server_schema = schemas[name]
        client_schema = model.model_json_schema()
        server_fields = server_schema.get("properties", {})
        client_fields = client_schema.get("properties", {})
        assert set(client_fields) == set(server_fields), (model.__name__, name)
        assert set(client_schema.get("required", [])) == set(server_schema.get("required", [])), (
            model.__name__,
            name,
        )
        for field in server_fields:
            theirs = _types(server_fields[field], schemas)
            ours = _types(client_fields[field], client_schema.get("$defs", {}))
            assert ours == theirs, (model.__name__, field, ours, theirs)


def _types(prop: dict[str, Any], defs: dict[str, Any]) -> frozenset[str]:
    """The JSON types a property schema admits (formats included: date-time matters)."""
    if "$ref" in prop:
        return _types(defs[prop["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in prop:
        return frozenset().union(*(_types(p, defs) for p in prop["anyOf"]))
    if "enum" in prop or "const" in prop:
        return frozenset({"string"})
    if "allOf" in prop and len(prop["allOf"]) == 1:
        return _types(prop["allOf"][0], defs)
    kind = prop.get("type", "any")
    return frozenset({f"{kind}:{prop['format']}" if "format" in prop else kind})


def test_the_sdk_is_packaged_typed() -> None:
    root = Path(__file__).resolve().parents[1] / "clients" / "python"
    assert (root / "src" / "clarion_client" / "py.typed").exists()
    assert 'name = "clarion-client"' in (root / "pyproject.toml").read_text()


def test_retry_after_is_read_as_seconds_or_a_date() -> None:
    from email.utils import formatdate

    from clarion_client._retry import parse_retry_after

    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    later = parse_retry_after(formatdate(time.time() + 30, usegmt=True))
    assert later is not None
    assert 25 < later <= 30


async def test_workflows_put_read_list_roll_back_and_delete(lite: Harness, server: str) -> None:
    await lite.put_template("order", {"channels": {"sms": {"text": "Order {{ orderId }}"}}})
    steps = [{"id": "text", "type": "channel", "channel": "sms", "template": "order"}]
    async with AsyncClarion(api_key=lite.key, base_url=server) as client:
        stored = await client.workflows.put("flow", name="One", steps=steps)
        assert (stored.key, stored.version) == ("flow", 1)
        later = [*steps, {"id": "stop", "type": "exit", "if": "data.done"}]
        assert (await client.workflows.put("flow", name="Two", steps=later)).version == 2
        assert (await client.workflows.get("flow")).name == "Two"
        assert (await client.workflows.get("flow", version=1)).steps == steps
        assert [w.key async for w in client.workflows.list(page_size=1)] == ["flow"]
        assert (await client.workflows.rollback("flow", version=1)).version == 1
        with pytest.raises(UnprocessableError):
            await client.workflows.put("bad", name="Bad", steps=[{"id": "X", "type": "exit"}])
        await client.workflows.delete("flow")
        with pytest.raises(NotFoundError):
            await client.workflows.get("flow")


LATER = [
    {"id": "wait", "type": "delay", "duration": "1h"},
    {"id": "mail", "type": "channel", "channel": "email", "template": "order"},
]


async def test_workflow_sends_runs_and_cancel_by_key(lite: Harness, server: str) -> None:
    await _setup(lite)
    await lite.put_recipient("u-2", email="u2@example.com")
    async with AsyncClarion(api_key=lite.key, base_url=server) as client:
        await client.workflows.put("later", name="Later", steps=LATER)
        sent = await client.notifications.send(
            workflow="later", to=["u-1", "u-2"], data={"orderId": "W"}, cancellation_key="k"
        )

        async def waiting() -> bool:
            return [r.status async for r in client.notifications.runs(sent.id)] == ["waiting"] * 2

        await lite.until(waiting)
        found = await client.notifications.get(sent.id)
        assert found.workflow == "later"
        assert found.template is None
        assert found.run_totals == {"waiting": 2}
        assert found.runs_truncated is False
        assert found.runs is not None
        assert [r.recipient_id for r in found.runs] == ["u-1", "u-2"]
        pages = [page async for page in client.notifications.runs(sent.id, page_size=1).pages()]
        assert [[r.recipient_id for r in p.data] for p in pages] == [["u-1"], ["u-2"]]
        assert pages[0].next_cursor == "u-1"
        run = pages[0].data[0]
        assert isinstance(run, models.Run)
        assert run.step == "wait"
        assert run.workflow == "later"
        assert run.version == 1
        assert run.cancellation_key == "k"
        assert run.waiting_until is not None
        [wait] = run.steps
        assert wait.id == "wait"
        assert wait.status == "waiting"
        assert wait.until == run.waiting_until

        one = await client.workflows.cancel("later", cancellation_key="k", recipient_ids=["u-1"])
        assert one.cancelled == 1
        again = await client.workflows.cancel("later", cancellation_key="k", recipient_ids=["u-1"])
        assert again.cancelled == 0
        with pytest.raises(NotFoundError):
            await client.notifications.runs("ntf_nothing").first_page()

    def sync_calls() -> tuple[int, int, list[str]]:
        with Clarion(api_key=lite.key, base_url=server) as client:
            rest = client.workflows.cancel("later", cancellation_key="k").cancelled
            none_left = client.workflows.cancel("later", cancellation_key="k").cancelled
            statuses = [r.status for r in client.notifications.runs(sent.id, page_size=1)]
            return rest, none_left, statuses

    assert await in_thread(sync_calls) == (1, 0, ["cancelled", "cancelled"])


async def test_a_send_names_a_template_or_a_workflow(lite: Harness, server: str) -> None:
    await _setup(lite)
    async with AsyncClarion(api_key=lite.key, base_url=server) as client:
        await client.workflows.put("later", name="Later", steps=LATER)
        with pytest.raises(ValueError, match="exactly one of template or workflow"):
            await client.notifications.send(template="order", workflow="later", to="u-1")
        with pytest.raises(ValueError, match="exactly one of template or workflow"):
            await client.notifications.send(to="u-1")
        with pytest.raises(ValueError, match="exactly one of template or workflow"):
            await client.notifications.send_batch(
                [{"template": "order", "workflow": "later", "to": {"recipient_id": "u-1"}}]
            )
        # Checked before anything is sent: nothing reached the log.
        assert [n async for n in client.notifications.list()] == []
        # A template send may not carry a cancellation key: the server says so.
        with pytest.raises(UnprocessableError) as keyed:
            await client.notifications.send(template="order", to="u-1", cancellation_key="k")
        assert keyed.value.code == "validation_error"
        batch = await client.notifications.send_batch(
            [
                {"workflow": "later", "to": {"recipient_id": "u-1"}, "cancellation_key": "b"},
                models.NotificationRequest(workflow="nope", to=models.To(recipient_id="u-1")),
            ]
        )
        accepted, refused = batch.results
        assert isinstance(accepted, models.Accepted)
        assert isinstance(refused, models.BatchItemError)
        assert refused.error.code == "unknown_workflow"

    def sync_send() -> models.Accepted:
        with Clarion(api_key=lite.key, base_url=server) as client:
            with pytest.raises(ValueError, match="exactly one of template or workflow"):
                client.notifications.send(template="order", workflow="later", to="u-1")
            return client.notifications.send(workflow="later", to="u-1", cancellation_key="b")

    second = await in_thread(sync_send)
    async with AsyncClarion(api_key=lite.key, base_url=server) as client:
        assert (await client.notifications.get(second.id)).workflow == "later"

        async def both_waiting() -> bool:
            found = [
                r.status
                for nid in (accepted.id, second.id)
                async for r in client.notifications.runs(nid)
            ]
            return found == ["waiting", "waiting"]

        await lite.until(both_waiting)
        assert (await client.workflows.cancel("later", cancellation_key="b")).cancelled == 2


async def test_layouts_and_the_brand(lite: Harness, server: str) -> None:
    layout = {"html": "<main>{{ brand.name }} {{ content }}</main>", "text": "{{ content }}"}
    async with AsyncClarion(api_key=lite.key, base_url=server) as client:
        brand = await client.brand.put({"name": "Acme", "support_email": "help@acme.example"})
        assert brand.name == "Acme"
        assert (await client.brand.get()).model_extra == {"support_email": "help@acme.example"}
        stored = await client.layouts.put("house", **layout, default=True)
        assert (stored.name, stored.version) == ("house", 1)
        later = {**layout, "locales": {"fr": {"text": "FR {{ content }}"}}}
        assert (await client.layouts.put("house", **later)).version == 2
        found = await client.layouts.get("house")
        assert (found.version, found.default, found.locales) == (2, True, later["locales"])
        assert [(x.name, x.default) async for x in client.layouts.list()] == [("house", True)]
        assert (await client.layouts.rollback("house", version=1)).version == 1
        with pytest.raises(UnprocessableError):
            await client.layouts.put("bad", html="<p>no slot</p>", text="{{ content }}")

        await client.templates.put(
            "hello", channels={"email": {"subject": "s", "html": "<p>Hi</p>"}}
        )
        preview = await client.templates.preview("hello", channel="email")
        assert preview.channels["email"]["html"] == "<main>Acme <p>Hi</p></main>"
        with pytest.raises(ConflictError):
            await client.layouts.delete("house")
        await client.layouts.put("house", **layout, default=False)
        await client.layouts.delete("house")
        with pytest.raises(NotFoundError):
            await client.layouts.get("house")
        await client.brand.delete()
        assert (await client.brand.get()).name is None


async def test_suppressions_added_listed_filtered_and_deleted(lite: Harness, server: str) -> None:
    await _setup(lite)
    stranger = await lite.new_tenant("stranger", ["read"])
    async with AsyncClarion(api_key=lite.key, base_url=server) as client:
        assert (await client.suppressions.list().first_page()).data == []
        added = await client.suppressions.add(
            "Alex+Tag@Example.com", reason="bounced", detail="the customer says it is gone"
        )
        assert isinstance(added, models.Suppression)
        assert (added.email, added.reason, added.source) == (
            "alex+tag@example.com",
            "bounced",
            "operator",
        )
        assert (added.detail, added.delivery_id) == ("the customer says it is gone", None)
        await client.suppressions.add("sam@example.com", reason="complained")
        both = {s.email async for s in client.suppressions.list()}
        assert both == {"alex+tag@example.com", "sam@example.com"}

        [alex] = [s async for s in client.suppressions.list(email="ALEX+tag@example.com ")]
        assert alex.email == "alex+tag@example.com"
        [sam] = [s async for s in client.suppressions.list(reason="complained")]
        assert sam.email == "sam@example.com"
        assert [s async for s in client.suppressions.list(channel="email", reason="bounced")] == [
            alex
        ]
        assert [s async for s in client.suppressions.list(email="nobody@example.com")] == []
        assert (await client.suppressions.get("Alex+Tag@example.com")) == alex

        again = await client.suppressions.add("alex+tag@example.com", reason="complained")
        assert (again.reason, again.detail, again.created_at) == (
            "complained",
            None,
            alex.created_at,
        )

        for i in range(5):
            await client.suppressions.add(f"more-{i}@example.com", reason="bounced")
        pages = [p async for p in client.suppressions.list(page_size=3).pages()]
        assert [len(p.data) for p in pages] == [3, 3, 1]
        paged = [s.email for p in pages for s in p.data]
        assert len(set(paged)) == 7
        assert {s.email async for s in client.suppressions.list(reason="bounced", page_size=2)} == {
            f"more-{i}@example.com" for i in range(5)
        }

        # On the list, an address is not mailed; off it, it is again.
        await client.suppressions.add("u1@example.com", reason="bounced")
        held = await client.notifications.send(template="order", to="u-1", data={"orderId": 1})
        await lite.drain()
        [delivery] = (await client.notifications.get(held.id)).deliveries
        assert (delivery.status, delivery.reason) == ("suppressed", "bounced")
        await client.suppressions.delete("U1@example.com")
        sent = await client.notifications.send(template="order", to="u-1", data={"orderId": 2})
        await lite.drain()
        assert (await client.notifications.get(sent.id)).deliveries[0].status == "sent"

        await client.suppressions.delete("alex+tag@example.com")
        with pytest.raises(NotFoundError) as gone:
            await client.suppressions.delete("alex+tag@example.com")
        assert (gone.value.status, gone.value.code) == (404, "not_found")
        with pytest.raises(NotFoundError):
            await client.suppressions.get("alex+tag@example.com")
        assert "alex+tag@example.com" not in {s.email async for s in client.suppressions.list()}

        with pytest.raises(UnprocessableError) as invalid:
            await client.suppressions.add("not-an-address", reason="bounced")
        assert invalid.value.code == "validation_error"
        with pytest.raises(UnprocessableError):
            await client.suppressions.add("x@example.com", reason="spam")  # type: ignore[arg-type]
        with pytest.raises(UnprocessableError):
            await client.suppressions.add("x@example.com", reason="bounced", detail="d" * 1001)
        with pytest.raises(UnprocessableError):
            await client.suppressions.list(reason="spam").first_page()  # type: ignore[arg-type]
        with pytest.raises(UnprocessableError):
            await client.suppressions.list(channel="sms").first_page()
        with pytest.raises(UnprocessableError):
            await client.suppressions.list(page_size=501).first_page()
        with pytest.raises(UnprocessableError) as bad_cursor:
            await client.suppressions.list().first_page(cursor="garbage")
        assert bad_cursor.value.code == "invalid_cursor"
        assert [s async for s in client.suppressions.list(email="x@example.com")] == []

    async with AsyncClarion(api_key=stranger, base_url=server) as client:
        assert [s async for s in client.suppressions.list()] == []  # another tenant's list
        with pytest.raises(NotFoundError):
            await client.suppressions.get("sam@example.com")
        with pytest.raises(PermissionDeniedError) as scope:
            await client.suppressions.add("sam@example.com", reason="bounced")
        assert scope.value.code == "insufficient_scope"


async def test_suppressions_with_the_sync_client(lite: Harness, server: str) -> None:
    def scenario() -> tuple[Any, ...]:
        with Clarion(api_key=lite.key, base_url=server) as client:
            empty = list(client.suppressions.list())
            added = client.suppressions.add("kim@example.com", reason="complained", detail="spam")
            for i in range(4):
                client.suppressions.add(f"b{i}@example.com", reason="bounced")
            by_address = list(client.suppressions.list(email="Kim@Example.com"))
            by_reason = [s.email for s in client.suppressions.list(reason="bounced", page_size=3)]
            sizes = [len(p.data) for p in client.suppressions.list(page_size=2).pages()]
            client.suppressions.delete("kim@example.com")
            with pytest.raises(NotFoundError) as gone:
                client.suppressions.delete("kim@example.com")
            with pytest.raises(UnprocessableError) as invalid:
                client.suppressions.add("kim@", reason="bounced")
            left = [s.email for s in client.suppressions.list()]
            return empty, added, by_address, by_reason, sizes, gone.value, invalid.value, left

    empty, added, by_address, by_reason, sizes, gone, invalid, left = await in_thread(scenario)
    assert empty == []
    assert (added.email, added.reason, added.source, added.detail) == (
        "kim@example.com",
        "complained",
        "operator",
        "spam",
    )
    assert by_address == [added]
    assert sorted(by_reason) == [f"b{i}@example.com" for i in range(4)]
    assert sizes == [2, 2, 1]
    assert (gone.status, gone.code) == (404, "not_found")
    assert (invalid.status, invalid.code) == (422, "validation_error")
    assert sorted(left) == [f"b{i}@example.com" for i in range(4)]


async def test_a_bounce_message_handed_in_with_either_client(lite: Harness, server: str) -> None:
    """``suppressions.hand_in_dsn``: the raw message goes as ``message/rfc822``; what is not
    a bounce is the API's 422, and a key without the manage scope is refused."""
    async with AsyncClarion(api_key=lite.key, base_url=server) as client:
        result = await client.suppressions.hand_in_dsn(dsn("Gone@Example.com"))
        assert (result.reported, result.suppressed, result.bounced) == (1, 1, 0)
        entry = await client.suppressions.get("gone@example.com")
        assert (entry.reason, entry.source) == ("bounced", "dsn")
        soft = await client.suppressions.hand_in_dsn(dsn("late@example.com", status="4.2.2"))
        assert (soft.reported, soft.suppressed) == (1, 0)
        with pytest.raises(UnprocessableError):
            await client.suppressions.hand_in_dsn(b"Subject: hello\r\n\r\nnot a report\r\n")
        with pytest.raises(TypeError):
            await client.suppressions.hand_in_dsn("a str, not the message's bytes")  # type: ignore[arg-type]
    reader = await lite.new_tenant("dsn-reader", ["read", "send"])

    def scenario() -> tuple[Any, Any]:
        with Clarion(api_key=lite.key, base_url=server) as client:
            done = client.suppressions.hand_in_dsn(dsn("other@example.com"))
        with (
            Clarion(api_key=reader, base_url=server) as client,
            pytest.raises(PermissionDeniedError) as refused,
        ):
            client.suppressions.hand_in_dsn(dsn("other@example.com"))
        return done, refused.value

    done, refused = await in_thread(scenario)
    assert done.suppressed == 1
    assert refused.code == "insufficient_scope"
