"""Waits on the delivery path end: a connection that is never given back, a lease renewal
that never answers, a Redis that never replies. Each fails (an outage, retried by the
caller) instead of stopping its stage for good; and a stuck process tells what it waits on.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import signal
from collections.abc import Sequence

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

import harness
from clarion.broker import reconnect
from clarion.broker.base import Message
from clarion.broker.embedded import EmbeddedBroker
from clarion.broker.reconnect import reconnecting
from clarion.broker.redis_streams import RedisBroker
from clarion.observability import stacks
from clarion.pipeline.inflight import holding
from clarion.store import pg as pg_module
from clarion.store.batching import Batcher, is_outage
from clarion.store.pg import PgPool
from faultkit import private_redis


@pytest.mark.postgres
async def test_a_statement_waits_a_bounded_time_for_a_pooled_connection(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_module, "ACQUIRE_TIMEOUT", 0.2)
    pg = PgPool(postgres_url, size=1)
    try:
        async with pg.connection():  # the pool's only connection, held
            with pytest.raises(TimeoutError) as caught:
                await pg.fetch("SELECT 1")
        assert is_outage(caught.value)  # the caller retries the unit of work
        assert [tuple(r) for r in await pg.fetch("SELECT 1")] == [(1,)]
    finally:
        await pg.aclose()


@pytest.mark.postgres
async def test_closing_a_pool_does_not_wait_forever_for_a_connection_never_given_back(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A statement's task left waiting on something that never comes, holding its
    connection: the pool's close gives up on it after CLOSE_TIMEOUT and closes it, so a
    stopping process still ends."""
    monkeypatch.setattr(pg_module, "CLOSE_TIMEOUT", 0.2)
    pg = PgPool(postgres_url, size=2)
    held = asyncio.Event()

    async def stuck() -> None:
        async with pg.connection() as conn:
            held.set()
            await asyncio.Event().wait()
            await conn.fetch("SELECT 1")

    task = asyncio.create_task(stuck())
    await held.wait()
    await asyncio.wait_for(pg.aclose(), 10)
    assert not task.done()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class _SilentRenewals(EmbeddedBroker):
    """A broker whose lease renewals never return."""

    def __init__(self) -> None:
        super().__init__()
        self.renewals = 0
        self.second = asyncio.Event()

    async def extend(self, messages: Sequence[Message], consumer: str) -> None:
        self.renewals += 1
        if self.renewals >= 2:
            self.second.set()
        await asyncio.Event().wait()


async def test_a_renewal_that_never_returns_neither_stops_the_work_nor_outlives_it() -> None:
    broker = _SilentRenewals()
    await broker.start()
    try:
        await broker.publish("plan", [{"n": 1}])
        taken = await broker.consume(["plan"], "planner-1", count=10, timeout=2)
        async with holding(broker, taken, "planner-1", lease=0.3):
            # The first renewal was given up on after a lease, and the next one made.
            await asyncio.wait_for(broker.second.wait(), 10)
        assert [
            t for t in asyncio.all_tasks() if "holding.<locals>.renew" in repr(t.get_coro())
        ] == []
    finally:
        await broker.close()


class _LostCancellation(EmbeddedBroker):
    """A broker whose renewal drops a cancellation that comes while it runs, as
    ``asyncio.wait_for`` does on Python 3.11 (under every redis-py send) when the call
    completes at that moment."""

    def __init__(self) -> None:
        super().__init__()
        self.renewing = asyncio.Event()

    async def extend(self, messages: Sequence[Message], consumer: str) -> None:
        self.renewing.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.05)


async def test_the_end_of_a_held_batch_does_not_wait_on_a_renewer_that_lost_its_cancel() -> None:
    """The planner's stall in a broadcast: leaving ``holding`` while a renewal was under way
    waited for good on a renewer that went on renewing."""
    broker = _LostCancellation()
    await broker.start()
    try:
        await broker.publish("plan", [{"n": 1}])
        taken = await broker.consume(["plan"], "planner-1", count=10, timeout=2)
        async with holding(broker, taken, "planner-1", lease=0.3):
            await asyncio.wait_for(broker.renewing.wait(), 10)
        renewers = [
            t for t in asyncio.all_tasks() if "holding.<locals>.renew" in repr(t.get_coro())
        ]
        assert renewers == []
    finally:
        await broker.close()


