"""The in-process broker of the embedded default.

It keeps nothing on disk: after a crash the runtime rebuilds its contents from the database
(outbox rows, queued and scheduled deliveries), which is where the truth lives anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from clarion.broker.base import Broker, Delayed, Message, StreamStats, Take
from clarion.broker.codec import Payload, decode, encode


@dataclass(slots=True)
class _Held:
    stream: str
    data: bytes
    deadline: float
    times: int


@dataclass(slots=True)
class _Stream:
    ready: deque[tuple[str, bytes, int]] = field(default_factory=deque)


async def _first_of(timeout: float, event: asyncio.Event, other: asyncio.Event | None) -> None:
    """Wait until ``event`` or ``other`` is set, or for ``timeout`` seconds."""
    if other is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        return
    waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(other.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


class EmbeddedBroker(Broker):
    def __init__(self, lease: float = 30.0) -> None:
        self._lease = lease
        self._streams: dict[str, _Stream] = {}
        self._held: dict[str, _Held] = {}
        # (deadline, message id) of every lease given; an entry whose message was acked or
        # whose lease was extended since is stale and skipped when it comes up. Finding the
        # expired leases costs what expired, not a look at everything held.
        self._leases: list[tuple[float, str]] = []
        self._delayed: list[tuple[float, int, str, bytes]] = []
        self._ids = itertools.count(1)
        self._wakeup = asyncio.Event()

    def _stream(self, name: str) -> _Stream:
        stream = self._streams.get(name)
        if stream is None:
            stream = self._streams[name] = _Stream()
        return stream

    def _next_id(self) -> str:
        return f"{int(time.time() * 1000)}-{next(self._ids)}"

    def _notify(self) -> None:
        self._wakeup.set()

    async def publish(self, stream: str, payloads: Sequence[Payload]) -> None:
        ready = self._stream(stream).ready
        for payload in payloads:
            ready.append((self._next_id(), encode(payload), 0))
        if payloads:
            self._notify()

    async def publish_delayed(self, items: Sequence[Delayed]) -> None:
        for item in items:
            heapq.heappush(
                self._delayed, (item.due, next(self._ids), item.stream, encode(item.payload))
            )
        if items:
            self._notify()

    def _promote_due(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, _, stream, data = heapq.heappop(self._delayed)
            self._stream(stream).ready.append((self._next_id(), data, 0))

    def _reclaim_expired(self, now: float) -> None:
        leases = self._leases
        while leases and leases[0][0] <= now:
            deadline, mid = heapq.heappop(leases)
            held = self._held.get(mid)
            if held is not None and held.deadline == deadline:
                del self._held[mid]
                self._stream(held.stream).ready.appendleft((mid, held.data, held.times))

    def _give_lease(self, mid: str, deadline: float) -> None:
        heapq.heappush(self._leases, (deadline, mid))

    def _take_ready(
        self, streams: Sequence[str], count: int, now: float, overfill: bool
    ) -> list[Message]:
        """Up to ``count`` messages, earlier streams first; with ``overfill``, up to
        ``count`` from each stream (as Redis answers one read over several streams), so a
        later stream is not left unread while an earlier one has a backlog."""
        taken: list[Message] = []
        for name in streams:
            ready = self._stream(name).ready
            limit = len(taken) + count if overfill else count
            while ready and len(taken) < limit:
                mid, data, times = ready.popleft()
                self._held[mid] = _Held(name, data, now + self._lease, times + 1)
                self._give_lease(mid, now + self._lease)
                taken.append(Message(name, mid, decode(data), redelivered=times > 0))
            if len(taken) >= count and not overfill:
                break
        return taken

    def _next_event_in(self, now: float) -> float | None:
        leases = self._leases
        while leases:  # the earliest lease still given, past the stale ones
            deadline, mid = leases[0]
            held = self._held.get(mid)
            if held is not None and held.deadline == deadline:
                break
            heapq.heappop(leases)
        candidates = [leases[0][0]] if leases else []
        if self._delayed:
            candidates.append(self._delayed[0][0])
        return max(0.0, min(candidates) - now) if candidates else None

    async def _consume(self, take: Take) -> list[Message]:
        while True:
            now = time.time()
            self._promote_due(now)
            if self._held:
                self._reclaim_expired(now)
            taken = self._take_ready(take.streams, take.count, now, take.overfill)
            if taken:
                # Yield once, as a network broker would: a consumer that always finds work
                # waiting must not keep every other task of the process from running.
                await asyncio.sleep(0)
                return taken
            remaining = take.deadline - time.monotonic()
            if remaining <= 0 or take.stopping:
                return []
            wait = remaining
            upcoming = self._next_event_in(now)
            if upcoming is not None:
                wait = min(wait, upcoming + 0.001)
            self._wakeup.clear()
            await _first_of(wait, self._wakeup, take.stop)

    async def ack(self, messages: Sequence[Message]) -> None:
        for message in messages:
            self._held.pop(message.id, None)

    async def release(self, messages: Sequence[Message]) -> None:
        for message in messages:
            held = self._held.pop(message.id, None)
            if held is not None:
                self._stream(held.stream).ready.appendleft((message.id, held.data, held.times))
        if messages:
            self._notify()

    async def extend(self, messages: Sequence[Message], consumer: str) -> None:
        deadline = time.time() + self._lease
        for message in messages:
            held = self._held.get(message.id)
            if held is not None:
                held.deadline = deadline
                self._give_lease(message.id, deadline)

    async def ping(self) -> None:
        return None

    async def backlog(
        self, streams: Sequence[str], due_before: float | None = None
    ) -> dict[str, int]:
        counts = {name: len(self._stream(name).ready) for name in streams}
        for held in self._held.values():
            if held.stream in counts:
                counts[held.stream] += 1
        for due, _, stream, _ in self._delayed:
            if stream in counts and (due_before is None or due < due_before):
                counts[stream] += 1
        return counts

    async def stream_stats(self, streams: Sequence[str]) -> list[StreamStats]:
        held = dict.fromkeys(streams, 0)
        delayed = dict.fromkeys(streams, 0)
        for item in self._held.values():
            if item.stream in held:
                held[item.stream] += 1
        for _, _, stream, _ in self._delayed:
            if stream in delayed:
                delayed[stream] += 1
        stats = []
        for name in streams:
            ready = len(self._stream(name).ready)
            stats.append(
                StreamStats(name, "clarion", ready + held[name], held[name], ready, delayed[name])
            )
        return stats
