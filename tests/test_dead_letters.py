"""Dead letters: list, filter, replay one or many; a replay sends exactly once."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select

from clarion.domain.ids import new_id
from clarion.store import dead_letters as store
from clarion.store import stats
from clarion.store import tenants as tenant_store
from clarion.store.db import utcnow
from clarion.store.pages import Position
from clarion.store.tables import deliveries, delivery_events
from harness import Harness
from plan_kit import SORT_NODE, assert_reads_dead_events, plan_of
from webhook_sink import Received, WebhookSink

TEMPLATE = {"channels": {"webhook": {"body": {"hello": "{{ recipient.id }}"}}}}


class Endpoint:
    """The far end: fails until fixed, and counts the deliveries it accepted, by key."""

    def __init__(self) -> None:
        self.healthy = False
        self.accepted: collections.Counter[str] = collections.Counter()

    def __call__(self, request: Received) -> int:
        if not self.healthy:
            return 500
        self.accepted[request.headers["idempotency-key"]] += 1
        return 200


async def _dead(app: Harness, sink: WebhookSink, rids: list[str]) -> list[dict[str, Any]]:
    """Deliveries to ``rids`` that died (the sink answers 500 to every attempt)."""
    await app.put_template("hook", TEMPLATE)
    for rid in rids:
        await app.put_recipient(rid, webhook_url=f"{sink.url}/{rid}")
    response = await app.send({"template": "hook", "to": {"recipient_ids": rids}})
    assert response.status_code == 202, response.text
    await app.drain()
    deliveries: list[dict[str, Any]] = (await app.notification(response.json()["id"]))["deliveries"]
    assert {d["status"] for d in deliveries} == {"dead"}
    return deliveries


async def _list(app: Harness, **params: Any) -> httpx.Response:
    return await app.client.get("/v1/dead-letters", params=params, headers=app.auth)


async def test_list_and_filter(app: Harness, sink: WebhookSink) -> None:
    sink.respond = Endpoint()
    [dead] = await _dead(app, sink, ["u"])
    response = await _list(app)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["next_cursor"] is None
    [item] = body["data"]
    assert item["id"] == dead["id"]
    assert item["notification_id"]
    assert item["status"] == "dead"
    assert item["attempts"] == app.settings.max_attempts
    assert item["reason"] == "http_500"
    provider = item["provider"]
    for params, found in [
        ({"channel": "webhook"}, 1),
        ({"channel": "email"}, 0),
        ({"provider": provider}, 1),
        ({"provider": "someone-else"}, 0),
        ({"after": "2020-01-01T00:00:00Z"}, 1),
        ({"before": "2020-01-01T00:00:00Z"}, 0),
    ]:
        listed = await _list(app, **params)
        assert listed.status_code == 200, listed.text
        assert len(listed.json()["data"]) == found, params


async def test_pages_are_newest_first(app: Harness, sink: WebhookSink) -> None:
    sink.respond = Endpoint()
    dead = await _dead(app, sink, ["a", "b", "c"])
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await _list(app, **params)).json()
        seen.extend(page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(d["id"] for d in seen) == sorted(d["id"] for d in dead)
    stamps = [d["updated_at"] for d in seen]
    assert stamps == sorted(stamps, reverse=True)


async def test_bad_queries_are_refused(app: Harness) -> None:
    for params in (
        {"cursor": "not-a-cursor"},
        {"channel": "pigeon"},
        {"limit": 0},
        {"limit": 501},
        {"after": "yesterday"},
        {"before": "2026-01-01T00:00:00"},
    ):
        response = await _list(app, **params)
        assert response.status_code == 422, params
        assert response.json()["error"]["code"] == "validation_error"


async def test_replay_sends_exactly_once(app: Harness, sink: WebhookSink) -> None:
    endpoint = Endpoint()
    sink.respond = endpoint
    [dead] = await _dead(app, sink, ["u"])
    endpoint.healthy = True
    response = await app.client.post(f"/v1/dead-letters/{dead['id']}/replay", headers=app.auth)
    assert response.status_code == 202, response.text
    replayed = response.json()
    assert (replayed["id"], replayed["status"], replayed["attempts"]) == (dead["id"], "queued", 0)
    assert replayed["reason"] is None
    assert replayed["last_error"] is None
    await app.drain()
    [after] = (await app.notification(replayed["notification_id"]))["deliveries"]
    assert (after["id"], after["status"], after["attempts"]) == (dead["id"], "sent", 1)
    assert endpoint.accepted == {dead["id"]: 1}
    assert (await _list(app)).json()["data"] == []
    # The history stays, with the replay in it.
    query = select(delivery_events.c.status).where(delivery_events.c.delivery_id == dead["id"])
    async with app.ctx.engine.connect() as conn:
        history = [row.status for row in await conn.execute(query.order_by(delivery_events.c.id))]
    assert history[-2:] == ["dead", "replayed"]  # a plain `sent` is the row's own state
    timeline = (await app.client.get(f"/v1/deliveries/{dead['id']}", headers=app.auth)).json()
    assert [e["type"] for e in timeline["events"]][-4:] == ["dead", "replayed", "attempt", "sent"]
    again = await app.client.post(f"/v1/dead-letters/{dead['id']}/replay", headers=app.auth)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "not_dead"


async def test_replay_of_unknown_or_foreign_delivery_is_404(
    app: Harness, sink: WebhookSink
) -> None:
    sink.respond = Endpoint()
    [dead] = await _dead(app, sink, ["u"])
    unknown = await app.client.post("/v1/dead-letters/dlv_nothing/replay", headers=app.auth)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"
    other_key = await app.new_tenant("other")
    other = {"Authorization": f"Bearer {other_key}"}
    foreign = await app.client.post(f"/v1/dead-letters/{dead['id']}/replay", headers=other)
    assert foreign.status_code == 404
    assert (await app.client.get("/v1/dead-letters", headers=other)).json()["data"] == []
    bulk = await app.client.post("/v1/dead-letters/replay", json={}, headers=other)
    assert bulk.json() == {"replayed": 0, "more": False}
    assert (await _list(app)).json()["data"][0]["status"] == "dead"


async def test_bulk_replay(app: Harness, sink: WebhookSink) -> None:
    endpoint = Endpoint()
    sink.respond = endpoint
    dead = await _dead(app, sink, ["a", "b", "c"])
    endpoint.healthy = True
    nothing = await app.client.post(
        "/v1/dead-letters/replay", json={"channel": "email"}, headers=app.auth
    )
    assert nothing.json() == {"replayed": 0, "more": False}
    some = await app.client.post(
        "/v1/dead-letters/replay", json={"channel": "webhook", "limit": 2}, headers=app.auth
    )
    assert some.status_code == 202, some.text
    assert some.json() == {"replayed": 2, "more": True}
    rest = await app.client.post("/v1/dead-letters/replay", headers=app.auth)
    assert rest.json() == {"replayed": 1, "more": False}
    await app.drain()
    assert endpoint.accepted == {d["id"]: 1 for d in dead}
    assert (await _list(app)).json()["data"] == []


async def test_bulk_replay_honours_idempotency_keys(app: Harness, sink: WebhookSink) -> None:
    sink.respond = Endpoint()
    await _dead(app, sink, ["a", "b"])
    headers = {**app.auth, "Idempotency-Key": "replay-1"}
    body = {"before": "2099-01-01T00:00:00Z"}
    first = await app.client.post("/v1/dead-letters/replay", json=body, headers=headers)
    repeat = await app.client.post("/v1/dead-letters/replay", json=body, headers=headers)
    assert first.json() == repeat.json() == {"replayed": 2, "more": False}
    changed = await app.client.post(
        "/v1/dead-letters/replay", json={"channel": "sms"}, headers=headers
    )
    assert changed.status_code == 409
    assert changed.json()["error"]["code"] == "idempotency_conflict"


async def test_bulk_replay_validates_its_body(app: Harness) -> None:
    for body in (
        {"channel": "pigeon"},
        {"before": "2026-01-01T00:00:00"},
        {"limit": 0},
        {"limit": 10_001},
        {"unknown": 1},
        [],
    ):
        response = await app.client.post("/v1/dead-letters/replay", json=body, headers=app.auth)
        assert response.status_code == 422, body
        assert response.json()["error"]["code"] == "validation_error"


async def test_dead_letters_need_the_admin_scope(lite: Harness) -> None:
    tenant = await tenant_store.get_tenant(lite.ctx.engine, lite.tenant_id)
    assert tenant is not None
    key = await tenant_store.create_key(lite.ctx.engine, tenant.id, ["send", "read", "manage"])
    headers = {"Authorization": f"Bearer {key}"}
    for method, path in (
        ("GET", "/v1/dead-letters"),
        ("POST", "/v1/dead-letters/replay"),
        ("POST", "/v1/dead-letters/dlv_x/replay"),
    ):
        response = await lite.client.request(method, path, headers=headers)
        assert response.status_code == 403, path
        assert response.json()["error"]["code"] == "insufficient_scope"


async def test_concurrent_bulk_replays_claim_each_delivery_once(
    app: Harness, sink: WebhookSink
) -> None:
    endpoint = Endpoint()
    sink.respond = endpoint
    dead = await _dead(app, sink, ["a", "b", "c", "d"])
    endpoint.healthy = True
    responses = await asyncio.gather(
        *(app.client.post("/v1/dead-letters/replay", headers=app.auth) for _ in range(4))
    )
    assert sum(r.json()["replayed"] for r in responses) == len(dead)
    await app.drain()
    assert endpoint.accepted == {d["id"]: 1 for d in dead}


# -- Found through their `dead` events ---------------------------------------------------


async def _stored(
    app: Harness,
    events: list[tuple[str, datetime]],
    *,
    status: str = "dead",
    tenant_id: str | None = None,
    channel: str = "webhook",
    provider: str = "hooks",
) -> str:
    """A delivery as the status writer leaves it: its ``events`` (status, time) in order,
    its row in ``status`` and changed last at the last event's time."""
    tenant = tenant_id or app.tenant_id
    delivery_id = new_id("dlv")
    first, last = events[0][1], events[-1][1]
    row = {
        "id": delivery_id,
        "notification_id": new_id("ntf"),
        "tenant_id": tenant,
        "recipient_id": "u",
        "channel": channel,
        "provider": provider,
        "priority": "normal",
        "status": status,
        "attempts": 3,
        "created_at": first - timedelta(minutes=5),
        "updated_at": last,
    }
    stored = [
        {"delivery_id": delivery_id, "tenant_id": tenant, "status": kind, "created_at": at}
        for kind, at in events
    ]
    async with app.ctx.engine.begin() as conn:
        await conn.execute(insert(deliveries), row)
        for event in stored:  # one at a time: their ids in this order
            await conn.execute(insert(delivery_events), event)
    return delivery_id


