"""The broker contract, run against every backend.

Nothing here sleeps to wait for work: ``consume``'s own timeout is the wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from clarion.broker.base import Broker, Delayed, Message
from clarion.broker.embedded import EmbeddedBroker
from clarion.broker.nats_jetstream import NatsBroker
from clarion.broker.redis_client import RedisClient, connect
from clarion.broker.redis_streams import RedisBroker
from clarion.pipeline.inflight import holding

LEASE = 0.3


REDIS = [
    pytest.param(("redis", 1), marks=pytest.mark.redis, id="redis"),
    # One server, each stream in three shards (one XREADGROUP over them all).
    pytest.param(("redis", 3), marks=pytest.mark.redis, id="redis-sharded"),
    # A cluster of three masters, each stream in two shards (slots), read one slot at a time.
    pytest.param(("cluster", 2), marks=[pytest.mark.redis, pytest.mark.slow], id="redis-cluster"),
]
BROKERS = [
    pytest.param(("embedded", 1), id="embedded"),
    *REDIS,
    pytest.param(("nats", 1), marks=[pytest.mark.nats, pytest.mark.slow], id="nats"),
]
_URLS = {"redis": "redis_url", "cluster": "redis_cluster_url", "nats": "nats_url"}


@pytest.fixture(params=BROKERS)
def broker_config(request: pytest.FixtureRequest) -> tuple[str | None, int]:
    """(None for the embedded broker, else the URL of an empty Redis or Redis Cluster, or
    of a NATS server whose JetStream holds nothing; shards per stream)."""
    kind, shards = request.param
    if kind == "embedded":
        return None, shards
    url: str = request.getfixturevalue(_URLS[kind])
    return url, shards


@pytest.fixture(params=REDIS)
def redis_config(request: pytest.FixtureRequest) -> tuple[str, int]:
    """The URL of an empty Redis or Redis Cluster, and shards per stream."""
    kind, shards = request.param
    url: str = request.getfixturevalue(_URLS[kind])
    return url, shards


def make_broker(url: str | None, shards: int = 1, lease: float = LEASE) -> Broker:
    if url is None:
        return EmbeddedBroker(lease=lease)
    if url.startswith("nats://"):
        return NatsBroker(url, lease=lease)
    return RedisBroker(url, lease=lease, shards=shards)


@pytest.fixture
async def broker(broker_config: tuple[str | None, int]) -> AsyncIterator[Broker]:
    instance = make_broker(*broker_config)
    await instance.start()
    yield instance
    await instance.close()


def raw_client(url: str) -> RedisClient:
    return connect(url, max_connections=4, pool_timeout=5)


def payloads(messages: list[Message]) -> list[dict[str, object]]:
    return [m.payload for m in messages]


def numbers(messages: list[Message]) -> list[int]:
    return [m.payload["n"] for m in messages]


def in_order(broker: Broker) -> bool:
    """Whether a stream's messages come in the order they were published: a sharded
    stream keeps that order within each shard only."""
    return not isinstance(broker, RedisBroker) or broker.shards == 1


async def test_round_trip_keeps_nested_unicode_data(broker: Broker) -> None:
    payload = {
        "id": "n-1",
        "text": "Grüße, 東京 🚀 \u2028",
        "nested": {"list": [1, 2.5, None, True, {"k": "v"}], "empty": {}},
    }
    await broker.publish("jobs", [payload])

    [message] = await broker.consume(["jobs"], "c1", count=10, timeout=2)

    assert message.stream == "jobs"
    assert message.payload == payload
    assert not message.redelivered
    await broker.ack([message])
    assert await broker.consume(["jobs"], "c1", count=10, timeout=0.05) == []


async def test_higher_lanes_come_first_and_count_is_respected(broker: Broker) -> None:
    await broker.publish("low", [{"n": i} for i in range(3)])
    await broker.publish("high", [{"n": 10 + i} for i in range(3)])

    first = await broker.consume(["high", "low"], "c1", count=4, timeout=2)
    second = await broker.consume(["high", "low"], "c1", count=4, timeout=2)

    assert [m.stream for m in first] == ["high", "high", "high", "low"]
    assert [m.stream for m in second] == ["low", "low"]
    assert sorted(numbers(first[:3])) == [10, 11, 12]
    assert sorted(numbers(first[3:] + second)) == [0, 1, 2]
    if in_order(broker):
        assert numbers(first) == [10, 11, 12, 0]
        assert numbers(second) == [1, 2]


async def test_overfill_may_return_up_to_count_per_stream_higher_lanes_first(
    broker: Broker,
) -> None:
    await broker.publish("low", [{"n": i} for i in range(3)])
    await broker.publish("high", [{"n": 10 + i} for i in range(3)])

    taken: list[Message] = []
    while len(taken) < 6:
        got = await broker.consume(["high", "low"], "c1", count=2, timeout=2, overfill=True)
        assert got, "messages were left behind"
        assert len(got) <= 4  # at most count per stream
        lanes = [["high", "low"].index(m.stream) for m in got]
        assert lanes == sorted(lanes)
        taken += got
        await broker.ack(got)

    # Each stream in its order (a sharded one: in any), every message once.
    by_stream = {s: numbers([m for m in taken if m.stream == s]) for s in ("high", "low")}
    if not in_order(broker):
        by_stream = {s: sorted(n) for s, n in by_stream.items()}
    assert by_stream == {"high": [10, 11, 12], "low": [0, 1, 2]}
    assert await broker.consume(["high", "low"], "c1", count=2, timeout=0.05) == []


async def test_overfill_reads_a_later_stream_while_an_earlier_one_has_a_backlog(
    broker: Broker,
) -> None:
    """A consumer's retry lane comes after its priority lanes: with ``overfill`` it is read
    in the same take, however long the lanes before it are."""
    await broker.publish("fresh", [{"n": i} for i in range(50)])
    await broker.publish("retry", [{"n": 100 + i} for i in range(5)])
    got = await broker.consume(["fresh", "retry"], "c1", count=4, timeout=2, overfill=True)
    assert [m.stream for m in got] == ["fresh"] * 4 + ["retry"] * 4
    if in_order(broker):
        assert numbers(got) == [0, 1, 2, 3, 100, 101, 102, 103]
    await broker.ack(got)


async def test_count_limits_a_single_stream(broker: Broker) -> None:
    await broker.publish("jobs", [{"n": i} for i in range(5)])

    taken = await broker.consume(["jobs"], "c1", count=2, timeout=2)

    assert len(taken) == 2
    assert set(numbers(taken)) <= set(range(5))
    if in_order(broker):
        assert payloads(taken) == [{"n": 0}, {"n": 1}]


async def test_consume_on_empty_streams_returns_nothing_after_the_timeout(
    broker: Broker,
) -> None:
    started = time.monotonic()
    assert await broker.consume(["a", "b"], "c1", count=10, timeout=0.25) == []
    assert time.monotonic() - started >= 0.2


async def test_blocked_consumer_gets_a_message_published_meanwhile(broker: Broker) -> None:
    waiting = asyncio.create_task(broker.consume(["low", "high"], "c1", count=5, timeout=2))
    await asyncio.sleep(0)  # let the consumer start waiting (scheduling, not waiting for work)
    await broker.publish("high", [{"n": 1}])

    taken = await waiting

    assert [(m.stream, m.payload) for m in taken] == [("high", {"n": 1})]


async def test_a_consumer_that_waits_again_gets_each_message_published_meanwhile(
    broker: Broker,
) -> None:
    """Each wait is woken by what is published during it, not only the first (a backend
    that waits on the server must ask again after each answer)."""
    for n in range(3):
        waiting = asyncio.create_task(broker.consume(["low", "high"], "c1", count=5, timeout=2))
        # Time for a network backend to be waiting on its server (were it not yet, the
        # message would be found by a read, and the wake go untested, not fail).
        await asyncio.sleep(0.1)
        await broker.publish("high", [{"n": n}])
        taken = await waiting
        assert payloads(taken) == [{"n": n}]
        await broker.ack(taken)


async def test_a_waiting_consumer_returns_once_stopped(broker: Broker) -> None:
    """A stopping process waits for no more work: a consume blocked for long returns
    empty when its ``stop`` is set; one made after still takes what is waiting."""
    stop = asyncio.Event()
    waiting = asyncio.create_task(broker.consume(["jobs"], "c1", count=5, timeout=60, stop=stop))
    await asyncio.sleep(0)  # let the consumer start waiting (scheduling, not waiting for work)
    stop.set()

    assert await asyncio.wait_for(waiting, 10) == []
    await broker.publish("jobs", [{"n": 1}])
    taken = await asyncio.wait_for(
        broker.consume(["jobs"], "c1", count=5, timeout=60, stop=stop), 10
    )
    assert payloads(taken) == [{"n": 1}]


async def test_unacked_message_is_redelivered_after_the_lease(broker: Broker) -> None:
    await broker.publish("jobs", [{"n": 1}, {"n": 2}])
    done, dropped = await broker.consume(["jobs"], "dead", count=2, timeout=2)
    await broker.ack([done])

    # The consumer "dies" holding the other message: another takes it after the lease.
    [again] = await broker.consume(["jobs"], "alive", count=10, timeout=2)

    # Which of the two came first is the lanes' order only where a stream is not sharded.
    assert sorted([done.payload["n"], dropped.payload["n"]]) == [1, 2]
    assert again.payload == dropped.payload
    assert again.redelivered
    await broker.ack([again])
    # Acked messages never come back, even after several leases.
    assert await broker.consume(["jobs"], "alive", count=10, timeout=3 * LEASE) == []


async def test_messages_taken_back_from_several_lanes_respect_the_count(broker: Broker) -> None:
    """Leases run out on two lanes at once: a take of one gets one of them, and the other
    is not lost but comes with the next take (taken back lane by lane in one trip)."""
    await broker.publish("high", [{"n": 1}])
    await broker.publish("low", [{"n": 2}])
    held = await broker.consume(["high", "low"], "dead", count=2, timeout=2, overfill=True)
    assert len(held) == 2
    [first] = await broker.consume(["high", "low"], "alive", count=1, timeout=2)
    [second] = await broker.consume(["high", "low"], "alive", count=1, timeout=2)
    assert sorted([first.payload["n"], second.payload["n"]]) == [1, 2]
    assert first.redelivered
    assert second.redelivered
    await broker.ack([first, second])
    assert await broker.consume(["high", "low"], "alive", count=10, timeout=3 * LEASE) == []


async def test_delayed_message_appears_once_due(broker: Broker) -> None:
    due = time.time() + 0.3
    await broker.publish_delayed([Delayed("jobs", {"n": 1}, due), Delayed("jobs", {"n": 1}, due)])

    assert await broker.consume(["jobs"], "c1", count=10, timeout=0.05) == []
    taken = await broker.consume(["jobs"], "c1", count=10, timeout=2)
    if len(taken) < 2:  # the two may be moved into the stream by separate steps
        taken += await broker.consume(["jobs"], "c1", count=10, timeout=2)

    assert time.time() >= due
    # Equal payloads stay two messages.
    assert payloads(taken) == [{"n": 1}, {"n": 1}]
    assert not any(m.redelivered for m in taken)


async def test_delayed_message_due_in_the_past_is_available_at_once(broker: Broker) -> None:
    await broker.publish_delayed([Delayed("jobs", {"n": 1}, time.time() - 5)])

    taken = await broker.consume(["jobs"], "c1", count=10, timeout=2)

    assert payloads(taken) == [{"n": 1}]


async def test_release_makes_a_message_available_again_at_once(broker: Broker) -> None:
    await broker.publish("jobs", [{"n": 1}])
    taken = await broker.consume(["jobs"], "c1", count=10, timeout=2)

    await broker.release(taken)
    # Well inside the lease, so this is the release at work, not the lease running out.
    [again] = await broker.consume(["jobs"], "c2", count=10, timeout=LEASE / 3)

    assert again.payload == {"n": 1}
    assert again.redelivered
    await broker.ack([again])
    assert await broker.consume(["jobs"], "c2", count=10, timeout=2 * LEASE) == []


async def test_backlog_counts_waiting_held_and_delayed(broker: Broker) -> None:
    await broker.publish("jobs", [{"n": i} for i in range(3)])
    [held] = await broker.consume(["jobs"], "c1", count=1, timeout=2)
    await broker.publish_delayed([Delayed("jobs", {"n": 9}, time.time() + 3600)] * 2)

    assert await broker.backlog(["jobs", "other"]) == {"jobs": 5, "other": 0}
    await broker.ack([held])
    assert await broker.backlog(["jobs"]) == {"jobs": 4}


async def test_many_messages_are_consumed_exactly_once_by_two_consumers(
    broker_config: tuple[str | None, int],
) -> None:
    # A lease that no batch outlives on a loaded machine: this is about sharing, not about
    # what a lease's end hands out again (the suite's 0.3 s lease did, under the slow step).
    broker = make_broker(*broker_config, lease=30.0)
    await broker.start()
    try:
        await _consume_exactly_once(broker)
    finally:
        await broker.close()


async def _consume_exactly_once(broker: Broker) -> None:
    total = 5000
    for start in range(0, total, 500):
        await broker.publish("jobs", [{"n": n} for n in range(start, start + 500)])

    async def drain(consumer: str) -> list[int]:
        seen: list[int] = []
        while batch := await broker.consume(["jobs"], consumer, count=100, timeout=0.2):
            seen += [m.payload["n"] for m in batch]
            await broker.ack(batch)
        return seen

    first, second = await asyncio.gather(drain("c1"), drain("c2"))

    # Exactly once between them; how they share depends on scheduling (the embedded
    # broker never suspends while work is waiting, so one consumer may take it all).
    assert sorted(first + second) == list(range(total))
    assert await broker.backlog(["jobs"]) == {"jobs": 0}


async def test_an_extended_lease_keeps_a_message_from_being_handed_out_again(
    broker: Broker,
) -> None:
    await broker.publish("jobs", [{"n": 1}])
    [held] = await broker.consume(["jobs"], "slow", count=1, timeout=2)
    # Renewed every third of a lease for three leases: nobody else gets it meanwhile.
    for _ in range(9):
        await asyncio.sleep(LEASE / 3)
        await broker.extend([held], "slow")
        assert await broker.consume(["jobs"], "other", count=1, timeout=0) == []
    await broker.ack([held])
    await broker.extend([held], "slow")
    assert await broker.consume(["jobs"], "other", count=1, timeout=3 * LEASE) == []


async def test_redis_due_messages_move_after_the_server_forgets_its_scripts(
    redis_config: tuple[str, int],
) -> None:
    url, shards = redis_config
    broker = RedisBroker(url, lease=LEASE, shards=shards)
    await broker.start()
    try:
        await broker.publish_delayed(
            [Delayed(stream, {"s": stream}, time.time() - 1) for stream in ("a", "b", "c")]
        )
        client = raw_client(url)
        await client.script_flush()
        await client.aclose()

        taken: list[Message] = []
        while len(taken) < 3:
            got = await broker.consume(["a", "b", "c"], "c1", count=10, timeout=2)
            assert got, "due messages were not moved"
            taken += got

        assert sorted(m.stream for m in taken) == ["a", "b", "c"]
    finally:
        await broker.close()


# The lease of the test of renewals: long enough that a renewal (every third of a lease)
# is never late by the rest of it on a loaded machine; LEASE's 0.3 s once was, on NATS.
RENEWED_LEASE = 1.0


async def test_work_held_longer_than_a_lease_is_not_handed_out_again(
    broker_config: tuple[str | None, int],
) -> None:
    """The planner's batches (pipeline/inflight.py::holding): a batch planned for twice
    its lease stays with its planner, and is acked once."""
    broker = make_broker(*broker_config, lease=RENEWED_LEASE)
    await broker.start()
    try:
        await broker.publish("plan", [{"n": 1}])
        taken = await broker.consume(["plan"], "planner-1", count=10, timeout=2)
        async with holding(broker, taken, "planner-1", RENEWED_LEASE):
            wait = 2 * RENEWED_LEASE
            assert await broker.consume(["plan"], "planner-2", count=10, timeout=wait) == []
        await broker.ack(taken)
        wait = 1.5 * RENEWED_LEASE
        assert await broker.consume(["plan"], "planner-2", count=10, timeout=wait) == []
    finally:
        await broker.close()


async def test_one_holder_leads_a_role_until_it_steps_down(broker: Broker) -> None:
    """pipeline/lead.py: one process per role leads; the embedded broker (one process)
    always lets its caller lead."""
    assert await broker.lead("planner", "p1", ttl=60)
    assert await broker.lead("planner", "p1", ttl=60)  # kept
    assert await broker.lead("senders", "p2", ttl=60)  # another role: its own lead
    shared = isinstance(broker, RedisBroker | NatsBroker)
    assert await broker.lead("planner", "p2", ttl=60) is not shared
    await broker.step_down("planner", "p2")  # not the holder: nothing changes
    assert await broker.lead("planner", "p2", ttl=60) is not shared
    await broker.step_down("planner", "p1")
    assert await broker.lead("planner", "p2", ttl=60)
    assert await broker.lead("planner", "p1", ttl=60) is not shared


async def test_a_lead_lapses_when_its_holder_stops_renewing(
    redis_config: tuple[str, int],
) -> None:
    url, shards = redis_config
    broker = RedisBroker(url, lease=LEASE, shards=shards)
    await broker.start()
    try:
        assert await broker.lead("planner", "gone", ttl=60)
        assert not await broker.lead("planner", "next", ttl=60)
        client = raw_client(url)
        assert 0 < await client.pttl("clarion:lead:planner") <= 60_000
        await client.delete("clarion:lead:planner")  # what 60 s without renewal does
        await client.aclose()
        assert await broker.lead("planner", "next", ttl=60)
    finally:
        await broker.close()
