"""Traces across republishing: whatever publishes a notification or its deliveries again
(the outbox relay, embedded recovery, the sweeper, a retry, a dead-letter replay) carries
the trace the notification was accepted in, also after a restart with the broker's
messages lost; a recurring run and a digest start traces of their own, linked to where
they came from, which their notifications' work joins."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from clarion.observability import tracing
from clarion.pipeline.runtime import Roles
from clarion.resilience.breaker import BreakerKey
from digest_kit import close_after
from harness import Harness, make_settings, running
from webhook_sink import Received, WebhookSink

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind

EMAIL = {"channels": {"email": {"subject": "Hi", "text": "Hello {{ recipient.id }}"}}}
HOOK = {"channels": {"webhook": {"body": {"hello": "{{ recipient.id }}"}}}}


@dataclass
class FakeClock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    try:
        yield exporter
    finally:
        tracing.disable()


@pytest.fixture
async def traced(
    exported: InMemorySpanExporter, backend: tuple[str, str]
) -> AsyncIterator[Harness]:
    async with running(make_settings(*backend)) as harness:
        yield harness


def _named(spans: list[ReadableSpan], name: str, **attributes: Any) -> list[ReadableSpan]:
    return [
        s
        for s in spans
        if s.name == name
        and all((s.attributes or {}).get(f"clarion.{k}") == v for k, v in attributes.items())
    ]


def _ids(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


def _links_to(span: ReadableSpan, target: ReadableSpan) -> bool:
    return any((link.context.trace_id, link.context.span_id) == _ids(target) for link in span.links)


def _request_of(spans: list[ReadableSpan], nid: str) -> tuple[ReadableSpan, ReadableSpan]:
    """The API request span that accepted ``nid``, and its ``intake.accept`` span."""
    [accept] = _named(spans, "intake.accept", notification_id=nid)
    assert accept.parent is not None
    [server] = [
        s for s in spans if s.kind == SpanKind.SERVER and _ids(s)[1] == accept.parent.span_id
    ]
    return server, accept


def _attempts(spans: list[ReadableSpan], nid: str) -> list[ReadableSpan]:
    return _named(spans, "delivery.attempt", notification_id=nid)


def assert_joined(spans: list[ReadableSpan], nid: str, parent: ReadableSpan, attempts: int) -> None:
    """Every attempt at ``nid``'s deliveries (at least ``attempts``) is a child of
    ``parent``, in its trace, and a planner batch linked to ``parent`` planned it."""
    found = _attempts(spans, nid)
    assert len(found) >= attempts, [s.attributes for s in found]
    for attempt in found:
        assert attempt.parent is not None
        assert _ids(attempt)[0] == _ids(parent)[0]
        assert attempt.parent.span_id == _ids(parent)[1]
    assert any(_links_to(s, parent) for s in _named(spans, "planner.batch"))


async def _completed(app: Harness, nid: str) -> bool:
    note = await app.notification(nid)
    return bool(note["status"] == "completed")


async def _send(app: Harness, body: dict[str, Any]) -> str:
    response = await app.send(body)
    assert response.status_code == 202, response.text
    nid: str = response.json()["id"]
    return nid


async def test_a_scheduled_send_joins_the_trace_of_its_request(
    traced: Harness, exported: InMemorySpanExporter
) -> None:
    app = traced
    await app.put_template("hello", EMAIL)
    await app.put_recipient("u1", email="u1@example.com")
    clock = FakeClock(datetime.now(UTC))
    app.ctx.clock = clock
    due = clock.now + timedelta(days=30)
    nid = await _send(
        app, {"template": "hello", "to": {"recipient_id": "u1"}, "send_at": due.isoformat()}
    )
    clock.now = due + timedelta(seconds=1)  # the relay publishes it from the outbox
    await app.until(lambda: _completed(app, nid))
    spans = list(exported.get_finished_spans())
    server, accept = _request_of(spans, nid)
    assert server.name == "POST /v1/notifications"
    assert_joined(spans, nid, accept, attempts=1)


def _lose_the_broker(broker_url: str) -> None:
    """What a broker restart without persistence does: every message is gone (the
    embedded broker's go with its process)."""
    if broker_url.startswith("redis"):
        with redis.Redis.from_url(broker_url) as client:
            client.flushdb()


async def test_after_a_restart_with_the_messages_lost_the_work_joins_its_trace(
    exported: InMemorySpanExporter, backend: tuple[str, str]
) -> None:
    settings = make_settings(*backend, sweep_after=1.0)
    # Accepted, its plan message lost: only the outbox row is left (the relay's case).
    async with running(settings, Roles(api=True)) as app:
        await app.put_template("hello", EMAIL)
        await app.put_recipient("u1", email="u1@example.com")
        unplanned = await _send(app, {"template": "hello", "to": {"recipient_id": "u1"}})
    _lose_the_broker(settings.broker_url)
    # Planned, its deliveries' messages lost: queued rows are left (embedded recovery's
    # case, and the sweeper's with Redis).
    async with running(settings, Roles(api=True, planner=True)) as app:
        planned = await _send(app, {"template": "hello", "to": {"recipient_id": "u1"}})

        async def stored() -> bool:
            return bool((await app.notification(planned))["deliveries"])

        await app.until(stored)
    _lose_the_broker(settings.broker_url)
    async with running(settings) as app:
        await app.until(lambda: _completed(app, unplanned))
        await app.until(lambda: _completed(app, planned))
        await app.drain()
    spans = list(exported.get_finished_spans())
    for nid in (unplanned, planned):
        _, accept = _request_of(spans, nid)
        assert_joined(spans, nid, accept, attempts=1)


class Flaky:
    """A webhook receiver that fails until fixed."""

    def __init__(self) -> None:
        self.healthy = False

    def __call__(self, request: Received) -> int:
        return 200 if self.healthy else 503


async def test_retries_and_a_dead_letter_replay_join_the_trace_of_the_request(
    traced: Harness, exported: InMemorySpanExporter, sink: WebhookSink
) -> None:
    app = traced
    receiver = Flaky()
    sink.respond = receiver
    await app.put_template("hook", HOOK)
    await app.put_recipient("u1", webhook_url=f"{sink.url}/u1")
    nid = await _send(app, {"template": "hook", "to": {"recipient_id": "u1"}})
    await app.drain()
    [dead] = (await app.notification(nid))["deliveries"]
    assert dead["status"] == "dead"
    spans = list(exported.get_finished_spans())
    _, accept = _request_of(spans, nid)
    # Every retry (on the broker's delayed set) continues the trace.
    assert_joined(spans, nid, accept, attempts=app.settings.max_attempts)

    receiver.healthy = True
    response = await app.client.post(f"/v1/dead-letters/{dead['id']}/replay", headers=app.auth)
    assert response.status_code == 202, response.text
    await app.until(lambda: _completed(app, nid))
    spans = list(exported.get_finished_spans())
    assert_joined(spans, nid, accept, attempts=app.settings.max_attempts + 1)
    # The replay starts again at the first attempt, in the same trace.
    firsts = [s for s in _attempts(spans, nid) if (s.attributes or {})["clarion.attempt"] == 1]
    assert len(firsts) == 2


async def test_a_recurring_run_is_a_trace_linked_to_its_schedule(
    traced: Harness, exported: InMemorySpanExporter
) -> None:
    app = traced
    await app.put_template("hello", EMAIL)
    await app.put_recipient("u1", email="u1@example.com", timezone="Europe/Paris")
    clock = FakeClock(datetime(2027, 6, 1, 6, 0, tzinfo=UTC))
    app.ctx.clock = clock
    body = {"template": "hello", "to": {"recipient_id": "u1"}}
    schedule = {"cron": "0 9 * * *", "timezone": "Europe/Paris", "notification": body}
    response = await app.client.put("/v1/schedules/morning", json=schedule, headers=app.auth)
    assert response.status_code == 200, response.text
    clock.now = datetime(2027, 6, 1, 7, 0, tzinfo=UTC)  # 09:00 in Paris: the loop fires it

    async def fired() -> bool:
        page = await app.client.get("/v1/schedules/morning/runs", headers=app.auth)
        done = [r for r in page.json()["data"] if r["status"] == "completed"]
        return bool(done) and await _completed(app, done[0]["notification_id"])

    await app.until(fired)
    page = await app.client.get("/v1/schedules/morning/runs", headers=app.auth)
    nid = page.json()["data"][0]["notification_id"]
    spans = list(exported.get_finished_spans())
    [put] = [s for s in spans if s.name == "PUT /v1/schedules/{name}"]
    [run] = _named(spans, "schedule.run", schedule="morning")
    assert run.parent is None  # a trace of its own, linked to the request that stored it
    assert _links_to(run, put)
    assert_joined(spans, nid, run, attempts=1)


async def test_a_digest_is_a_trace_linked_to_what_it_holds(
    traced: Harness, exported: InMemorySpanExporter
) -> None:
    app = traced
    response = await app.client.put(
        "/v1/categories/updates", json={"digest": {"window": "1h"}}, headers=app.auth
    )
    assert response.status_code == 200, response.text
    digest = {"subject": "{{ count }} updates", "text": "{% for i in items %}{{ i.n }}{% endfor %}"}
    template = {
        "category": "updates",
        "channels": {"email": {"subject": "{{ n }}", "text": "{{ n }}", "digest": digest}},
    }
    await app.put_template("news", template)
    await app.put_recipient("u1", email="u1@example.com")
    held = [
        await _send(app, {"template": "news", "to": {"recipient_id": "u1"}, "data": {"n": n}})
        for n in range(2)
    ]
    await app.drain()
    assert await close_after(app, timedelta(hours=2)) == 1
    [made] = _named(list(exported.get_finished_spans()), "digest.close")
    attributes = made.attributes or {}
    nid = str(attributes["clarion.notification_id"])
    assert attributes["clarion.digest.items"] == 2
    await app.until(lambda: _completed(app, nid))
    spans = list(exported.get_finished_spans())
    assert made.parent is None
    for item in held:
        _, accept = _request_of(spans, item)
        assert _links_to(made, accept)
    assert_joined(spans, nid, made, attempts=1)


async def test_a_fallback_channel_stays_in_the_trace(
    exported: InMemorySpanExporter, backend: tuple[str, str]
) -> None:
    settings = make_settings(*backend, breaker_min_calls=3, breaker_cooldown=600.0)
    async with running(settings) as app:
        response = await app.client.put(
            "/v1/providers/push-main",
            json={"channel": "push", "kind": "sandbox", "config": {}},
            headers=app.auth,
        )
        assert response.status_code == 200, response.text
        template = {
            "category": "security",
            "channels": {"push": {"title": "Sign-in", "body": "New"}, "sms": {"text": "New"}},
            "fallbacks": {"push": "sms"},
        }
        await app.put_template("signin", template)
        await app.put_recipient(
            "u1", phone="+14155550100", push_tokens=[{"platform": "fcm", "token": "tok-1"}]
        )
        key = BreakerKey(app.tenant_id, "push-main")
        for _ in range(3):
            await app.ctx.resilience.breakers.record(key, False)
        body = {"template": "signin", "to": {"recipient_id": "u1"}, "channels": ["push"]}
        nid = await _send(app, body)
        await app.drain()
        by_channel = {d["channel"]: d for d in (await app.notification(nid))["deliveries"]}
        assert by_channel["sms"]["status"] == "sent"
    spans = list(exported.get_finished_spans())
    _, accept = _request_of(spans, nid)
    assert_joined(spans, nid, accept, attempts=2)
    sms = _named(spans, "delivery.attempt", notification_id=nid, channel="sms")
    assert len(sms) == 1