def _ids(body: dict[str, Any]) -> list[str]:
    return [item["id"] for item in body["data"]]


async def _every_page(app: Harness, key: str | None = None, **params: Any) -> list[str]:
    headers = {"Authorization": f"Bearer {key}"} if key else app.auth
    seen: list[str] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await app.client.get("/v1/dead-letters", params=query, headers=headers)
        assert response.status_code == 200, response.text
        seen.extend(_ids(response.json()))
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return seen


async def _backlog(app: Harness) -> dict[tuple[Any, ...], int]:
    rows = await store.backlog(app.ctx.engine, True, 10_000)
    return {tuple(row[:-1]): row[-1] for row in rows}


async def test_a_letter_that_dies_again_is_listed_once_at_its_last_death(
    app: Harness, sink: WebhookSink
) -> None:
    sink.respond = Endpoint()  # failing throughout
    [dead] = await _dead(app, sink, ["u"])
    [listed] = (await _list(app)).json()["data"]
    first = listed["updated_at"]
    replayed = await app.client.post(f"/v1/dead-letters/{dead['id']}/replay", headers=app.auth)
    assert replayed.status_code == 202, replayed.text
    await app.drain()
    [again] = (await app.notification(listed["notification_id"]))["deliveries"]
    assert again["status"] == "dead"
    query = select(delivery_events.c.status).where(delivery_events.c.delivery_id == dead["id"])
    async with app.ctx.engine.connect() as conn:
        history = [row.status for row in await conn.execute(query)]
    assert history.count("dead") == 2
    [item] = (await _list(app)).json()["data"]
    assert item["id"] == dead["id"]
    assert item["updated_at"] == again["updated_at"] > first
    # Its first death no longer counts: it is dead since the second.
    assert _ids((await _list(app, before=first)).json()) == []
    assert _ids((await _list(app, after=first)).json()) == [dead["id"]]
    assert await stats.dead_letters(app.ctx.engine, app.tenant_id) == 1
    assert await _backlog(app) == {("webhook", app.tenant_id): 1}
    bulk = await app.client.post("/v1/dead-letters/replay", json={"limit": 5}, headers=app.auth)
    assert bulk.json() == {"replayed": 1, "more": False}


