"""The consumer loop shared by the channel workers and the status-event dispatcher: take
messages from a group's streams, run a handler on each, share the concurrency fairly
between tenants.

Fair shares
    A process runs at most ``concurrency`` handlers at once, and one tenant at most
    ``tenant_limit`` of them. Taken messages wait in per-lane, per-tenant queues; a free
    slot goes to the next tenant in round robin, from the highest lane that has a tenant
    under its limit. So a tenant whose endpoints hang holds at most its limit of the slots,
    and the others' work, taken past its waiting messages, runs in the rest. The top lane
    (critical) has ``express`` slots more, in all and per tenant: a critical delivery
    taken while a broadcast's deliveries fill every slot (or its tenant's share) starts
    at once instead of waiting for one of them to finish.

Read-ahead
    The loop takes only what it can start (once a handful of slots are free, so that a busy
    process does not pay a broker round trip per message), except when everything waiting belongs to
    tenants at their limit: then it reads ahead (up to ``max_held`` messages held in all)
    to reach other tenants' work behind theirs. Held messages have their leases renewed,
    so waiting in this process never makes the broker hand them to another consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from clarion.broker import Broker, Message
from clarion.observability.outages import outage_of
from clarion.pipeline.inflight import finish_or_hand_back
from clarion.store.batching import is_outage

log = logging.getLogger(__name__)

Handler = Callable[[Message], Coroutine[Any, Any, None]]
# Looks at freshly taken messages before they are queued; returns those still to handle
# (e.g. drops redelivered messages whose work is already done).
Screen = Callable[[list[Message]], Awaitable[list[Message]]]

_READ_AHEAD = 500


def tenant_of(message: Message) -> str:
    tenant = message.payload.get("tenant")
    return tenant if isinstance(tenant, str) else ""


class FairConsumer:
    def __init__(
        self,
        broker: Broker,
        streams: Sequence[str],
        consumer: str,
        handle: Handler,
        *,
        concurrency: int,
        tenant_share: float,
        lease: float,
        name: str,
        screen: Screen | None = None,
        max_held: int | None = None,
    ) -> None:
        self._broker = broker
        self._streams = list(streams)
        self._lane = {stream: i for i, stream in enumerate(self._streams)}
        self._consumer = consumer
        self._handle = handle
        self._screen = screen
        self._name = name
        self.concurrency = concurrency
        self.tenant_limit = max(1, int(concurrency * tenant_share))
        self._max_held = max_held if max_held is not None else max(concurrency * 16, 1000)
        self._min_take = max(1, concurrency // 8)
        # Slots only the top lane (critical) may use, over the process's and its tenant's
        # limits: a critical delivery never waits for a slot that the lower lanes hold,
        # however busy a broadcast keeps them.
        self.express = max(1, concurrency // 8)
        self._renew_every = lease / 4
        # Per lane, the tenants with waiting messages, in round-robin order.
        self._waiting: list[dict[str, deque[Message]]] = [{} for _ in self._streams]
        self._waiting_count = 0
        self._running: dict[asyncio.Task[None], Message] = {}
        self._per_tenant: Counter[str] = Counter()
        # When each held message's lease was last renewed (monotonic seconds).
        self._renewed: dict[str, tuple[Message, float]] = {}
        self._room = asyncio.Event()

    @property
    def held(self) -> int:
        """Messages taken and not yet finished: waiting here or being handled."""
        return self._waiting_count + len(self._running)

    def running_for(self, tenant: str) -> int:
        return self._per_tenant[tenant]

    async def run(self, stop: asyncio.Event) -> None:
        """Take and start work until ``stop``. A broker or database that is away (a Redis
        restart, say) is waited out with a growing pause; what was taken and not started
        comes back after its lease."""
        renewing = asyncio.create_task(self._renew_leases(stop), name=f"{self._name}-leases")
        pause = 0.0
        try:
            while not stop.is_set():
                count = self._wanted()
                if count <= 0:
                    self._room.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._room.wait(), 0.25)
                    continue
                try:
                    messages = await self._broker.consume(
                        self._streams, self._consumer, count, 0.25, overfill=True
                    )
                    if messages and self._screen is not None:
                        messages = await self._screen(messages)
                    self._enqueue(messages)
                    pause = 0.0
                except Exception as exc:
                    pause = min(max(pause * 2, 0.5), 10.0)
                    log.warning(
                        "%s: taking work failed%s, again in %.1fs: %r",
                        self._name,
                        unavailable(exc),
                        pause,
                        exc,
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), pause)
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing

    def _wanted(self) -> int:
        """How many messages to take now: what can start, or a read-ahead when everything
        waiting is held back by its tenant's limit; 0 when there is no room at all."""
        free = self.concurrency - len(self._running)
        room = self._max_held - self.held
        if free <= 0 or room <= 0:
            return 0
        if self._waiting_count:
            return min(room, _READ_AHEAD)
        if self._running and free < self._min_take:
            # Busy: wait for a handful of free slots rather than take one at a time (a
            # broker round trip per message).
            return 0
        return min(room, free)

    def _enqueue(self, messages: list[Message]) -> None:
        now = time.monotonic()
        for message in messages:
            queues = self._waiting[self._lane.get(message.stream, len(self._streams) - 1)]
            tenant = tenant_of(message)
            queue = queues.get(tenant)
            if queue is None:
                queue = queues[tenant] = deque()
            queue.append(message)
            self._renewed[message.id] = (message, now)
        self._waiting_count += len(messages)
        self._start_ready()

    def _start_ready(self) -> None:
        """Fill free slots: highest lane first, round robin between its tenants, skipping
        tenants at their limit. The top lane has ``express`` slots more, in all and per
        tenant."""
        for lane, queues in enumerate(self._waiting):
            extra = self.express if lane == 0 else 0
            limit, tenant_limit = self.concurrency + extra, self.tenant_limit + extra
            skipped = 0
            while queues and skipped < len(queues):
                if len(self._running) >= limit:
                    break
                tenant = next(iter(queues))
                queue = queues.pop(tenant)
                if self._per_tenant[tenant] >= tenant_limit:
                    queues[tenant] = queue
                    skipped += 1
                    continue
                skipped = 0
                self._start(queue.popleft(), tenant)
                if queue:
                    queues[tenant] = queue

    def _start(self, message: Message, tenant: str) -> None:
        self._waiting_count -= 1
        self._per_tenant[tenant] += 1
        task = asyncio.create_task(self._handle(message))
        self._running[task] = message
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        message = self._running.pop(task, None)
        if message is not None:
            tenant = tenant_of(message)
            self._per_tenant[tenant] -= 1
            if not self._per_tenant[tenant]:
                del self._per_tenant[tenant]
            self._renewed.pop(message.id, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: a task failed: %r", self._name, task.exception())
        self._start_ready()
        self._room.set()

    async def _renew_leases(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._renew_every)
            due = time.monotonic() - self._renew_every
            stale = [message for message, at in self._renewed.values() if at <= due]
            if not stale:
                continue
            try:
                await self._broker.extend(stale, self._consumer)
            except Exception as exc:
                log.warning("%s: renewing %d leases failed: %r", self._name, len(stale), exc)
                continue
            now = time.monotonic()
            for message in stale:
                if message.id in self._renewed:
                    self._renewed[message.id] = (message, now)

    async def stop(self, deadline: float) -> None:
        """Give back what waits; finish what runs within ``deadline`` seconds, hand back the
        rest."""
        waiting = [m for queues in self._waiting for q in queues.values() for m in q]
        for queues in self._waiting:
            queues.clear()
        self._waiting_count = 0
        if waiting:
            try:
                await self._broker.release(waiting)
            except Exception as exc:
                log.warning("%s: handing back %d failed: %r", self._name, len(waiting), exc)
        await finish_or_hand_back(self._running, self._broker, deadline)


def unavailable(exc: BaseException) -> str:
    """`` (broker (redis) unavailable)`` when ``exc`` is an outage, naming the component it
    came from; empty for any other failure."""
    return f" ({outage_of(exc)} unavailable)" if is_outage(exc) else ""