@pytest.mark.redis
async def test_a_redis_that_does_not_answer_fails_the_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stopped (SIGSTOP) server: connected, silent. A publish fails after the socket
    timeout (and its retries), as an outage, instead of waiting forever."""
    monkeypatch.setattr(reconnect, "SOCKET_TIMEOUT", 0.3)
    with private_redis() as server:
        broker = RedisBroker(server.url, lease=3)
        await broker.start()
        try:
            await broker.publish("plan", [{"n": 1}])
            assert server.process is not None
            server.process.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(RedisTimeoutError) as caught:
                    await broker.publish("plan", [{"n": 2}])
                assert is_outage(caught.value)
            finally:
                server.process.send_signal(signal.SIGCONT)
            await broker.publish("plan", [{"n": 3}])
            taken = await broker.consume(["plan"], "c1", count=10, timeout=2)
            # A call that timed out may have been done all the same, once or more (the
            # server ran it on waking): publishing is at least once.
            assert {m.payload["n"] for m in taken} - {2} == {1, 3}
        finally:
            await broker.close()


def test_the_settings_of_every_redis_client_bound_each_reply() -> None:
    settings = reconnecting()
    assert 0 < settings["socket_timeout"] <= 60
    assert 0 < settings["socket_connect_timeout"] <= 60


async def test_the_dump_names_the_await_each_task_is_parked_on() -> None:
    parked = asyncio.Event()

    async def inner() -> None:
        await parked.wait()

    async def outer() -> None:
        await inner()

    task = asyncio.create_task(outer(), name="stuck-one")
    await asyncio.sleep(0)
    out = io.StringIO()
    stacks.dump_tasks(out)
    task.cancel()
    dump = out.getvalue()
    section = dump[dump.index("task stuck-one:") :]
    for name in ("outer", "inner", "wait"):
        assert f"in {name}" in section
    assert dump.rstrip().endswith("--- end of tasks ---")


async def test_a_batch_whose_results_cannot_be_handed_out_fails_its_callers() -> None:
    """A flush that answers the wrong number of results is a fault: the callers get an
    error instead of waiting forever, and the batcher goes on with the next batches."""
    calls = 0

    async def flush(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        return [] if calls == 1 else [item * 2 for item in items]

    batcher: Batcher[int, int] = Batcher(flush, name="test")
    batcher.start()
    try:
        with pytest.raises(ValueError, match="zip"):
            await asyncio.wait_for(batcher.submit(1), 10)
        assert await asyncio.wait_for(batcher.submit(2), 10) == 4
    finally:
        await batcher.close()


async def test_a_lingering_batcher_waits_for_more_only_while_items_come_together() -> None:
    batches: list[list[str]] = []

    async def flush(items: list[str]) -> list[str]:
        batches.append(items)
        return items

    # A long linger, so that what is queued during it is sure to join.
    batcher: Batcher[str, str] = Batcher(flush, name="test", linger=2.0)
    batcher.start()
    try:
        # Alone: written at once (no linger after a batch of none).
        assert await asyncio.wait_for(batcher.submit("a"), 1.5) == "a"
        # Alone again after a batch of one: still no linger.
        assert await asyncio.wait_for(batcher.submit("b"), 1.5) == "b"
        # Two together: one batch, and from now on the batcher lingers.
        assert await asyncio.wait_for(asyncio.gather(batcher.submit("c"), batcher.submit("d")), 1.5)
        assert batcher.pending == 0
        e = batcher.put_nowait("e")
        for _ in range(3):
            await asyncio.sleep(0)  # the batcher takes "e" and lingers
        # Taken from the queue, not yet written: still pending (a drain waits for it).
        assert batcher.pending == 1
        f = batcher.put_nowait("f")
        assert batcher.pending == 2
        assert await asyncio.wait_for(asyncio.gather(e, f), 10) == ["e", "f"]
        assert batches == [["a"], ["b"], ["c", "d"], ["e", "f"]]
        assert batcher.pending == 0
    finally:
        await batcher.close()


async def test_a_lingering_batcher_writes_once_nothing_more_can_come() -> None:
    """``gathered`` says when every item that could join has joined: the linger (a minute
    here) ends then, as an item arrives or before it begins."""
    batches: list[list[str]] = []
    expected = 0

    async def flush(items: list[str]) -> list[str]:
        batches.append(items)
        return items

    batcher: Batcher[str, str] = Batcher(
        flush, name="test", linger=60.0, gathered=lambda: batcher.pending >= expected
    )
    batcher.start()
    try:
        expected = 2
        assert await asyncio.wait_for(asyncio.gather(batcher.submit("a"), batcher.submit("b")), 5)
        # Lingering now: three are expected, and the third ends the linger.
        expected = 3
        c = batcher.put_nowait("c")
        for _ in range(3):
            await asyncio.sleep(0)  # the batcher takes "c" and lingers
        d = batcher.put_nowait("d")
        for _ in range(3):
            await asyncio.sleep(0)
        assert not c.done()
        assert await asyncio.wait_for(asyncio.gather(c, d, batcher.submit("e")), 5)
        # All expected already there when the linger would begin: it does not.
        expected = 1
        assert await asyncio.wait_for(batcher.submit("f"), 5) == "f"
        assert batches == [["a", "b"], ["c", "d", "e"], ["f"]]
    finally:
        await batcher.close()


async def test_a_batcher_stopped_while_it_lingers_tells_the_callers_of_its_batch() -> None:
    async def flush(items: list[str]) -> list[str]:
        return items

    batcher: Batcher[str, str] = Batcher(flush, name="test", linger=60.0)
    batcher.start()
    try:
        assert await asyncio.wait_for(asyncio.gather(batcher.submit("a"), batcher.submit("b")), 5)
        c = batcher.put_nowait("c")
        for _ in range(3):
            await asyncio.sleep(0)  # the batcher takes "c" and lingers
        assert batcher.pending == 1
    finally:
        # Not close(), which would wait for the queue: the tasks are cancelled mid-linger.
        for task in batcher._tasks:
            task.cancel()
        await asyncio.gather(*batcher._tasks, return_exceptions=True)
    assert c.cancelled()
    assert batcher.pending == 0


async def test_a_harness_that_does_not_stop_says_what_it_waits_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The test harness's own bound: a stop that hangs fails with each task's awaits."""
    monkeypatch.setattr(harness, "STOP_WITHIN", 0.1)

    class Stuck:
        async def stop(self) -> None:
            await asyncio.Event().wait()

    class Closed:
        async def aclose(self) -> None:
            return None

    with pytest.raises(AssertionError, match=r"(?s)did not stop in 0.1s.*harness.py.*locks.py"):
        await harness._stopped(Stuck(), Closed())  # type: ignore[arg-type]