async def test_a_replayed_letter_is_gone_until_it_dies_again(app: Harness) -> None:
    base = utcnow() - timedelta(days=1)
    # Replayed just now (the sweeper leaves a delivery queued this recently alone).
    waiting = await _stored(app, [("dead", base), ("replayed", utcnow())], status="queued")
    sent = await _stored(
        app, [("dead", base), ("replayed", base + timedelta(minutes=2))], status="sent"
    )
    # Its dead event is the newest of the tenant's: still nothing to list.
    late = await _stored(
        app,
        [("dead", base + timedelta(hours=1)), ("replayed", base + timedelta(hours=2))],
        status="sent",
    )
    dead = await _stored(app, [("dead", base - timedelta(hours=1))])
    assert await _every_page(app, limit=1) == [dead]
    assert await stats.dead_letters(app.ctx.engine, app.tenant_id) == 1
    assert await _backlog(app) == {("webhook", app.tenant_id): 1}
    rows, more = await store.replay_many(
        app.ctx.engine, store.DeadFilter(app.tenant_id), 10, actor="test"
    )
    assert ([row["id"] for row in rows], more) == ([dead], False)
    for delivery_id in (waiting, sent, late):
        assert await store.status_of(app.ctx.engine, app.tenant_id, delivery_id) != "dead"


