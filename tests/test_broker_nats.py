"""What the NATS JetStream broker does beyond the contract (tests/test_broker_contract.py):
poison messages, leads that lapse, durability across a server restart, the stream names.

Nothing here sleeps to wait for work: ``consume``'s own timeout is the wait.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from clarion.broker.base import Delayed, Message
from clarion.broker.nats_client import parse_url, token
from clarion.broker.nats_jetstream import NatsBroker
from clarion.observability.outages import outage_of
from clarion.store.batching import is_outage
from servers import _free_port, nats_process

pytestmark = [pytest.mark.nats, pytest.mark.slow]

LEASE = 0.3


@pytest.fixture
async def broker(nats_url: str) -> AsyncIterator[NatsBroker]:
    instance = NatsBroker(nats_url, lease=LEASE)
    await instance.start()
    yield instance
    await instance.close()


async def take_all(broker: NatsBroker, streams: list[str], want: int) -> list[Message]:
    """``want`` messages, acked; a server that is away (restarting) is waited for."""
    taken: list[Message] = []
    async with asyncio.timeout(30):
        while len(taken) < want:
            try:
                got = await broker.consume(streams, "c1", count=100, timeout=5)
                await broker.ack(got)
            except (ConnectionError, TimeoutError):
                continue  # the client reconnects on its own
            taken += got
    return taken


def test_stream_names_are_one_to_one_and_safe() -> None:
    names = ["send.email.normal", "send-email.normal", "send_email", "événement", "a b", "a*b>"]
    tokens = [token(name) for name in names]
    assert len(set(tokens)) == len(names)
    for value in tokens:
        assert all(c.isascii() and (c.isalnum() or c in "-_") for c in value), value
    assert token("send.email.normal") == "send-email-normal"


def test_broker_urls_are_checked() -> None:
    assert parse_url("nats://a:4222,nats://b:4222?replicas=3") == (
        ["nats://a:4222", "nats://b:4222"],
        3,
    )
    assert parse_url("tls://user:pw@host:4222") == (["tls://user:pw@host:4222"], 1)
    for bad in ("nats://a?replicas=0", "nats://a?replicas=9", "redis://a", "nats://a?replicas=x"):
        with pytest.raises(ValueError, match=r"replicas must be|not a NATS server"):
            parse_url(bad)


async def test_an_undecodable_message_is_set_aside_not_handed_out(
    broker: NatsBroker, nats_url: str
) -> None:
    await broker.publish("jobs", [{"n": 1}])
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        await js.publish("clarion.q.jobs", b"\xff not json")
        await js.publish("clarion.q.jobs", b"[1, 2]")  # JSON, but not an object
        await broker.publish("jobs", [{"n": 2}])

        taken = await take_all(broker, ["jobs"], 2)

        assert [m.payload for m in taken] == [{"n": 1}, {"n": 2}]
        assert await broker.consume(["jobs"], "c1", count=10, timeout=3 * LEASE) == []
        assert await broker.backlog(["jobs"]) == {"jobs": 0}
        kept = await js.pull_subscribe("clarion.poison.jobs", stream=broker.poison_stream())
        poisoned = await kept.fetch(2, timeout=5)
        assert [m.headers["Clarion-Stream"] for m in poisoned if m.headers] == ["jobs", "jobs"]
        assert all(m.headers and m.headers["Clarion-Error"] for m in poisoned)
        assert b"not json" in poisoned[0].data
    finally:
        await client.close()


async def test_a_delayed_message_without_its_headers_is_set_aside(
    broker: NatsBroker, nats_url: str
) -> None:
    await broker.publish_delayed([Delayed("jobs", {"n": 1}, time.time() + 0.2)])
    client = await nats.connect(nats_url)
    try:
        await client.jetstream().publish("clarion.delay.jobs.1", b'{"n": 666}')
    finally:
        await client.close()

    [message] = await take_all(broker, ["jobs"], 1)

    assert message.payload == {"n": 1}
    assert await broker.backlog(["jobs"]) == {"jobs": 0}


async def test_a_lead_lapses_when_its_holder_stops_renewing(broker: NatsBroker) -> None:
    ttl = 0.3
    assert await broker.lead("planner", "gone", ttl=ttl)
    # Renewed every third of its ttl for three ttls: nobody else takes it meanwhile.
    for _ in range(9):
        await asyncio.sleep(ttl / 3)
        assert await broker.lead("planner", "gone", ttl=ttl)
        assert not await broker.lead("planner", "next", ttl=ttl)
    # Its holder stops renewing: another takes it once a ttl has passed with no renewal.
    for _ in range(100):
        if await broker.lead("planner", "next", ttl=ttl):
            break
        await asyncio.sleep(ttl / 3)
    else:
        pytest.fail("the lapsed lead was never taken")
    assert not await broker.lead("planner", "gone", ttl=ttl)


async def test_two_contenders_for_a_lapsed_lead_one_wins(nats_url: str) -> None:
    brokers = [NatsBroker(nats_url, lease=LEASE) for _ in range(3)]
    try:
        assert await brokers[0].lead("planner", "gone", ttl=0.2)
        async with asyncio.timeout(10):
            while True:
                won = await asyncio.gather(
                    brokers[1].lead("planner", "b", ttl=0.2),
                    brokers[2].lead("planner", "c", ttl=0.2),
                )
                if any(won):
                    break
                await asyncio.sleep(0.05)
        assert sorted(won) == [False, True]
    finally:
        for broker in brokers:
            await broker.close()


async def test_a_changed_lease_applies_to_the_existing_consumer(nats_url: str) -> None:
    """The consumer is durable on the server: a deployment that changes its lease gets it."""
    first = NatsBroker(nats_url, lease=60)
    await first.publish("jobs", [{"n": 1}, {"n": 2}])
    [held] = await first.consume(["jobs"], "c1", count=1, timeout=5)
    await first.close()
    second = NatsBroker(nats_url, lease=LEASE)
    try:
        [other] = await second.consume(["jobs"], "c2", count=1, timeout=5)
        await second.ack([other])
        # held was taken under the old lease; the new one's consumer hands out on the new.
        assert held.payload == {"n": 1}
        [again] = await second.consume(["jobs"], "c2", count=1, timeout=10)
        assert again.payload == {"n": 1}
        assert again.redelivered
    finally:
        await second.close()


@pytest.mark.slow
async def test_messages_and_delayed_messages_survive_a_server_crash(tmp_path: Path) -> None:
    """kill -9 of nats-server: what it acknowledged is on disk, and delayed messages come
    out when due (the server keeps their clock in its consumer's state)."""
    port, store = _free_port(), str(tmp_path / "store")
    url = f"nats://127.0.0.1:{port}"
    broker = NatsBroker(url, lease=LEASE)
    try:
        with nats_process(port, store) as server:
            await broker.publish("jobs", [{"n": 1}])
            due = time.time() + 1.5
            await broker.publish_delayed([Delayed("jobs", {"n": 2}, due)])
            # A consumer that has started moving (the delayed message is held, not due).
            assert [m.payload for m in await take_all(broker, ["jobs"], 1)] == [{"n": 1}]
            await broker.publish("jobs", [{"n": 3}])
            os.kill(server.pid, signal.SIGKILL)
            server.wait()
        with nats_process(port, store):
            taken = await take_all(broker, ["jobs"], 2)
            assert sorted(m.payload["n"] for m in taken) == [2, 3]
            assert time.time() >= due
            assert await broker.backlog(["jobs"]) == {"jobs": 0}
    finally:
        await broker.close()


async def test_stream_stats_count_waiting_held_and_delayed(broker: NatsBroker) -> None:
    await broker.publish("jobs", [{"n": i} for i in range(4)])
    held = await broker.consume(["jobs"], "c1", count=1, timeout=5)
    await broker.publish_delayed(
        [Delayed("jobs", {"n": 9}, time.time() + 3600)] * 2
        + [Delayed("other", {"n": 8}, time.time() + 7200)]
    )

    [jobs, other] = await broker.stream_stats(["jobs", "other"])

    assert (jobs.length, jobs.pending, jobs.lag, jobs.delayed) == (4, 1, 3, 2)
    assert (other.length, other.pending, other.lag, other.delayed) == (0, 0, 0, 1)
    assert await broker.backlog(["jobs", "other"], due_before=time.time() + 3700) == {
        "jobs": 6,
        "other": 0,
    }
    await broker.ack(held)


async def test_a_server_that_is_away_is_an_outage_until_it_is_back(tmp_path: Path) -> None:
    """A process may start before NATS: its calls fail as an outage of the broker (waited
    out by the consumers), and work once the server is up."""
    port = _free_port()
    broker = NatsBroker(f"nats://127.0.0.1:{port}", lease=LEASE)
    try:
        with pytest.raises(ConnectionError) as refused:
            await broker.publish("jobs", [{"n": 1}])
        assert is_outage(refused.value)
        assert str(outage_of(refused.value)) == "broker (nats)"
        with nats_process(port, str(tmp_path / "store")):
            await broker.publish("jobs", [{"n": 1}])
            [message] = await take_all(broker, ["jobs"], 1)
            assert message.payload == {"n": 1}
            await broker.ping()
    finally:
        await broker.close()


async def test_two_processes_move_each_delayed_message_once(nats_url: str) -> None:
    """Every consuming process runs a mover; each delayed message reaches its stream once."""
    brokers = [NatsBroker(nats_url, lease=LEASE) for _ in range(2)]
    try:
        due = time.time() + 0.3
        await brokers[0].publish_delayed([Delayed("jobs", {"n": n}, due) for n in range(200)])

        async def drain(broker: NatsBroker) -> list[int]:
            seen: list[int] = []
            while batch := await broker.consume(["jobs"], "c", count=50, timeout=1.5):
                seen += [m.payload["n"] for m in batch]
                await broker.ack(batch)
            return seen

        first, second = await asyncio.gather(*(drain(b) for b in brokers))
        assert sorted(first + second) == list(range(200))
        assert await brokers[0].backlog(["jobs"]) == {"jobs": 0}
    finally:
        for broker in brokers:
            await broker.close()
