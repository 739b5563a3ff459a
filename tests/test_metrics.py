"""Prometheus metrics on every backend: the catalogue's series move with the work, the
exposition passes ``promtool check metrics``, and the operations port answers its probes."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from clarion.api.ops_server import create_ops_app
from clarion.config import Settings
from clarion.domain.ids import new_id
from clarion.observability import metrics
from clarion.observability.metrics import accepted_at
from clarion.pipeline import scrape as scrape_module
from clarion.pipeline.runtime import Roles
from clarion.pipeline.scrape import DEAD_LETTER_CAP, Sources
from clarion.process import describe, sources_for
from clarion.store.dead_letters import backlog_query
from harness import Harness
from plan_kit import assert_reads_dead_events, plan_of
from servers import _missing
from webhook_sink import WebhookSink

TEMPLATE = {"channels": {"email": {"subject": "Hi {{ n }}", "text": "Number {{ n }}"}}}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def scrape(client: httpx.AsyncClient) -> tuple[str, Samples]:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text, parse(response.text)


def test_accepted_at_reads_the_time_of_an_id() -> None:
    nid = new_id("ntf")
    moment = accepted_at(nid)
    assert moment is not None
    assert abs(moment - time.time()) < 5
    for hostile in ("", "ntf_", "ntf_short", "ntf_" + "!" * 26, "no-underscore" * 3):
        assert accepted_at(hostile) is None


async def test_metrics_follow_a_send(app: Harness) -> None:
    await app.put_template("hello", TEMPLATE)
    await app.put_recipient("u-1", email="u1@example.com")
    _, before = await scrape(app.client)
    for n in range(3):
        response = await app.send(
            {"template": "hello", "to": {"recipient_id": "u-1"}, "data": {"n": n}}
        )
        assert response.status_code == 202, response.text
    refused = await app.send({"template": "missing", "to": {"recipient_id": "u-1"}})
    assert refused.status_code == 422
    invalid = await app.send({"template": "hello"})
    assert invalid.status_code == 422
    await app.drain()
    _, after = await scrape(app.client)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("clarion_notifications_accepted_total") == 3
    assert delta("clarion_notifications_refused_total", reason="unknown_template") == 1
    assert delta("clarion_notifications_refused_total", reason="validation_error") == 1
    assert delta("clarion_deliveries_total", channel="email", status="queued", reason="none") == 3
    sent = {"channel": "email", "provider": "sandbox", "status": "sent"}
    assert delta("clarion_deliveries_total", **sent) == 3
    lane = {"channel": "email", "lane": "normal"}
    assert delta("clarion_delivery_latency_seconds_count", **lane) == 3
    call = {"channel": "email", "provider": "sandbox", "outcome": "ok"}
    assert delta("clarion_provider_call_seconds_count", **call) == 3
    assert delta("clarion_planner_batch_size_sum") >= 3
    # Four requests one after another reached the intake (an unknown template is found by
    # the commit's insert; an invalid body is refused before): a commit of one each.
    assert delta("clarion_intake_commit_size_sum") == 4
    assert delta("clarion_intake_commit_seconds_count") == 4
    # Read at scrape time: every stream, the outbox, the pools, live connections.
    for stream in ("plan", "send.email.normal", "send.sms.critical", "events"):
        key = ("clarion_stream_lag", frozenset({("stream", stream), ("group", "clarion")}))
        assert after[key] == 0
    assert total(after, "clarion_stream_length", stream="send.email.normal") == 0
    assert ("clarion_outbox_backlog", frozenset()) in after
    assert ("clarion_inbox_connections", frozenset()) in after
    assert total(after, "clarion_db_pool_connections") >= 1
    assert total(after, "clarion_scrape_errors") == 0
    # Nothing identifying a recipient or a notification is a label.
    text, _ = await scrape(app.client)
    assert "u-1" not in text
    assert "u1@example.com" not in text
    assert "ntf_" not in text


async def test_exposition_passes_promtool(app: Harness) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        _missing("promtool is not installed (Debian: apt-get install prometheus)")
    await app.put_template("hello", TEMPLATE)
    await app.put_recipient("u-1", email="u1@example.com")
    response = await app.send({"template": "hello", "to": {"recipient_id": "u-1"}, "data": {}})
    assert response.status_code == 202
    await app.drain()
    text, _ = await scrape(app.client)
    checked = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == checked.stderr.strip() == ""


async def test_operations_port_answers_probes_and_metrics(app: Harness) -> None:
    ops = create_ops_app(app.ctx, Sources(app.ctx, outbox=False))
    transport = httpx.ASGITransport(app=ops)
    async with httpx.AsyncClient(transport=transport, base_url="http://ops") as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        checks = ready.json()["checks"]
        assert {"database", "broker"} <= set(checks)
        assert set(checks.values()) == {"ok"}
        _, samples = await scrape(client)
        assert total(samples, "clarion_stream_lag", stream="plan") == 0
        assert ("clarion_outbox_backlog", frozenset()) not in samples
        missing = await client.get("/v1/notifications")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"


async def test_tenant_label_only_when_asked(lite: Harness) -> None:
    await lite.put_template("hello", TEMPLATE)
    await lite.put_recipient("u-1", email="u1@example.com")
    metrics.configure(tenant_label=True)
    try:
        body = {"template": "hello", "to": {"recipient_id": "u-1"}, "data": {"n": 1}}
        response = await lite.send(body)
        assert response.status_code == 202
        await lite.drain()
        _, samples = await scrape(lite.client)
    finally:
        metrics.configure(tenant_label=False)
    tenant = lite.tenant_id
    assert total(samples, "clarion_notifications_accepted_total", tenant=tenant) == 1
    sent = total(samples, "clarion_deliveries_total", tenant=tenant, status="sent")
    assert sent == 1
    _, plain = await scrape(lite.client)
    assert not any(("tenant", tenant) in labels for _, labels in plain)


def registry_samples() -> Samples:
    """The process's registry as /metrics would render it, without the scrape-time part."""
    return parse(generate_latest(metrics.METRICS.registry).decode())