async def test_an_erased_recipients_dead_letters_are_neither_listed_nor_counted(
    app: Harness, sink: WebhookSink
) -> None:
    sink.respond = Endpoint()
    await _dead(app, sink, ["u", "v"])
    assert len((await _list(app)).json()["data"]) == 2
    erased = await app.client.delete("/v1/recipients/u", headers=app.auth)
    assert erased.status_code == 204, erased.text
    [left] = (await _list(app)).json()["data"]
    assert left["recipient_id"] == "v"
    assert await stats.dead_letters(app.ctx.engine, app.tenant_id) == 1
    assert await _backlog(app) == {("webhook", app.tenant_id): 1}
    # Its `dead` event stays (under the delivery's new id): it is its row that says failed.
    failed = select(deliveries.c.id).where(deliveries.c.recipient_id != "v")
    e = delivery_events
    async with app.ctx.engine.connect() as conn:
        [erased_id] = (await conn.execute(failed)).scalars().all()
        events = select(e.c.status).where(e.c.delivery_id == erased_id)
        assert "dead" in (await conn.execute(events)).scalars().all()
    assert await store.status_of(app.ctx.engine, app.tenant_id, erased_id) == "failed"
    bulk = await app.client.post("/v1/dead-letters/replay", headers=app.auth)
    assert bulk.json() == {"replayed": 1, "more": False}


async def test_another_tenants_dead_letters_never_appear(app: Harness) -> None:
    other = await tenant_store.create_tenant(app.ctx.engine, "other")
    other_key = await tenant_store.create_key(app.ctx.engine, other.id, ["admin"])
    at = utcnow() - timedelta(hours=1)
    mine = await _stored(app, [("dead", at)])
    # The same time, on the same channel, and one newer than mine.
    theirs = [
        await _stored(app, [("dead", at)], tenant_id=other.id),
        await _stored(app, [("dead", at + timedelta(minutes=1))], tenant_id=other.id),
    ]
    assert await _every_page(app, limit=1) == [mine]
    assert sorted(await _every_page(app, key=other_key, limit=1)) == sorted(theirs)
    assert await _every_page(app, channel="webhook", provider="hooks") == [mine]
    assert await stats.dead_letters(app.ctx.engine, app.tenant_id) == 1
    assert await stats.dead_letters(app.ctx.engine, other.id) == 2
    assert await _backlog(app) == {("webhook", app.tenant_id): 1, ("webhook", other.id): 2}
    foreign = await app.client.post(f"/v1/dead-letters/{theirs[0]}/replay", headers=app.auth)
    assert foreign.status_code == 404
    bulk = await app.client.post("/v1/dead-letters/replay", headers=app.auth)
    assert bulk.json() == {"replayed": 1, "more": False}
    for delivery_id in theirs:
        assert await store.status_of(app.ctx.engine, other.id, delivery_id) == "dead"


