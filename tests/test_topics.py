"""Topics: memberships, sends to a topic planned in chunks, totals, paging, cancellation."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import insert, select, text, update

from clarion.domain.models import PLAN_STREAM
from clarion.pipeline import attempt
from clarion.pipeline import planner as planner_module
from clarion.pipeline.context import open_context
from clarion.pipeline.messages import plan_payload
from clarion.pipeline.planner import Planner
from clarion.pipeline.runtime import Roles
from clarion.store import planning
from clarion.store.db import MIGRATIONS, _alembic_config, as_utc, migrate
from clarion.store.tables import notifications, topic_stripes, topic_subscribers, topics
from harness import Harness, make_settings, running

EMAIL = {"channels": {"email": {"subject": "News", "text": "Hello {{ recipient.id }}"}}}


@pytest.fixture
async def chunky(backend: tuple[str, str]) -> AsyncIterator[Harness]:
    """Clarion on each backend, planning topic sends two subscribers at a time."""
    async with running(make_settings(*backend, topic_chunk=2)) as harness:
        yield harness


async def _people(app: Harness, ids: list[str]) -> None:
    body = {"recipients": [{"id": rid, "email": f"{rid}@example.com"} for rid in ids]}
    response = await app.client.post("/v1/recipients/batch", json=body, headers=app.auth)
    assert response.status_code == 200, response.text


async def _subscribe(app: Harness, topic: str, ids: list[str]) -> dict[str, Any]:
    response = await app.client.put(
        f"/v1/topics/{topic}/subscribers", json={"recipient_ids": ids}, headers=app.auth
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _broadcast(app: Harness, members: list[str]) -> dict[str, Any]:
    """``members`` subscribed to "news", and a send to the topic accepted."""
    await _people(app, members)
    await _subscribe(app, "news", members)
    await app.put_template("digest", EMAIL)
    sent = await app.send({"template": "digest", "to": {"topic": "news"}})
    assert sent.status_code == 202, sent.text
    body: dict[str, Any] = sent.json()
    return body


async def _pages(app: Harness, path: str, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        response = await app.client.get(path, params=params, headers=app.auth)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["data"]) <= limit
        items.extend(page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def test_membership_is_bulk_idempotent_and_reports_unknown_ids(app: Harness) -> None:
    await _people(app, ["u1", "u2", "u3", "u4"])
    body = await _subscribe(app, "news", ["u1", "ghost", "u2", "u3", "u2"])
    assert (body["name"], body["subscribers"], body["added"]) == ("news", 3, 3)
    assert [(e["index"], e["recipient_id"]) for e in body["errors"]] == [(1, "ghost")]
    assert body["errors"][0]["error"]["code"] == "unknown_recipient"

    again = await _subscribe(app, "news", ["u1", "u2", "u4"])
    assert (again["subscribers"], again["added"], again["errors"]) == (4, 1, [])

    topic = await app.client.get("/v1/topics/news", headers=app.auth)
    assert topic.json() == {"name": "news", "subscribers": 4}
    listed = await _pages(app, "/v1/topics/news/subscribers", limit=3)
    assert [s["recipient_id"] for s in listed] == ["u1", "u2", "u3", "u4"]

    gone = await app.client.request(
        "DELETE",
        "/v1/topics/news/subscribers",
        json={"recipient_ids": ["u2", "u9"]},
        headers=app.auth,
    )
    assert gone.status_code == 200, gone.text
    assert (gone.json()["removed"], gone.json()["subscribers"]) == (1, 3)

    # A recipient's topics are in its export; erasure removes its memberships.
    export = await app.client.get("/v1/recipients/u1/export", headers=app.auth)
    assert export.json()["topics"] == ["news"]
    assert (await app.client.delete("/v1/recipients/u1", headers=app.auth)).status_code == 204
    listed = await _pages(app, "/v1/topics/news/subscribers", limit=500)
    assert [s["recipient_id"] for s in listed] == ["u3", "u4"]


async def test_membership_bad_cases(app: Harness) -> None:
    await _people(app, ["u1"])
    await _subscribe(app, "news", ["u1"])
    put = "/v1/topics/news/subscribers"
    too_many = [f"u{i}" for i in range(10_001)]
    response = await app.client.put(put, json={"recipient_ids": too_many}, headers=app.auth)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "batch_too_large"
    for body in ({"recipient_ids": []}, {"recipient_ids": "u1"}, {}, {"recipient_ids": [""]}):
        response = await app.client.put(put, json=body, headers=app.auth)
        assert response.status_code == 422, body
        assert response.json()["error"]["code"] == "validation_error"
    bad_name = await app.client.get("/v1/topics/no%20spaces", headers=app.auth)
    assert bad_name.status_code == 422
    assert (await app.client.get("/v1/topics/empty", headers=app.auth)).status_code == 404

    # Another tenant sees no topic of ours, and can't read or change it.
    other = {"Authorization": f"Bearer {await app.new_tenant('other')}"}
    assert (await app.client.get("/v1/topics/news", headers=other)).status_code == 404
    assert (await app.client.get(f"{put}", headers=other)).status_code == 404
    response = await app.client.request(
        "DELETE", put, json={"recipient_ids": ["u1"]}, headers=other
    )
    assert response.status_code == 404
    response = await app.client.put(put, json={"recipient_ids": ["u1"]}, headers=other)
    assert response.json()["errors"][0]["recipient_id"] == "u1"  # not their recipient
    assert (await app.client.get("/v1/topics/news", headers=app.auth)).json()["subscribers"] == 1

    reader = {"Authorization": f"Bearer {await app.new_tenant('reader', ['read', 'send'])}"}
    assert (await app.client.get("/v1/topics/news", headers=reader)).status_code == 403


async def test_a_send_to_a_topic_never_created_is_refused(app: Harness) -> None:
    await app.put_template("digest", EMAIL)
    await _people(app, ["u1"])
    auth = app.auth
    # Never created: 422 on the single route and per item in a batch.
    sent = await app.send({"template": "digest", "to": {"topic": "nowhere"}})
    assert sent.status_code == 422, sent.text
    assert sent.json()["error"]["code"] == "unknown_topic"
    assert sent.json()["error"]["details"] == [{"field": "to.topic", "topic": "nowhere"}]

    # Created empty, and emptied by unsubscribing: both exist, with no subscribers.
    created = await app.client.put("/v1/topics/empty", headers=auth)
    assert (created.status_code, created.json()) == (201, {"name": "empty", "subscribers": 0})
    assert (await app.client.put("/v1/topics/empty", headers=auth)).status_code == 200
    await _subscribe(app, "emptied", ["u1"])
    gone = await app.client.request(
        "DELETE", "/v1/topics/emptied/subscribers", json={"recipient_ids": ["u1"]}, headers=auth
    )
    assert gone.json()["subscribers"] == 0
    for name in ("empty", "emptied"):
        shown = await app.client.get(f"/v1/topics/{name}", headers=auth)
        assert shown.json() == {"name": name, "subscribers": 0}
        page = await app.client.get(f"/v1/topics/{name}/subscribers", headers=auth)
        assert page.json() == {"data": [], "next_cursor": None}

    batch = [
        {"template": "digest", "to": {"topic": "empty"}},
        {"template": "digest", "to": {"topic": "nowhere"}},
        {"template": "digest", "to": {"topic": "emptied"}},
    ]
    response = await app.client.post(
        "/v1/notifications/batch", json={"notifications": batch}, headers=auth
    )
    assert response.status_code == 202, response.text
    results = response.json()["results"]
    assert results[1]["error"]["code"] == "unknown_topic"
    accepted = [results[0]["id"], results[2]["id"]]
    await app.drain()
    for nid in accepted:  # an existing topic with no subscribers: a send that completes
        note = await app.client.get(f"/v1/notifications/{nid}", headers=auth)
        assert note.json()["status"] == "completed", note.json()
        assert note.json()["deliveries"] == []

    # Another tenant's topic is not one of ours.
    other = {"Authorization": f"Bearer {await app.new_tenant('other')}"}
    assert (await app.client.put("/v1/topics/theirs", headers=other)).status_code == 201
    sent = await app.send({"template": "digest", "to": {"topic": "theirs"}})
    assert sent.json()["error"]["code"] == "unknown_topic"

    # A deleted topic is gone with its memberships, and sends to it are refused again.
    await _subscribe(app, "emptied", ["u1"])
    assert (await app.client.delete("/v1/topics/emptied", headers=auth)).status_code == 204
    assert (await app.client.delete("/v1/topics/emptied", headers=auth)).status_code == 404
    assert (await app.client.get("/v1/topics/emptied", headers=auth)).status_code == 404
    export = await app.client.get("/v1/recipients/u1/export", headers=auth)
    assert export.json()["topics"] == []
    sent = await app.send({"template": "digest", "to": {"topic": "emptied"}})
    assert sent.json()["error"]["code"] == "unknown_topic"
    # As is a schedule naming it.
    schedule = {"cron": "0 9 * * *", "notification": {"template": "digest", "to": {"topic": "x"}}}
    response = await app.client.put("/v1/schedules/s", json=schedule, headers=auth)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "unknown_topic"


async def test_topic_send_reaches_exactly_the_subscribers(chunky: Harness) -> None:
    app = chunky
    members = [f"m{i}" for i in range(5)]
    await _people(app, [*members, "outsider"])
    await _subscribe(app, "news", members)
    response = await app.client.put(
        "/v1/recipients/m3/preferences", json={"channels": {"email": False}}, headers=app.auth
    )
    assert response.status_code == 200, response.text
    await app.put_template("digest", EMAIL)
    sent = await app.send({"template": "digest", "to": {"topic": "news"}, "data": {"n": 7}})
    assert sent.status_code == 202, sent.text
    await app.drain()

    note = await app.notification(sent.json()["id"])
    assert note["to"] == {"topic": "news"}
    assert note["status"] == "completed"
    assert note["totals"] == {"sent": 4, "suppressed": 1}
    deliveries = await _pages(app, f"/v1/notifications/{note['id']}/deliveries", limit=2)
    assert sorted(d["recipient_id"] for d in deliveries) == members
    assert len({d["id"] for d in deliveries}) == 5
    [opted_out] = [d for d in deliveries if d["recipient_id"] == "m3"]
    assert (opted_out["status"], opted_out["reason"]) == ("suppressed", "opted_out")
    captured = (await app.client.get("/v1/sandbox/messages", headers=app.auth)).json()["data"]
    assert sorted(m["recipient_id"] for m in captured) == ["m0", "m1", "m2", "m4"]

    assert (await app.client.put("/v1/topics/nobody", headers=app.auth)).status_code == 201
    empty = await app.send({"template": "digest", "to": {"topic": "nobody"}})
    await app.drain()
    note = await app.notification(empty.json()["id"])
    assert (note["status"], note["totals"], note["deliveries"]) == ("completed", {}, [])

    other = {"Authorization": f"Bearer {await app.new_tenant('other')}"}
    path = f"/v1/notifications/{sent.json()['id']}/deliveries"
    assert (await app.client.get(path, headers=other)).status_code == 404
    assert (await app.client.get(path, params={"limit": 501}, headers=app.auth)).status_code == 422


async def _stripes(app: Harness, nid: str) -> list[dict[str, Any]]:
    async with app.ctx.engine.connect() as conn:
        query = (
            select(topic_stripes)
            .where(topic_stripes.c.notification_id == nid)
            .order_by(topic_stripes.c.stripe)
        )
        return [dict(row) for row in (await conn.execute(query)).mappings()]


async def test_a_broadcast_is_planned_in_stripes_side_by_side(backend: tuple[str, str]) -> None:
    """23 subscribers, chunks of 2, up to 4 stripes: two planners take the stripes' chunks
    as they come, every stripe asked for twice (as after the relay's second publish), so
    two planners race for the same chunks; every subscriber gets exactly one delivery, and
    the stripes are gone once the send is planned."""
    settings = make_settings(*backend, topic_chunk=2, topic_stripes=4)
    members = [f"m{i:02d}" for i in range(23)]
    async with running(settings, Roles(api=True)) as app:
        await _people(app, [*members, "outsider"])
        await _subscribe(app, "news", members)
        await app.put_template("digest", EMAIL)
        sent = (await app.send({"template": "digest", "to": {"topic": "news"}})).json()
        first, second = Planner(app.ctx, "planner-1"), Planner(app.ctx, "planner-2")
        assert await first.run_once(timeout=1.0) == 1  # the send: its stripes are made
        stripes = await _stripes(app, sent["id"])
        assert [s["stripe"] for s in stripes] == [0, 1, 2, 3]
        # Each stripe ends where the next begins; the first has no start, the last no end.
        assert stripes[0]["planned_through"] is None
        assert stripes[-1]["last_id"] is None
        for before, after in itertools.pairwise(stripes):
            assert before["last_id"] == after["planned_through"] is not None
        # The send published again, as the relay does when planning stalls: each stripe is
        # asked for a second time, and both planners take what comes.
        tenant = (await _note(app, sent["id"]))["tenant_id"]
        await app.ctx.broker.publish(PLAN_STREAM, [plan_payload(sent["id"], tenant)])
        idle = 0
        for turn in itertools.count():
            planner = (first, second)[turn % 2]
            took = await planner.run_once(timeout=0.2) + await planner.run_chunks_once(0.2)
            idle = 0 if took else idle + 1
            if idle == 2:
                break
        note = await app.notification(sent["id"])
        assert note["totals"] == {"queued": 23}, note
        assert await _stripes(app, sent["id"]) == []
        deliveries = await _pages(app, f"/v1/notifications/{sent['id']}/deliveries", limit=100)
        assert sorted(d["recipient_id"] for d in deliveries) == members

    async with running(settings) as app:
        await app.drain()
        note = await app.notification(sent["id"])
        assert (note["status"], note["totals"]) == ("completed", {"sent": 23})
        captured = (await app.client.get("/v1/sandbox/messages", headers=app.auth)).json()
        assert sorted(m["recipient_id"] for m in captured["data"]) == members


async def _note(app: Harness, nid: str) -> dict[str, Any]:
    async with app.ctx.engine.connect() as conn:
        query = select(notifications).where(notifications.c.id == nid)
        return dict((await conn.execute(query)).mappings().one())


async def test_cancel_between_stripes_chunks_drops_the_stripes(backend: tuple[str, str]) -> None:
    settings = make_settings(*backend, topic_chunk=2, topic_stripes=3)
    members = [f"m{i:02d}" for i in range(12)]
    async with running(settings, Roles(api=True)) as app:
        sent = await _broadcast(app, members)
        planner = Planner(app.ctx, "planner")
        assert await planner.run_once(timeout=1.0) == 1  # the stripes
        # The first chunk of each stripe, side by side: half of each stripe planned.
        assert await planner.run_chunks_once(timeout=1.0) == 3
        assert (await app.notification(sent["id"]))["totals"] == {"queued": 6}
        response = await app.client.delete(f"/v1/notifications/{sent['id']}", headers=app.auth)
        assert response.json()["totals"] == {"cancelled": 6}
        assert await _stripes(app, sent["id"]) == []
        while await planner.run_chunks_once(timeout=0.2):  # the stripes' next chunks: refused
            pass
        note = await app.notification(sent["id"])
        assert (note["status"], note["totals"]) == ("cancelled", {"cancelled": 6})


async def test_cancel_of_a_scheduled_send(app: Harness) -> None:
    await _people(app, ["u1"])
    await app.put_template("digest", EMAIL)
    later = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    sent = await app.send({"template": "digest", "to": {"recipient_id": "u1"}, "send_at": later})
    nid = sent.json()["id"]
    other = {"Authorization": f"Bearer {await app.new_tenant('other')}"}
    assert (await app.client.delete(f"/v1/notifications/{nid}", headers=other)).status_code == 404
    assert (
        await app.client.delete("/v1/notifications/ntf_nope", headers=app.auth)
    ).status_code == 404

    response = await app.client.delete(f"/v1/notifications/{nid}", headers=app.auth)
    assert response.status_code == 202, response.text
    assert (response.json()["id"], response.json()["status"]) == (nid, "cancelled")
    await app.drain()  # nothing left in the outbox
    again = await app.client.delete(f"/v1/notifications/{nid}", headers=app.auth)
    assert (again.status_code, again.json()["status"]) == (202, "cancelled")
    assert (await app.notification(nid))["deliveries"] == []


async def test_cancel_before_planning_and_between_chunks(backend: tuple[str, str]) -> None:
    """Cancelled before it is planned, a send plans nothing; cancelled between two chunks
    of a topic send, planning stops and what was planned is cancelled, never sent."""
    settings = make_settings(*backend, topic_chunk=2, topic_stripes=1)
    async with running(settings, Roles(api=True)) as app:
        await _people(app, [f"m{i}" for i in range(5)])
        await _subscribe(app, "news", [f"m{i}" for i in range(5)])
        await app.put_template("digest", EMAIL)
        listed = (await app.send({"template": "digest", "to": {"recipient_id": "m0"}})).json()
        early = (await app.send({"template": "digest", "to": {"topic": "news"}})).json()
        for nid in (listed["id"], early["id"]):
            response = await app.client.delete(f"/v1/notifications/{nid}", headers=app.auth)
            assert response.status_code == 202
        broadcast = (await app.send({"template": "digest", "to": {"topic": "news"}})).json()

        planner = Planner(app.ctx, "test-planner")
        while (await app.notification(broadcast["id"]))["totals"] == {}:
            await planner.run_once(timeout=0.2)
            await planner.run_chunks_once(timeout=0.2)
        note = await app.notification(broadcast["id"])
        assert note["totals"] == {"queued": 2}
        assert note["status"] == "processing"
        response = await app.client.delete(f"/v1/notifications/{broadcast['id']}", headers=app.auth)
        assert response.status_code == 202
        assert response.json()["totals"] == {"cancelled": 2}
        while await planner.run_chunks_once(timeout=0.2):  # the next chunk: refused
            pass

    async with running(settings) as app:
        await app.drain()
        for nid in (listed["id"], early["id"]):
            note = await app.notification(nid)
            assert (note["status"], note["totals"]) == ("cancelled", {})
        note = await app.notification(broadcast["id"])
        assert (note["status"], note["totals"]) == ("cancelled", {"cancelled": 2})
        assert all(d["reason"] == "cancelled" for d in note["deliveries"])
        captured = (await app.client.get("/v1/sandbox/messages", headers=app.auth)).json()
        assert captured["data"] == []


async def test_a_chunk_stuck_on_an_await_is_given_up_and_planned_again(
    backend: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk whose write never returns holds its plan message only until the step's
    deadline: then the planner fails the batch (not acked), the message comes back after
    its lease, and the chunk is planned again; every subscriber gets one delivery."""
    monkeypatch.setattr(planner_module, "STEP_DEADLINE", 0.5)
    store_stripe = planning.store_stripe
    hung: list[str] = []

    async def first_one_hangs(*args: Any, **kwargs: Any) -> set[str] | None:
        if not hung:
            hung.append("once")
            await asyncio.Event().wait()
        return await store_stripe(*args, **kwargs)

    monkeypatch.setattr(planning, "store_stripe", first_one_hangs)
    settings = make_settings(*backend, topic_chunk=2, broker_lease=1.0)
    members = [f"m{i}" for i in range(5)]
    async with running(settings, Roles(api=True)) as app:
        sent = await _broadcast(app, members)
        planner = Planner(app.ctx, "test-planner")

        async def plan_until_stuck() -> None:
            while not hung:
                await planner.run_once(timeout=0.2)
                await planner.run_chunks_once(timeout=0.2)

        with pytest.raises(TimeoutError):
            await plan_until_stuck()
    async with running(settings) as app:
        await app.drain()
        note = await app.notification(sent["id"])
        assert (note["status"], note["totals"]) == ("completed", {"sent": 5})
        assert sorted(d["recipient_id"] for d in note["deliveries"]) == members


async def test_delivery_expiring_while_queued_is_dropped(
    migrated_sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planned in time, taken by a worker after ``expires_at``: failed, reason expired."""
    settings = make_settings(migrated_sqlite_url, "embedded://")
    async with running(settings, Roles(api=True, planner=True)) as app:
        await _people(app, ["u1"])
        await app.put_template("digest", EMAIL)
        soon = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
        sent = await app.send(
            {"template": "digest", "to": {"recipient_id": "u1"}, "expires_at": soon}
        )
        nid = sent.json()["id"]
        await app.until(lambda: _has_deliveries(app, nid))
    later = datetime.now(UTC) + timedelta(minutes=10)
    monkeypatch.setattr(attempt, "utcnow", lambda: later)  # the worker's clock, 10 min on
    async with running(settings) as app:
        await app.drain()
        [delivery] = (await app.notification(nid))["deliveries"]
        assert (delivery["status"], delivery["reason"]) == ("failed", "expired")
        captured = (await app.client.get("/v1/sandbox/messages", headers=app.auth)).json()
        assert captured["data"] == []


async def _has_deliveries(app: Harness, nid: str) -> bool:
    return bool((await app.notification(nid))["deliveries"])


async def test_a_send_planned_on_the_old_cursor_goes_on_as_one_stripe(
    unmigrated_backend: tuple[str, str],
) -> None:
    """Migration 0019: a topic send half planned on the notification's own cursor becomes
    one stripe from that cursor; down again, the cursor is the lowest open stripe's."""
    context = await open_context(make_settings(*unmigrated_backend))
    engine = context.engine
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(_alembic_config(c), "0018"))
        row = {
            "tenant_id": "t1",
            "template": "digest",
            "recipient_ids": [],
            "data": {},
            "priority": "normal",
            "created_at": datetime.now(UTC),
            "topic": "news",
        }
        async with engine.begin() as conn:
            await conn.execute(
                insert(notifications),
                [
                    {**row, "id": "ntf_half", "status": "processing", "planned_through": "m05"},
                    {**row, "id": "ntf_new", "status": "accepted", "planned_through": None},
                    {**row, "id": "ntf_off", "status": "cancelled", "planned_through": "m03"},
                ],
            )
        await migrate(engine)
        async with engine.connect() as conn:
            found = (await conn.execute(select(topic_stripes))).mappings().all()
        assert [dict(r) for r in found] == [
            {
                "notification_id": "ntf_half",
                "stripe": 0,
                "planned_through": "m05",
                "last_id": None,
                "done_at": None,
            }
        ]
        async with engine.begin() as conn:
            await conn.execute(
                update(topic_stripes).values(planned_through="m07"),
            )
            await conn.run_sync(lambda c: command.downgrade(_alembic_config(c), "0018"))
            cursor = await conn.execute(
                text("SELECT planned_through FROM notifications WHERE id = 'ntf_half'")
            )
            assert cursor.scalar_one() == "m07"
        await migrate(engine)
    finally:
        await context.aclose()


async def test_topics_with_subscribers_exist_after_the_topics_migration(
    unmigrated_backend: tuple[str, str],
) -> None:
    """Migration 0022: every topic that has subscribers becomes a topic that exists,
    created when its first subscriber joined; down again, the table goes."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    before = ScriptDirectory.from_config(config).get_revision("0022")
    assert before is not None
    below = before.down_revision
    assert isinstance(below, str)
    context = await open_context(make_settings(*unmigrated_backend))
    engine = context.engine
    early, late = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(_alembic_config(c), below))
            await conn.execute(
                insert(topic_subscribers),
                [
                    {"tenant_id": "t1", "topic": "news", "recipient_id": "a", "created_at": late},
                    {"tenant_id": "t1", "topic": "news", "recipient_id": "b", "created_at": early},
                    {"tenant_id": "t2", "topic": "news", "recipient_id": "a", "created_at": late},
                ],
            )
        await migrate(engine)
        async with engine.connect() as conn:
            found = (await conn.execute(select(topics).order_by(topics.c.tenant_id))).all()
        assert [(r.tenant_id, r.name, as_utc(r.created_at)) for r in found] == [
            ("t1", "news", early),
            ("t2", "news", late),
        ]
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.downgrade(_alembic_config(c), below))
        await migrate(engine)
    finally:
        await context.aclose()


async def test_a_topic_size_follows_concurrent_changes(app: Harness) -> None:
    """The size a topic answers is kept with its memberships, not counted: calls that add,
    remove and erase at once leave it equal to the memberships there are."""
    people = [f"p{i:02d}" for i in range(60)]
    await _people(app, people)
    await _subscribe(app, "other", people[:10])
    await _subscribe(app, "news", people[50:52])
    put = "/v1/topics/news/subscribers"

    async def change(index: int) -> None:
        ids = people[index * 7 : index * 7 + 20]  # overlapping calls
        if index % 3 == 2:
            response = await app.client.request(
                "DELETE", put, json={"recipient_ids": ids[:5]}, headers=app.auth
            )
        else:
            response = await app.client.put(put, json={"recipient_ids": ids}, headers=app.auth)
        assert response.status_code == 200, response.text

    async def erase(rid: str) -> None:
        assert (
            await app.client.delete(f"/v1/recipients/{rid}", headers=app.auth)
        ).status_code == 204

    await asyncio.gather(*(change(i) for i in range(6)), erase("p03"), erase("p30"))
    for topic in ("news", "other"):
        listed = await _pages(app, f"/v1/topics/{topic}/subscribers", limit=500)
        shown = await app.client.get(f"/v1/topics/{topic}", headers=app.auth)
        assert shown.json()["subscribers"] == len(listed), topic
    again = await _subscribe(app, "news", ["p59"])
    assert again["subscribers"] == len(await _pages(app, put, limit=500))
    gone = await app.client.request("DELETE", put, json={"recipient_ids": people}, headers=app.auth)
    assert gone.json()["subscribers"] == 0


async def test_topic_sizes_are_counted_by_their_migration(
    unmigrated_backend: tuple[str, str],
) -> None:
    """Migration 0037: each topic's size, counted from its memberships (none: 0)."""
    context = await open_context(make_settings(*unmigrated_backend))
    engine = context.engine
    now = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(_alembic_config(c), "0036"))
            await conn.execute(
                text(
                    "INSERT INTO topics (tenant_id, name, created_at) VALUES "
                    "('t1', 'news', :at), ('t1', 'empty', :at), ('t2', 'news', :at)"
                ),
                {"at": now},
            )
            await conn.execute(
                text(
                    "INSERT INTO topic_subscribers (tenant_id, topic, recipient_id, created_at) "
                    "VALUES ('t1', 'news', 'a', :at), ('t1', 'news', 'b', :at), "
                    "('t2', 'news', 'a', :at)"
                ),
                {"at": now},
            )
        await migrate(engine)
        async with engine.connect() as conn:
            query = select(topics.c.tenant_id, topics.c.name, topics.c.subscribers)
            found = sorted((await conn.execute(query)).all())
        assert [tuple(row) for row in found] == [
            ("t1", "empty", 0),
            ("t1", "news", 2),
            ("t2", "news", 1),
        ]
    finally:
        await context.aclose()
