"""The consumer's slots: the top lane's express slots over the process's and the tenant's
limits, and the lower lanes kept to theirs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from clarion.broker import Message
from clarion.pipeline import urgency as urgency_module
from clarion.pipeline.consumer import FairConsumer, Handler
from clarion.pipeline.urgency import Urgency

STREAMS = ["send.x.critical", "send.x.high", "send.x.normal", "send.x.low"]


def message(lane: str, ident: str, tenant: str) -> Message:
    return Message(f"send.x.{lane}", ident, {"tenant": tenant})


def held_handler() -> tuple[list[str], asyncio.Event, Handler]:
    """A handler that records each message it starts and holds it until released."""
    release = asyncio.Event()
    started: list[str] = []

    async def handle(msg: Message) -> None:
        started.append(msg.id)
        await release.wait()

    return started, release, handle


def to(ident: str, endpoint: str, lane: str = "normal") -> Message:
    """Tenant a's message for ``endpoint``."""
    return Message(f"send.x.{lane}", ident, {"tenant": "a", "to": endpoint})


def per_endpoint(handle: Handler, **options: Any) -> FairConsumer:
    """16 slots, one tenant may hold them all, an endpoint (the payload's `to`) a quarter
    unless ``options`` say otherwise."""
    broker: Any = None  # never called: messages are handed in directly
    return FairConsumer(
        broker,
        STREAMS,
        "c",
        handle,
        concurrency=16,
        tenant_share=1.0,
        lease=60,
        name="t",
        endpoint=lambda m: m.payload.get("to"),
        **{"endpoint_share": 0.25, **options},
    )


async def test_a_critical_message_starts_while_the_lower_lanes_fill_every_slot() -> None:
    started, release, handle = held_handler()
    broker: Any = None  # never called: messages are handed in directly
    consumer = FairConsumer(
        broker, STREAMS, "c", handle, concurrency=8, tenant_share=0.5, lease=60, name="t"
    )
    assert (consumer.tenant_limit, consumer.express) == (4, 1)
    # A broadcast of two tenants fills every slot, with more of it waiting.
    consumer._enqueue([message("normal", f"a{i}", "a") for i in range(20)])
    consumer._enqueue([message("normal", f"b{i}", "b") for i in range(20)])
    await asyncio.sleep(0)
    assert len(started) == 8
    # Tenant a's critical delivery starts at once, over both limits.
    consumer._enqueue([message("critical", "alert-1", "a")])
    await asyncio.sleep(0)
    assert started[-1] == "alert-1"
    # The express slots are few: the next critical one waits for a slot like the rest,
    # and a high one is no exception.
    consumer._enqueue([message("critical", "alert-2", "b"), message("high", "h", "c")])
    await asyncio.sleep(0)
    assert len(started) == 9
    release.set()
    while consumer.held:  # each finished handler starts the next waiting one
        await asyncio.wait(list(consumer._running))
    assert {"alert-2", "h"} <= set(started)
    assert len(started) == 43
    # The second critical one came first once slots were free.
    assert started.index("alert-2") < started.index("h") < started.index("a4")


async def test_a_full_endpoint_and_the_retries_hold_no_more_than_their_shares() -> None:
    started, release, handle = held_handler()
    consumer = per_endpoint(handle, retry_stream="send.x.retry", retry_share=0.25)
    assert (consumer.retry_limit, consumer.endpoint_limit) == (4, 4)

    # Retries come first here, and most of the fresh work goes to one (hanging) endpoint.
    consumer._enqueue([to(f"r{i}", f"down{i % 2}", "retry") for i in range(20)])
    consumer._enqueue([to(f"h{i}", "hangs") for i in range(20)])
    consumer._enqueue([to(f"ok{i}", "healthy") for i in range(3)])
    await asyncio.sleep(0)
    # The hanging endpoint holds its share, the retries theirs; the healthy endpoint's
    # work, behind them all, started at once.
    assert sorted(started) == sorted(
        [*(f"h{i}" for i in range(4)), "ok0", "ok1", "ok2", "r0", "r1", "r2", "r3"]
    )
    assert consumer.held == 43
    release.set()
    while consumer.held:  # each finished handler starts the next waiting one
        await asyncio.wait(list(consumer._running))
    assert len(started) == 43 == len(set(started))


async def test_reading_ahead_near_the_cap_takes_handfuls_not_single_messages() -> None:
    """Everything waiting is parked behind a full endpoint and the consumer holds nearly
    all it may: it waits for a handful of slots to free before it reads on, rather than
    paying a broker read (and a screen) for each message finished."""
    _, _, handle = held_handler()
    consumer = per_endpoint(handle, max_held=100)
    parked = [to(f"m{i}", "one") for i in range(99)]
    consumer._enqueue(parked)
    await asyncio.sleep(0)
    assert consumer.held == 99
    assert len(consumer._running) == consumer.endpoint_limit
    assert consumer._wanted() == 0  # room for one: not worth a read
    consumer._max_held = 99 + 2 * consumer._min_take
    assert consumer._wanted() == 2 * consumer._min_take  # room for a handful: read on


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def adaptive(handle: Handler, clock: Clock) -> FairConsumer:
    """As :func:`per_endpoint`, with the share held only by an endpoint in trouble."""
    return per_endpoint(handle, endpoint_slow_after=1.0, clock=clock)


