"""A send's totals (how many of its deliveries, or workflow runs, are in each status): a
large send's are kept a while by the process that counted them, a small send's are counted
at every look, and a cancellation counts afresh (store/send_totals.py)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import update

from clarion.store import send_totals
from clarion.store.db import write_tx
from clarion.store.tables import deliveries, workflow_runs
from harness import HOOK_TEMPLATE, Harness, StillClock, planned_webhooks
from test_workflow_runs import put_workflow


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> StillClock:
    """The totals' clock, standing still unless moved; a send of three deliveries is
    large."""
    fake = StillClock()
    monkeypatch.setattr(send_totals, "_now", fake)
    monkeypatch.setattr(send_totals, "LARGE", 3)
    return fake


async def _fail(app: Harness, delivery_id: str) -> None:
    """A delivery's status changed behind the API's back."""
    async with write_tx(app.ctx.engine) as conn:
        await conn.execute(
            update(deliveries).where(deliveries.c.id == delivery_id).values(status="failed")
        )


async def _listed(app: Harness) -> dict[str, dict[str, Any]]:
    response = await app.client.get("/v1/notifications", headers=app.auth)
    assert response.status_code == 200, response.text
    return {n["id"]: n["totals"] for n in response.json()["data"]}


async def test_a_large_sends_totals_are_kept_a_while_and_a_small_sends_are_not(
    planned_only: Harness, clock: StillClock
) -> None:
    app = planned_only
    large, large_deliveries = await planned_webhooks(app, ["a", "b", "c"])
    small, small_deliveries = await planned_webhooks(app, ["d", "e"])
    assert (await app.notification(large))["totals"] == {"queued": 3}
    assert (await _listed(app))[small] == {"queued": 2}

    await _fail(app, large_deliveries[0])
    await _fail(app, small_deliveries[0])
    # The large send's count is kept, in its detail and in the list; the small one's is not.
    assert (await app.notification(large))["totals"] == {"queued": 3}
    assert await _listed(app) == {large: {"queued": 3}, small: {"failed": 1, "queued": 1}}
    assert (await app.notification(small))["totals"] == {"failed": 1, "queued": 1}

    # Kept for ten times as long as the count took, and at least a second.
    clock.now += send_totals.KEEP_AT_LEAST
    assert (await app.notification(large))["totals"] == {"failed": 1, "queued": 2}


async def test_a_cancellation_counts_afresh(planned_only: Harness, clock: StillClock) -> None:
    app = planned_only
    nid, _ = await planned_webhooks(app, ["a", "b", "c"])
    assert (await app.notification(nid))["totals"] == {"queued": 3}
    response = await app.client.delete(f"/v1/notifications/{nid}", headers=app.auth)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["cancel"] == {"cancelled": 3, "in_flight": 0}
    assert body["totals"] == {"cancelled": 3}
    # What was counted then is what is kept.
    shown = await app.notification(nid)
    assert shown["status"] == "cancelled"
    assert shown["totals"] == {"cancelled": 3}


async def test_a_large_workflow_sends_run_totals_are_kept_a_while(
    planned_only: Harness, clock: StillClock
) -> None:
    app = planned_only
    await app.put_template("hook", HOOK_TEMPLATE)
    for rid in ("a", "b", "c"):
        await app.put_recipient(rid, webhook_url=f"http://127.0.0.1:9/{rid}")
    await put_workflow(
        app,
        "later",
        {"id": "wait", "type": "delay", "duration": "1h"},
        {"id": "hook", "type": "channel", "channel": "webhook", "template": "hook"},
    )
    response = await app.send({"workflow": "later", "to": {"recipient_ids": ["a", "b", "c"]}})
    assert response.status_code == 202, response.text
    nid: str = response.json()["id"]

    async def waiting() -> bool:
        clock.now += send_totals.KEEP_AT_LEAST  # nothing kept from a look before
        return (await app.notification(nid)).get("run_totals") == {"waiting": 3}

    await app.until(waiting)
    async with write_tx(app.ctx.engine) as conn:
        await conn.execute(
            update(workflow_runs)
            .where(workflow_runs.c.notification_id == nid, workflow_runs.c.recipient_id == "a")
            .values(status="completed")
        )
    assert (await app.notification(nid))["run_totals"] == {"waiting": 3}
    clock.now += send_totals.KEEP_AT_LEAST
    assert (await app.notification(nid))["run_totals"] == {"completed": 1, "waiting": 2}
