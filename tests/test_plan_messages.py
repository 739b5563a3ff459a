"""Plan messages: the notifications a commit stored share messages of one tenant, priority
and trace; the planner plans every one of them, in steps of its batch, and a notification
that cannot be planned fails alone, not with the others its message carries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import func, select

from clarion.broker import Message
from clarion.domain.models import PLAN_CRITICAL_STREAM, PLAN_STREAM
from clarion.pipeline.messages import PLAN_GROUP, plan_messages, planned_ids
from clarion.pipeline.planner import Planner
from clarion.pipeline.runtime import Roles
from clarion.store.tables import deliveries, notifications
from harness import Harness, make_settings, running

EMAIL = {"channels": {"email": {"subject": "Hi", "text": "Hello {{ n }}"}}}


class Published:
    """What the app's broker was asked to publish, by stream."""

    def __init__(self, app: Harness) -> None:
        self.by_stream: dict[str, list[dict[str, Any]]] = {}
        broker = app.ctx.broker
        publish = broker.publish

        async def recording(stream: str, payloads: Sequence[Any]) -> None:
            self.by_stream.setdefault(stream, []).extend(payloads)
            await publish(stream, payloads)

        broker.publish = recording  # type: ignore[method-assign]


async def _batch(app: Harness, key: str, count: int, **extra: Any) -> list[str]:
    items = [
        {"template": "hello", "to": {"recipient_id": f"r{i % 5}"}, "data": {"n": i}, **extra}
        for i in range(count)
    ]
    response = await app.client.post(
        "/v1/notifications/batch",
        json={"notifications": items},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 202, response.text
    results = response.json()["results"]
    assert all("id" in result for result in results), results
    return [result["id"] for result in results]


async def _tenant(app: Harness, name: str) -> str:
    key = await app.new_tenant(name)
    headers = {"Authorization": f"Bearer {key}"}
    response = await app.client.put("/v1/templates/hello", json=EMAIL, headers=headers)
    assert response.status_code == 200, response.text
    for i in range(5):
        response = await app.client.put(
            f"/v1/recipients/r{i}", json={"email": f"r{i}@example.com"}, headers=headers
        )
        assert response.status_code == 200, response.text
    return key


async def _planned(app: Harness, planner: Planner, ids: list[str]) -> None:
    async def done() -> bool:
        await planner.run_once(0.05)
        await planner.run_critical_once(0.0)
        async with app.ctx.engine.connect() as conn:
            query = select(func.count()).where(deliveries.c.notification_id.in_(ids))
            return (await conn.execute(query)).scalar_one() == len(ids)

    await app.until(done)


async def _statuses(app: Harness, ids: list[str]) -> dict[str, str]:
    async with app.ctx.engine.connect() as conn:
        rows = await conn.execute(
            select(notifications.c.id, notifications.c.status).where(notifications.c.id.in_(ids))
        )
        return {nid: str(status) for nid, status in rows}


def test_plan_messages_group_by_tenant_priority_and_trace_up_to_the_cap() -> None:
    items = [(f"a{i}", "ta", None, None) for i in range(PLAN_GROUP + 3)]
    items += [("b0", "tb", None, None), ("a-crit", "ta", None, "critical")]
    items += [("a-traced", "ta", "00-trace-01", None), ("b1", "tb", None, None)]
    streams = plan_messages(items)
    plain = streams[PLAN_STREAM]
    carried = [planned_ids(Message(PLAN_STREAM, str(i), p)) for i, p in enumerate(plain)]
    assert carried == [
        [f"a{i}" for i in range(PLAN_GROUP)],
        [f"a{i}" for i in range(PLAN_GROUP, PLAN_GROUP + 3)],
        ["b0", "b1"],
        ["a-traced"],
    ]
    assert [p["tenant"] for p in plain] == ["ta", "ta", "tb", "ta"]
    assert plain[3]["traceparent"] == "00-trace-01"
    assert "traceparent" not in plain[0]
    assert "more" not in plain[3]
    assert streams[PLAN_CRITICAL_STREAM] == [
        {"notification": "a-crit", "tenant": "ta", "priority": "critical"}
    ]


@pytest.mark.parametrize(
    ("payload", "ids"),
    [
        ({"notification": "n1", "tenant": "t"}, ["n1"]),
        ({"notification": "n1", "tenant": "t", "more": ["n2", "n3"]}, ["n1", "n2", "n3"]),
        # What a client of the broker could put there: nothing but strings is taken.
        ({"notification": "n1", "more": ["n2", 7, None, {"x": 1}]}, ["n1", "n2"]),
        ({"notification": "n1", "more": "n2"}, ["n1"]),
        ({"more": ["n2"]}, []),
        ({"notification": 5}, []),
    ],
)
def test_planned_ids_take_only_what_a_plan_message_names(
    payload: dict[str, Any], ids: list[str]
) -> None:
    assert planned_ids(Message(PLAN_STREAM, "1-0", payload)) == ids


async def test_a_commits_notifications_share_messages_and_every_one_is_planned(
    backend: tuple[str, str],
) -> None:
    async with running(make_settings(*backend), Roles(api=True)) as app:
        published = Published(app)
        key_a, key_b = await _tenant(app, "grouped-a"), await _tenant(app, "grouped-b")
        a_ids = await _batch(app, key_a, 60)
        b_ids = await _batch(app, key_b, 7)
        urgent = await _batch(app, key_a, 3, priority="critical")
        planner = Planner(app.ctx, "grouped")
        await _planned(app, planner, a_ids + b_ids + urgent)
        # Published after the 202; all of it before planning.
        plain = published.by_stream[PLAN_STREAM]
        # 60 of one tenant in messages of at most PLAN_GROUP; the other tenant's apart.
        assert sorted(len(planned_ids(Message(PLAN_STREAM, "0", p))) for p in plain) == [
            7,
            10,
            25,
            25,
        ]
        assert len(published.by_stream[PLAN_CRITICAL_STREAM]) == 1
        statuses = await _statuses(app, a_ids + b_ids + urgent)
        assert set(statuses.values()) == {"accepted"}, statuses


async def test_a_read_of_more_than_a_batch_is_planned_in_steps_of_the_batch(
    migrated_sqlite_url: str,
) -> None:
    settings = make_settings(migrated_sqlite_url, "embedded://")
    async with running(settings, Roles(api=True)) as app:
        key = await _tenant(app, "stepped")
        ids = await _batch(app, key, 60)
        planner = Planner(app.ctx, "stepped")
        planner.batch_size = 10
        steps: list[int] = []
        plan = planner._plan

        async def recorded(step: list[str], again: list[str]) -> Any:
            steps.append(len(step))
            return await plan(step, again)

        planner._plan = recorded  # type: ignore[method-assign]
        # The first read asks for ten messages: it brings all three (60 notifications).
        assert await planner.run_once(0.5) == 60
        assert steps == [10] * 6
        # The next asks for as many messages as carry about a batch: one.
        assert planner._ask(PLAN_STREAM) == 1
        await _planned(app, planner, ids)


async def test_a_notification_that_cannot_be_planned_fails_alone_in_its_message(
    backend: tuple[str, str],
) -> None:
    async with running(make_settings(*backend), Roles(api=True)) as app:
        key = await _tenant(app, "poisoned")
        planner = Planner(app.ctx, "poisoned")
        make = planner._deliveries

        def poisoned(note: dict[str, Any], *args: Any) -> Any:
            if (note["data"] or {}).get("n") == 13:
                raise ValueError("this notification cannot be planned")
            return make(note, *args)

        planner._deliveries = poisoned  # type: ignore[method-assign]
        ids = await _batch(app, key, 20)
        assert PLAN_GROUP >= 20  # one message carries them all
        poison = ids[13]
        others = [nid for nid in ids if nid != poison]
        await _planned(app, planner, others)
        statuses = await _statuses(app, ids)
        assert statuses.pop(poison) == "failed"
        assert set(statuses.values()) == {"accepted"}, statuses
        async with app.ctx.engine.connect() as conn:
            query = select(func.count()).where(deliveries.c.notification_id == poison)
            assert (await conn.execute(query)).scalar_one() == 0
