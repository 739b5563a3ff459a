"""The Redis broker: one Redis stream per broker stream, read through one consumer group.

Keys carry a hash tag (``clarion:{stream}:s``, ``clarion:{stream}:d``) so that a stream and
its delayed set share a Redis Cluster slot and the per-stream Lua script touches one slot.

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
import time
from collections import defaultdict
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError
from redis.typing import EncodableT, FieldT, StreamIdT

from clarion.broker.base import Broker, Delayed, Message, StreamStats, Take
from clarion.broker.codec import Payload, decode, encode
from clarion.broker.reconnect import reconnecting

log = logging.getLogger(__name__)

GROUP = "clarion"
MAX_CONNECTIONS = 64
# How often one broker instance moves due delayed messages into a stream, at most; and
# how long a blocking read waits at most before it does (a stop ends a read at once).
MOVE_EVERY = 0.05
BLOCK_SLICE = 0.1
# At rest (nothing taken or published for QUIET seconds) it looks at a stream's delayed
# set only when a message it knows of is due, or every RESTING_LOOK (another process may
# have added one due sooner: one that is not its own consumer, as the scheduler's relay,
# or one that died), and a read blocks up to that long.
QUIET = 10.0
RESTING_LOOK = 5.0
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
    """Streams in Redis (6.2+, for XAUTOCLAIM) with one consumer group per stream."""

    def __init__(self, url: str, lease: float = 30.0, prefix: str = "clarion") -> None:
        self._url = url
        self._lease = lease
        self._prefix = prefix
        self._client: Redis | None = None
        self._move_due: AsyncScript | None = None
        self._publish: AsyncScript | None = None
        self._lead: AsyncScript | None = None
        self._step_down: AsyncScript | None = None
        self._groups: set[str] = set()
        self._moved_at: dict[str, float] = {}
        # Per stream, when the next delayed message this instance knows of is due (epoch
        # seconds; absent: none known).
        self._next_due: dict[str, float] = {}
        # Until when this instance is busy (monotonic): something was taken or published.
        self._busy_until = 0.0
        self._claimed_at: dict[str, float] = {}
        # XAUTOCLAIM is a scan: continue where the last one stopped so the whole
        # pending list is covered, not just its head.
        self._claim_cursor: dict[str, str] = {}
        self._claim_every = max(0.05, lease / 4)

    # -- keys and connection ---------------------------------------------------------------

    def _stream_key(self, stream: str) -> str:
        return f"{self._prefix}:{{{stream}}}:s"

    def _delayed_key(self, stream: str) -> str:
        return f"{self._prefix}:{{{stream}}}:d"

    @property
    def _redis(self) -> Redis:
        if self._client is None:
            raise RuntimeError("RedisBroker.start() was not called")
        return self._client

    async def start(self) -> None:
        """Connect. Consumers block on reads for a moment, so the pool waits for a free
        connection rather than failing when all are busy."""
        pool = BlockingConnectionPool.from_url(
            self._url, max_connections=MAX_CONNECTIONS, timeout=20, protocol=2, **reconnecting()
        )
        self._client = Redis.from_pool(pool)
        # Entries as the server sent them: _messages reads their fields, without a dict,
        # a tuple and a list built per entry by redis-py first.
        self._client.set_response_callback("XREADGROUP", _as_sent)
        self._move_due = self._client.register_script(_MOVE_DUE)
        self._publish = self._client.register_script(_PUBLISH)
        self._lead = self._client.register_script(_LEAD)
        self._step_down = self._client.register_script(_STEP_DOWN)

    async def close(self) -> None:
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

    async def publish(self, stream: str, payloads: Sequence[Payload]) -> None:
        if not payloads:
            return
        assert self._publish is not None  # set with the client in start()
        self._busy_until = time.monotonic() + QUIET
        # No MAXLEN: trimming would drop work that nobody has done yet.
        await self._publish(keys=[self._stream_key(stream)], args=[encode(p) for p in payloads])

    async def publish_delayed(self, items: Sequence[Delayed]) -> None:
        if not items:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for item in items:
                member = os.urandom(TAG_BYTES).hex().encode() + encode(item.payload)
                pipe.zadd(self._delayed_key(item.stream), {member: item.due})
            await pipe.execute()
        self._busy_until = time.monotonic() + QUIET
        for item in items:
            known = self._next_due.get(item.stream)
            if known is None or item.due < known:
                self._next_due[item.stream] = item.due

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

    def poison_key(self, stream: str) -> str:
        """Where entries that cannot be decoded are kept for an operator to read."""
        return f"{self._stream_key(stream)}:poison"

    async def _set_aside(self, messages: Sequence[Message]) -> None:
        """Move undecodable entries to the stream's poison stream: handed out again they
        would fail again, forever."""
        async with self._redis.pipeline(transaction=True) as pipe:
            for message in messages:
                log.error(
                    "stream %s: entry %s cannot be decoded (%s): set aside in %s",
                    message.stream,
                    message.id,
                    message.poison,
                    self.poison_key(message.stream),
                )
                key = self._stream_key(message.stream)
                fields: dict[FieldT, EncodableT] = {
                    "id": message.id,
                    "error": message.poison or "",
                    "raw": str(message.payload.get("raw", "")),
                }
                pipe.xadd(self.poison_key(message.stream), fields, maxlen=10_000)
                pipe.xack(key, GROUP, message.id)
                pipe.xdel(key, message.id)
            await pipe.execute()

    async def _read_all(self, take: Take) -> list[Message]:
        """Leases taken back first, then one read over every stream: it returns at once
        when any has messages, else blocks for a slice of the time left, up to when the
        next delayed message known is due (due delayed messages are moved between
        slices). ``stop`` ends a blocking read at once."""
        streams, consumer, count = take.streams, take.consumer, take.count
        await self._ensure_groups(streams)
        taken = await self._maintain(streams, consumer, count, take.overfill)
        while len(taken) < count:
            remaining = 0.0 if take.stopping else take.deadline - time.monotonic()
            # Not blocking when there is something to return, or no time left.
            block = None if taken or remaining <= 0 else min(remaining, self._slice(streams))
            taken += await self._read(
                streams, consumer, count - len(taken), block, take.overfill, take.stop
            )
            if taken or remaining <= 0 or take.stopping:
                break
            taken = await self._maintain(streams, consumer, count, take.overfill)
        if taken:
            self._busy_until = time.monotonic() + QUIET
        return taken

    def _slice(self, streams: Sequence[str]) -> float:
        """How long a read may block before delayed messages are looked at again: a slice
        while busy, up to ``RESTING_LOOK`` at rest, and no longer than until the next
        delayed message known is due."""
        if time.monotonic() < self._busy_until:
            return BLOCK_SLICE
        now = time.time()
        soonest = min((self._next_due.get(s, now + RESTING_LOOK) for s in streams), default=now)
        return min(RESTING_LOOK, max(MOVE_EVERY, soonest - now))

    async def _ensure_groups(self, streams: Sequence[str]) -> None:
        for stream in streams:
            if stream in self._groups:
                continue
            try:
                # At id 0, so messages published before the group existed are not skipped.
                await self._redis.xgroup_create(self._stream_key(stream), GROUP, "0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._groups.add(stream)

    async def _maintain(
        self, streams: Sequence[str], consumer: str, count: int, overfill: bool
    ) -> list[Message]:
        """Move due delayed messages into their streams and take back expired leases, each
        at most as often as its interval, all in one pipelined round trip; return the
        messages taken back (no more than ``count`` unless ``overfill``: the excess is put
        back on its streams)."""
        now, wall = time.monotonic(), time.time()
        moving = [s for s in streams if self._moving_due(s, now, wall)]
        claiming = [s for s in streams if now - self._claimed_at.get(s, -1e9) >= self._claim_every]
        if not moving and not claiming:
            return []
        for stream in moving:
            self._moved_at[stream] = now
        for stream in claiming:
            self._claimed_at[stream] = now
        assert self._move_due is not None  # set with the client in start()
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in moving:
                keys = [self._delayed_key(stream), self._stream_key(stream)]
                pipe.evalsha(self._move_due.sha, 2, *keys, wall, MOVE_BATCH, TAG_BYTES * 2)
            for stream in claiming:
                pipe.xautoclaim(
                    self._stream_key(stream),
                    GROUP,
                    consumer,
                    min_idle_time=int(self._lease * 1000),
                    start_id=self._claim_cursor.get(stream, "0-0"),
                    count=count,
                )
            replies = await pipe.execute(raise_on_error=False)
        moves, claims = replies[: len(moving)], replies[len(moving) :]
        again = [s for s, reply in zip(moving, moves, strict=True) if not self._moved(s, reply)]
        if again:
            await self._move_due_messages(again)
        claimed: list[Message] = []
        for stream, reply in zip(claiming, claims, strict=True):
            if isinstance(reply, Exception):
                raise reply
            claimed += self._claimed(stream, reply)
        if len(claimed) > count and not overfill:
            await self._requeue(claimed[count:], mark_redelivered=True)
            claimed = claimed[:count]
        return claimed

    def _moved(self, stream: str, reply: Any) -> bool:
        """Note when a stream's next delayed message is due, from its move's reply; False
        when the move must go again (a full batch moved: more may be due; or the server
        had lost the script)."""
        if isinstance(reply, NoScriptError):
            return False
        if isinstance(reply, Exception):
            raise reply
        moved, upcoming = reply
        if upcoming:
            self._next_due[stream] = float(upcoming)
        else:
            self._next_due.pop(stream, None)
        return bool(moved != MOVE_BATCH)

    def _moving_due(self, stream: str, now: float, wall: float) -> bool:
        """Whether to move a stream's due delayed messages now: every ``MOVE_EVERY``
        while busy; at rest when one known is due, or ``RESTING_LOOK`` after the last
        look."""
        since = now - self._moved_at.get(stream, -1e9)
        if since < MOVE_EVERY:
            return False
        if now < self._busy_until or since >= RESTING_LOOK:
            return True
        known = self._next_due.get(stream)
        return known is not None and known <= wall

    async def _move_due_messages(self, streams: Sequence[str]) -> None:
        """One script call per stream (each touches one cluster slot), all in one round
        trip. A full batch means more may be due: that stream goes again until drained.
        Each call says when the next message left is due."""
        assert self._move_due is not None  # set with the client in start()
        sha = self._move_due.sha
        while streams:
            args = [time.time(), MOVE_BATCH, TAG_BYTES * 2]
            async with self._redis.pipeline(transaction=False) as pipe:
                for stream in streams:
                    keys = [self._delayed_key(stream), self._stream_key(stream)]
                    pipe.evalsha(sha, 2, *keys, *args)
                try:
                    replies = await pipe.execute()
                except NoScriptError:
                    # The server lost its script cache (a restart, SCRIPT FLUSH).
                    await self._redis.script_load(_MOVE_DUE)
                    continue
            for stream, (_, upcoming) in zip(streams, replies, strict=True):
                if upcoming:
                    self._next_due[stream] = float(upcoming)
                else:
                    self._next_due.pop(stream, None)
            streams = [s for s, r in zip(streams, replies, strict=True) if r[0] == MOVE_BATCH]

    def _claimed(self, stream: str, reply: Any) -> list[Message]:
        """The messages an XAUTOCLAIM took back; the scan goes on from where it stopped."""
        cursor = reply[0]
        self._claim_cursor[stream] = cursor.decode() if isinstance(cursor, bytes) else cursor
        return _messages(stream, reply[1], redelivered=True)

    async def _read(
        self,
        streams: Sequence[str],
        consumer: str,
        count: int,
        block: float | None,
        overfill: bool,
        stop: asyncio.Event | None = None,
    ) -> list[Message]:
        """One XREADGROUP over all the streams (blocking for at most one slice of
        ``block`` seconds, if given, or until ``stop``), in stream order."""
        names = {self._stream_key(stream).encode(): stream for stream in streams}
        read = self._redis.xreadgroup(
            GROUP,
            consumer,
            dict.fromkeys(names, ">"),
            count=count,
            block=None if block is None else max(1, int(min(block, RESTING_LOOK) * 1000)),
        )
        if block is None or stop is None:
            reply = await read
        else:
            reply = await _unless_stopped(read, stop)
        got: dict[str, list[Message]] = {}
        for key, entries in _by_key(reply):
            stream = names[_as_bytes(key)]
            got[stream] = _messages(stream, entries)
        taken = [m for stream in streams for m in got.get(stream, [])]
        # COUNT applies per stream: when several streams had data and the caller wants no
        # more than ``count``, give back the excess.
        if len(taken) > count and not overfill:
            await self._requeue(taken[count:], mark_redelivered=False)
            return taken[:count]
        return taken

    # -- settling --------------------------------------------------------------------------

    async def ack(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream, ids in _ids_by_stream(messages).items():
                key = self._stream_key(stream)
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
            for stream, ids in _ids_by_stream(messages).items():
                claimed: list[StreamIdT] = list(ids)
                pipe.xclaim(self._stream_key(stream), GROUP, consumer, 0, claimed, justid=True)
            await pipe.execute()

    async def _requeue(self, messages: Sequence[Message], *, mark_redelivered: bool) -> None:
        """Append copies of ``messages`` and drop the originals, atomically.

        A stream entry's delivery count cannot be carried over, so the copy has a field ``r``
        that makes the next consumer see it as redelivered.
        """
        if not messages:
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            for message in messages:
                key = self._stream_key(message.stream)
                fields: dict[FieldT, EncodableT] = {"d": encode(message.payload)}
                if mark_redelivered or message.redelivered:
                    fields["r"] = b"1"
                pipe.xadd(key, fields)
                pipe.xack(key, GROUP, message.id)
                pipe.xdel(key, message.id)
            await pipe.execute()

    async def backlog(
        self, streams: Sequence[str], due_before: float | None = None
    ) -> dict[str, int]:
        until = "+inf" if due_before is None else f"({due_before}"
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xlen(self._stream_key(stream))
                pipe.zcount(self._delayed_key(stream), "-inf", until)
            counts = await pipe.execute()
        return {
            stream: int(counts[2 * i]) + int(counts[2 * i + 1]) for i, stream in enumerate(streams)
        }

    async def stream_stats(self, streams: Sequence[str]) -> list[StreamStats]:
        """XLEN, XINFO GROUPS and ZCARD of each stream, in one round trip. Acked entries
        are deleted, so a group's ``lag`` may be unknown to Redis: then it is the length
        less the pending entries."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xlen(self._stream_key(stream))
                pipe.xinfo_groups(self._stream_key(stream))
                pipe.zcard(self._delayed_key(stream))
            replies = await pipe.execute(raise_on_error=False)
        stats = []
        for i, stream in enumerate(streams):
            length, groups, delayed = replies[3 * i : 3 * i + 3]
            length = length if isinstance(length, int) else 0
            group = _group_info(groups)
            pending = int(group.get("pending") or 0)
            lag = group.get("lag")
            lag = int(lag) if lag is not None else max(0, length - pending)
            delayed = delayed if isinstance(delayed, int) else 0
            stats.append(StreamStats(stream, GROUP, length, pending, lag, delayed))
        return stats


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


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _by_key(reply: Any) -> Iterable[tuple[bytes | str, Any]]:
    """(stream key, entries) pairs from an XREADGROUP reply, in RESP2 or RESP3 shape."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(key, value[0]) for key, value in reply.items()]
    return [(key, entries) for key, entries in reply]


def _as_sent(response: Any, **_: Any) -> Any:
    return response


def _messages(stream: str, entries: Any, redelivered: bool = False) -> list[Message]:
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
        ident = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        try:
            payload, poison = decode(fields[b"d"]), None
        except (KeyError, ValueError) as exc:
            payload, poison = {"raw": repr(fields)[:1000]}, f"{type(exc).__name__}: {exc}"
        messages.append(
            Message(
                stream, ident, payload, redelivered=redelivered or b"r" in fields, poison=poison
            )
        )
    return messages


def _ids_by_stream(messages: Sequence[Message]) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = defaultdict(list)
    for message in messages:
        ids[message.stream].append(message.id)
    return ids


async def _unless_stopped(read: Awaitable[Any], stop: asyncio.Event) -> Any:
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
