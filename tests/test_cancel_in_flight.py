"""Cancelling a broadcast while it is being sent: nothing goes out after the answer but
the calls already under way, and the answer says how many those are."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from clarion.store.tables import deliveries, delivery_events
from harness import Harness, make_settings, running
from webhook_sink import WebhookSink

TEMPLATE = {"channels": {"webhook": {"body": {"hello": "{{ recipient.id }}"}}}}
RECIPIENTS = 20_000
# A small pool, so that the bound on what may still go out is tight. One tenant may use
# half of it; the rest of what the worker takes waits in its queues (read ahead).
CONCURRENCY = 8

pytestmark = pytest.mark.slow


@pytest.fixture
async def small_pool(backend: tuple[str, str]) -> AsyncIterator[Harness]:
    # Receivers answer within the webhook timeout, however slowly: every call is a send.
    settings = make_settings(*backend, worker_concurrency=CONCURRENCY, webhook_timeout=10.0)
    async with running(settings) as harness:
        yield harness


async def _broadcast(app: Harness, sink: WebhookSink) -> str:
    ids = [f"r{i:05d}" for i in range(RECIPIENTS)]
    for start in range(0, RECIPIENTS, 1000):
        people = [{"id": rid, "webhook_url": f"{sink.url}/{rid}"} for rid in ids[start:][:1000]]
        response = await app.client.post(
            "/v1/recipients/batch", json={"recipients": people}, headers=app.auth
        )
        assert response.status_code == 200, response.text
    for start in range(0, RECIPIENTS, 10_000):
        response = await app.client.put(
            "/v1/topics/all/subscribers",
            json={"recipient_ids": ids[start : start + 10_000]},
            headers=app.auth,
        )
        assert response.status_code == 200, response.text
    await app.put_template("hook", TEMPLATE)
    sent = await app.send({"template": "hook", "to": {"topic": "all"}})
    assert sent.status_code == 202, sent.text
    nid: str = sent.json()["id"]
    return nid


async def _planned(app: Harness, nid: str) -> bool:
    return sum((await app.notification(nid))["totals"].values()) == RECIPIENTS


async def _timeline(app: Harness, delivery_id: str) -> list[str]:
    response = await app.client.get(f"/v1/deliveries/{delivery_id}", headers=app.auth)
    assert response.status_code == 200, response.text
    return [event["type"] for event in response.json()["events"]]


async def test_cancel_reaches_what_the_workers_hold(small_pool: Harness) -> None:
    app = small_pool
    # Slow receivers: the broadcast is still going out when it is cancelled.
    sink = WebhookSink(delay=0.02, keep_bodies=False)
    await sink.start()
    try:
        nid = await _broadcast(app, sink)
        await app.until(lambda: _planned(app, nid), timeout=90)
        # A call is held by its receiver at the moment of the cancellation: something is in
        # flight.
        # Held well inside the webhook timeout (10 s), and long enough for the cancellation
        # to answer while it is held on a slow machine.
        sink.delay = 8.0
        await sink.wait_for(sink.arrived + 1, timeout=30, answered=False)
        response = await app.client.delete(f"/v1/notifications/{nid}", headers=app.auth)
        arrived_at_answer = sink.arrived
        sink.delay = 0.0
        assert response.status_code == 202, response.text
        body: dict[str, Any] = response.json()
        in_flight = body["cancel"]["in_flight"]
        assert 1 <= in_flight <= app.settings.worker_concurrency  # one worker process
        assert body["status"] == "cancelling"
        assert body["totals"].get("sending", 0) == in_flight
        assert body["cancel"]["cancelled"] == body["totals"]["cancelled"]
        assert body["cancel"]["cancelled"] >= RECIPIENTS - sink.arrived - in_flight

        await app.drain(timeout=90)
        # Only the calls under way when it answered went out after the answer.
        assert sink.arrived - arrived_at_answer <= in_flight
        done = await app.notification(nid)
        assert done["status"] == "cancelled"
        assert done["cancel"] == {"cancelled": done["totals"]["cancelled"], "in_flight": 0}
        assert set(done["totals"]) == {"sent", "cancelled"}
        assert done["totals"]["sent"] == sink.arrived  # each call once, each one counted
    finally:
        await sink.close()

    # No timeline shows `sent` after `cancelled`: the store, for every delivery...
    d, e = deliveries, delivery_events
    async with app.ctx.engine.connect() as conn:
        sent = set((await conn.execute(select(d.c.id).where(d.c.sent_at.is_not(None)))).scalars())
        cancelled = set(
            (await conn.execute(select(e.c.delivery_id).where(e.c.status == "cancelled")))
            .scalars()
            .all()
        )
    assert len(sent) == done["totals"]["sent"]
    assert not sent & cancelled
    # ... and the API, for each one sent and some cancelled.
    for delivery_id in sorted(sent):
        assert "cancelled" not in await _timeline(app, delivery_id)
    for delivery_id in sorted(cancelled)[:: len(cancelled) // 20]:
        events = await _timeline(app, delivery_id)
        assert events[-1] == "cancelled"
        assert "sent" not in events