async def test_a_healthy_endpoint_may_use_the_tenants_share_and_a_slow_one_only_its_own() -> None:
    started, release, handle = held_handler()
    clock = Clock()
    consumer = adaptive(handle, clock)
    assert consumer.endpoint_limit == 4
    # Nothing wrong with the endpoint: its work fills every slot.
    consumer._enqueue([to(f"a{i}", "busy") for i in range(12)])
    await asyncio.sleep(0)
    assert len(started) == 12
    # Its sends run past the slow mark: from then on it is held to its share, parked
    # behind its 12 running, while another endpoint's work starts past it.
    clock.now += 1.5
    consumer._enqueue([to(f"b{i}", "busy") for i in range(4)])
    consumer._enqueue([to("c0", "other")])
    await asyncio.sleep(0)
    assert started[12:] == ["c0"]
    release.set()
    while consumer.held:
        await asyncio.wait(list(consumer._running))
    assert len(started) == 17


async def test_an_endpoint_that_fails_is_held_to_its_share_until_it_has_been_well() -> None:
    clock = Clock()
    fail = True
    gate = asyncio.Event()
    started: list[str] = []

    async def handle(message: Message) -> bool:
        started.append(message.id)
        await gate.wait()
        return not fail

    consumer = adaptive(handle, clock)
    consumer._enqueue([to("f0", "flaky")])
    await asyncio.sleep(0)
    gate.set()
    await asyncio.wait(list(consumer._running))  # it fails, at once
    gate.clear()
    consumer._enqueue([to(f"g{i}", "flaky") for i in range(10)])
    await asyncio.sleep(0)
    assert len(consumer._running) == consumer.endpoint_limit  # in trouble: its share
    # Its sends succeed again, and once its trouble is old it may fill the slots.
    fail = False
    gate.set()
    while consumer.held:
        await asyncio.wait(list(consumer._running))
    gate.clear()
    clock.now += 31
    consumer._enqueue([to(f"h{i}", "flaky") for i in range(10)])
    await asyncio.sleep(0)
    assert len(consumer._running) == 10
    gate.set()
    while consumer.held:
        await asyncio.wait(list(consumer._running))


async def test_the_lower_lanes_start_few_while_urgent_work_is_under_way() -> None:
    """While a critical or high-priority send is under way in the process, the normal and
    low lanes (and the retries) start at most ``yield_limit`` handlers; the urgent lanes
    are not held; the rest start once the urgent work ends."""
    started, release, handle = held_handler()
    urgency = Urgency()
    consumer = per_endpoint(handle, endpoint_share=1.0, urgency=urgency)
    assert consumer.yield_limit == 2
    with urgency.holding(["b"]):
        consumer._enqueue([message("normal", f"n{i}", "a") for i in range(20)])
        consumer._enqueue([message("high", f"h{i}", "a") for i in range(3)])
        await asyncio.sleep(0)
        assert sorted(started) == ["h0", "h1", "h2", "n0", "n1"]
        # What waits is held back on purpose: no read-ahead past it meanwhile.
        assert consumer._wanted() == 0
    # The urgent work is over: the free slots fill at once (the consumer is told soon).
    await asyncio.sleep(0)
    assert len(consumer._running) == 16
    release.set()
    while consumer.held:
        await asyncio.wait(list(consumer._running))
    assert len(started) == 23


