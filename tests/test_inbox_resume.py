"""Resume is exact: messages take their place in the arrival order in commit order, live
messages that come through the hub out of that order reach the client in it, a message
back from snooze while the client was away is replayed, and counts carried by events are
taken newest first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from clarion.realtime.base import arrivals
from clarion.store import inbox, inbox_changes
from clarion.store.db import utcnow
from clarion.store.tables import inbox_messages
from harness import Harness, make_settings, running
from inbox_kit import bearer, event_stream, inbox_ready, send, serving, websocket


@pytest.fixture
async def base(app: Harness) -> AsyncIterator[str]:
    async with serving(app) as url:
        yield url


@pytest.fixture
async def pg(migrated_postgres_url: str, redis_url: str) -> AsyncIterator[Harness]:
    async with running(make_settings(migrated_postgres_url, redis_url)) as harness:
        yield harness


def _row(app: Harness, rid: str, name: str) -> dict[str, Any]:
    """A message as the in-app provider stores it (providers/inapp.py)."""
    return {
        "id": f"msg_{name}",
        "tenant_id": app.tenant_id,
        "recipient_id": rid,
        "delivery_id": f"dlv_{name}",
        "notification_id": None,
        "content": {"title": name, "body": name},
        "category": None,
        "fallback": None,
    }


async def _uncommitted_message(conn: AsyncConnection, app: Harness, mid: str, rid: str) -> None:
    """A message row inserted by ``conn``'s transaction, left uncommitted."""
    row = {"id": mid, "tenant_id": app.tenant_id, "recipient_id": rid, "delivery_id": mid}
    await conn.execute(
        inbox_messages.insert().values(
            **row, content={}, status="unread", created_at=utcnow(), seq=0
        )
    )


async def _lock_waiters(app: Harness, count: int) -> None:
    """Until ``count`` transactions on the inbox tables wait for a lock (asked again and
    again, no timer: each question is a round trip to the server)."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND query ILIKE '%inbox_%'"
    )
    async with asyncio.timeout(10), app.ctx.engine.connect() as conn:
        while (await conn.execute(query)).scalar() != count:
            await conn.rollback()


@pytest.mark.parametrize("driver", ["sqlalchemy", "asyncpg"])
async def test_an_earlier_arrival_commits_before_a_later_one(pg: Harness, driver: str) -> None:
    """The race resume had: message A is stamped, then B; B commits first; a client that
    resumes then holds B and skips A when it commits. Now A holds the recipient's counter
    row (its place in the order) until it commits, so B waits: what is visible is always
    a prefix of the arrival order. Both ways of storing: the transaction of the API's
    engine, and the in-app worker's one statement on asyncpg."""
    await inbox_ready(pg, "u-1")
    engine = pg.ctx.engine
    pool = pg.ctx.pg if driver == "asyncpg" else None
    # A's insert will wait on this uncommitted row with A's id: A is paused after taking
    # its place, before its commit.
    async with engine.connect() as blocker:
        await _uncommitted_message(blocker, pg, "msg_a", "someone-else")
        first = asyncio.create_task(inbox_changes.insert(engine, [_row(pg, "u-1", "a")], pool))
        await _lock_waiters(pg, 1)
        second = asyncio.create_task(inbox_changes.insert(engine, [_row(pg, "u-1", "b")], pool))
        await _lock_waiters(pg, 2)
        # Both are stamped, neither committed: a resume now finds nothing, and B waits.
        assert await inbox.since(engine, pg.tenant_id, "u-1", 0) == []
        assert not second.done()
        await blocker.rollback()
    [a] = await first
    [b] = await second
    assert a["message"]["created_at"] < b["message"]["created_at"]
    assert (a["seq"], b["seq"]) == (1, 2)
    assert b["counts"]["version"] > a["counts"]["version"]
    assert b["counts"]["total"] == 2
    replay = await inbox.since(engine, pg.tenant_id, "u-1", 0)
    assert [(seq, m["id"]) for seq, m in replay] == [(1, "msg_a"), (2, "msg_b")]
    assert [m["id"] for _, m in await inbox.since(engine, pg.tenant_id, "u-1", 1)] == ["msg_b"]


async def test_the_workers_statement_counts_only_messages_not_stored_yet(pg: Harness) -> None:
    """The in-app worker's one statement on PostgreSQL: a message stored already is
    neither counted nor numbered again."""
    await inbox_ready(pg, "u-1")
    engine, pool = pg.ctx.engine, pg.ctx.pg
    assert pool is not None
    [a] = await inbox_changes.insert(engine, [_row(pg, "u-1", "a")], pool)
    rows = [_row(pg, "u-1", "b"), _row(pg, "u-1", "a"), _row(pg, "u-2", "c")]
    stored = await inbox_changes.insert(engine, rows, pool)
    assert [(s["message"]["id"], s["seq"]) for s in stored] == [
        ("msg_b", a["seq"] + 1),
        ("msg_c", 1),
    ]
    assert stored[0]["counts"]["total"] == 2
    assert stored[1]["counts"]["total"] == 1
    state = await inbox.state(engine, pg.tenant_id, "u-1")
    assert (state["total"], state["unread"], state["unseen"], state["seq"]) == (2, 2, 2, 2)
    assert await inbox_changes.insert(engine, [_row(pg, "u-1", "b")], pool) == []
    assert (await inbox.state(engine, pg.tenant_id, "u-1"))["total"] == 2
    replay = await inbox.since(engine, pg.tenant_id, "u-1", 0)
    assert [(seq, m["id"]) for seq, m in replay] == [(1, "msg_a"), (2, "msg_b")]


