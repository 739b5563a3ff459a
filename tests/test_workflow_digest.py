"""Workflow `digest` steps: the first trigger for a key opens a window and carries it, the
others join it and end `digested`, and the carrier goes on after the window with
`digest.count` and `digest.events`; on both stores, with windows on real timers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from clarion.domain.runs import RunStatus
from clarion.pipeline.planner import Planner
from clarion.store import retention, run_digests
from clarion.store.db import as_utc, utcnow
from clarion.store.tables import workflow_digest_events, workflow_digests, workflow_runs
from harness import Harness, make_settings, running
from inbox_kit import bearer, token_for
from test_workflow_runs import put_workflow, runs, until_status

DIGEST = {
    "channels": {
        "inapp": {
            "title": "{{ digest.count }} comments",
            "body": "{% for e in digest.events %}{{ e.who }};{% endfor %}",
        },
        "email": {"subject": "{{ digest.count }} comments", "text": "{{ who }} and others"},
    }
}
ONE = {"channels": {"inapp": {"title": "Comment", "body": "{{ who }} commented"}}}


async def _ready(app: Harness) -> Harness:
    await app.put_template("digest", DIGEST)
    await app.put_template("one", ONE)
    for rid in ("r1", "r2"):
        await app.put_recipient(rid, email=f"{rid}@example.com")
    return app


@pytest.fixture
async def ready(app: Harness) -> Harness:
    return await _ready(app)


@pytest.fixture
async def capped(backend: tuple[str, str]) -> AsyncIterator[Harness]:
    """Clarion keeping the data of two triggers per window."""
    async with running(make_settings(*backend, workflow_digest_max_events=2)) as harness:
        yield await _ready(harness)


async def _batch(app: Harness, workflow: str, rid: str, *data: dict[str, Any]) -> list[str]:
    """Trigger ``workflow`` once per ``data`` for ``rid``, all in one request."""
    body = {
        "notifications": [
            {"workflow": workflow, "to": {"recipient_id": rid}, "data": item} for item in data
        ]
    }
    response = await app.client.post("/v1/notifications/batch", json=body, headers=app.auth)
    assert response.status_code in (200, 202, 207), response.text
    results = response.json()["results"]
    assert all(r["status"] == "accepted" for r in results), results
    return [r["id"] for r in results]


async def _trigger(app: Harness, workflow: str, rid: str, **extra: Any) -> str:
    data = extra.pop("data", {"who": "Sam"})
    response = await app.send(
        {"workflow": workflow, "to": {"recipient_id": rid}, "data": data, **extra}
    )
    assert response.status_code == 202, response.text
    nid: str = response.json()["id"]
    return nid


async def _run(app: Harness, nid: str, rid: str = "r1") -> dict[str, Any]:
    return (await runs(app, nid))[rid]


async def _settled(app: Harness, nid: str, rid: str = "r1") -> dict[str, Any]:
    """The run once it has entered its digest step: waiting as the carrier, or ended."""
    return await until_status(app, nid, rid, "waiting", "digested", "completed", "cancelled")


async def _split(app: Harness, nids: list[str]) -> tuple[str, list[str]]:
    """Of triggers sent together, the one whose run opened the window (the first the
    planner took: a batch is planned in the order it was accepted) and the others."""
    settled = {nid: await _settled(app, nid) for nid in nids}
    carriers = [nid for nid, run in settled.items() if run["status"] == "waiting"]
    assert len(carriers) == 1, settled
    return carriers[0], [nid for nid in nids if nid != carriers[0]]


def _steps(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["id"]: step for step in run["steps"]}


async def _inbox(app: Harness, rid: str) -> list[dict[str, Any]]:
    token = await token_for(app, rid)
    response = await app.client.get("/v1/inbox", headers=bearer(token))
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["data"]
    return items


async def _windows(app: Harness) -> list[dict[str, Any]]:
    async with app.ctx.engine.connect() as conn:
        rows = await conn.execute(select(workflow_digests).order_by(workflow_digests.c.key))
        return [dict(row) for row in rows.mappings()]


async def _events(app: Harness) -> int:
    async with app.ctx.engine.connect() as conn:
        found = await conn.execute(select(func.count()).select_from(workflow_digest_events))
        return int(found.scalar() or 0)


COLLECT = {"id": "collect", "type": "digest", "window": "2s"}
MAIL = {"id": "mail", "type": "channel", "channel": "inapp", "template": "digest"}


async def test_triggers_within_the_window_make_one_digest(ready: Harness) -> None:
    app = ready
    await put_workflow(app, "comments", COLLECT, MAIL)
    nids = await _batch(app, "comments", "r1", {"who": "Ann"}, {"who": "Bob"}, {"who": "Cy"})
    first, others = await _split(app, nids)
    carrier = await _run(app, first)
    assert carrier["step"] == "collect"
    assert carrier["waiting_until"] is not None
    for nid in others:
        joined = await _settled(app, nid)
        assert joined["status"] == "digested", joined
        assert [(s["id"], s["status"], s.get("into")) for s in joined["steps"]] == [
            ("collect", "digested", carrier["id"])
        ]
    assert len(await _windows(app)) == 1
    done = await until_status(app, first, "r1", "completed")
    collect = _steps(done)["collect"]
    assert collect["status"] == "completed"
    assert collect["count"] == 3
    await app.drain()
    assert _steps(await _run(app, first))["mail"]["status"] == "sent"
    # One delivery for the three triggers, made by the carrier's channel step.
    totals = [len((await app.notification(nid))["deliveries"]) for nid in (first, *others)]
    assert totals == [1, 0, 0]
    [item] = await _inbox(app, "r1")
    assert item["title"] == "3 comments"
    names = item["body"].split(";")[:-1]
    assert sorted(names) == ["Ann", "Bob", "Cy"]
    assert names[0] == {n: d for n, d in zip(nids, ["Ann", "Bob", "Cy"], strict=True)}[first]
    assert await _windows(app) == []
    assert await _events(app) == 0
    # A trigger after the window closed opens a new one; the next joins it, in order.
    later = await _trigger(app, "comments", "r1", data={"who": "Dee"})
    again = await _settled(app, later)
    assert again["status"] == "waiting", again
    assert [w["run_id"] for w in await _windows(app)] == [again["id"]]
    assert (await _settled(app, await _trigger(app, "comments", "r1", data={"who": "Eve"})))[
        "status"
    ] == "digested"
    closed = await until_status(app, later, "r1", "completed")
    assert _steps(closed)["collect"]["count"] == 2
    await app.drain()
    newest = (await _inbox(app, "r1"))[0]
    assert (newest["title"], newest["body"]) == ("2 comments", "Dee;Eve;")


async def test_each_key_has_its_own_window_and_later_steps_read_the_digest(
    ready: Harness,
) -> None:
    app = ready
    await put_workflow(
        app,
        "threads",
        {**COLLECT, "key": "data.post"},
        {"id": "many", "type": "channel", "channel": "inapp", "template": "digest",
         "if": "digest.count > 1"},
        {"id": "alone", "type": "channel", "channel": "inapp", "template": "one",
         "if": "digest.count == 1 and digest.events[0].who == 'Bob'"},
    )  # fmt: skip
    a1, b1, a2 = await _batch(
        app,
        "threads",
        "r1",
        {"who": "Ann", "post": "a"},
        {"who": "Bob", "post": "b"},
        {"who": "Cy", "post": "a"},
    )
    a1, [a2] = await _split(app, [a1, a2])
    assert (await _settled(app, b1))["status"] == "waiting"
    joined = await _run(app, a2)
    assert _steps(joined)["collect"]["into"] == (await _run(app, a1))["id"]
    assert [w["key"] for w in await _windows(app)] == ["r1:a", "r1:b"]
    await until_status(app, a1, "r1", "completed")
    await until_status(app, b1, "r1", "completed")
    await app.drain()
    a, b = await _run(app, a1), await _run(app, b1)
    assert [(s["id"], s["status"]) for s in a["steps"]] == [
        ("collect", "completed"), ("many", "sent"), ("alone", "skipped"),
    ]  # fmt: skip
    assert [(s["id"], s["status"]) for s in b["steps"]] == [
        ("collect", "completed"), ("many", "skipped"), ("alone", "sent"),
    ]  # fmt: skip
    titles = sorted(i["title"] for i in await _inbox(app, "r1"))
    assert titles == ["2 comments", "Comment"]


async def test_a_window_holds_one_recipients_triggers_whatever_the_key(ready: Harness) -> None:
    """Two recipients' triggers with the same key value: a window each, so neither digest
    carries the other's data."""
    app = ready
    await put_workflow(app, "shared", {**COLLECT, "key": "data.post"}, MAIL)
    mine = await _trigger(app, "shared", "r1", data={"who": "Ann", "post": "a"})
    theirs = await _trigger(app, "shared", "r2", data={"who": "Bob", "post": "a"})
    assert (await _settled(app, mine))["status"] == "waiting"
    assert (await _settled(app, theirs, "r2"))["status"] == "waiting"
    assert [w["key"] for w in await _windows(app)] == ["r1:a", "r2:a"]