async def test_pages_with_equal_times_show_each_letter_once(app: Harness) -> None:
    at = utcnow() - timedelta(hours=1)
    same = [await _stored(app, [("dead", at)]) for _ in range(5)]
    newer = await _stored(app, [("dead", at + timedelta(seconds=1))])
    older = await _stored(app, [("dead", at - timedelta(seconds=1))])
    expected = [newer, *sorted(same, reverse=True), older]
    for size in (1, 2, 3, 50):
        assert await _every_page(app, limit=size) == expected, size
    # A cursor from the middle of the equal ones goes on after it, not after their time.
    first = (await _list(app, limit=3)).json()
    assert _ids(first) == expected[:3]
    following = await _list(app, limit=50, cursor=first["next_cursor"])
    assert _ids(following.json()) == expected[3:]


async def test_after_and_before_bound_the_time_of_death(app: Harness) -> None:
    t0 = utcnow() - timedelta(days=1)
    t1, t2, t3 = (t0 + timedelta(hours=n) for n in (1, 2, 3))
    a = await _stored(app, [("dead", t0)])
    b = await _stored(app, [("dead", t1)])
    # Created long before t1, dead at t2: its creation time does not count.
    c = await _stored(app, [("dead", t2)])
    # Dead first at t0, replayed, and dead again at t3: it counts as dead since t3.
    d = await _stored(app, [("dead", t0), ("replayed", t1), ("dead", t3)])

    def stamp(at: datetime) -> str:
        return at.isoformat()

    assert await _every_page(app) == [d, c, b, a]
    assert await _every_page(app, after=stamp(t0)) == [d, c, b]
    assert await _every_page(app, before=stamp(t2)) == [b, a]
    assert await _every_page(app, after=stamp(t0), before=stamp(t3)) == [c, b]
    assert await _every_page(app, after=stamp(t0), before=stamp(t3), limit=1) == [c, b]
    assert await _every_page(app, after=stamp(t3)) == []
    # A bulk replay takes the same bounds, oldest first.
    f = store.DeadFilter(app.tenant_id, before=t3)
    rows, more = await store.replay_many(app.ctx.engine, f, 2, actor="test")
    assert ([row["id"] for row in rows], more) == ([a, b], True)
    rows, more = await store.replay_many(app.ctx.engine, f, 2, actor="test")
    assert ([row["id"] for row in rows], more) == ([c], False)
    assert await _every_page(app) == [d]


