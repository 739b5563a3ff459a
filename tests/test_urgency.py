"""A broadcast's planning gives way to critical and high-priority work in its process."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import pytest

from clarion.broker import Message
from clarion.broker.redis_client import connect
from clarion.pipeline import urgency as urgency_module
from clarion.pipeline.messages import plan_payload
from clarion.pipeline.planner import Planner
from clarion.pipeline.runtime import Roles
from clarion.pipeline.urgency import NOTHING_HELD, Held, Urgency
from harness import Harness, make_settings, running

EMAIL = {"channels": {"email": {"subject": "News", "text": "Hello {{ recipient.id }}"}}}


async def test_give_way_returns_at_once_when_nothing_urgent_is_under_way() -> None:
    urgency = Urgency()
    with urgency.holding([]):
        await urgency.give_way("t")
    await urgency.give_way("t")
    assert (urgency.under_way, urgency.waited) == (0, 0.0)


async def test_give_way_waits_for_the_urgent_work_to_end() -> None:
    urgency = Urgency()
    released = asyncio.Event()

    async def urgent() -> None:
        with urgency.holding(["t"]), urgency.holding(["t"]):  # two sends under way at once
            await released.wait()

    task = asyncio.create_task(urgent())
    await asyncio.sleep(0)
    assert urgency.under_way == 2
    waiting = asyncio.create_task(urgency.give_way("t"))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not waiting.done()
    assert urgency.giving_way == 1
    released.set()
    await asyncio.wait_for(waiting, 5)
    await task
    assert (urgency.under_way, urgency.giving_way) == (0, 0)
    assert urgency.waited > 0


async def test_give_way_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A steady stream of urgent work slows a broadcast's planning, never stops it."""
    monkeypatch.setattr(urgency_module, "PAUSE", 0.01)
    urgency = Urgency()
    with urgency.holding(["t"]):
        await asyncio.wait_for(urgency.give_way("t"), 5)
        assert urgency.under_way == 1
    assert urgency.waited >= 0.01


async def test_holding_ends_when_the_urgent_work_fails() -> None:
    urgency = Urgency()
    with pytest.raises(RuntimeError), urgency.holding(["t"]):
        raise RuntimeError("the send failed")
    assert urgency.under_way == 0
    await asyncio.wait_for(urgency.give_way("t"), 5)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


BURST = urgency_module.BUDGET / (1 - urgency_module.SHARE)  # a full budget's holding
REFILL = urgency_module.BUDGET / 2 / urgency_module.SHARE  # half a budget back


async def test_another_tenants_urgent_work_holds_back_for_at_most_its_share() -> None:
    """A tenant's steady stream of urgent work holds the others' broadcasts and lower
    lanes back for a burst, then for at most ``SHARE`` of the time: once its budget is
    spent, only its own give way until half of it is back."""
    clock = Clock()
    urgency = Urgency(clock)
    cleared: list[float] = []
    urgency.when_clear(lambda: cleared.append(clock.now))
    with urgency.holding(["flood"]):
        clock.now += BURST - 0.1
        assert (urgency.holds("other"), urgency.spent("flood")) == (True, False)
        clock.now += 0.2
        assert (urgency.holds("other"), urgency.spent("flood")) == (False, True)
        assert urgency.held() == Held(False, frozenset({"flood"}))
        await asyncio.wait_for(urgency.give_way("other"), 5)  # at once
        assert urgency.waited == 0
        await asyncio.sleep(0)
        assert cleared == [clock.now]  # what held the lower lanes back starts them again
        own = asyncio.create_task(urgency.give_way("flood"))  # its own still give way
        await asyncio.sleep(0)
        assert not own.done()
        clock.now += REFILL - 0.1
        assert not urgency.holds("other")
        clock.now += 0.2
        assert urgency.holds("other")
    await asyncio.wait_for(own, 5)
    assert urgency.held() == NOTHING_HELD
    # Over a long stretch of steady urgent work, the others are held back for its share.
    held = 0.0
    with urgency.holding(["flood"]):
        for _ in range(1000):
            clock.now += 0.1
            held += 0.1 if urgency.holds("other") else 0.0
            assert urgency.holds("flood")
    assert held / 100 == pytest.approx(urgency_module.SHARE, abs=0.05)


async def test_each_tenant_has_a_budget_of_its_own() -> None:
    clock = Clock()
    urgency = Urgency(clock)
    with urgency.holding(["flood"]):
        clock.now += BURST + 1
        assert not urgency.holds("quiet")
        with urgency.holding(["alert"]):  # another tenant's urgent send: a full budget
            assert urgency.holds("quiet")
            clock.now += 1
            assert urgency.holds("quiet")
        assert not urgency.holds("quiet")


async def test_time_at_rest_refills_the_budget() -> None:
    clock = Clock()
    urgency = Urgency(clock)
    with urgency.holding(["t"]):
        clock.now += 10
        assert urgency.spent("t")
    clock.now += urgency_module.BUDGET / urgency_module.SHARE
    assert not urgency.spent("t")
    with urgency.holding(["t"]):  # a full burst again
        clock.now += BURST - 0.1
        assert urgency.holds("other")