async def test_events_are_capped_and_the_count_goes_on(capped: Harness) -> None:
    app = capped
    await put_workflow(app, "capped", COLLECT, MAIL)
    who = ["Ann", "Bob", "Cy", "Dee"]
    nids = await _batch(app, "capped", "r1", *({"who": name} for name in who))
    first, _ = await _split(app, nids)
    assert await _events(app) == 2
    assert [w["count"] for w in await _windows(app)] == [4]
    done = await until_status(app, first, "r1", "completed")
    assert _steps(done)["collect"]["count"] == 4
    await app.drain()
    [item] = await _inbox(app, "r1")
    assert item["title"] == "4 comments"
    kept = item["body"].split(";")[:-1]
    assert len(kept) == 2
    assert kept[0] == who[nids.index(first)]


async def test_entering_again_neither_counts_twice_nor_opens_twice(ready: Harness) -> None:
    """A run taken again (its advancer's lease ran out) enters its digest step again: the
    carrier finds the window it opened, a run that joined is ended already, and a run held
    under an old lease does nothing."""
    app = ready
    await put_workflow(app, "slow", {**COLLECT, "window": "1h"}, MAIL)
    first, [second] = await _split(
        app, await _batch(app, "slow", "r1", {"who": "Ann"}, {"who": "Bob"})
    )
    carrier, joined = await _run(app, first), await _run(app, second)
    assert joined["status"] == "digested"
    async with app.ctx.engine.connect() as conn:
        rows = await conn.execute(select(workflow_runs).order_by(workflow_runs.c.created_at))
        stored = {row["id"]: dict(row) for row in rows.mappings()}
    window = (app.tenant_id, "slow", "collect", "r1")
    closes_at = utcnow() + timedelta(hours=1)

    def entering(run: dict[str, Any], turn: int, who: str) -> run_digests.Entering:
        return run_digests.Entering(run["id"], turn, window, closes_at, {"who": who})

    saved: list[dict[str, Any]] = []

    def rows_of(outcomes: dict[str, run_digests.Outcome]) -> list[dict[str, Any]]:
        saved.extend({"id": rid, "outcome": outcome} for rid, outcome in outcomes.items())
        return []

    for run, who in ((carrier, "Ann"), (joined, "Bob")):
        turn = stored[run["id"]]["turn"]
        outcomes = await run_digests.settle(
            app.ctx.engine, [entering(run, turn, who)], [], utcnow(), 100, rows_of
        )
        if run is carrier:
            assert list(outcomes) == [carrier["id"]]
            assert isinstance(outcomes[carrier["id"]], run_digests.Opened)
        else:
            assert outcomes == {}  # it ended `digested`: nothing more to do
        stale = await run_digests.settle(
            app.ctx.engine, [entering(run, turn - 1, who)], [], utcnow(), 100, rows_of
        )
        assert stale == {}
    [only] = await _windows(app)
    assert (only["run_id"], only["count"]) == (carrier["id"], 2)
    assert await _events(app) == 2
    # Taken again by the waker (its lease ran out) before the window closes, the carrier
    # waits on.
    async with app.ctx.engine.begin() as conn:
        await conn.execute(
            update(workflow_runs)
            .where(workflow_runs.c.id == carrier["id"])
            .values(wake_at=utcnow() - timedelta(seconds=1))
        )
    assert await Planner(app.ctx, "another-planner").runs.wake_once() in (0, 1)
    turn = stored[carrier["id"]]["turn"]

    async def waits_again() -> bool:
        async with app.ctx.engine.connect() as conn:
            row = (
                (
                    await conn.execute(
                        select(workflow_runs).where(workflow_runs.c.id == carrier["id"])
                    )
                )
                .mappings()
                .one()
            )
        wake_at = as_utc(row["wake_at"])
        return (
            row["turn"] > turn
            and wake_at is not None
            and wake_at > utcnow() + timedelta(minutes=30)
        )

    await app.until(waits_again)
    again = await _run(app, first)
    assert (again["status"], again["step"]) == ("waiting", "collect")
    assert [(w["run_id"], w["count"]) for w in await _windows(app)] == [(carrier["id"], 2)]
    assert await _events(app) == 2