async def test_a_message_stored_by_another_writer_meanwhile_gives_its_count_back(
    pg: Harness,
) -> None:
    """Two writers of the same message at once (a second attempt racing the first): the
    statement that finds it stored when it inserts gives its count back."""
    await inbox_ready(pg, "u-1")
    engine, pool = pg.ctx.engine, pg.ctx.pg
    assert pool is not None
    async with engine.connect() as other:
        # The other writer's message, not committed: the statement does not see it when it
        # counts, and waits for it when it inserts.
        await _uncommitted_message(other, pg, "msg_a", "u-1")
        storing = asyncio.create_task(
            inbox_changes.insert(engine, [_row(pg, "u-1", "a"), _row(pg, "u-1", "b")], pool)
        )
        await _lock_waiters(pg, 1)
        await other.commit()
    [b] = await storing
    assert b["message"]["id"] == "msg_b"
    assert b["counts"]["total"] == 1
    state = await inbox.state(engine, pg.tenant_id, "u-1")
    # Only b is counted; the number a took stays unused.
    assert (state["total"], state["unread"], state["unseen"], state["seq"]) == (1, 1, 1, 2)


async def test_a_message_stored_twice_keeps_its_place_and_counts(app: Harness) -> None:
    await inbox_ready(app, "u-1")
    engine = app.ctx.engine
    [a] = await inbox_changes.insert(engine, [_row(app, "u-1", "a")])
    stored = await inbox_changes.insert(engine, [_row(app, "u-1", "a"), _row(app, "u-1", "b")])
    assert [s["message"]["id"] for s in stored] == ["msg_b"]
    # The repeat's number stays unused; the counts are right.
    assert stored[0]["seq"] == a["seq"] + 2
    assert stored[0]["counts"]["total"] == 2
    state = await inbox.state(engine, app.tenant_id, "u-1")
    assert (state["total"], state["unread"], state["seq"]) == (2, 2, 3)
    replay = await inbox.since(engine, app.tenant_id, "u-1", 0)
    assert [m["id"] for _, m in replay] == ["msg_a", "msg_b"]


async def test_messages_published_out_of_order_reach_the_client_in_order(
    app: Harness, base: str
) -> None:
    """Two workers publish after their commits, so the later message can come first: the
    connection reads the gap from the table and sends both in order, each once."""
    token = await inbox_ready(app, "u-1")
    async with websocket(base, token) as ws:
        assert (await ws.until("count"))["cursor"] == "0"
        stored = await inbox_changes.insert(
            app.ctx.engine, [_row(app, "u-1", "one"), _row(app, "u-1", "two")]
        )
        await app.ctx.hub.publish_many(arrivals(stored)[::-1])
        got = [await ws.until("message") for _ in range(2)]
        assert [(e["message"]["id"], e["cursor"]) for e in got] == [
            ("msg_one", "1"),
            ("msg_two", "2"),
        ]
        counted = await ws.until("count")
        assert (counted["total"], counted["cursor"]) == (2, "2")
        await ws.send({"type": "ping"})
        while (event := await ws.next())["type"] != "pong":
            assert event["type"] == "count", event  # never a message twice


async def test_a_snooze_that_ends_while_away_is_replayed_on_resume(app: Harness, base: str) -> None:
    token = await inbox_ready(app, "u-1")
    for i in range(2):
        await send(app, "u-1", i)
    await app.drain()
    [first, _] = [m for _, m in await inbox.since(app.ctx.engine, app.tenant_id, "u-1", 0)]
    until = datetime.now(UTC) + timedelta(hours=1)
    async with websocket(base, token) as ws:
        assert (await ws.until("count"))["total"] == 2
        response = await app.client.post(
            f"/v1/inbox/{first['id']}/snooze",
            json={"until": until.isoformat()},
            headers=bearer(token),
        )
        assert response.status_code == 200, response.text
        assert (await ws.until("changed"))["action"] == "snooze"
        counted = await ws.until("count")
        assert counted["total"] == 1
        cursor = counted["cursor"]
    # Away; the snooze ends (the clock moved, not waited for) and the upkeep brings it back.
    gate = app.ctx.inbox
    gate.clock = lambda: until + timedelta(seconds=1)
    try:
        assert await gate.upkeep() == 1
    finally:
        gate.clock = utcnow
    async with websocket(base, token) as ws:
        await ws.send({"type": "resume", "after": cursor})
        await ws.until("count")  # the opening count
        back = await ws.until("message")
        assert back["message"]["id"] == first["id"]
        assert int(back["cursor"]) > int(cursor)
        counted = await ws.next()
        assert (counted["type"], counted["total"], counted["unread"]) == ("count", 2, 2)
        # Resuming from the same place again: nothing twice.
        await ws.send({"type": "resume", "after": cursor})
        assert (await ws.next())["type"] == "count"