def test_plan_messages_name_an_urgent_priority_only() -> None:
    assert plan_payload("n1", "t1", None, "high")["priority"] == "high"
    assert plan_payload("n1", "t1", None, "critical")["priority"] == "critical"
    for priority in ("normal", "low", None):
        assert "priority" not in plan_payload("n1", "t1", None, priority)


async def _subscribed(app: Harness, members: list[str]) -> None:
    """``members`` subscribed to "news", and the template "digest" to send them."""
    body = {"recipients": [{"id": m, "email": f"{m}@example.com"} for m in members]}
    await app.client.post("/v1/recipients/batch", json=body, headers=app.auth)
    await app.client.put(
        "/v1/topics/news/subscribers", json={"recipient_ids": members}, headers=app.auth
    )
    await app.put_template("digest", EMAIL)


async def test_a_broadcast_chunk_waits_while_urgent_work_is_under_way(
    backend: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk started while a critical send is being handled in its process stores
    nothing until that send is done; the next chunk, with nothing urgent, goes at once."""
    monkeypatch.setattr(urgency_module, "PAUSE", 60.0)
    settings = make_settings(*backend, topic_chunk=2, topic_stripes=1)
    members = [f"m{i}" for i in range(4)]
    async with running(settings, Roles(api=True)) as app:
        await _subscribed(app, members)
        sent = (await app.send({"template": "digest", "to": {"topic": "news"}})).json()
        planner = Planner(app.ctx, "planner")
        assert await planner.run_once(timeout=1.0) == 1  # the send's stripe is made
        urgency = app.ctx.urgency
        released = asyncio.Event()

        async def urgent() -> None:
            with urgency.holding(["t"]):
                await released.wait()

        holder = asyncio.create_task(urgent())
        chunk = asyncio.create_task(planner.run_chunks_once(timeout=1.0))
        while urgency.giving_way == 0:
            assert not chunk.done()
            await asyncio.sleep(0.01)
        assert (await app.notification(sent["id"]))["totals"] == {}
        released.set()
        await holder
        assert await asyncio.wait_for(chunk, 10) == 1
        assert (await app.notification(sent["id"]))["totals"] == {"queued": 2}
        waited = urgency.waited
        assert await planner.run_chunks_once(timeout=1.0) == 1  # the last chunk
        assert urgency.waited == waited
        note = await app.notification(sent["id"])
        assert note["totals"] == {"queued": 4}


@pytest.mark.parametrize(
    ("priority", "give_way"),
    [("high", True), ("normal", False)],
    ids=["an urgent broadcast", "CLARION_BROADCAST_GIVE_WAY=false"],
)
async def test_broadcasts_that_give_way_to_nothing(
    backend: tuple[str, str], monkeypatch: pytest.MonkeyPatch, priority: str, give_way: bool
) -> None:
    """A high-priority topic send is urgent work itself: its chunks go on while urgent work
    (its own deliveries, say) is under way; and so do every broadcast's with giving way
    turned off."""
    monkeypatch.setattr(urgency_module, "PAUSE", 60.0)
    settings = make_settings(*backend, topic_chunk=2, topic_stripes=1, broadcast_give_way=give_way)
    members = [f"m{i}" for i in range(3)]
    async with running(settings, Roles(api=True)) as app:
        await _subscribed(app, members)
        sent = await app.send({"template": "digest", "to": {"topic": "news"}, "priority": priority})
        planner = Planner(app.ctx, "planner")
        plan = planner.run_high_once if priority == "high" else planner.run_once
        assert await plan(timeout=1.0) == 1
        with app.ctx.urgency.holding(["t"]):
            while await asyncio.wait_for(planner.run_chunks_once(timeout=0.2), 10):
                pass
        assert app.ctx.urgency.waited == 0
        note = await app.notification(sent.json()["id"])
        assert note["totals"] == {"queued": 3}


async def test_urgent_plan_messages_hold_the_planners_process(backend: tuple[str, str]) -> None:
    """Planning a critical or high-priority send marks urgent work under way for the
    batch's whole time; a normal one does not."""
    async with running(make_settings(*backend), Roles(api=True)) as app:
        await app.put_recipient("u", email="u@example.com")
        await app.put_template("digest", EMAIL)
        urgency = app.ctx.urgency
        seen: list[int] = []
        planner = Planner(app.ctx, "planner")
        handle = planner.handle

        async def watched(messages: list[Message]) -> None:
            seen.append(urgency.under_way)
            await handle(messages)

        planner.handle = watched  # type: ignore[method-assign]
        for priority in ("critical", "normal", "high"):
            body = {"template": "digest", "to": {"recipient_id": "u"}, "priority": priority}
            assert (await app.send(body)).status_code == 202
            plan = {
                "critical": planner.run_critical_once,
                "high": planner.run_high_once,
                "normal": planner.run_once,
            }[priority]
            assert await plan(timeout=1.0) == 1
        assert seen == [1, 0, 1]
        assert urgency.under_way == 0


async def _until(urgency: Urgency, condition: Callable[[], bool]) -> None:
    """Wait (bounded) until ``condition`` holds after one of ``urgency``'s looks at the
    shared set (every ``LOOK_EVERY``)."""
    async with asyncio.timeout(10):
        while not condition():
            urgency.looked.clear()
            await urgency.looked.wait()


async def test_urgent_work_in_one_process_makes_the_others_broadcasts_give_way(
    redis_url: str,
) -> None:
    """Through Redis: a process with broadcast work in hand sees another's urgent work
    while it lasts; one with none in hand does not look."""
    client = connect(redis_url, max_connections=8, pool_timeout=5)
    planning, sending, resting = Urgency(), Urgency(), Urgency()
    for name, urgency in (("planning", planning), ("sending", sending), ("resting", resting)):
        urgency.share(client, name)
    cleared = asyncio.Event()
    planning.when_clear(cleared.set)
    try:
        planning.busy()
        with sending.holding(["t"]):
            await _until(planning, lambda: planning.under_way == 1)
            assert resting.under_way == 0
            waiting = asyncio.create_task(planning.give_way("t"))
            await _until(planning, lambda: planning.giving_way == 1)
        await asyncio.wait_for(cleared.wait(), 10)
        await asyncio.wait_for(waiting, 10)
        assert planning.under_way == 0
        assert await client.zcard(urgency_module.KEY) == 0  # the entry withdrawn
    finally:
        for urgency in (planning, sending, resting):
            await urgency.aclose()
        await client.aclose()


async def test_a_dead_processs_urgent_work_lapses(redis_url: str) -> None:
    """An entry its process never withdrew (it died) stops counting after its lease."""
    client = connect(redis_url, max_connections=8, pool_timeout=5)
    lapsed = int((time.time() - 1) * 1000)
    await client.zadd(urgency_module.KEY, {"dead": lapsed})
    alive = Urgency()
    alive.share(client, "alive")
    try:
        alive.busy()
        await _until(alive, lambda: alive.looks >= 2)
        assert alive.under_way == 0  # only the lapsed entry
        await client.zadd(urgency_module.KEY, {"other": int((time.time() + 60) * 1000)})
        await _until(alive, lambda: alive.under_way == 1)
        await client.zrem(urgency_module.KEY, "other")
        await _until(alive, lambda: alive.under_way == 0)
    finally:
        await alive.aclose()
        await client.aclose()


async def test_without_redis_each_process_gives_way_to_its_own_urgent_work() -> None:
    """Redis out of reach: announcing and looking fail quietly and go on; a process still
    gives way to its own urgent work, and stops when it ends."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    client = connect(f"redis://127.0.0.1:{port}/0", max_connections=4, pool_timeout=1)
    urgency = Urgency()
    urgency.share(client, "alone")
    cleared = asyncio.Event()
    urgency.when_clear(cleared.set)
    try:
        urgency.busy()
        with urgency.holding(["t"]):
            await _until(urgency, lambda: urgency.looks >= 2)  # each look failed, and went on
            assert urgency.under_way == 1
            waiting = asyncio.create_task(urgency.give_way("t"))
            await asyncio.sleep(0)
            assert not waiting.done()
        await asyncio.wait_for(cleared.wait(), 5)
        await asyncio.wait_for(waiting, 5)
        assert urgency.under_way == 0
        assert all(not task.done() for task in urgency._tasks)  # neither loop gave up
    finally:
        await urgency.aclose()
        await client.aclose()


async def test_a_long_urgent_send_stops_holding_back_when_the_budget_is_spent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One urgent send that takes long (a slow endpoint): what gives way learns that the
    budget is spent when it is, not only when someone asks."""
    monkeypatch.setattr(urgency_module, "BUDGET", 0.02)
    urgency = Urgency()
    cleared = asyncio.Event()
    urgency.when_clear(cleared.set)
    with urgency.holding(["slow"]):
        await asyncio.wait_for(cleared.wait(), 5)
        assert urgency.spent("slow")
        cleared.clear()
        # Half of it back, holding back again; then spent again after another burst.
        await asyncio.wait_for(cleared.wait(), 5)
        assert urgency.spent("slow")
    await urgency.aclose()


class _LosesCancellation:
    """A shared-set client whose look loses a cancellation that comes as it finishes, as
    a Redis call through Python 3.11's ``asyncio.wait_for`` can: the call's result is
    returned and the task goes on, its cancellation spent."""

    def __init__(self) -> None:
        self.looking = asyncio.Event()
        self.lost = 0

    async def zrangebyscore(self, *args: object, **kwargs: object) -> list[bytes]:
        self.looking.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.lost += 1
        return []

    async def zadd(self, *args: object, **kwargs: object) -> int:
        return 0

    async def zrem(self, *args: object, **kwargs: object) -> int:
        return 0


async def test_closing_ends_the_loops_even_when_a_cancellation_is_lost() -> None:
    client = _LosesCancellation()
    urgency = Urgency()
    urgency.share(client, "lossy")
    urgency.busy()
    await asyncio.wait_for(client.looking.wait(), 5)
    tasks = list(urgency._tasks)
    await asyncio.wait_for(urgency.aclose(), 5)
    assert client.lost == 1
    assert all(task.done() for task in tasks)