async def test_a_cancelled_carrier_takes_its_window_with_it(ready: Harness) -> None:
    app = ready
    await put_workflow(app, "cancel", {**COLLECT, "window": "1h"}, MAIL)
    first = await _trigger(app, "cancel", "r1", cancellation_key="k1")
    carrier = await _settled(app, first)
    second = await _trigger(app, "cancel", "r1", cancellation_key="k2")
    joined = await _settled(app, second)
    assert _steps(joined)["collect"]["into"] == carrier["id"]
    answer = await app.client.post(
        "/v1/workflows/cancel/cancel", json={"cancellation_key": "k1"}, headers=app.auth
    )
    assert answer.json() == {"cancelled": 1}
    assert await _windows(app) == []
    assert await _events(app) == 0
    # The run that joined stays `digested`, pointing at the cancelled carrier.
    assert (await _run(app, second))["status"] == "digested"
    assert (await _run(app, first))["status"] == "cancelled"
    third = await _trigger(app, "cancel", "r1")
    opened = await _settled(app, third)
    assert opened["status"] == "waiting"
    assert [w["run_id"] for w in await _windows(app)] == [opened["id"]]
    # A carrier that ended otherwise (failed) leaves a window no trigger joins.
    async with app.ctx.engine.begin() as conn:
        await conn.execute(
            update(workflow_runs)
            .where(workflow_runs.c.id == opened["id"])
            .values(status=RunStatus.FAILED, wake_at=None)
        )
    fourth = await _trigger(app, "cancel", "r1")
    fresh = await _settled(app, fourth)
    assert fresh["status"] == "waiting"
    assert [w["run_id"] for w in await _windows(app)] == [fresh["id"]]
    assert await _events(app) == 1


