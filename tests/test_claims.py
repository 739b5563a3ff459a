"""An attempt's claim, right before its provider call: each attempt once, a lapsed claim
taken again, nothing of a cancelled notification; and what a cancellation answers."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from clarion.domain.delivery import Stored
from clarion.domain.status import StatusChange
from clarion.pipeline.runtime import Roles
from clarion.store import deliveries as delivery_store
from clarion.store import sweeps
from clarion.store.db import utcnow
from clarion.store.tables import deliveries, delivery_claims, delivery_events
from harness import Harness, make_settings, planned_webhooks, running
from webhook_sink import WebhookSink

LEASE = 60.0


async def _claim(app: Harness, *items: tuple[str, int], lease: float = LEASE) -> set[str]:
    return await delivery_store.claim(app.ctx.engine, list(items), lease, app.ctx.pg)


async def _stale(app: Harness, older_than: datetime) -> list[Stored]:
    """The sweeper's pass as of ``older_than``: what it watches, then the stale of those."""
    overlap = sweeps.OVERLAP
    while await sweeps.watch_new(app.ctx.engine, utcnow(), older_than, overlap):
        pass
    return await sweeps.stale(app.ctx.engine, older_than, 100)


async def _row(app: Harness, delivery_id: str) -> dict[str, Any]:
    row = await delivery_store.get_one(app.ctx.engine, app.tenant_id, delivery_id)
    assert row is not None
    return row


async def _outcome(app: Harness, delivery_id: str, status: str, attempts: int) -> None:
    sent_at = utcnow() if status == "sent" else None
    change = StatusChange(delivery_id, app.tenant_id, status, attempts=attempts, sent_at=sent_at)
    await delivery_store.apply_changes(app.ctx.engine, [change], app.ctx.pg)


async def _shown(app: Harness, nid: str, delivery_id: str) -> tuple[str, int]:
    """The delivery's (status, attempts) as the API shows them."""
    [found] = [d for d in (await app.notification(nid))["deliveries"] if d["id"] == delivery_id]
    return found["status"], found["attempts"]


async def _claimed(app: Harness, delivery_id: str) -> tuple[int, bool] | None:
    """The delivery's claim: (attempt, cancelled), or None."""
    k = delivery_claims
    query = select(k.c.attempt, k.c.cancelled).where(k.c.id == delivery_id)
    async with app.ctx.engine.connect() as conn:
        row = (await conn.execute(query)).first()
    return None if row is None else (row[0], row[1])


async def _events(app: Harness, delivery_id: str) -> list[str]:
    e = delivery_events
    query = select(e.c.status).where(e.c.delivery_id == delivery_id).order_by(e.c.id)
    async with app.ctx.engine.connect() as conn:
        return list((await conn.execute(query)).scalars())


async def test_each_attempt_is_claimed_once(planned_only: Harness) -> None:
    app = planned_only
    nid, [did] = await planned_webhooks(app, ["u"])
    assert await _claim(app, (did, 1), (did, 1)) == {did}  # a copy in the same batch
    # The claim is a row of its own; the delivery shows `sending`, and its outcome, once
    # stored, counts the attempt.
    assert await _claimed(app, did) == (1, False)
    assert (await _row(app, did))["status"] == "queued"
    assert await _shown(app, nid, did) == ("sending", 0)
    # A copy of the attempt (the sweeper's, the broker's) is not claimed, and screened out
    # of a take once the attempt's outcome is stored.
    assert await _claim(app, (did, 1)) == set()
    assert await delivery_store.spent_ids(app.ctx.engine, [(did, 1)], app.ctx.pg) == set()
    # The retry is published before the first outcome is stored, and may be claimed first.
    assert await _claim(app, (did, 2)) == {did}
    await _outcome(app, did, "queued", 1)  # attempt 1's outcome, late
    assert await _shown(app, nid, did) == ("sending", 1)
    assert await delivery_store.spent_ids(app.ctx.engine, [(did, 1)], app.ctx.pg) == {did}
    await _outcome(app, did, "sent", 2)
    assert await _shown(app, nid, did) == ("sent", 2)
    assert await delivery_store.spent_ids(app.ctx.engine, [(did, 2)], app.ctx.pg) == {did}
    assert await _claim(app, (did, 2), (did, 3)) == set()