async def test_a_rare_channel_or_provider_pages_through_a_bounded_walk(
    app: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A channel or provider few dead letters have is a walk of at most SCAN_LIMIT `dead`
    events a page, not a read of every dead letter of the tenant: pages may be short or
    empty while `next_cursor` is set, and following the cursors lists every match once,
    newest first."""
    monkeypatch.setattr(store, "SCAN_LIMIT", 5)
    base = utcnow() - timedelta(days=1)
    stored: list[tuple[str, str]] = []  # (id, channel), newest first
    for i in range(20):
        at = base + timedelta(seconds=i)
        channel, provider = ("sms", "twilio") if i in (3, 11, 17) else ("webhook", "hooks")
        if i == 11:  # replayed since: its `dead` event is walked, the letter not listed
            await _stored(
                app,
                [("dead", at), ("replayed", at)],
                status="queued",
                channel=channel,
                provider=provider,
            )
            continue
        did = await _stored(app, [("dead", at)], channel=channel, provider=provider)
        stored.insert(0, (did, channel))
    expected = [d for d, c in stored if c == "sms"]
    for params in ({"channel": "sms"}, {"provider": "twilio"}):
        pages = await _pages(app, limit=2, **params)
        # 19..15 examined (17 found), 14..10 (11 replayed), 9..5, 4..0 (3 found).
        assert pages == [[expected[0]], [], [], [expected[1]]], params
        # A full page ends at its last letter, the walk going on after it: 19..15 (17
        # found), 16..12, 11..7, 6..2 (3 found), then 2..0.
        one = await _pages(app, limit=1, **params)
        assert one == [[expected[0]], [], [], [expected[1]], []], params
    # A channel no letter has: an empty page per walk, then the end.
    assert await _pages(app, channel="email", limit=10) == [[], [], [], []]
    # A common one: full pages, as without a filter.
    pages = await _pages(app, channel="webhook", limit=2)
    assert [d for page in pages for d in page] == [d for d, c in stored if c == "webhook"]
    assert all(len(page) == 2 for page in pages[:-1])


async def _pages(app: Harness, **params: Any) -> list[list[str]]:
    """The ids of every page of dead letters, following `next_cursor` until it is null."""
    pages: list[list[str]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await _list(app, **query)
        assert response.status_code == 200, response.text
        pages.append(_ids(response.json()))
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 100, "the cursor does not move on"


async def test_a_bulk_replay_finds_its_letters_before_it_takes_the_writer(
    lite: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding the letters of a bulk replay walks the tenant's dead events past those that
    do not match, as long as that takes. On SQLite it runs outside the write, which holds
    the one writer that every tenant's commits and sends take turns on."""
    at = utcnow() - timedelta(hours=1)
    letters = [await _stored(lite, [("dead", at + timedelta(seconds=n))]) for n in range(3)]
    writing = contextvars.ContextVar("writing", default=False)
    searches: list[bool] = []
    find, write = store.oldest, store.write_tx

    def watched(f: store.DeadFilter, limit: int) -> Any:
        searches.append(writing.get())
        return find(f, limit)

    @contextlib.asynccontextmanager
    async def writer(engine: Any) -> AsyncIterator[Any]:
        async with write(engine) as conn:
            token = writing.set(True)
            try:
                yield conn
            finally:
                writing.reset(token)

    monkeypatch.setattr(store, "write_tx", writer)
    monkeypatch.setattr(store, "oldest", watched)
    replay = await lite.client.post(
        "/v1/dead-letters/replay", json={"channel": "webhook", "limit": 2}, headers=lite.auth
    )
    assert replay.json() == {"replayed": 2, "more": True}
    assert searches == [False], searches
    replay = await lite.client.post("/v1/dead-letters/replay", headers=lite.auth)
    assert replay.json() == {"replayed": 1, "more": False}
    for delivery_id in letters:
        assert await store.status_of(lite.ctx.engine, lite.tenant_id, delivery_id) != "dead"


# -- Their plans --------------------------------------------------------------------------


async def test_dead_letters_are_read_through_the_events_status_index(app: Harness) -> None:
    f = store.DeadFilter(app.tenant_id)
    narrow = store.DeadFilter(
        app.tenant_id, channel="email", provider="p", after=utcnow() - timedelta(days=1)
    )
    at = Position(utcnow(), "dlv_x")
    for query in (
        store.page_query(f, None, 51),
        store.page_query(f, at, 51),
        store.oldest(f, 1000),
        store.oldest(narrow, 1000),
        store.found(f, 1000),
    ):
        plan = await plan_of(app, query)
        assert_reads_dead_events(plan)
        assert "TEMP B-TREE" not in plan, plan
        assert not SORT_NODE.search(plan), plan


# PostgreSQL: the walk's bound over its numbered rows (store/dead_letters.py ``_walked``).
BOUNDED_WALK = re.compile(r"Limit  \(.*\n\s*->  WindowAgg  \(")


async def test_a_filtered_page_is_a_bounded_walk_of_the_events_status_index(
    app: Harness,
) -> None:
    postgres = app.ctx.engine.dialect.name == "postgresql"
    at = Position(utcnow(), "dlv_x")
    since = utcnow() - timedelta(days=1)
    for f in (
        store.DeadFilter(app.tenant_id, channel="email"),
        store.DeadFilter(app.tenant_id, channel="email", provider="p", after=since),
        store.DeadFilter(app.tenant_id, provider="p", before=utcnow()),
    ):
        for cursor in (None, at):
            query = store.page_query(f, cursor, 51)
            compiled = str(query.compile(compile_kwargs={"literal_binds": True}))
            assert f"LIMIT {store.SCAN_LIMIT + 1}" in compiled, compiled
            plan = await plan_of(app, query)
            assert_reads_dead_events(plan)
            if postgres:
                # The walk streams from the index, numbered, and stops at the bound; the
                # letters shown come out of it in order: nothing is sorted.
                assert BOUNDED_WALK.search(plan), (f, plan)
                assert not SORT_NODE.search(plan), (f, plan)
            else:
                # SQLite walks the index in order too, and sorts only what it keeps of
                # the walk (at most SCAN_LIMIT narrow rows, top ``limit``), then the page.
                assert plan.count("USE TEMP B-TREE FOR ORDER BY") == 2, (f, plan)