async def test_digest_state_leaves_with_retention_and_erasure(ready: Harness) -> None:
    app = ready
    await put_workflow(app, "kept", {**COLLECT, "window": "1h"}, MAIL)
    await _settled(app, await _trigger(app, "kept", "r1"))
    await _settled(app, await _trigger(app, "kept", "r1"))
    await _settled(app, await _trigger(app, "kept", "r2"), "r2")
    assert [w["key"] for w in await _windows(app)] == ["r1", "r2"]
    assert await _events(app) == 3
    erased = await app.client.delete("/v1/recipients/r1", headers=app.auth)
    assert erased.status_code == 204, erased.text
    assert [w["key"] for w in await _windows(app)] == ["r2"]
    assert await _events(app) == 1
    # A window long past its end (its carrier never came back) is pruned.
    report = await retention.maintain(app.ctx.engine, utcnow() + timedelta(days=40), days=30)
    assert report.deleted.get("workflow_digests") == 1
    assert report.deleted.get("workflow_digest_events") == 1
    assert await _windows(app) == []


async def test_a_digest_on_paper(ready: Harness) -> None:
    app = ready
    await put_workflow(
        app,
        "paper",
        {**COLLECT, "key": "data.post"},
        MAIL,
        {"id": "many", "type": "channel", "channel": "inapp", "template": "one",
         "if": "digest.count > 1"},
    )  # fmt: skip

    async def test(body: dict[str, Any]) -> dict[str, Any]:
        response = await app.client.post("/v1/workflows/paper/test", json=body, headers=app.auth)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    first = await test({"recipient_id": "r1", "data": {"who": "Ann", "post": "p1"}})
    assert first["ends"] == "completed"
    assert [(s["id"], s["status"]) for s in first["steps"]] == [
        ("collect", "completed"), ("mail", "sent"), ("many", "skipped"),
    ]  # fmt: skip
    assert first["steps"][0]["window_seconds"] == 2
    assert first["steps"][0]["key"] == "r1:p1"
    assert first["steps"][1]["content"]["inapp"]["title"] == "1 comments"
    assert first["steps"][1]["content"]["inapp"]["body"] == "Ann;"
    three = await test(
        {"recipient_id": "r1", "data": {"who": "Ann"}, "assume": {"digest.count": 3}}
    )
    assert [(s["id"], s["status"]) for s in three["steps"]][2] == ("many", "sent")
    assert three["steps"][0]["key"] == "r1"
    assert three["steps"][1]["content"]["inapp"]["body"] == "Ann;Ann;Ann;"
    for assume in ({"digest.count": 0}, {"digest.count": True}, {"digest.count": "3"},
                   {"steps.mail.read": 1}):  # fmt: skip
        response = await app.client.post(
            "/v1/workflows/paper/test", json={"assume": assume}, headers=app.auth
        )
        assert response.status_code == 422, (assume, response.text)