async def test_a_lapsed_claim_is_swept_and_taken_again(planned_only: Harness) -> None:
    app = planned_only
    nid, [did, other] = await planned_webhooks(app, ["u", "v"])
    assert await _claim(app, (did, 1), lease=0.0) == {did}  # its worker died at once
    assert await _claim(app, (other, 1)) == {other}  # its worker lives
    assert await _shown(app, nid, did) == ("queued", 0)
    assert await _shown(app, nid, other) == ("sending", 0)
    later = utcnow() + timedelta(seconds=5)
    stale = await _stale(app, later)
    assert [item.delivery.id for item in stale] == [did]
    # The same attempt again, not the next: the call is counted once, by its outcome.
    [again] = [item.delivery for item in stale]
    assert again.attempt == 1
    assert await _claim(app, (did, 1)) == {did}
    assert await _shown(app, nid, did) == ("sending", 0)
    assert await _stale(app, later) == []
    await _outcome(app, did, "sent", 1)
    assert await _shown(app, nid, did) == ("sent", 1)


async def test_a_cancellation_reaches_what_is_not_claimed(planned_only: Harness) -> None:
    app = planned_only
    nid, [flying, failing, lapsed, waiting] = await planned_webhooks(app, ["a", "b", "c", "d"])
    assert await _claim(app, (flying, 1), (failing, 1)) == {flying, failing}
    assert await _claim(app, (lapsed, 1), lease=0.0) == {lapsed}

    response = await app.client.delete(f"/v1/notifications/{nid}", headers=app.auth)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "cancelling"
    # A claim whose lease ran out is no call in flight (its worker is taken for dead): it
    # is cancelled with what waits.
    assert body["cancel"] == {"cancelled": 2, "in_flight": 2}
    assert (await _row(app, waiting))["status"] == "cancelled"
    assert (await _row(app, lapsed))["status"] == "cancelled"
    assert await _claimed(app, waiting) == (0, True)
    listed = await app.client.get(
        "/v1/notifications", params={"status": "cancelling"}, headers=app.auth
    )
    assert [n["id"] for n in listed.json()["data"]] == [nid]

    # Nothing is claimed any more.
    assert await _claim(app, (waiting, 1), (lapsed, 1)) == set()
    # The attempts under way end as they end; a retry of a failed one is cancelled at its
    # claim.
    await _outcome(app, flying, "sent", 1)
    await _outcome(app, failing, "queued", 1)
    assert await _claim(app, (failing, 2)) == set()
    done = await app.notification(nid)
    assert done["status"] == "cancelled"
    assert done["cancel"] == {"cancelled": 3, "in_flight": 0}
    assert done["totals"] == {"cancelled": 3, "sent": 1}
    assert "cancelled" not in await _events(app, flying)
    assert (await _events(app, failing))[-1] == "cancelled"
    # A late outcome never turns a cancelled delivery into a sent one.
    await _outcome(app, lapsed, "sent", 1)
    assert (await _row(app, lapsed))["status"] == "cancelled"

    listed = await app.client.get(
        "/v1/notifications", params={"status": "cancelled"}, headers=app.auth
    )
    assert [n["id"] for n in listed.json()["data"]] == [nid]
    d = deliveries
    async with app.ctx.engine.connect() as conn:
        stored = set((await conn.execute(select(d.c.status))).scalars())
    assert stored == {"cancelled", "sent"}


async def test_a_batch_larger_than_a_statement_is_claimed_whole(planned_only: Harness) -> None:
    """Ids of no delivery among them (a delivery erased meanwhile) are not claimed, and
    the batch's real ones are, wherever they fall in it."""
    app = planned_only
    _, dids = await planned_webhooks(app, ["a", "b", "c"])
    unknown = [(f"dlv_none{i:04d}", 1) for i in range(700)]
    items = [dids[0], *unknown[:600], dids[1], *unknown[600:], dids[2]]
    batch = [item if isinstance(item, tuple) else (item, 1) for item in items]
    assert await _claim(app, *batch) == set(dids)
    assert await _claim(app, *batch) == set()  # each held now
    assert [await _claimed(app, did) for did in dids] == [(1, False)] * 3


async def test_a_restart_sends_again_what_was_being_sent(
    migrated_sqlite_url: str, sink: WebhookSink
) -> None:
    """The embedded broker is rebuilt from the store: a delivery left in flight by the
    stopped process (its lease still running) goes out again, that same attempt."""
    url = migrated_sqlite_url
    async with running(make_settings(url, "embedded://"), Roles(api=True, planner=True)) as app:
        _, [did] = await planned_webhooks(app, ["u"], sink.url)
        assert await _claim(app, (did, 1)) == {did}
    async with running(make_settings(url, "embedded://")) as app:
        await app.drain()
        row = await _row(app, did)
    assert (row["status"], row["attempts"]) == ("sent", 1)
    assert sink.count == 1
