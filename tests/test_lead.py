"""The planning concentrates in the leading process while it keeps up (pipeline/lead.py):
a stand-by pauses after reads that find little, and works at once under a backlog."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from clarion.broker.base import Broker, Message
from clarion.broker.nats_jetstream import NatsBroker
from clarion.broker.redis_streams import RedisBroker
from clarion.domain.backoff import resting_pause
from clarion.pipeline import lead as lead_module
from clarion.pipeline.lead import LINGER, PAUSE, RESTING, Lead
from standins import serving


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


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pauses taken, instead of sleeping them."""
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr(lead_module.asyncio, "sleep", sleep)
    return pauses


async def test_the_leader_lingers_after_a_read_that_found_a_few(slept: list[float]) -> None:
    lead = lead_for(_Leads("a"), "a")
    assert await lead.turn(0.25) == 0.25
    lead.took(3, 200)  # a few: let more gather before the next read
    assert await lead.turn(0.25) == 0.25
    assert slept == [LINGER]
    for taken in (0, 50, 200):  # nothing (the next is taken as it comes), or a backlog
        lead.took(taken, 200)
        assert await lead.turn(0.25) == 0.25
    assert slept == [LINGER]
    # Becoming the leader while paused as a stand-by: at most a linger.
    stand_by = lead_for(leads := _Leads("a"), "b")
    assert await stand_by.turn(0.25) == 0.0
    stand_by.took(0, 200)
    leads.holder, stand_by._checked = "b", -1e9
    assert await stand_by.turn(0.25) == 0.25
    assert slept == [LINGER, LINGER]


async def test_a_stand_by_pauses_while_the_leader_keeps_up(slept: list[float]) -> None:
    lead = lead_for(_Leads("a"), "b")
    assert await lead.turn(0.25) == 0.0  # reads without blocking, no pause yet
    assert slept == []
    for taken in (0, 3):  # nothing, or a little: the leader keeps up
        lead.took(taken, 100)
        assert await lead.turn(0.25) == 0.0
    assert slept == [PAUSE, PAUSE]
    lead.took(60, 100)  # a good share of what it asked for: the leader is behind
    assert await lead.turn(0.25) == 0.0
    assert slept == [PAUSE, PAUSE]
    await lead.step_down()  # it does not lead: nothing to give up


async def test_a_broker_out_of_reach_leaves_every_process_reading_as_before() -> None:
    leads = _Leads("a", fails=True)
    lead = lead_for(leads, "b")
    assert await lead.turn(0.25) == 0.25
    await lead.step_down()
    assert leads.stepped_down == ["b"]


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("nats", marks=[pytest.mark.nats, pytest.mark.slow]),
    ]
)
async def shared_broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    """A broker shared by processes: Redis or NATS."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    shared = NatsBroker(url, lease=30) if request.param == "nats" else RedisBroker(url, lease=30)
    async with serving(shared) as broker:
        yield broker


async def test_under_a_backlog_the_stand_by_reads_at_once(shared_broker: Broker) -> None:
    leader, stand_by = Lead(shared_broker, "plan", "p1"), Lead(shared_broker, "plan", "p2")
    assert await leader.turn(0.25) == 0.25
    assert await stand_by.turn(0.25) == 0.0
    await shared_broker.publish("plan", [{"n": i} for i in range(300)])
    taken: list[Message] = []
    for _ in range(3):
        block = await stand_by.turn(0.25)
        got = await shared_broker.consume(["plan"], "p2", 100, block)
        stand_by.took(len(got), 100)
        taken += got
    assert len(taken) == 300
    assert stand_by._pause == 0.0
    await shared_broker.ack(taken)
    # Nothing left: the next read finds nothing, and the stand-by pauses before the one after.
    got = await shared_broker.consume(["plan"], "p2", 100, await stand_by.turn(0.25))
    stand_by.took(len(got), 100)
    assert got == []
    assert stand_by._pause == PAUSE
    # A leader that stops gives its lead up: another process takes it at once.
    await leader.step_down()
    assert await shared_broker.lead("plan", "p2", ttl=30)


async def test_a_stand_by_at_rest_for_hours_keeps_its_longest_pause(
    slept: list[float],
) -> None:
    lead = lead_for(_Leads("a"), "b")
    await lead.turn(0.25)
    for _ in range(5000):  # more than an hour of empty reads at the longest pause
        lead.took(0, 100)
    assert await lead.turn(0.25) == 0.0
    assert slept == [RESTING]
    lead.took(3, 100)  # something came: back to the short pause
    await lead.turn(0.25)
    assert slept == [RESTING, PAUSE]


def test_a_resting_pause_grows_to_its_longest_and_stays() -> None:
    assert [resting_pause(0.5, n, 4.0) for n in range(6)] == [0.5, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert resting_pause(0.5, 10**9, 4.0) == 4.0
    assert resting_pause(0.5, 10**9, 0.0) == 0.5  # no growth asked for