@pytest.fixture
async def short_lease(backend: tuple[str, str]) -> AsyncIterator[Harness]:
    """Clarion with runs leased for a second."""
    async with running(make_settings(*backend, workflow_run_lease=1.0)) as harness:
        yield await _ready(harness)


async def test_a_join_whose_advancer_died_counts_once(
    short_lease: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The advancer of a joining run dies inside the digest's transaction (here: the
    database is out of reach as the runs' rows are stored): nothing of it is kept. The run
    is taken again when its lease ends and joins, once."""
    app = short_lease
    await put_workflow(app, "dies", {**COLLECT, "window": "1h"}, MAIL)
    carrier = await _settled(app, await _trigger(app, "dies", "r1"))
    real = run_digests.run_store.save_in
    calls: list[int] = []

    async def dies_once(conn: Any, rows: Any) -> None:
        calls.append(len(rows))
        if len(calls) == 1:
            raise ConnectionError("the planner died here")
        await real(conn, rows)

    monkeypatch.setattr(run_digests.run_store, "save_in", dies_once)
    second = await _trigger(app, "dies", "r1", data={"who": "Bob"})
    joined = await until_status(app, second, "r1", "digested")
    assert len(calls) >= 2
    assert _steps(joined)["collect"]["into"] == carrier["id"]
    assert [(w["run_id"], w["count"]) for w in await _windows(app)] == [(carrier["id"], 2)]
    assert await _events(app) == 2
