"""Schedules firing, with an injected clock (no sleeps): a `recipient` schedule across
clock changes, several schedulers at once, and a `send_at` that survives a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from clarion.config import Settings
from clarion.domain.models import ALL_CHANNELS
from clarion.pipeline import recurring
from clarion.pipeline.context import open_context
from clarion.pipeline.recurring import Recurring
from clarion.pipeline.runtime import RELAY_RESTING, Roles
from clarion.pipeline.scheduler import Relay
from clarion.store import schedule_runs as runs
from clarion.store import schedules as schedule_store
from clarion.store.tables import notifications
from harness import Harness, make_settings, running

EMAIL = {"channels": {"email": {"subject": "Daily", "text": "Hello {{ recipient.id }}"}}}
# Every role but the scheduler's loops: the tests run the scheduler's passes themselves.
NO_SCHEDULER = Roles(api=True, planner=True, channels=ALL_CHANNELS, scheduler=False)


@dataclass
class FakeClock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def quiet(backend: tuple[str, str]) -> AsyncIterator[Harness]:
    settings = make_settings(*backend, schedule_zone_rescan=30 * 86400.0)
    async with running(settings, NO_SCHEDULER) as harness:
        yield harness


async def _people(app: Harness, zones: dict[str, str | None]) -> None:
    await app.put_template("daily", EMAIL)
    for rid, zone in zones.items():
        fields: dict[str, Any] = {"email": f"{rid}@example.com"}
        if zone:
            fields["timezone"] = zone
        await app.put_recipient(rid, **fields)


async def _put(app: Harness, name: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await app.client.put(f"/v1/schedules/{name}", json=body, headers=app.auth)
    assert response.status_code == 200, response.text
    out: dict[str, Any] = response.json()
    return out


async def _next_run(app: Harness, name: str) -> datetime | None:
    body = (await app.client.get(f"/v1/schedules/{name}", headers=app.auth)).json()
    return datetime.fromisoformat(body["next_run_at"]) if body["next_run_at"] else None


async def _passes(*schedulers: Recurring) -> None:
    """Scheduler passes, all at once, until none finds anything to do."""
    while any(await asyncio.gather(*(s.run_once() for s in schedulers))):
        pass


async def _recipients_of(app: Harness, notification_id: str) -> list[str]:
    detail = await app.notification(notification_id)
    return sorted(d["recipient_id"] for d in detail["deliveries"])


# (first day, last day, what changes in between)
CHANGES = [
    (date(2027, 3, 12), date(2027, 3, 16), "New York springs forward on 14 March"),
    (date(2027, 3, 26), date(2027, 3, 30), "Paris springs forward on 28 March"),
    (date(2027, 10, 29), date(2027, 11, 2), "Paris falls back on 31 October"),
    (date(2027, 11, 5), date(2027, 11, 9), "New York falls back on 7 November"),
]
ZONES = {"paris": "Europe/Paris", "newyork": "America/New_York", "nozone": None}


async def test_recipient_schedule_is_local_time_across_clock_changes(quiet: Harness) -> None:
    app = quiet
    await _people(app, ZONES)
    topic = await app.client.put(
        "/v1/topics/daily/subscribers", json={"recipient_ids": list(ZONES)}, headers=app.auth
    )
    assert topic.status_code == 200, topic.text
    clock = FakeClock(datetime(2027, 1, 1, tzinfo=UTC))
    app.ctx.clock = clock
    scheduler = Recurring(app.ctx)
    for number, (first, last, _why) in enumerate(CHANGES):
        name = f"morning-{number}"
        start = datetime.combine(first, datetime.min.time(), UTC)
        end = datetime.combine(last, datetime.max.time(), UTC)
        clock.now = start
        await _put(
            app,
            name,
            {
                "cron": "0 9 * * *",
                "timezone": "recipient",
                "notification": {"template": "daily", "to": {"topic": "daily"}},
            },
        )
        # Jump from one due time to the next, as a scheduler would wake for them.
        while (due := await _next_run(app, name)) is not None and due <= end:
            clock.now = due
            await _passes(scheduler)
        await app.drain()
        got: dict[str, list[datetime]] = {rid: [] for rid in ZONES}
        for run in await runs.of_schedule(app.ctx.engine, app.tenant_id, name):
            assert run["status"] == runs.COMPLETED, run
            assert run["fired_at"] == run["due_at"]  # fired at its due time exactly
            assert len(run["notification_ids"]) == 1
            for rid in await _recipients_of(app, run["notification_ids"][0]):
                got[rid].append(run["due_at"])
        for rid, zone_name in ZONES.items():
            zone = ZoneInfo(zone_name or "UTC")
            expected = [
                moment.astimezone(UTC)
                for day in range((last - first).days + 1)
                if start
                < (moment := datetime.combine(first + timedelta(days=day), _NINE, zone))
                <= end
            ]
            assert sorted(got[rid]) == expected, (rid, _why)
            # Each local day once, at 09:00 local.
            local = [at.astimezone(zone) for at in got[rid]]
            assert [(t.hour, t.minute) for t in local] == [(9, 0)] * len(local)
            assert len({t.date() for t in local}) == len(local)
        await app.client.delete(f"/v1/schedules/{name}", headers=app.auth)


_NINE = datetime.min.time().replace(hour=9)


async def test_two_schedulers_make_one_run_per_due_time(
    quiet: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = quiet
    # Counts the guarded moves of a schedule's watermark that another scheduler won.
    lost: list[bool] = []
    advance = schedule_store.advance

    async def counted(*args: Any) -> bool:
        moved = await advance(*args)
        lost.extend([] if moved else [True])
        return moved

    monkeypatch.setattr(schedule_store, "advance", counted)
    zones = {"a": "Asia/Tokyo", "b": "America/Chicago", "c": None}
    await _people(app, zones)
    clock = FakeClock(datetime(2027, 6, 1, 12, 0, tzinfo=UTC))
    app.ctx.clock = clock
    to = {"recipient_ids": sorted(zones)}
    await _put(
        app, "minutely", {"cron": "* * * * *", "notification": {"template": "daily", "to": to}}
    )
    await _put(
        app,
        "local",
        {
            "cron": "* * * * *",
            "timezone": "recipient",
            "notification": {"template": "daily", "to": to},
        },
    )
    # A second scheduler process: its own engine and connections, the same database.
    other = await open_context(app.settings)
    other.clock = clock
    try:
        schedulers = [Recurring(app.ctx), Recurring(app.ctx), Recurring(other), Recurring(other)]
        minutes = 15
        for _ in range(minutes):
            clock.now += timedelta(minutes=1)
            await _passes(*schedulers)
    finally:
        await other.aclose()
    fixed = await runs.of_schedule(app.ctx.engine, app.tenant_id, "minutely")
    local = await runs.of_schedule(app.ctx.engine, app.tenant_id, "local")
    assert len(fixed) == minutes
    assert len(local) == minutes * len(zones)
    for made_runs in (fixed, local):
        keys = [(r["due_at"], r["zone"]) for r in made_runs]
        assert len(set(keys)) == len(keys)
    ids = [nid for r in fixed + local for nid in r["notification_ids"]]
    assert all(r["status"] == runs.COMPLETED for r in fixed + local)
    assert all(len(r["notification_ids"]) == 1 for r in fixed + local)
    assert len(set(ids)) == len(ids)
    async with app.ctx.engine.connect() as conn:
        made = await conn.scalar(
            select(func.count())
            .select_from(notifications)
            .where(notifications.c.idempotency_key.like("schedule:%"))
        )
    assert made == len(ids)  # no notification beyond those the runs record
    assert [r["recipients"] for r in fixed] == [3] * minutes
    assert lost, "the schedulers never raced: the test proves nothing"
    assert sorted(r["recipients"] for r in local) == [1] * len(local)


async def test_fixed_zone_topic_schedule_and_run_history(quiet: Harness) -> None:
    app = quiet
    await _people(app, {"a": None, "b": "Europe/Paris"})
    await app.client.put(
        "/v1/topics/news/subscribers", json={"recipient_ids": ["a", "b"]}, headers=app.auth
    )
    clock = FakeClock(datetime(2027, 6, 1, 0, 0, tzinfo=UTC))
    app.ctx.clock = clock
    body = {
        "cron": "30 8 * * *",
        "timezone": "Europe/Paris",
        "notification": {"template": "daily", "to": {"topic": "news"}},
    }
    schedule = await _put(app, "news", body)
    assert schedule["next_run_at"] == "2027-06-01T06:30:00Z"
    scheduler = Recurring(app.ctx)
    for day in range(3):
        clock.now = datetime(2027, 6, 1 + day, 6, 30, tzinfo=UTC)
        await _passes(scheduler)
    await app.drain()
    page = (await app.client.get("/v1/schedules/news/runs?limit=2", headers=app.auth)).json()
    rest = await app.client.get(
        f"/v1/schedules/news/runs?limit=2&cursor={page['next_cursor']}", headers=app.auth
    )
    listed = page["data"] + rest.json()["data"]
    assert rest.json()["next_cursor"] is None
    assert [r["due_at"] for r in listed] == [f"2027-06-0{d}T06:30:00Z" for d in (3, 2, 1)]
    for run in listed:
        assert (run["status"], run["zone"]) == ("completed", "Europe/Paris")
        detail = await app.notification(run["notification_id"])
        assert sorted(d["recipient_id"] for d in detail["deliveries"]) == ["a", "b"]
    # A replacement that keeps the cron keeps its place; disabling stops it.
    await _put(app, "news", {**body, "enabled": False})
    clock.now = datetime(2027, 6, 4, 6, 30, tzinfo=UTC)
    await _passes(scheduler)
    assert len(await runs.of_schedule(app.ctx.engine, app.tenant_id, "news")) == 3


async def _scheduled(settings: Settings, send_at: datetime) -> str:
    async with running(settings) as app:
        await _people(app, {"u1": None})
        response = await app.send(
            {"template": "daily", "to": {"recipient_id": "u1"}, "send_at": send_at.isoformat()}
        )
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "scheduled"
        nid: str = response.json()["id"]
        return nid


async def test_send_at_survives_a_restart_and_fires_on_time(backend: tuple[str, str]) -> None:
    settings = make_settings(*backend)
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    due = clock.now + timedelta(days=365)
    nid = await _scheduled(settings, due)
    # A new process on the same database and broker: nothing held in memory survived.
    async with running(settings) as app:
        app.ctx.clock = clock
        relay = Relay(app.ctx)
        for before in (timedelta(days=200), timedelta(seconds=1)):
            clock.now = due - before
            assert await relay.run_once() == 0
        detail = await app.notification(nid)
        assert (detail["status"], detail["deliveries"]) == ("scheduled", [])

        async def sent() -> bool:
            deliveries = (await app.notification(nid))["deliveries"]
            return [d["status"] for d in deliveries] == ["sent"]

        started = time.monotonic()
        clock.now = due  # the scheduler's own loop takes it from here
        await app.until(sent, timeout=5)
        # On time: at the relay's next look (it rests up to RELAY_RESTING between looks),
        # then planned and sent, with room for a busy machine; not after the outbox's grace.
        assert time.monotonic() - started < RELAY_RESTING + 2.0


async def test_a_run_taken_over_after_a_crash_repeats_nothing(
    quiet: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = quiet
    people = {f"p{i}": "Europe/Paris" for i in range(5)}
    await _people(app, {**people, "other": "Asia/Tokyo"})
    await app.client.put(
        "/v1/topics/t/subscribers", json={"recipient_ids": [*people, "other"]}, headers=app.auth
    )
    monkeypatch.setattr(recurring, "CHUNK", 2)
    clock = FakeClock(datetime(2027, 6, 1, 0, 0, tzinfo=UTC))
    app.ctx.clock = clock
    body = {"template": "daily", "to": {"topic": "t"}}
    await _put(app, "chunks", {"cron": "0 9 * * *", "timezone": "recipient", "notification": body})
    # The scheduler dies after committing the run's second notification, before recording it.
    step = runs.step
    calls: list[int] = []

    async def dies_on_the_second(*args: Any, **kwargs: Any) -> bool:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return await step(*args, **kwargs)

    monkeypatch.setattr(runs, "step", dies_on_the_second)
    clock.now = datetime(2027, 6, 1, 7, 0, tzinfo=UTC)  # 09:00 in Paris
    await _passes(Recurring(app.ctx))
    [paris] = [
        r
        for r in await runs.of_schedule(app.ctx.engine, app.tenant_id, "chunks")
        if r["zone"] == "Europe/Paris"
    ]
    assert (paris["status"], paris["cursor"], len(paris["notification_ids"])) == (
        "running",
        "p1",
        1,
    )
    # Another scheduler takes it over once the lease has passed.
    monkeypatch.setattr(runs, "step", step)
    clock.now += timedelta(seconds=app.settings.broker_lease + 1)
    await _passes(Recurring(app.ctx))
    [paris] = [
        r
        for r in await runs.of_schedule(app.ctx.engine, app.tenant_id, "chunks")
        if r["zone"] == "Europe/Paris"
    ]
    assert (paris["status"], paris["recipients"]) == (runs.COMPLETED, 5)
    assert len(paris["notification_ids"]) == 3
    await app.drain()
    got = [rid for nid in paris["notification_ids"] for rid in await _recipients_of(app, nid)]
    assert sorted(got) == sorted(people)  # each once
    async with app.ctx.engine.connect() as conn:
        made = await conn.scalar(
            select(func.count())
            .select_from(notifications)
            .where(notifications.c.idempotency_key.like("schedule:%"))
        )
    assert made == 3  # Paris: 2 + 2 + 1, and Tokyo's run is not due yet


async def test_the_scheduler_role_fires_a_due_schedule(app: Harness) -> None:
    await _people(app, {"u1": "Europe/Paris"})
    clock = FakeClock(datetime(2027, 6, 1, 6, 0, tzinfo=UTC))
    app.ctx.clock = clock
    body = {"template": "daily", "to": {"recipient_id": "u1"}}
    await _put(app, "role", {"cron": "0 9 * * *", "timezone": "recipient", "notification": body})

    async def delivered() -> bool:
        page = await app.client.get("/v1/schedules/role/runs", headers=app.auth)
        done = [r for r in page.json()["data"] if r["status"] == "completed"]
        if not done:
            return False
        detail = await app.notification(done[0]["notification_id"])
        return [d["status"] for d in detail["deliveries"]] == ["sent"]

    clock.now = datetime(2027, 6, 1, 7, 0, tzinfo=UTC)  # 09:00 in Paris: the loop takes it
    await app.until(delivered, timeout=10)


async def _runs(app: Harness, name: str) -> list[dict[str, Any]]:
    response = await app.client.get(f"/v1/schedules/{name}/runs", headers=app.auth)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def test_runs_are_charged_to_the_intake_quota(backend: tuple[str, str]) -> None:
    """A run's notification costs what a send through the API costs; a run over the quota
    waits for it, and is skipped (saying why) if it cannot go out within the catch-up
    window. The quota here refills one notification in 2,000 s: only the burst of 2 counts."""
    settings = make_settings(*backend, intake_rate_per_second=0.0005, intake_burst=2)
    async with running(settings, NO_SCHEDULER) as app:
        await _people(app, {"u1": None})
        clock = FakeClock(datetime(2027, 3, 1, 8, 59, 30, tzinfo=UTC))
        app.ctx.clock = clock
        scheduler = Recurring(app.ctx)
        body = {"template": "daily", "to": {"recipient_id": "u1"}}
        await _put(app, "hourly", {"cron": "0 * * * *", "notification": body})

        clock.now = datetime(2027, 3, 1, 9, 0, 1, tzinfo=UTC)
        await _passes(scheduler)
        [first] = await _runs(app, "hourly")
        assert (first["status"], first["error"]) == ("completed", None)
        # The run took one of the burst: one API send is left, not two.
        assert (await app.send(body)).status_code == 202
        refused = await app.send(body)
        assert refused.status_code == 429, refused.text

        # The next run finds the quota spent: it waits, saying why.
        clock.now = datetime(2027, 3, 1, 10, 0, 1, tzinfo=UTC)
        await _passes(scheduler)
        second = (await _runs(app, "hourly"))[0]
        assert second["status"] == "pending"
        assert second["error"].startswith("rate_limited: over the intake quota")
        assert second["notification_ids"] == []
        # Still over the quota once the catch-up window has passed: skipped, not sent late.
        clock.now += timedelta(seconds=app.settings.schedule_catchup + 60)
        await _passes(scheduler)
        runs_now = {r["due_at"]: r for r in await _runs(app, "hourly")}
        skipped = runs_now["2027-03-01T10:00:00Z"]
        assert skipped["status"] == "skipped"
        assert "not sent within CLARION_SCHEDULE_CATCHUP" in skipped["error"]
        assert skipped["notification_ids"] == []
