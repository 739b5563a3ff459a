"""The live hub: events for one recipient reach every open connection of that recipient.

A :class:`Hub` has one method that matters to a publisher, :meth:`Hub.publish`, and one to
a connection, :meth:`Hub.subscribe`. Events are plain JSON on the wire (the in-process hub
encodes and decodes them too). Each connection has a bounded queue: a connection that
falls behind is closed with a reason (its client resumes from its last event id), and
never slows the others, because the hub only ever puts into a queue without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

log = logging.getLogger(__name__)

Event = dict[str, Any]
Key = tuple[str, str]  # (tenant id, recipient id)

TOO_SLOW = "too_slow"
REVOKED = "revoked"
TOKEN_EXPIRED = "token_expired"
RESYNC = "resync"
STOPPING = "server_stopping"


def arrivals(stored: list[dict[str, Any]]) -> list[tuple[str, str, Event]]:
    """The hub events of messages stored or back from snooze (``inbox_changes.insert``,
    ``wake_due``): each with its place in the arrival order and its recipient's counts."""
    return [
        (
            s["tenant_id"],
            s["recipient_id"],
            {"type": "message", "message": s["message"], "seq": s["seq"], "counts": s["counts"]},
        )
        for s in stored
    ]


def revocation(before_ms: int) -> Event:
    """The hub event that closes, in every process, the recipient's connections whose
    token was issued before ``before_ms``: published on the recipient's channel, so it
    reaches exactly the processes that hold one, at once."""
    return {"type": "revoke", "before_ms": before_ms}


class Subscription:
    """One live connection's view of the hub: a bounded queue and a close reason.

    Lean on purpose: an API process holds one per open connection (10,000 and more), and
    each wait for the next events allocates one future and nothing else. Waits that made a
    task or a timer each (``wait_for``, ``asyncio.wait``) left tens of objects per
    connection behind every push, and a collector walking hundreds of thousands of them
    paused the whole process (docs/performance.md, "What each design choice was measured
    to buy")."""

    def __init__(self, key: Key, issued_at_ms: int, maxsize: int) -> None:
        self.key = key
        # When the connection's token was issued: a revocation after it closes it.
        self.issued_at_ms = issued_at_ms
        self._events: deque[Event] = deque()
        self._maxsize = maxsize  # 0 or less: unbounded
        self._waiter: asyncio.Future[None] | None = None
        self.closed = asyncio.Event()
        self.reason: str | None = None

    def offer(self, event: Event) -> None:
        if self.closed.is_set():
            return
        if 0 < self._maxsize <= len(self._events):
            self.close(TOO_SLOW)
            return
        self._events.append(event)
        self._wake()

    def close(self, reason: str) -> None:
        if not self.closed.is_set():
            self.reason = reason
            self.closed.set()
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next_batch(self, timeout: float | None = None) -> list[Event] | None:
        """Every event waiting (at least one), or None once the subscription is closed;
        TimeoutError when ``timeout`` seconds pass with neither."""
        if not self._events and not self.closed.is_set():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                if timeout is None:
                    await waiter
                else:
                    async with asyncio.timeout(timeout):
                        await waiter
            finally:
                self._waiter = None
        if self.closed.is_set():
            return None
        events = list(self._events)
        self._events.clear()
        return events


class Hub(ABC):
    """Routes each recipient's events to the subscriptions of this process; the
    implementation decides how an event published in one process reaches the others."""

    def __init__(self, queue_size: int = 256) -> None:
        self.queue_size = queue_size
        self._local: dict[Key, set[Subscription]] = {}

    @abstractmethod
    async def publish(self, tenant_id: str, recipient_id: str, event: Event) -> None:
        """Send ``event`` to every connection of the recipient, in every process."""

    async def publish_many(self, items: list[tuple[str, str, Event]]) -> None:
        for tenant_id, recipient_id, event in items:
            await self.publish(tenant_id, recipient_id, event)

    async def _listen(self, key: Key) -> None:  # noqa: B027 - optional hook
        """The first local subscription of ``key`` opened."""

    async def _unlisten(self, key: Key) -> None:  # noqa: B027 - optional hook
        """The last local subscription of ``key`` closed."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        pass

    async def ping(self) -> None:  # noqa: B027 - optional hook
        """Raise unless the hub's own server answers (one it shares is checked with it)."""

    async def aclose(self) -> None:
        self.close_all(STOPPING)

    @contextlib.asynccontextmanager
    async def subscribe(
        self, tenant_id: str, recipient_id: str, issued_at_ms: int = 0
    ) -> AsyncIterator[Subscription]:
        key = (tenant_id, recipient_id)
        sub = Subscription(key, issued_at_ms, self.queue_size)
        subs = self._local.setdefault(key, set())
        subs.add(sub)
        try:
            if len(subs) == 1:
                try:
                    await self._listen(key)
                except Exception as exc:
                    # The client is told to come back; it resumes from the table then.
                    log.warning("live inbox subscription failed: %r", exc)
                    sub.close(RESYNC)
            yield sub
        finally:
            sub.close("closed")
            subs.discard(sub)
            if not subs and self._local.get(key) is subs:
                del self._local[key]
                await self._unlisten(key)

    def deliver(self, key: Key, event: Event) -> None:
        """Put ``event`` in the queue of each local subscription of ``key``; a revocation
        (:func:`revocation`) closes those whose token it revokes instead."""
        if event.get("type") == "revoke":
            before = event.get("before_ms")
            if isinstance(before, int):
                self.revoke(key[0], key[1], before)
            return
        for sub in list(self._local.get(key, ())):
            sub.offer(event)

    def revoke(self, tenant_id: str, recipient_id: str | None, before_ms: int) -> int:
        """Close local subscriptions of the recipient (of every recipient of the tenant
        when None) whose token was issued before ``before_ms``; returns how many."""
        closed = 0
        for key, subs in list(self._local.items()):
            if key[0] != tenant_id or (recipient_id is not None and key[1] != recipient_id):
                continue
            for sub in list(subs):
                if sub.issued_at_ms < before_ms and not sub.closed.is_set():
                    sub.close(REVOKED)
                    closed += 1
        return closed

    def recipients(self, tenant_id: str) -> list[str]:
        """The recipients of the tenant with a live connection in this process."""
        return [key[1] for key in self._local if key[0] == tenant_id]

    def close_all(self, reason: str) -> None:
        for subs in list(self._local.values()):
            for sub in list(subs):
                sub.close(reason)

    def connections(self) -> int:
        return sum(len(subs) for subs in self._local.values())
