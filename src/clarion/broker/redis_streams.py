"""The Redis broker: one Redis stream per broker stream (or per shard of it), read through
one consumer group.

Keys carry a hash tag (``clarion:{stream}:s``, ``clarion:{stream}:d``) so that a stream and
its delayed set share a Redis Cluster slot and every script and transaction touches one
slot. With ``shards`` above 1 a stream is kept in that many Redis streams, shard ``k > 0``
under the tag ``{stream#k}`` (shard 0 keeps the plain one): a cluster spreads them over its
nodes. Publishers spread messages over the shards; consumers read them all, higher lanes
first (docs/operations.md, "Redis Cluster").

* Waiting and held messages live in the stream; acked ones are deleted from it, so the
  stream's length is what is left to do.
* Delayed messages live in a sorted set scored by due time; consumers move the due ones
  into the stream (atomically, by script) before they read.
* A message held longer than the lease is taken back with XAUTOCLAIM by any consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError
from redis.typing import EncodableT, FieldT, StreamIdT

from clarion.broker.base import Broker, Delayed, Message, StreamStats, Take
from clarion.broker.codec import Payload, encode
from clarion.broker.redis_client import RedisClient, connect
from clarion.broker.redis_reads import (
    ClusterReads,
    Entries,
    as_bytes,
    as_sent,
    by_key,
    entry_of,
    messages_of,
    unless_stopped,
)

log = logging.getLogger(__name__)

GROUP = "clarion"
MAX_CONNECTIONS = 64
# How often one broker instance moves due delayed messages into a stream, at most (a stop
# ends a blocking read at once).
MOVE_EVERY = 0.05
# While busy, a stream shard's delayed set is looked at when a message this process put
# there (or saw there) is due, and every BUSY_LOOK besides, for those that other processes
# put there; a blocking read waits until the next of these at most. With many processes,
# each of them looking every MOVE_EVERY, and each idle consumer's read coming back every
# 100 ms, were most of the Redis commands of a busy cluster.
BUSY_LOOK = 0.5
# At rest (nothing taken or published for QUIET seconds) it looks at a stream's delayed
# set only when a message it knows of is due, or every RESTING_LOOK (another process may
# have added one due sooner: one that is not its own consumer, as the scheduler's relay,
# or one that died), and a read blocks up to that long.
QUIET = 10.0
RESTING_LOOK = 8.0
# Delayed messages moved per script call (keeps each call short for the server).
MOVE_BATCH = 500
# Delayed members are a fixed-length random tag + the payload: equal payloads stay distinct.
TAG_BYTES = 8

# KEYS: delayed set, stream. ARGV: now, batch size, tag length in characters. Returns how
# many were moved and when the next one left is due ('' when none is left).
_MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
    redis.call('XADD', KEYS[2], '*', 'd', string.sub(member, tonumber(ARGV[3]) + 1))
    redis.call('ZREM', KEYS[1], member)
end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, next[2] or ''}
"""


# KEYS: stream. ARGV: payloads. One command for a batch: XADD takes one entry, and a
# pipeline of them costs the client a command's packing and reply handling per entry.
_PUBLISH = """
for i = 1, #ARGV do
    redis.call('XADD', KEYS[1], '*', 'd', ARGV[i])
end
return #ARGV
"""


