"""Work concentrates in the leading process while it keeps up (pipeline/lead.py): a
stand-by pauses after reads that find little, and works at once under a backlog."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from clarion.broker.base import Broker, Message
from clarion.broker.redis_streams import RedisBroker
from clarion.pipeline import lead as lead_module
from clarion.pipeline.consumer import FairConsumer
from clarion.pipeline.lead import MAX_PAUSE, PAUSE, Lead


class _Leads:
    """A broker's lead calls only: ``holder`` leads every role."""

    def __init__(self, holder: str | None, *, fails: bool = False) -> None:
        self.holder = holder
        self.fails = fails
        self.stepped_down: list[str] = []

    async def lead(self, role: str, holder: str, ttl: float) -> bool:
        if self.fails:
            raise ConnectionError("broker away")
        return holder == self.holder

    async def step_down(self, role: str, holder: str) -> None:
        self.stepped_down.append(holder)


def lead_for(broker: _Leads, holder: str) -> Lead:
    return Lead(broker, "plan", holder)  # type: ignore[arg-type]


async def test_the_leader_blocks_on_its_reads_and_never_pauses() -> None:
    lead = lead_for(_Leads("a"), "a")
    assert await lead.turn(0.25) == 0.25
    lead.took(0, 100)
    assert lead.leading
    assert await lead.turn(0.25) == 0.25


async def test_a_stand_by_pauses_longer_while_it_finds_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(lead_module.asyncio, "sleep", sleep)
    lead = lead_for(_Leads("a"), "b")
    assert await lead.turn(0.25) == 0.0  # reads without blocking, no pause yet
    for _ in range(6):
        lead.took(0, 100)
        assert await lead.turn(0.25) == 0.0
    assert slept == [PAUSE, 2 * PAUSE, 4 * PAUSE, MAX_PAUSE, MAX_PAUSE, MAX_PAUSE]
    lead.took(3, 100)  # a little: the leader keeps up
    await lead.turn(0.25)
    lead.took(60, 100)  # a good share of what it asked for: the leader is behind
    await lead.turn(0.25)
    assert slept[-1] == PAUSE  # after the little; none after the good share
    assert len(slept) == 7
    await lead.step_down()  # it does not lead: nothing to give up


async def test_a_broker_out_of_reach_leaves_every_process_reading_as_before() -> None:
    leads = _Leads("a", fails=True)
    lead = lead_for(leads, "b")
    assert await lead.turn(0.25) == 0.25
    await lead.step_down()
    assert leads.stepped_down == ["b"]


@pytest.fixture
async def redis_broker(redis_url: str) -> AsyncIterator[Broker]:
    broker = RedisBroker(redis_url, lease=30)
    await broker.start()
    yield broker
    await broker.close()


@pytest.mark.redis
async def test_under_a_backlog_the_stand_by_works_beside_the_leader(
    redis_broker: Broker,
) -> None:
    release, filled, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()
    started: dict[str, list[str]] = {"leader": [], "stand-by": []}

    def handler(name: str) -> Callable[[Message], Coroutine[Any, Any, None]]:
        async def handle(message: Message) -> None:
            started[name].append(message.id)
            if all(len(ids) >= 4 for ids in started.values()):
                filled.set()
            await release.wait()
            await redis_broker.ack([message])
            if sum(map(len, started.values())) == 40:
                finished.set()

        return handle

    assert await redis_broker.lead("send.x", "leader", ttl=30)
    await redis_broker.publish("send.x", [{"tenant": f"t{i}"} for i in range(40)])
    consumers = {
        name: FairConsumer(
            redis_broker,
            ["send.x"],
            name,
            handler(name),
            concurrency=4,
            tenant_share=1.0,
            lease=30,
            name=name,
        )
        for name in started
    }
    stop = asyncio.Event()
    runs = [asyncio.create_task(c.run(stop)) for c in consumers.values()]
    try:
        # Each fills its slots: the stand-by's reads find all they ask for.
        await asyncio.wait_for(filled.wait(), 10)
        release.set()
        await asyncio.wait_for(finished.wait(), 10)
    finally:
        stop.set()
        await asyncio.gather(*runs)
    assert len(set(started["leader"]) | set(started["stand-by"])) == 40
    # The leader gave up its lead on stopping: another process takes it at once.
    assert await redis_broker.lead("send.x", "next", ttl=30)