async def test_counts_come_with_the_change_newest_first(app: Harness, base: str) -> None:
    """A change's event carries the counts it committed, with the counter's version: the
    connection takes them without reading the table, and an older version that arrives
    late does not turn them back."""
    token = await inbox_ready(app, "u-1")
    hub = app.ctx.hub
    async with websocket(base, token) as ws:
        await ws.until("count")
        await send(app, "u-1", 1)
        await ws.until("message")
        assert (await ws.until("count"))["unread"] == 1
        stale = {"unread": 7, "unseen": 7, "total": 7, "seq": 0, "version": 0}
        await hub.publish(
            app.tenant_id, "u-1", {"type": "changed", "action": "x", "ids": [], "counts": stale}
        )
        changed = await ws.until("changed")
        assert "counts" not in changed
        assert (await ws.next())["unread"] == 1
        newer = {**stale, "unread": 5, "version": 10**9}
        await hub.publish(
            app.tenant_id, "u-1", {"type": "changed", "action": "x", "ids": [], "counts": newer}
        )
        await ws.until("changed")
        assert (await ws.next())["unread"] == 5  # taken from the event, as carried


async def _replayed(base: str, token: str, transport: str, cursor: str, k: int) -> list[Any]:
    """One connection that resumes after ``cursor`` and drops after ``k`` replayed
    messages (or at the count that ends the replay): the message events received."""
    got: list[Any] = []
    if transport == "sse":
        async with event_stream(base, token, last_event_id=cursor) as stream:
            while len(got) < k:
                ident, event = await stream.next()
                if event["type"] != "message":
                    break
                assert ident == event["cursor"]
                got.append(event)
        return got
    if transport == "ws-after":
        # The place in the URL: the replay comes first, before any count.
        async with websocket(base, token, header=True, query={"after": cursor}) as ws:
            while len(got) < k and (event := await ws.next())["type"] == "message":
                got.append(event)
        return got
    async with websocket(base, token, header=True) as ws:
        await ws.send({"type": "resume", "after": cursor})
        await ws.until("count")  # the opening count: the inbox as the connection found it
        while len(got) < k and (event := await ws.next())["type"] == "message":
            got.append(event)
    return got


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("transport", ["sse", "ws", "ws-after"])
async def test_a_resume_from_any_replayed_frame_loses_nothing(
    app: Harness, base: str, transport: str, k: int
) -> None:
    """Each replayed frame carries its own place: a client that drops after every k-th
    replayed message and resumes from the last cursor it holds gets every message once."""
    token = await inbox_ready(app, "u-1")
    stored = await inbox_changes.insert(
        app.ctx.engine, [_row(app, "u-1", f"m{i:02}") for i in range(12)]
    )
    sent = [s["message"]["id"] for s in stored]
    received: list[str] = []
    cursor = "0"
    for _ in range(len(sent) + 1):
        got = await _replayed(base, token, transport, cursor, k)
        if not got:
            break
        received += [e["message"]["id"] for e in got]
        cursor = got[-1]["cursor"]
    assert received == sent


async def test_a_replay_frame_reaches_past_what_the_connection_sent_live(
    app: Harness, base: str
) -> None:
    """A resume in the middle of a connection replays only what this connection has not
    sent; the last replayed frame's place reaches past the live messages it sent before,
    so resuming from it repeats none of them."""
    token = await inbox_ready(app, "u-1")
    engine = app.ctx.engine
    await inbox_changes.insert(engine, [_row(app, "u-1", f"old{i}") for i in range(3)])
    async with websocket(base, token, header=True) as ws:
        await ws.send({"type": "ping"})  # no resume first: live events flow at once
        assert (await ws.until("count"))["cursor"] == "3"
        stored = await inbox_changes.insert(engine, [_row(app, "u-1", f"new{i}") for i in (4, 5)])
        await app.ctx.hub.publish_many(arrivals(stored))
        live = [await ws.until("message") for _ in range(2)]
        assert [e["cursor"] for e in live] == ["4", "5"]
        await ws.send({"type": "resume", "after": "0"})
        replayed = [await ws.until("message") for _ in range(3)]
        assert [e["message"]["id"] for e in replayed] == ["msg_old0", "msg_old1", "msg_old2"]
        assert [e["cursor"] for e in replayed] == ["1", "2", "5"]
    async with websocket(base, token, header=True, query={"after": "5"}) as ws:
        assert (await ws.next())["type"] == "count"
