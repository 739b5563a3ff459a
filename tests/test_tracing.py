"""OpenTelemetry traces: from the API request through intake, the broker, the planner and
the worker to the provider's call, with batch spans linked to their items."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest

from clarion.domain.delivery import Delivery, decode_delivery
from clarion.observability import tracing
from clarion.pipeline import status_events
from clarion.pipeline.messages import plan_payload
from harness import Harness, make_settings, running
from webhook_sink import WebhookSink

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind

EMAIL = {"channels": {"email": {"subject": "Hi", "text": "Hello {{ recipient.id }}"}}}
CALLER_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN = 0x00F067AA0BA902B7


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


def _named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def _links_to(span: ReadableSpan, target: ReadableSpan) -> bool:
    assert target.context is not None
    return any(
        link.context.trace_id == target.context.trace_id
        and link.context.span_id == target.context.span_id
        for link in span.links
    )


async def test_a_trace_follows_a_notification_to_the_provider(
    traced: Harness, exported: InMemorySpanExporter
) -> None:
    app = traced
    await app.put_template("hello", EMAIL)
    for rid in ("u1", "u2"):
        await app.put_recipient(rid, email=f"{rid}@example.com")
    exported.clear()
    caller = f"00-{CALLER_TRACE:032x}-{CALLER_SPAN:016x}-01"
    response = await app.send(
        {"template": "hello", "to": {"recipient_ids": ["u1", "u2"]}}, {"traceparent": caller}
    )
    assert response.status_code == 202, response.text
    nid = response.json()["id"]
    await app.drain()
    await app.until(
        lambda: _done(app, nid),
    )
    spans = list(exported.get_finished_spans())

    [server] = [s for s in spans if s.kind == SpanKind.SERVER and s.name.startswith("POST")]
    assert server.context is not None
    assert server.parent is not None
    assert server.context.trace_id == CALLER_TRACE  # the caller's trace continues
    assert server.parent.span_id == CALLER_SPAN
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 202
    assert server.name == "POST /v1/notifications"

    [accept] = _named(spans, "intake.accept")
    assert accept.parent is not None
    assert accept.parent.span_id == server.context.span_id
    assert accept.attributes is not None
    assert accept.attributes["clarion.notification_id"] == nid

    # The planner's batch is a span of its own, linked to the notification's context.
    planned = [s for s in _named(spans, "planner.batch") if _links_to(s, accept)]
    assert len(planned) == 1
    assert planned[0].context is not None
    assert planned[0].context.trace_id != CALLER_TRACE
    assert planned[0].parent is None

    # Each delivery's attempt continues the trace, under intake.accept, through the broker.
    attempts = _named(spans, "delivery.attempt")
    assert len(attempts) == 2
    assert accept.context is not None
    delivery_ids = set()
    for attempt in attempts:
        assert attempt.context is not None
        assert attempt.parent is not None
        assert attempt.context.trace_id == CALLER_TRACE
        assert attempt.parent.span_id == accept.context.span_id
        assert attempt.attributes is not None
        assert attempt.attributes["clarion.notification_id"] == nid
        delivery_ids.add(attempt.attributes["clarion.delivery_id"])
    assert len(delivery_ids) == 2

    # The provider's call within each attempt.
    calls = _named(spans, "provider.send")
    assert len(calls) == 2
    for call in calls:
        assert call.kind == SpanKind.CLIENT
        assert call.attributes is not None
        assert call.attributes["clarion.delivery_id"] in delivery_ids
        parent = next(a for a in attempts if a.context.span_id == call.parent.span_id)  # type: ignore[union-attr]
        assert parent.attributes is not None
        assert parent.attributes["clarion.delivery_id"] == call.attributes["clarion.delivery_id"]

    # The worker's takes and the status writes: batch spans linked to their items.
    takes = _named(spans, "worker.take")
    assert sum(1 for t in takes if _links_to(t, accept)) >= 1
    assert sum(len(t.links) for t in takes if _links_to(t, accept)) == 2
    writes = _named(spans, "status.write")
    for attempt in attempts:
        assert any(_links_to(w, attempt) for w in writes)
    for batch in [*planned, *takes, *writes]:
        assert batch.parent is None  # never a child of millions of items' traces
        assert batch.attributes is not None
        assert batch.attributes["clarion.batch.size"] >= 1


async def _done(app: Harness, nid: str) -> bool:
    note = await app.notification(nid)
    return bool(note["status"] in ("completed", "partial", "failed"))


def test_off_costs_nothing() -> None:
    assert not tracing.ON
    assert tracing.configure({}) is False
    assert not tracing.ON
    assert tracing.traceparent() is None
    assert tracing.batch("x", [], 0) is tracing._NOOP
    assert tracing.planning([], lambda message: []) is tracing._NOOP
    assert tracing.taking("email", []) is tracing._NOOP
    assert tracing.writing([]) is tracing._NOOP
    assert tracing.carried("ntf_1") is None
    delivery = _delivery()
    assert tracing.attempt(delivery) is tracing._NOOP
    # Off, the wire has no trace field at all.
    assert "traceparent" not in msgspec.to_builtins(delivery)
    assert "traceparent" not in plan_payload("ntf_1", "ten_1")


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_SERVICE_NAME": "clarion"}, False),
    ],
)
def test_enabled_only_by_the_standard_variables(env: dict[str, str], wanted: bool) -> None:
    assert tracing.wanted(env) is wanted


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_configure_builds_the_exporters_asked_for(protocol: str) -> None:
    env = {
        "OTEL_TRACES_EXPORTER": "otlp,console",
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
    }
    assert tracing.configure(env) is True
    try:
        assert tracing.ON
    finally:
        tracing.disable()
    assert not tracing.ON


def test_without_the_extra_tracing_stays_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def missing(_env: object) -> None:
        raise ImportError("No module named 'opentelemetry'")

    monkeypatch.setattr(tracing, "_provider_from", missing)
    assert tracing.configure({"OTEL_TRACES_EXPORTER": "otlp"}) is False
    assert not tracing.ON
    assert "clarion[otel]" in caplog.text


def _delivery(**changes: Any) -> Delivery:
    base: dict[str, Any] = {
        "id": "dlv_1",
        "tenant": "ten_1",
        "notification": "ntf_1",
        "recipient": "u1",
        "channel": "email",
        "provider": None,
        "priority": "normal",
        "to": "u1@example.com",
        "content": {"subject": "s"},
        "attempt": 1,
    }
    return Delivery(**{**base, **changes})


def test_the_traceparent_is_an_optional_field_on_the_wire() -> None:
    trace = f"00-{CALLER_TRACE:032x}-{CALLER_SPAN:016x}-01"
    carried = _delivery(trace=trace)
    assert msgspec.to_builtins(carried)["traceparent"] == trace
    assert decode_delivery(msgspec.to_builtins(carried)) == carried
    # Older messages have none; a malformed one is ignored, never a reason to drop work.
    plain = msgspec.to_builtins(_delivery())
    assert decode_delivery(plain).trace is None
    for junk in (42, "nonsense", None, ["x"]):
        assert decode_delivery({**plain, "traceparent": junk}).trace is None
    assert plan_payload("ntf_1", "ten_1", trace)["traceparent"] == trace


HOOK_TEMPLATE = {"channels": {"webhook": {"body": {"hello": "{{ recipient.id }}"}}}}
SECRET_KEY = base64.b64encode(b"k" * 32).decode()


def _parse_traceparent(value: str) -> tuple[int, int]:
    version, trace_id, span_id, flags = value.split("-")
    assert version == "00"
    assert flags == "01"
    return int(trace_id, 16), int(span_id, 16)


async def _send_to_webhook(app: Harness, sink: WebhookSink) -> str:
    await app.put_template("hook", HOOK_TEMPLATE)
    await app.put_recipient("u1", webhook_url=f"{sink.url}/u1")
    response = await app.client.put(
        "/v1/webhooks/main",
        json={"url": f"{sink.url}/events", "events": ["delivery.sent"]},
        headers=app.auth,
    )
    assert response.status_code == 200, response.text
    response = await app.send({"template": "hook", "to": {"recipient_id": "u1"}})
    assert response.status_code == 202, response.text
    await app.drain()
    nid: str = response.json()["id"]
    return nid


@pytest.fixture
async def traced_hooks(
    exported: InMemorySpanExporter, backend: tuple[str, str]
) -> AsyncIterator[Harness]:
    async with running(make_settings(*backend, secret_key=SECRET_KEY)) as harness:
        yield harness


async def test_outbound_webhooks_carry_the_traceparent(
    traced_hooks: Harness, exported: InMemorySpanExporter, sink: WebhookSink
) -> None:
    app = traced_hooks
    exported.clear()
    await _send_to_webhook(app, sink)
    spans = list(exported.get_finished_spans())
    [call] = [r for r in sink.received if r.path == "/u1"]
    [posted] = [r for r in sink.received if r.path == "/events"]

    # The provider's POST carries the provider.send span's context.
    [send] = _named(spans, "provider.send")
    assert send.context is not None
    assert _parse_traceparent(call.headers["traceparent"]) == (
        send.context.trace_id,
        send.context.span_id,
    )

    # The status event's POST: an event.post client span, a child of the attempt.
    [attempt] = _named(spans, "delivery.attempt")
    [post] = _named(spans, "event.post")
    assert post.kind == SpanKind.CLIENT
    assert post.context is not None
    assert attempt.context is not None
    assert post.parent is not None
    assert post.parent.span_id == attempt.context.span_id
    assert post.context.trace_id == attempt.context.trace_id
    assert post.attributes is not None
    event = json.loads(posted.body)
    assert post.attributes["clarion.event_id"] == event["id"]
    assert post.attributes["clarion.event_type"] == "delivery.sent"
    assert post.attributes["clarion.delivery_id"] == event["data"]["delivery_id"]
    assert post.attributes["clarion.webhook"] == "main"
    assert _parse_traceparent(posted.headers["traceparent"]) == (
        post.context.trace_id,
        post.context.span_id,
    )


async def test_outbound_webhooks_carry_no_traceparent_when_off(
    migrated_sqlite_url: str, sink: WebhookSink
) -> None:
    assert not tracing.ON
    settings = make_settings(migrated_sqlite_url, "embedded://", secret_key=SECRET_KEY)
    async with running(settings) as app:
        await _send_to_webhook(app, sink)
    paths = sorted(r.path for r in sink.received)
    assert paths == ["/events", "/u1"]
    for received in sink.received:
        assert "traceparent" not in received.headers


def test_event_messages_carry_a_traceparent_only_when_given() -> None:
    evt = {"id": "evt_1", "type": "delivery.sent", "data": {}}
    assert "traceparent" not in status_events.message("ten_1", evt)
    carried = f"00-{CALLER_TRACE:032x}-{CALLER_SPAN:016x}-01"
    assert status_events.message("ten_1", evt, carried)["traceparent"] == carried
    # A malformed one carried by a message starts a trace of its own.
    assert tracing._span_context("00-not-a-trace") is None


async def test_a_global_provider_adds_no_framework_span_to_a_request(
    monkeypatch: pytest.MonkeyPatch, backend: tuple[str, str]
) -> None:
    """An OpenTelemetry provider set for the whole process (an auto-instrumenting wrapper,
    say) gets no span of FastAPI's own per request: Clarion's request spans are its own,
    on its own provider (here off)."""
    from opentelemetry import trace

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    async with running(make_settings(*backend)) as app:
        await app.put_recipient("u", email="u@example.com")
        await app.put_template("welcome", EMAIL)
        sent = await app.send({"template": "welcome", "to": {"recipient_id": "u"}})
        assert sent.status_code == 202
        assert (await app.client.get("/v1/templates/welcome", headers=app.auth)).status_code == 200
    assert exporter.get_finished_spans() == ()


async def test_notifications_of_one_request_each_keep_the_trace(
    traced: Harness, exported: InMemorySpanExporter
) -> None:
    """A batch request's notifications share one plan message (the first and ``more``):
    the planner stamps every one of them with the trace, not only the first."""
    app = traced
    await app.put_template("hello", EMAIL)
    await app.put_recipient("u1", email="u1@example.com")
    exported.clear()
    caller = f"00-{CALLER_TRACE:032x}-{CALLER_SPAN:016x}-01"
    items = [{"template": "hello", "to": {"recipient_id": "u1"}} for _ in range(3)]
    response = await app.client.post(
        "/v1/notifications/batch",
        json={"notifications": items},
        headers={**app.auth, "traceparent": caller},
    )
    assert response.status_code == 202, response.text
    ids = [result["id"] for result in response.json()["results"]]
    assert len(ids) == 3
    await app.drain()
    for nid in ids:
        await app.until(lambda nid=nid: _done(app, nid))
    attempts = _named(list(exported.get_finished_spans()), "delivery.attempt")
    stamped = {}
    for attempt in attempts:
        assert attempt.attributes is not None
        assert attempt.context is not None
        stamped[attempt.attributes["clarion.notification_id"]] = attempt.context.trace_id
    assert stamped == dict.fromkeys(ids, CALLER_TRACE)