async def test_metrics_off_counts_nothing_and_answers_404(app: Harness) -> None:
    await app.put_template("hello", TEMPLATE)
    await app.put_recipient("u-1", email="u1@example.com")
    before = registry_samples()
    metrics.configure(tenant_label=False, enabled=False)
    try:
        for n in range(2):
            body = {"template": "hello", "to": {"recipient_id": "u-1"}, "data": {"n": n}}
            response = await app.send(body)
            assert response.status_code == 202, response.text
        refused = await app.send({"template": "missing", "to": {"recipient_id": "u-1"}})
        assert refused.status_code == 422
        await app.drain()
        after = registry_samples()
        off = await app.client.get("/metrics")
        ops = create_ops_app(app.ctx, Sources(app.ctx))
        transport = httpx.ASGITransport(app=ops)
        async with httpx.AsyncClient(transport=transport, base_url="http://ops") as client:
            ops_off = await client.get("/metrics")
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            assert (await client.get("/readyz")).status_code == 200
    finally:
        metrics.configure(tenant_label=False, enabled=True)
    assert after == before
    for answer in (off, ops_off):
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "not_found"
        assert "CLARION_METRICS=off" in answer.json()["error"]["message"]
    # Turned back on: counted as before.
    body = {"template": "hello", "to": {"recipient_id": "u-1"}, "data": {"n": 9}}
    response = await app.send(body)
    assert response.status_code == 202
    await app.drain()
    _, on = await scrape(app.client)
    sent = {"channel": "email", "provider": "sandbox", "status": "sent"}
    assert (
        total(on, "clarion_deliveries_total", **sent)
        == total(before, "clarion_deliveries_total", **sent) + 1
    )
    assert total(on, "clarion_notifications_accepted_total") == (
        total(before, "clarion_notifications_accepted_total") + 1
    )


def test_metrics_setting_is_on_or_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().metrics == "on"
    monkeypatch.setenv("CLARION_METRICS", "off")
    assert Settings().metrics == "off"
    monkeypatch.setenv("CLARION_METRICS", "maybe")
    with pytest.raises(ValidationError):
        Settings()


HOOK = {"channels": {"webhook": {"body": {"hello": "{{ recipient.id }}"}}}}


async def _dead_letters(app: Harness, sink: WebhookSink, rids: list[str]) -> list[str]:
    """Deliveries to ``rids`` that died (the sink answers 500 to every attempt)."""
    sink.respond = lambda request: 500
    await app.put_template("hook", HOOK)
    for rid in rids:
        await app.put_recipient(rid, webhook_url=f"{sink.url}/{rid}")
    response = await app.send({"template": "hook", "to": {"recipient_ids": rids}})
    assert response.status_code == 202, response.text
    await app.drain()
    deliveries = (await app.notification(response.json()["id"]))["deliveries"]
    assert {d["status"] for d in deliveries} == {"dead"}
    return [d["id"] for d in deliveries]


