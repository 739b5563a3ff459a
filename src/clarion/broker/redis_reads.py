"""Reading the Redis broker's streams: stream entries as messages, and the reads of a Redis
Cluster.

On one server, one XREADGROUP names every key a consumer reads (broker/redis_streams.py).
In a cluster a command names keys of one slot only, and each stream shard is a slot of its
own (its hash tag): :class:`ClusterReads` reads every key at once without blocking (one
pipeline: a round trip to each node, side by side), and when none has anything, blocks on
each key with a read of its own, returning as soon as any of them gets a message. The
others are left to end by themselves (their server-side wait is short): what they take
comes with this consumer's next call, never a cancelled read's lost reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any

from redis.asyncio.cluster import RedisCluster

from clarion.broker.base import Message
from clarion.broker.codec import decode

# A message id: the stream entry's id, followed by ``@<shard>`` for shards past the first
# (entries of two shards can have the same id).
_SHARD_MARK = "@"

# Entries per key, each with whether they waited for their consumer long enough for their
# lease to be at risk.
Entries = dict[bytes, tuple[Any, bool]]


def message_id(entry_id: str, shard: int) -> str:
    return entry_id if shard == 0 else f"{entry_id}{_SHARD_MARK}{shard}"


def entry_of(message: Message) -> tuple[str, int]:
    """The stream entry id and shard of a message taken from the Redis broker."""
    entry_id, mark, shard = message.id.partition(_SHARD_MARK)
    return entry_id, int(shard) if mark else 0


def messages_of(stream: str, shard: int, entries: Any, redelivered: bool = False) -> list[Message]:
    """The messages of stream entries: each ``(id, fields)``, its fields a dict (XAUTOCLAIM,
    parsed by redis-py) or the server's flat list of names and values (XREADGROUP)."""
    messages = []
    for entry_id, fields in entries:
        if not fields:  # an entry deleted while pending (older servers report these)
            continue
        if isinstance(fields, list):
            if len(fields) == 2 and fields[0] == b"d":  # the payload alone: the usual entry
                fields = {b"d": fields[1]}
            else:
                pairs = iter(fields)
                fields = dict(zip(pairs, pairs, strict=False))
        ident = message_id(entry_id.decode() if isinstance(entry_id, bytes) else entry_id, shard)
        try:
            payload, poison = decode(fields[b"d"]), None
        except (KeyError, ValueError) as exc:
            payload, poison = {"raw": repr(fields)[:1000]}, f"{type(exc).__name__}: {exc}"
        again = redelivered or b"r" in fields
        messages.append(Message(stream, ident, payload, redelivered=again, poison=poison))
    return messages


def as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def by_key(reply: Any) -> Iterable[tuple[bytes | str, Any]]:
    """(stream key, entries) pairs from an XREADGROUP reply, in RESP2 or RESP3 shape."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(key, value[0]) for key, value in reply.items()]
    return [(key, entries) for key, entries in reply]


def as_sent(response: Any, **_: Any) -> Any:
    return response


async def unless_stopped(read: Awaitable[Any], stop: asyncio.Event) -> Any:
    """A blocking read's reply, or nothing if ``stop`` comes first: the read is then
    cancelled (its connection is closed, not reused). An entry the server handed out to
    the cancelled read is taken back by any consumer once its lease ends, as after a
    crash."""
    reading = asyncio.ensure_future(read)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((reading, stopping), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        reading.cancel()
        raise
    finally:
        stopping.cancel()
    if reading.done():
        return reading.result()
    reading.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await reading
    return []


class ClusterReads:
    """A consumer's reads over a Redis Cluster: at most one read in flight per consumer
    and key, kept across calls. A read that got messages after its caller returned hands
    them to the next call for that key; messages that waited there past half a lease (the
    consumer was busy and did not call) come marked as redelivered, for their work may
    have been taken back and done meanwhile. Several loops of a process may read under one
    consumer name (the planner's plan, critical and chunk streams), each its own keys: a
    call harvests only the keys it reads, so no loop takes another's reads from under it."""

    def __init__(self, client: RedisCluster, group: str, lease: float) -> None:
        self._client = client
        self._group = group
        self._stale_after = lease / 2
        self._inflight: dict[tuple[str, bytes], asyncio.Task[Any]] = {}
        self._done_at: dict[asyncio.Task[Any], float] = {}

    async def read(
        self,
        consumer: str,
        counts: Mapping[bytes, int],
        block: float | None,
        stop: asyncio.Event | None,
    ) -> Entries:
        """Entries for ``consumer`` of the keys in ``counts``: first what its earlier reads
        of them got, then one read of each key not being read already, without blocking;
        with ``block`` (seconds) and nothing yet, a blocking read of each key, until the
        first returns or ``block`` ends (or ``stop``)."""
        got = self._harvest(consumer, counts)
        # Not a key whose earlier read just came in: a second read of it would take more,
        # and its entries would replace those (taken, never handled until their lease ran
        # out).
        free = [key for key in counts if (consumer, key) not in self._inflight and key not in got]
        if free:
            async with self._client.pipeline(transaction=False) as pipe:
                for key in free:
                    pipe.xreadgroup(self._group, consumer, {key: ">"}, count=counts[key])
                replies = await pipe.execute()
            for key, reply in zip(free, replies, strict=True):
                for _, entries in by_key(reply):
                    if entries:
                        got[key] = (entries, False)
        if got or block is None or (stop is not None and stop.is_set()):
            return got
        for key in counts:
            if (consumer, key) not in self._inflight:
                self._start(consumer, key, counts[key], block)
        reading = [self._inflight[(consumer, key)] for key in counts]
        stopping = None if stop is None else asyncio.ensure_future(stop.wait())
        try:
            waits = reading if stopping is None else [*reading, stopping]
            await asyncio.wait(waits, timeout=block, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if stopping is not None:
                stopping.cancel()
        return self._harvest(consumer, counts)

    def _start(self, consumer: str, key: bytes, count: int, block: float) -> None:
        read = self._client.xreadgroup(
            self._group, consumer, {key: ">"}, count=count, block=max(1, int(block * 1000))
        )
        task = asyncio.ensure_future(read)
        task.add_done_callback(self._finished)
        self._inflight[(consumer, key)] = task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._done_at[task] = time.monotonic()

    def _harvest(self, consumer: str, keys: Iterable[bytes]) -> Entries:
        """What this consumer's finished reads of ``keys`` got. A failed read is forgotten
        (anything the server handed out to it is taken back after its lease); its error is
        raised only when no read got anything, so that one node's outage does not drop
        what the others' reads took."""
        got: Entries = {}
        failure: BaseException | None = None
        now = time.monotonic()
        for key in keys:
            task = self._inflight.get((consumer, key))
            if task is None or not task.done():
                continue
            del self._inflight[(consumer, key)]
            stale = now - self._done_at.pop(task, now) > self._stale_after
            if task.cancelled():
                continue
            error = task.exception()
            if error is not None:
                failure = failure or error
                continue
            for _, entries in by_key(task.result()):
                if entries:
                    got[key] = (entries, stale)
        if failure is not None and not got:
            raise failure
        return got

    async def aclose(self) -> None:
        """Cancel the reads in flight: what the server handed out to them is taken back
        after its lease, as after a crash."""
        tasks = list(self._inflight.values())
        self._inflight.clear()
        self._done_at.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
