"""`clarion worker --lanes`: a worker of some priority lanes only, and a planner to match.

Workers of the urgent lanes (critical, high) beside workers of the others keep urgent sends
in processes that a broadcast does not keep busy (docs/operations.md, "Urgent sends: workers
of their own")."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from clarion import cli
from clarion.broker.redis_streams import RedisBroker
from clarion.domain.models import LANES, PLAN_HIGH_STREAM, PLAN_STREAM
from clarion.pipeline.runtime import Roles
from clarion.process import describe
from harness import Harness, make_settings, running
from standins import serving

INAPP = {"channels": {"inapp": {"title": "Hi", "body": "Hello {{ recipient.id }}"}}}


def test_lanes_are_parsed_in_lane_order_and_checked() -> None:
    assert cli._lanes("high, critical") == ["critical", "high"]
    assert cli._lanes("low,normal,low") == ["normal", "low"]
    for wrong in ("urgent", "", " , ", "critical,bulk"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli._lanes(wrong)
    args = cli.build_parser().parse_args(["worker", "--lanes", "critical,high"])
    assert cli._roles(args).lanes == ["critical", "high"]
    args = cli.build_parser().parse_args(["worker"])
    assert cli._roles(args).lanes == [str(lane) for lane in LANES]


def _tasks(app: Harness) -> set[str]:
    return {task.get_name() for task in app.runtime._tasks}


async def _sent(app: Harness, priority: str) -> str:
    response = await app.send({"template": "hi", "to": {"recipient_id": "u"}, "priority": priority})
    assert response.status_code == 202, response.text
    nid: str = response.json()["id"]
    return nid


async def _status(app: Harness, nid: str) -> Any:
    return (await app.notification(nid))["status"]


async def test_a_worker_of_the_urgent_lanes(backend: tuple[str, str]) -> None:
    """It reads the critical and high lanes only, plans critical and high-priority
    notifications only, and reads no retries (those of high-priority sends share the retry
    lane with the bulk's)."""
    roles = Roles(api=True, planner=True, channels=["inapp"], lanes=["critical", "high"])
    async with running(make_settings(*backend), roles) as app:
        worker = app.runtime.workers[0]
        assert worker.streams == ["send.inapp.critical", "send.inapp.high"]
        assert worker._consumer._streams == worker.streams  # no retry lane
        assert {"planner-critical", "planner-high"} <= _tasks(app)
        assert not {"planner", "planner-chunks", "runs-0"} & _tasks(app)
        await app.put_recipient("u")
        await app.put_template("hi", INAPP)
        normal = await _sent(app, "normal")
        urgent = [await _sent(app, "critical"), await _sent(app, "high")]

        async def urgent_done() -> bool:
            return all([await _status(app, nid) == "completed" for nid in urgent])

        await app.until(urgent_done)
        # Left to the workers of the other lanes: not planned here.
        assert await _status(app, normal) == "accepted"


async def test_a_worker_of_the_bulk_lanes(backend: tuple[str, str]) -> None:
    """It reads the normal and low lanes and the retries, and plans all but critical and
    high-priority notifications."""
    roles = Roles(api=True, planner=True, channels=["inapp"], lanes=["normal", "low"])
    async with running(make_settings(*backend), roles) as app:
        worker = app.runtime.workers[0]
        assert worker.streams == ["send.inapp.normal", "send.inapp.low"]
        assert worker._consumer._streams == [*worker.streams, "send.inapp.retry"]
        assert {"planner", "planner-chunks", "runs-0"} <= _tasks(app)
        assert not {"planner-critical", "planner-high"} & _tasks(app)
        await app.put_recipient("u")
        await app.put_template("hi", INAPP)
        urgent = [await _sent(app, "critical"), await _sent(app, "high")]
        low = await _sent(app, "low")

        async def low_done() -> bool:
            return await _status(app, low) == "completed"

        await app.until(low_done)
        assert [await _status(app, nid) for nid in urgent] == ["accepted", "accepted"]


async def test_a_worker_of_the_high_lane_alone(backend: tuple[str, str]) -> None:
    """Planned from its plan stream by a worker of that lane, a high-priority send goes
    out with no worker of the other lanes running."""
    roles = Roles(api=True, planner=True, channels=["inapp"], lanes=["high"])
    async with running(make_settings(*backend), roles) as app:
        await app.put_recipient("u")
        await app.put_template("hi", INAPP)
        critical = await _sent(app, "critical")
        high = await _sent(app, "high")

        async def high_done() -> bool:
            return await _status(app, high) == "completed"

        await app.until(high_done)
        assert await _status(app, critical) == "accepted"


async def test_every_lane_by_default(backend: tuple[str, str]) -> None:
    roles = Roles(api=True, planner=True, channels=["inapp"])
    async with running(make_settings(*backend), roles) as app:
        worker = app.runtime.workers[0]
        lanes = [f"send.inapp.{lane}" for lane in LANES]
        assert worker._consumer._streams == [*lanes, "send.inapp.retry"]
        assert {"planner", "planner-critical", "planner-high", "planner-chunks"} <= _tasks(app)


def test_the_ready_line_names_the_streams_taken() -> None:
    settings = make_settings("sqlite+aiosqlite:///:memory:", "embedded://")

    def line(lanes: list[str]) -> str:
        return describe(settings, Roles(planner=True, channels=["email"], lanes=lanes))

    urgent = line(["critical", "high"])
    assert "planner (streams plan.critical, plan.high);" in urgent
    assert "send.<channel>.{critical,high}, events" in urgent
    bulk = line(["normal", "low"])
    assert "planner (streams plan, plan.chunks);" in bulk
    assert "send.<channel>.{normal,low,retry}, events" in bulk
    assert "planner (streams plan.high);" in line(["high"])
    assert "planner" not in describe(settings, Roles(channels=["email"], lanes=["high"]))
    every = line([str(lane) for lane in LANES])
    assert "planner (streams plan.critical, plan.high, plan, plan.chunks)" in every
    assert "send.<channel>.<lane>, events" in every


@pytest.mark.redis
async def test_high_priority_planning_has_a_lead_of_its_own(
    redis_url: str, migrated_postgres_url: str
) -> None:
    """One process leads the high-priority plan stream, apart from the plan stream: a
    flow of high-priority sends is planned in batches by one planner, not spread over
    all of them; a process that stops gives both leads up at once."""
    roles = Roles(api=True, planner=True, channels=["inapp"])
    async with serving(RedisBroker(redis_url, lease=30)) as another:
        async with running(make_settings(migrated_postgres_url, redis_url), roles) as app:
            planner = app.runtime._planner
            assert planner is not None

            async def leading() -> bool:
                return planner.lead.leading and planner.high_lead.leading

            await app.until(leading)
            # Another process stands by for either while this one holds them.
            assert not await another.lead(PLAN_HIGH_STREAM, "another", ttl=5)
            assert not await another.lead(PLAN_STREAM, "another", ttl=5)
            await app.put_recipient("u")
            await app.put_template("hi", INAPP)
            high = [await _sent(app, "high") for _ in range(3)]

            async def done() -> bool:
                return all([await _status(app, nid) == "completed" for nid in high])

            await app.until(done)
        assert await another.lead(PLAN_HIGH_STREAM, "another", ttl=5)
        assert await another.lead(PLAN_STREAM, "another", ttl=5)


def test_an_api_that_plans() -> None:
    """`clarion api --planner`: the API and a planner of every lane, no channel worker;
    `clarion api` alone plans nothing."""
    args = cli.build_parser().parse_args(["api", "--planner"])
    roles = cli._roles(args)
    assert (roles.api, roles.planner, roles.channels, roles.scheduler) == (True, True, (), False)
    assert roles.lanes == LANES
    plain = cli._roles(cli.build_parser().parse_args(["api"]))
    assert (plain.api, plain.planner, plain.channels) == (True, False, ())


async def test_an_api_that_plans_leaves_the_sends_to_the_workers(
    backend: tuple[str, str],
) -> None:
    """Its notifications are planned in the API's process: their deliveries are made and
    wait, queued, for a channel worker (`clarion worker --no-planner`)."""
    roles = cli._roles(cli.build_parser().parse_args(["api", "--planner"]))
    async with running(make_settings(*backend), roles) as app:
        assert app.runtime.workers == []
        assert {"planner", "planner-critical", "planner-high"} <= _tasks(app)
        await app.put_recipient("u")
        await app.put_template("hi", INAPP)
        nid = await _sent(app, "normal")

        async def planned() -> bool:
            deliveries = (await app.notification(nid)).get("deliveries") or []
            return [d["status"] for d in deliveries] == ["queued"]

        await app.until(planned)