async def test_dead_letter_backlog_is_read_at_scrape_time(
    app: Harness, sink: WebhookSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, empty = await scrape(app.client)
    assert total(empty, "clarion_dead_letter_backlog", channel="webhook") == 0
    assert total(empty, "clarion_dead_letter_backlog", channel="email") == 0
    assert total(empty, "clarion_dead_letter_backlog_capped") == 0
    dead = await _dead_letters(app, sink, ["a", "b"])
    _, samples = await scrape(app.client)
    assert total(samples, "clarion_dead_letter_backlog", channel="webhook") == 2
    assert total(samples, "clarion_dead_letter_backlog", channel="email") == 0
    assert total(samples, "clarion_scrape_errors", part="dead_letters") == 0
    # Past the cap: one more than the cap is counted and the gauge says it was capped.
    monkeypatch.setattr(scrape_module, "DEAD_LETTER_CAP", 1)
    _, capped = await scrape(app.client)
    assert total(capped, "clarion_dead_letter_backlog", channel="webhook") == 2
    assert total(capped, "clarion_dead_letter_backlog_capped") == 1
    monkeypatch.undo()
    # A replayed dead letter leaves the backlog.
    sink.respond = lambda request: 200
    replayed = await app.client.post(f"/v1/dead-letters/{dead[0]}/replay", headers=app.auth)
    assert replayed.status_code in (200, 202), replayed.text
    await app.drain()
    _, after = await scrape(app.client)
    assert total(after, "clarion_dead_letter_backlog", channel="webhook") == 1
    # Only the processes that report shared state read it.
    ops = create_ops_app(app.ctx, Sources(app.ctx, dead_letters=False))
    transport = httpx.ASGITransport(app=ops)
    async with httpx.AsyncClient(transport=transport, base_url="http://ops") as client:
        _, without = await scrape(client)
    assert not any(name.startswith("clarion_dead_letter_backlog") for name, _ in without)


async def test_dead_letter_backlog_by_tenant_only_when_asked(
    lite: Harness, sink: WebhookSink
) -> None:
    await _dead_letters(lite, sink, ["a"])
    metrics.configure(tenant_label=True)
    try:
        _, samples = await scrape(lite.client)
    finally:
        metrics.configure(tenant_label=False)
    tenant = lite.tenant_id
    assert total(samples, "clarion_dead_letter_backlog", channel="webhook", tenant=tenant) == 1
    _, plain = await scrape(lite.client)
    assert not any(("tenant", tenant) in labels for _, labels in plain)


async def test_dead_letter_backlog_reads_the_events_status_index(app: Harness) -> None:
    lateral = app.ctx.engine.dialect.name == "postgresql"
    for by_tenant in (False, True):
        plan = await plan_of(app, backlog_query(by_tenant, DEAD_LETTER_CAP, lateral=lateral))
        # Tenant by tenant (PostgreSQL: a LATERAL walk each; SQLite: the ids as an IN list),
        # each a range of the events' index, with no sort before the cap.
        assert_reads_dead_events(plan)
        assert "TEMP B-TREE FOR ORDER BY" not in plan, plan
        assert "Sort Key: e" not in plan, plan
        assert "tenants" in plan, plan


def test_ready_line_and_sources_follow_the_setting(lite: Harness) -> None:
    worker = Roles(planner=True, channels=("email",))
    on = Settings(metrics_port=9100)
    assert "metrics and probes on http://127.0.0.1:9100/metrics" in describe(on, worker)
    off = Settings(metrics_port=9100, metrics="off")
    line = describe(off, worker)
    assert "probes on http://127.0.0.1:9100/healthz, /readyz (metrics off)" in line
    assert "/metrics" not in line
    # Shared state (the outbox, the dead letters) is read by schedulers only.
    assert not sources_for(lite.ctx, worker).dead_letters
    assert not sources_for(lite.ctx, Roles(api=True)).dead_letters
    assert sources_for(lite.ctx, Roles(scheduler=True)).dead_letters
    assert sources_for(lite.ctx, Roles.everything()).dead_letters


async def test_no_label_is_empty(app: Harness, sink: WebhookSink) -> None:
    """Planned, sent, retried, dead and suppressed deliveries: every label has a value, and
    a retry's reason is the cause of the failed attempt."""
    await app.put_template("hello", TEMPLATE)
    await app.put_recipient("u-1", email="u1@example.com")
    await app.put_recipient("nobody")
    response = await app.send({"template": "hello", "to": {"recipient_ids": ["u-1", "nobody"]}})
    assert response.status_code == 202, response.text
    await _dead_letters(app, sink, ["a"])
    text, samples = await scrape(app.client)
    empty = [line for line in text.splitlines() if '=""' in line]
    assert empty == []
    assert all(value for _, labels in samples for _, value in labels)
    retries = {
        dict(labels)["reason"]: value
        for (name, labels), value in samples.items()
        if name == "clarion_delivery_retries_total"
    }
    assert retries
    assert "none" not in retries
    assert total(samples, "clarion_dead_letters_total", channel="webhook") >= 1
    assert total(samples, "clarion_deliveries_total", provider="none", status="queued") >= 1


async def test_a_stall_of_the_event_loop_shows_as_its_lag(lite: Harness) -> None:
    """``clarion_event_loop_lag_seconds``: a timer the loop ran late by a blocking call
    is counted in the buckets at or above the stall."""

    async def lags() -> tuple[float, float]:
        _, samples = await scrape(lite.client)
        count = total(samples, "clarion_event_loop_lag_seconds_count")
        fast = total(samples, "clarion_event_loop_lag_seconds_bucket", le="0.1")
        return count, count - fast

    async def sampled(after: float) -> bool:
        return (await lags())[0] > after

    await lite.until(lambda: sampled(0))
    count, slow = await lags()
    # The stall measured: the loop blocked on purpose, longer than the sampling interval,
    # so a sample falls due within it and runs at least 0.2 s late.
    time.sleep(0.7)  # noqa: ASYNC251
    await lite.until(lambda: sampled(count))
    assert (await lags())[1] >= slow + 1