async def test_the_lower_lanes_start_again_when_giving_way_has_had_its_share(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tenant's steady stream of urgent work holds the other tenants' lower lanes back
    for at most its share of the time (pipeline/urgency.py ``SHARE``): once its budget is
    spent they fill up, and only its own stay held back."""
    monkeypatch.setattr(urgency_module, "BUDGET", 0.02)
    started, release, handle = held_handler()
    urgency = Urgency()
    consumer = per_endpoint(handle, endpoint_share=1.0, urgency=urgency)
    spent = asyncio.Event()
    with urgency.holding(["flood"]):
        consumer._enqueue([message("normal", f"a{i}", "a") for i in range(20)])
        consumer._enqueue([message("normal", f"flood{i}", "flood") for i in range(5)])
        await asyncio.sleep(0)
        assert len(started) == consumer.yield_limit
        urgency.when_clear(spent.set)  # called after the consumer's own
        await asyncio.wait_for(spent.wait(), 5)
        await asyncio.sleep(0)  # the handlers the consumer started meanwhile begin
        assert len(started) == 16
        assert not any(ident.startswith("flood") for ident in started)
    release.set()
    while consumer.held:
        await asyncio.wait(list(consumer._running))
    assert len(started) == 25
    await urgency.aclose()


class _RenewalLosesCancellation:
    """A broker whose lease renewal loses a cancellation that comes while it is under way,
    as a Redis call through Python 3.11's ``asyncio.wait_for`` can; its reads wait."""

    def __init__(self) -> None:
        self.extending = asyncio.Event()
        self.lost = 0

    async def consume(self, *args: Any, **kwargs: Any) -> list[Message]:
        await asyncio.Event().wait()
        return []

    async def extend(self, *args: Any) -> None:
        self.extending.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.lost += 1


async def test_the_consumer_ends_when_its_lease_renewal_loses_the_cancellation() -> None:
    _, release, handle = held_handler()
    broker = _RenewalLosesCancellation()
    consumer = FairConsumer(
        broker,  # type: ignore[arg-type]
        STREAMS,
        "c",
        handle,
        concurrency=4,
        tenant_share=1.0,
        lease=0.04,
        name="t",
    )
    consumer._enqueue([message("normal", "m", "a")])  # held, its lease renewed
    running = asyncio.create_task(consumer.run(asyncio.Event()))
    await asyncio.wait_for(broker.extending.wait(), 5)
    running.cancel()
    done, _ = await asyncio.wait([running], timeout=5)
    assert done == {running}
    assert running.cancelled()
    assert broker.lost == 1
    release.set()


async def test_a_consumer_of_some_lanes_ranks_them_among_all() -> None:
    """Given the normal and low lanes only (``clarion worker --lanes normal,low``), its top
    lane has no express slots and is held back by urgent work; given the high lane only,
    that lane is never held back."""
    started, release, handle = held_handler()
    urgency = Urgency()
    broker: Any = None  # never called: messages are handed in directly

    def ranked(lanes: list[str], ranks: list[int]) -> FairConsumer:
        streams = [f"send.x.{lane}" for lane in lanes]
        options: dict[str, Any] = {"tenant_share": 1.0, "lease": 60, "name": "t"}
        return FairConsumer(
            broker, streams, "c", handle, concurrency=8, urgency=urgency, ranks=ranks, **options
        )

    bulk, high = ranked(["normal", "low"], [2, 3]), ranked(["high"], [1])
    with urgency.holding(["b"]):
        bulk._enqueue([message("normal", f"n{i}", "a") for i in range(20)])
        high._enqueue([message("high", f"h{i}", "a") for i in range(3)])
        await asyncio.sleep(0)
        assert sorted(started) == ["h0", "h1", "h2", "n0"]  # yield_limit: 8 // 8
    await asyncio.sleep(0)
    assert len(bulk._running) == 8  # no express slot over the concurrency
    release.set()
    for consumer in (bulk, high):
        while consumer.held:
            await asyncio.wait(list(consumer._running))
    assert len(started) == 23
    with pytest.raises(ValueError, match="one rank per lane"):
        ranked(["normal", "low"], [2])


class OneRead:
    """A broker with one message to hand out; then each read waits for the stop."""

    def __init__(self, message: Message) -> None:
        self._left = [message]

    async def consume(self, *_: Any, stop: asyncio.Event | None = None, **__: Any) -> list[Message]:
        if self._left:
            given, self._left = self._left, []
            return given
        assert stop is not None
        await stop.wait()
        return []


async def test_within_a_take_of_its_cap_it_spills_what_waits_for_a_slow_endpoint() -> None:
    """Everything waiting is parked behind a slow endpoint and the consumer holds one short
    of ``max_held``: too near the cap to read a take (above), and not at it. The messages
    parked for the slow endpoint are spilled and it reads on to another tenant's work, not
    waiting for the slow sends to end (a hanging webhook's: at its timeout)."""
    clock = Clock()
    release, quiet_started = asyncio.Event(), asyncio.Event()

    async def handle(msg: Message) -> None:
        if msg.id == "q":
            quiet_started.set()
        await release.wait()

    spilled: list[Message] = []

    async def spill(messages: list[Message]) -> None:
        spilled.extend(messages)

    broker = OneRead(Message("send.x.normal", "q", {"tenant": "b", "to": "two"}))
    consumer = per_endpoint(handle, max_held=100, spill=spill, clock=clock)
    consumer._broker = broker  # type: ignore[assignment]
    consumer._enqueue([to(f"m{i}", "one") for i in range(99)])
    await asyncio.sleep(0)
    assert consumer.held == 99
    assert consumer._wanted() == 0
    clock.now += 2.0  # the endpoint's sends have been under way past the slow mark
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop))
    try:
        async with asyncio.timeout(5):
            await quiet_started.wait()
    finally:
        stop.set()
        release.set()
        await running
    assert len(spilled) == 99 - 2 * consumer.endpoint_limit
    assert {m.payload["to"] for m in spilled} == {"one"}