# KEYS: the lead's key. ARGV: holder, lease in milliseconds. 1 when the holder leads.
_LEAD = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
if not holder then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
return 0
"""

# KEYS: the lead's key. ARGV: holder.
_STEP_DOWN = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisBroker(Broker):
    """Streams in Redis (6.2+, for XAUTOCLAIM) with one consumer group per stream; a
    ``redis+cluster://`` URL for a Redis Cluster (broker/redis_client.py)."""

    def __init__(
        self, url: str, lease: float = 30.0, prefix: str = "clarion", shards: int = 1
    ) -> None:
        if shards < 1:
            raise ValueError("a stream has at least one shard")
        self._url = url
        self._lease = lease
        self._prefix = prefix
        self._shards = shards
        self._client: RedisClient | None = None
        self._cluster: ClusterReads | None = None
        self._move_due: AsyncScript | None = None
        self._publish: AsyncScript | None = None
        self._lead: AsyncScript | None = None
        self._step_down: AsyncScript | None = None
        # Per stream shard's key: its stream and shard.
        self._places: dict[bytes, tuple[str, int]] = {}
        # Per stream, the shard its next message goes to (each process starts at random,
        # so that processes publishing one message at a time don't all fill shard 0).
        self._turn: dict[str, int] = {}
        # Per stream, the shard read first (each read starts one further).
        self._first: dict[str, int] = {}
        # Per stream shard's key, as for one stream before sharding:
        self._groups: set[bytes] = set()
        self._moved_at: dict[bytes, float] = {}
        # when the next delayed message this instance knows of is due (epoch seconds;
        # absent: none known);
        self._next_due: dict[bytes, float] = {}
        self._claimed_at: dict[bytes, float] = {}
        # where the last XAUTOCLAIM stopped (it is a scan: the next one goes on from there
        # so that the whole pending list is covered, not just its head).
        self._claim_cursor: dict[bytes, str] = {}
        # Until when this instance is busy (monotonic): something was taken or published.
        self._busy_until = 0.0
        self._claim_every = max(0.05, lease / 4)

    @property
    def shards(self) -> int:
        """How many Redis streams each stream is kept in."""
        return self._shards

    # -- keys and connection ---------------------------------------------------------------

    def _tag(self, stream: str, shard: int) -> str:
        return stream if shard == 0 else f"{stream}#{shard}"

    def _stream_key(self, stream: str, shard: int = 0) -> str:
        return f"{self._prefix}:{{{self._tag(stream, shard)}}}:s"

    def _delayed_key(self, stream: str, shard: int = 0) -> str:
        return f"{self._prefix}:{{{self._tag(stream, shard)}}}:d"

    def _keys(self, streams: Sequence[str]) -> list[bytes]:
        """The stream keys of ``streams``, in their order; each stream's shards from the
        one after the shard read first last time."""
        keys = []
        for stream in streams:
            first = self._first.get(stream, 0)
            self._first[stream] = (first + 1) % self._shards
            for i in range(self._shards):
                keys.append(self._key(stream, (first + i) % self._shards))
        return keys

    def _key(self, stream: str, shard: int) -> bytes:
        key = self._stream_key(stream, shard).encode()
        if key not in self._places:
            self._places[key] = (stream, shard)
        return key

    def _delayed_of(self, key: bytes) -> str:
        return self._delayed_key(*self._places[key])

    def _message_key(self, message: Message) -> tuple[str, str]:
        """The stream key and entry id of a taken message."""
        entry_id, shard = entry_of(message)
        return self._stream_key(message.stream, shard), entry_id

    @property
    def _redis(self) -> RedisClient:
        if self._client is None:
            raise RuntimeError("RedisBroker.start() was not called")
        return self._client

    async def start(self) -> None:
        """Connect. Consumers block on reads for a moment, so the pool waits for a free
        connection rather than failing when all are busy."""
        client = connect(self._url, max_connections=MAX_CONNECTIONS, pool_timeout=20)
        self._client = client
        if isinstance(client, RedisCluster):
            self._cluster = ClusterReads(client, GROUP, self._lease)
            # The cluster's layout read once before the consumers start: their first
            # commands, all at once, otherwise met connections closed under them as the
            # client replaced the nodes it started from. A cluster away now is waited out
            # by the consumers, as any outage.
            with contextlib.suppress(RedisError, RedisClusterException, OSError):
                await client.initialize()
        # Entries as the server sent them: messages_of reads their fields, without a dict,
        # a tuple and a list built per entry by redis-py first.
        client.set_response_callback("XREADGROUP", as_sent)
        self._move_due = client.register_script(_MOVE_DUE)
        self._publish = client.register_script(_PUBLISH)
        self._lead = client.register_script(_LEAD)
        self._step_down = client.register_script(_STEP_DOWN)

    async def close(self) -> None:
        if self._cluster is not None:
            await self._cluster.aclose()
            self._cluster = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def ping(self) -> None:
        await self._redis.ping()

    # -- leads -----------------------------------------------------------------------------

    def _lead_key(self, role: str) -> str:
        return f"{self._prefix}:lead:{role}"

    async def lead(self, role: str, holder: str, ttl: float) -> bool:
        assert self._lead is not None  # set with the client in start()
        return bool(await self._lead(keys=[self._lead_key(role)], args=[holder, int(ttl * 1000)]))

    async def step_down(self, role: str, holder: str) -> None:
        assert self._step_down is not None  # set with the client in start()
        await self._step_down(keys=[self._lead_key(role)], args=[holder])

    # -- publishing ------------------------------------------------------------------------

    def _spread(self, stream: str, count: int) -> list[tuple[int, int, int]]:
        """Where ``count`` messages of ``stream`` go: ``(shard, start, end)`` slices of
        them, as even as can be, over the shards in turn."""
        if self._shards == 1:
            return [(0, 0, count)]
        turn = self._turn.get(stream)
        if turn is None:
            turn = random.randrange(self._shards)
        parts = min(count, self._shards)
        self._turn[stream] = (turn + parts) % self._shards
        size, extra = divmod(count, parts)
        spread, start = [], 0
        for i in range(parts):
            end = start + size + (1 if i < extra else 0)
            spread.append(((turn + i) % self._shards, start, end))
            start = end
        return spread

    async def publish(self, stream: str, payloads: Sequence[Payload]) -> None:
        if not payloads:
            return
        publish = self._publish
        assert publish is not None  # set with the client in start()
        self._busy_until = time.monotonic() + QUIET
        encoded = [encode(p) for p in payloads]
        # No MAXLEN: trimming would drop work that nobody has done yet. One script call per
        # shard, side by side (each reloads the script itself if its server lost it); one
        # shard's awaited as it is, not as a task of its own.
        calls = [
            publish(keys=[self._stream_key(stream, shard)], args=encoded[start:end])
            for shard, start, end in self._spread(stream, len(encoded))
        ]
        if len(calls) == 1:
            await calls[0]
        else:
            await asyncio.gather(*calls)

    async def publish_delayed(self, items: Sequence[Delayed]) -> None:
        if not items:
            return
        by_stream: dict[str, list[Delayed]] = defaultdict(list)
        for item in items:
            by_stream[item.stream].append(item)
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream, held in by_stream.items():
                for shard, start, end in self._spread(stream, len(held)):
                    key = self._delayed_key(stream, shard)
                    # A ZADD per thousand: a command each cost the client its packing and
                    # reply handling per message.
                    for first in range(start, end, MOVE_BATCH * 2):
                        pipe.zadd(
                            key,
                            {
                                os.urandom(TAG_BYTES).hex().encode() + encode(item.payload): (
                                    item.due
                                )
                                for item in held[first : min(end, first + MOVE_BATCH * 2)]
                            },
                        )
                    due = min(item.due for item in held[start:end])
                    known = self._next_due.get(self._key(stream, shard))
                    if known is None or due < known:
                        self._next_due[self._key(stream, shard)] = due
            await pipe.execute()
        self._busy_until = time.monotonic() + QUIET

    # -- consuming -------------------------------------------------------------------------

    async def _consume(self, take: Take) -> list[Message]:
        try:
            taken = await self._read_all(take)
        except ResponseError as exc:
            # The stream key was deleted under us (FLUSHDB, DEL): recreate the groups once.
            if "NOGROUP" not in str(exc):
                raise
            self._groups.clear()
            taken = await self._read_all(take)
        poison = [m for m in taken if m.poison is not None]
        if poison:
            await self._set_aside(poison)
            taken = [m for m in taken if m.poison is None]
        return taken

    def poison_key(self, stream: str, shard: int = 0) -> str:
        """Where entries that cannot be decoded are kept for an operator to read."""
        return f"{self._stream_key(stream, shard)}:poison"

    def _by_slot(self, messages: Sequence[Message]) -> list[list[Message]]:
        """Messages in groups that one transaction may touch: all of them on one server,
        those of one stream shard (one slot) in a cluster."""
        if self._cluster is None:
            return [list(messages)] if messages else []
        groups: dict[str, list[Message]] = defaultdict(list)
        for message in messages:
            groups[self._message_key(message)[0]].append(message)
        return list(groups.values())

    async def _set_aside(self, messages: Sequence[Message]) -> None:
        """Move undecodable entries to the stream's poison stream: handed out again they
        would fail again, forever."""
        for group in self._by_slot(messages):
            async with self._redis.pipeline(transaction=True) as pipe:
                for message in group:
                    key, entry_id = self._message_key(message)
                    aside = f"{key}:poison"
                    log.error(
                        "stream %s: entry %s cannot be decoded (%s): set aside in %s",
                        message.stream,
                        message.id,
                        message.poison,
                        aside,
                    )
                    fields: dict[FieldT, EncodableT] = {
                        "id": entry_id,
                        "error": message.poison or "",
                        "raw": str(message.payload.get("raw", "")),
                    }
                    pipe.xadd(aside, fields, maxlen=10_000)
                    pipe.xack(key, GROUP, entry_id)
                    pipe.xdel(key, entry_id)
                await pipe.execute()

    async def _read_all(self, take: Take) -> list[Message]:
        """Leases taken back first, then one read over every stream: it returns at once
        when any has messages, else blocks for a slice of the time left, up to when the
        next delayed message known is due (due delayed messages are moved between
        slices). ``stop`` ends a blocking read at once."""
        consumer, count = take.consumer, take.count
        keys = self._keys(take.streams)
        await self._ensure_groups(keys)
        taken = await self._maintain(keys, consumer, count)
        while len(taken) < count:
            remaining = 0.0 if take.stopping else take.deadline - time.monotonic()
            # Not blocking when there is something to return, or no time left.
            block = None if taken or remaining <= 0 else min(remaining, self._slice(keys))
            taken += await self._read(take, keys, count - len(taken), block)
            if taken or remaining <= 0 or take.stopping:
                break
            taken = await self._maintain(keys, consumer, count)
        if taken:
            self._busy_until = time.monotonic() + QUIET
        return taken

    def _look(self, now: float) -> float:
        """How often delayed sets are looked at besides known due times: ``BUSY_LOOK``
        while this process has taken work in the last ``QUIET`` seconds, else
        ``RESTING_LOOK`` (``now``: ``time.monotonic()``)."""
        return BUSY_LOOK if now < self._busy_until else RESTING_LOOK

    def _slice(self, keys: Sequence[bytes]) -> float:
        """How long a read may block before delayed messages are looked at again: until
        the next delayed message known is due, and no longer than ``BUSY_LOOK`` while the
        process is busy, ``RESTING_LOOK`` at rest. A read answers at once when a message
        comes, so a consumer with nothing to read costs a round trip per slice, not ten a
        second, while others in its process are busy."""
        look = self._look(time.monotonic())
        now = time.time()
        soonest = min((self._next_due.get(k, now + look) for k in keys), default=now)
        return min(look, max(MOVE_EVERY, soonest - now))

    async def _ensure_groups(self, keys: Sequence[bytes]) -> None:
        for key in keys:
            if key in self._groups:
                continue
            try:
                # At id 0, so messages published before the group existed are not skipped.
                await self._redis.xgroup_create(key, GROUP, "0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._groups.add(key)

    async def _maintain(self, keys: Sequence[bytes], consumer: str, count: int) -> list[Message]:
        """Move due delayed messages into their streams and take back expired leases, each
        at most as often as its interval, all in one pipelined round trip (one per node of
        a cluster, side by side); return the messages taken back, no more than ``count``
        (the excess, rare, is put back on its streams)."""
        now, wall = time.monotonic(), time.time()
        moving = [k for k in keys if self._moving_due(k, now, wall)]
        # At rest the take-backs ride with the moves (every RESTING_LOOK), not a trip apart.
        resting = now >= self._busy_until and bool(moving)
        claiming = [
            k for k in keys if now - self._claimed_at.get(k, -1e9) >= self._claim_every or resting
        ]
        if not moving and not claiming:
            return []
        for key in moving:
            self._moved_at[key] = now
        for key in claiming:
            self._claimed_at[key] = now
        assert self._move_due is not None  # set with the client in start()
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in moving:
                # As a plain command: a cluster's pipeline refuses its evalsha().
                args = (wall, MOVE_BATCH, TAG_BYTES * 2)
                pipe.execute_command(
                    "EVALSHA", self._move_due.sha, 2, self._delayed_of(key), key, *args
                )
            for key in claiming:
                pipe.xautoclaim(
                    key,
                    GROUP,
                    consumer,
                    min_idle_time=int(self._lease * 1000),
                    start_id=self._claim_cursor.get(key, "0-0"),
                    count=count,
                )
            replies = await pipe.execute(raise_on_error=False)
        moves, claims = replies[: len(moving)], replies[len(moving) :]
        again = [k for k, reply in zip(moving, moves, strict=True) if not self._moved(k, reply)]
        if again:
            await self._move_due_messages(again)
        claimed: list[Message] = []
        for key, reply in zip(claiming, claims, strict=True):
            if isinstance(reply, Exception):
                raise reply
            claimed += self._claimed(key, reply)
        if len(claimed) > count:
            await self._requeue(claimed[count:], mark_redelivered=True)
            claimed = claimed[:count]
        return claimed

    def _moved(self, key: bytes, reply: Any) -> bool:
        """Note when a stream shard's next delayed message is due, from its move's reply;
        False when the move must go again (a full batch moved: more may be due; or the
        server had lost the script)."""
        if isinstance(reply, NoScriptError):
            return False
        if isinstance(reply, Exception):
            raise reply
        moved, upcoming = reply
        if upcoming:
            self._next_due[key] = float(upcoming)
        else:
            self._next_due.pop(key, None)
        return bool(moved != MOVE_BATCH)

    def _moving_due(self, key: bytes, now: float, wall: float) -> bool:
        """Whether to move a stream shard's due delayed messages now: when one known is
        due (looked at every ``MOVE_EVERY`` at most), or ``BUSY_LOOK`` after the last look
        while busy, ``RESTING_LOOK`` at rest."""
        since = now - self._moved_at.get(key, -1e9)
        if since < MOVE_EVERY:
            return False
        if since >= self._look(now):
            return True
        known = self._next_due.get(key)
        return known is not None and known <= wall

    async def _move_due_messages(self, keys: Sequence[bytes]) -> None:
        """One script call per stream shard (each touches one cluster slot), all in one
        round trip (one per node of a cluster, side by side). A full batch means more may
        be due: that shard goes again until drained. Each call says when the next message
        left is due. Moving is safe to repeat, so a batch that met a server without the
        script (restarted, or a replica just promoted) is sent again whole."""
        assert self._move_due is not None  # set with the client in start()
        sha = self._move_due.sha
        while keys:
            args = [time.time(), MOVE_BATCH, TAG_BYTES * 2]
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    # As a plain command: a cluster's pipeline refuses its evalsha().
                    pipe.execute_command("EVALSHA", sha, 2, self._delayed_of(key), key, *args)
                try:
                    replies = await pipe.execute()
                except NoScriptError:
                    await self._redis.script_load(_MOVE_DUE)
                    continue
            for key, (_, upcoming) in zip(keys, replies, strict=True):
                if upcoming:
                    self._next_due[key] = float(upcoming)
                else:
                    self._next_due.pop(key, None)
            keys = [k for k, r in zip(keys, replies, strict=True) if r[0] == MOVE_BATCH]

    def _claimed(self, key: bytes, reply: Any) -> list[Message]:
        """The messages an XAUTOCLAIM took back; the scan goes on from where it stopped."""
        cursor = reply[0]
        self._claim_cursor[key] = cursor.decode() if isinstance(cursor, bytes) else cursor
        return messages_of(*self._places[key], reply[1], redelivered=True)

    async def _read(
        self, take: Take, keys: Sequence[bytes], count: int, block: float | None
    ) -> list[Message]:
        """One read of every key (blocking for at most ``block`` seconds, if given, or
        until ``stop``), in stream order. COUNT applies per key: each shard of a stream is
        asked for its part of ``count``, and what comes over ``count`` (per stream with
        ``overfill``, else in all) is given back."""
        per_key = -(-count // self._shards)
        counts = dict.fromkeys(keys, per_key)
        if self._cluster is not None:
            got = await self._cluster.read(take.consumer, counts, block, take.stop)
        else:
            got = await self._read_server(take, counts, block)
        taken, excess = [], []
        for stream in take.streams:
            ordered = [k for k in keys if self._places[k][0] == stream]
            found = []
            for key in ordered:
                if key in got:
                    entries, stale = got[key]
                    found += messages_of(*self._places[key], entries, redelivered=stale)
            if take.overfill and len(found) > count:
                excess += found[count:]
                found = found[:count]
            taken += found
        if not take.overfill and len(taken) > count:
            excess += taken[count:]
            taken = taken[:count]
        if excess:
            await self._requeue(excess, mark_redelivered=False)
        return taken

    async def _read_server(
        self, take: Take, counts: dict[bytes, int], block: float | None
    ) -> Entries:
        """One XREADGROUP over every key (one server: any keys may go together)."""
        read = self._redis.xreadgroup(
            GROUP,
            take.consumer,
            dict.fromkeys(counts, ">"),
            count=max(counts.values()),
            block=None if block is None else max(1, int(min(block, RESTING_LOOK) * 1000)),
        )
        if block is None or take.stop is None:
            reply = await read
        else:
            reply = await unless_stopped(read, take.stop)
        return {as_bytes(key): (entries, False) for key, entries in by_key(reply) if entries}

    # -- settling --------------------------------------------------------------------------

    async def ack(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, ids in self._ids_by_key(messages).items():
                pipe.xack(key, GROUP, *ids)
                # Deleted too, so the stream holds only work still to do.
                pipe.xdel(key, *ids)
            await pipe.execute()

    async def release(self, messages: Sequence[Message]) -> None:
        await self._requeue(messages, mark_redelivered=True)

    async def extend(self, messages: Sequence[Message], consumer: str) -> None:
        """XCLAIM with an idle time of 0 to the holder itself: its idle clock restarts, and
        JUSTID leaves the delivery count alone."""
        if not messages:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, ids in self._ids_by_key(messages).items():
                claimed: list[StreamIdT] = list(ids)
                pipe.xclaim(key, GROUP, consumer, 0, claimed, justid=True)
            await pipe.execute()

    def _ids_by_key(self, messages: Sequence[Message]) -> dict[str, list[str]]:
        ids: dict[str, list[str]] = defaultdict(list)
        for message in messages:
            key, entry_id = self._message_key(message)
            ids[key].append(entry_id)
        return ids

    async def _requeue(self, messages: Sequence[Message], *, mark_redelivered: bool) -> None:
        """Append copies of ``messages`` and drop the originals, atomically (per stream
        shard in a cluster, one slot per transaction).

        A stream entry's delivery count cannot be carried over, so the copy has a field ``r``
        that makes the next consumer see it as redelivered.
        """
        for group in self._by_slot(messages):
            async with self._redis.pipeline(transaction=True) as pipe:
                for message in group:
                    key, entry_id = self._message_key(message)
                    fields: dict[FieldT, EncodableT] = {"d": encode(message.payload)}
                    if mark_redelivered or message.redelivered:
                        fields["r"] = b"1"
                    pipe.xadd(key, fields)
                    pipe.xack(key, GROUP, entry_id)
                    pipe.xdel(key, entry_id)
                await pipe.execute()

    async def backlog(
        self, streams: Sequence[str], due_before: float | None = None
    ) -> dict[str, int]:
        until = "+inf" if due_before is None else f"({due_before}"
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                for shard in range(self._shards):
                    pipe.xlen(self._stream_key(stream, shard))
                    pipe.zcount(self._delayed_key(stream, shard), "-inf", until)
            counts = await pipe.execute()
        per_stream = 2 * self._shards
        return {
            stream: sum(int(n) for n in counts[i * per_stream : (i + 1) * per_stream])
            for i, stream in enumerate(streams)
        }

    async def stream_stats(self, streams: Sequence[str]) -> list[StreamStats]:
        """XLEN, XINFO GROUPS and ZCARD of each stream shard, in one round trip, added up
        per stream. Acked entries are deleted, so a group's ``lag`` may be unknown to
        Redis: then it is the length less the pending entries."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                for shard in range(self._shards):
                    pipe.xlen(self._stream_key(stream, shard))
                    pipe.xinfo_groups(self._stream_key(stream, shard))
                    pipe.zcard(self._delayed_key(stream, shard))
            replies = await pipe.execute(raise_on_error=False)
        stats = []
        for i, stream in enumerate(streams):
            totals = [0, 0, 0, 0]
            for shard in range(self._shards):
                at = 3 * (i * self._shards + shard)
                for n, value in enumerate(_shard_stats(*replies[at : at + 3])):
                    totals[n] += value
            stats.append(StreamStats(stream, GROUP, *totals))
        return stats


def _shard_stats(length: Any, groups: Any, delayed: Any) -> tuple[int, int, int, int]:
    """Length, pending, lag and delayed of one stream shard from its replies."""
    length = length if isinstance(length, int) else 0
    group = _group_info(groups)
    pending = int(group.get("pending") or 0)
    lag = group.get("lag")
    lag = int(lag) if lag is not None else max(0, length - pending)
    return length, pending, lag, delayed if isinstance(delayed, int) else 0


def _group_info(groups: Any) -> dict[str, Any]:
    """Clarion's group out of an XINFO GROUPS reply (an error when the stream is absent)."""
    if not isinstance(groups, list):
        return {}
    for group in groups:
        info = {_text(k): v for k, v in group.items()} if isinstance(group, dict) else {}
        if _text(info.get("name", b"")) == GROUP:
            return info
    return {}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
