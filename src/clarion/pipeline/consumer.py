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

Endpoints and retries
    Within a tenant's share, one endpoint (a webhook's host, a provider: the ``endpoint``
    function) may hold at most ``endpoint_limit`` slots: a taken message whose endpoint is
    full is parked, off its tenant's queue, until one of that endpoint's handlers finishes,
    and the tenant's work to other endpoints starts past it. With ``endpoint_slow_after``
    the limit holds only for an endpoint in trouble: one for which a handler returned False
    (it failed, or was slow) in the last ``_TROUBLE_MEMORY`` seconds, or has been running
    longer than ``endpoint_slow_after`` seconds. A healthy endpoint may use its tenant's
    whole share, so one busy endpoint is not held to a quarter of the slots while nothing
    is wrong.
    Retries come on a stream of their own (``retry_stream``), taken after the lanes, and
    hold at most ``retry_limit`` slots and a quarter of ``max_held``: a backlog of retries
    to failing endpoints never stands in front of fresh work, nor fills the slots it needs.

Read-ahead
    The loop takes only what it can start (once a handful of slots are free, so that a busy
    process does not pay a broker round trip per message), except when everything waiting
    is held back (its tenant, endpoint or the retries at their limit): then it reads ahead
    (up to ``max_held`` messages held in all) to reach other work behind it. Held messages
    have their leases renewed, so waiting in this process never makes the broker hand them
    to another consumer. With ``spill``, a consumer that holds ``max_held`` (or too near it
    to read a take) and can start none of it hands the messages parked for slow endpoints
    (but ``endpoint_limit`` each) to ``spill``, which puts them back for later, and reads
    on.
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
from clarion.pipeline.urgency import NOTHING_HELD, URGENT_LANES, Held, Urgency
from clarion.store.batching import is_outage

log = logging.getLogger(__name__)

# How long a read waits for work (a stop ends it sooner): at rest, a consumer blocks on its
# streams rather than polling them. The broker cuts a wait into slices of its own where it
# must look at something between (broker/redis_streams.py). It also bounds how long lanes
# left out of a read (no room for them when it began) wait for the next.
READ_WAIT = 5.0

# Handles one message; False says its endpoint failed it or was slow (an error, a timeout,
# a long call), which puts the endpoint in trouble (see "Endpoints and retries").
Handler = Callable[[Message], Coroutine[Any, Any, bool | None]]
# Looks at freshly taken messages before they are queued; returns those still to handle
# (e.g. drops redelivered messages whose work is already done).
Screen = Callable[[list[Message]], Awaitable[list[Message]]]
# Where a message's work goes (its endpoint), or None when it has no single one.
Endpoint = Callable[[Message], str | None]
# Takes messages off this consumer's hands for later (publishes them delayed, acks them).
Spill = Callable[[list[Message]], Awaitable[None]]
# A tenant's endpoint, the key of the per-endpoint limit.
_Key = tuple[str, str]

_READ_AHEAD = 500
# An endpoint whose oldest send in flight has run this long (seconds) is slow: when the
# consumer is full, what waits for it may be spilled.
_SLOW_AFTER = 1.0
# How long an endpoint stays in trouble after its last failed or slow handler (seconds).
_TROUBLE_MEMORY = 30.0
# How long a stop waits for the lease renewer beyond its period (seconds): a broker call
# under way.
_RENEW_STOP = 5.0
# Endpoints in trouble remembered before the expired ones are dropped.
_TROUBLED_KEPT = 4096


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
        retry_stream: str | None = None,
        retry_share: float = 0.125,
        endpoint: Endpoint | None = None,
        endpoint_share: float = 1.0,
        endpoint_slow_after: float | None = None,
        spill: Spill | None = None,
        urgency: Urgency | None = None,
        ranks: Sequence[int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._broker = broker
        self._lanes = list(streams)
        self._streams = [*self._lanes, retry_stream] if retry_stream else self._lanes
        self._lane = {stream: i for i, stream in enumerate(self._streams)}
        self._retry_lane = len(self._lanes) if retry_stream else -1
        # Each stream's place among every lane (0: critical, domain/models.py ``LANES``),
        # for a consumer given only some of them: the express slots are the critical
        # lane's, and urgent work holds back the lanes from ``URGENT_LANES`` on. The retry
        # stream ranks below them all.
        known = list(ranks) if ranks is not None else list(range(len(self._lanes)))
        if len(known) != len(self._lanes):
            raise ValueError("one rank per lane")
        self._ranks = [*known, max(known, default=0) + 1] if retry_stream else known
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
        self.retry_limit = max(1, int(concurrency * retry_share))
        self._max_retries_held = max(self.retry_limit, self._max_held // 4)
        self.endpoint_limit = max(1, int(concurrency * endpoint_share))
        self._endpoint = endpoint
        self._slow_after = endpoint_slow_after
        self._clock = clock
        # Per endpoint in trouble, until when (clock seconds); per endpoint, the starts of
        # its running handlers, oldest first.
        self._troubled: dict[_Key, float] = {}
        self._starts: dict[_Key, dict[asyncio.Task[Any], float]] = {}
        self._spill = spill
        self._renew_every = lease / 4
        # Per lane, the tenants with waiting messages, in round-robin order.
        self._waiting: list[dict[str, deque[Message]]] = [{} for _ in self._streams]
        self._waiting_count = 0
        self._retries_waiting = 0
        self._retries_running = 0
        self._running: dict[asyncio.Task[bool | None], Message] = {}
        # Each running handler's lane, endpoint key and start (clock seconds).
        self._runs: dict[asyncio.Task[bool | None], tuple[int, _Key | None, float]] = {}
        self._per_tenant: Counter[str] = Counter()
        self._per_endpoint: Counter[_Key] = Counter()
        # Per full endpoint, its messages waiting for one of its slots (with their lane).
        self._parked: dict[_Key, deque[tuple[int, Message]]] = {}
        # When each held message's lease was last renewed (monotonic seconds), by stream and
        # id (two streams may give the same id).
        self._renewed: dict[tuple[str, str], tuple[Message, float]] = {}
        self._room = asyncio.Event()
        # While urgent work holds them back (pipeline/urgency.py), the lanes below the
        # urgent ones start at most ``yield_limit`` handlers in all.
        self._urgency = urgency
        self.yield_limit = max(1, concurrency // 8)
        self._loop: asyncio.AbstractEventLoop | None = None
        if urgency is not None:
            urgency.when_clear(self._start_ready)

    @property
    def held(self) -> int:
        """Messages taken and not yet finished: waiting here or being handled."""
        return self._waiting_count + len(self._running)

    async def run(self, stop: asyncio.Event) -> None:
        """Take and start work until ``stop``. A broker or database that is away (a Redis
        restart, say) is waited out with a growing pause; what was taken and not started
        comes back after its lease."""
        # Kept for the task each message starts: on Python 3.11 each
        # asyncio.get_running_loop() (asyncio.create_task's) is a getpid system call.
        self._loop = asyncio.get_running_loop()
        ended = asyncio.Event()
        renewing = self._loop.create_task(
            self._renew_leases(stop, ended), name=f"{self._name}-leases"
        )
        pause = 0.0
        try:
            while not stop.is_set():
                count = self._wanted()
                if count <= 0 and self._spill is not None and self._too_full_to_read():
                    await self._spill_parked()
                    count = self._wanted()
                if count <= 0:
                    self._room.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._room.wait(), 0.25)
                    continue
                try:
                    messages = await self._broker.consume(
                        self._reading(), self._consumer, count, READ_WAIT, overfill=True, stop=stop
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
            # The renewer also ends by the flag: a cancellation can be lost on its way
            # through a broker call (Python 3.11's asyncio.wait_for returns the call's
            # result when it finished as the cancellation came).
            ended.set()
            renewing.cancel()
            _, pending = await asyncio.wait([renewing], timeout=self._renew_every + _RENEW_STOP)
            if pending:
                log.warning("%s: renewing leases did not stop when asked", self._name)

    async def _spill_parked(self) -> None:
        """Full, with nothing startable: hand the messages parked for slow endpoints (but
        a few each, to go on with) to ``spill``, so that the loop can read past them to
        other tenants' work. Handed back to the broker on failure (after their lease)."""
        assert self._spill is not None
        since = self._clock() - _SLOW_AFTER
        slow = {key for _, key, at in self._runs.values() if key is not None and at <= since}
        spilled: list[Message] = []
        for key in slow:
            parked = self._parked.get(key)
            while parked is not None and len(parked) > self.endpoint_limit:
                lane, message = parked.pop()
                if lane == self._retry_lane:
                    self._retries_waiting -= 1
                self._renewed.pop((message.stream, message.id), None)
                spilled.append(message)
        if not spilled:
            return
        self._waiting_count -= len(spilled)
        log.info("%s: %d messages for slow endpoints spilled", self._name, len(spilled))
        try:
            await self._spill(spilled)
        except Exception as exc:
            log.warning("%s: spilling %d failed: %r", self._name, len(spilled), exc)

    def _too_full_to_read(self) -> bool:
        """Too little room for a take: held up to ``max_held``, or within a take of it
        (:meth:`_wanted` then reads nothing until a handful finish, and a handful to a
        hanging endpoint finish only at its timeout)."""
        return self._max_held - self.held < min(self._min_take, self._max_held)

    def _reading(self) -> list[str]:
        """The streams to take from: the retry stream too while few retries wait here."""
        if self._retries_waiting < self._max_retries_held:
            return self._streams
        return self._lanes

    def _wanted(self) -> int:
        """How many messages to take now: what can start, or a read-ahead when everything
        waiting is held back by its tenant's limit; 0 when there is no room at all."""
        free = self.concurrency - len(self._running)
        room = self._max_held - self.held
        if free <= 0 or room <= 0:
            return 0
        if self._waiting_count:
            # Reading ahead with the held messages near ``max_held``: wait for a handful of
            # them to finish rather than take one message per finished handler.
            if self._too_full_to_read():
                return 0
            if self._held().everyone and self._waiting_count >= self.concurrency:
                # Every tenant's lower lanes are giving way: what waits here is held back
                # on purpose, not by its tenant's limit; no read-ahead past it until the
                # urgent work ends (or it drains below a full round of slots). Held back
                # for some tenants only, the others' messages are read on.
                return 0
            return min(room, _READ_AHEAD)
        if self._running and free < self._min_take:
            # Busy: wait for a handful of free slots rather than take one at a time (a
            # broker round trip per message).
            return 0
        return min(room, free)

    def _held(self) -> Held:
        """What urgent work holds back of the lower lanes now (``yield_limit``)."""
        return NOTHING_HELD if self._urgency is None else self._urgency.held()

    def _enqueue(self, messages: list[Message]) -> None:
        now = self._clock()
        last = len(self._lanes) - 1
        for message in messages:
            lane = self._lane.get(message.stream, last)
            queues = self._waiting[lane]
            tenant = tenant_of(message)
            queue = queues.get(tenant)
            if queue is None:
                queue = queues[tenant] = deque()
            queue.append(message)
            self._renewed[(message.stream, message.id)] = (message, now)
            if lane == self._retry_lane:
                self._retries_waiting += 1
        self._waiting_count += len(messages)
        self._start_ready()

    def _start_ready(self) -> None:
        """Fill free slots: highest lane first, round robin between its tenants, skipping
        tenants at their limit (and parking messages whose endpoint is at its limit). The
        top lane has ``express`` slots more, in all and per tenant; the retry lane comes
        last, with at most ``retry_limit`` slots."""
        held = self._held()
        if self._urgency is not None and self._waiting_count:
            self._urgency.busy()  # look at the other processes' urgent work meanwhile
        for lane, queues in enumerate(self._waiting):
            rank = self._ranks[lane]
            extra = self.express if rank == 0 else 0
            limit, tenant_limit = self.concurrency + extra, self.tenant_limit + extra
            if lane == self._retry_lane:
                limit = min(limit, len(self._running) - self._retries_running + self.retry_limit)
            # Held back by urgent work: every tenant's lower lanes, or only those of the
            # tenants whose urgent work it is (pipeline/urgency.py).
            few = held.tenants if rank >= URGENT_LANES else frozenset()
            if held.everyone and rank >= URGENT_LANES:
                limit = min(limit, self.yield_limit)
            skipped = 0
            while queues and skipped < len(queues):
                if len(self._running) >= limit:
                    break
                tenant = next(iter(queues))
                queue = queues.pop(tenant)
                if self._per_tenant[tenant] >= tenant_limit or (
                    tenant in few and len(self._running) >= self.yield_limit
                ):
                    queues[tenant] = queue
                    skipped += 1
                    continue
                found = self._next_startable(lane, tenant, queue)
                if queue:
                    queues[tenant] = queue
                if found is None:
                    continue  # everything it had waiting is parked: the queue is gone
                skipped = 0
                self._start(found[0], lane, tenant, found[1])

    def _key(self, tenant: str, message: Message) -> _Key | None:
        if self._endpoint is None:
            return None
        endpoint = self._endpoint(message)
        return None if endpoint is None else (tenant, endpoint)

    def _next_startable(
        self, lane: int, tenant: str, queue: deque[Message]
    ) -> tuple[Message, _Key | None] | None:
        """The first message of the queue whose endpoint has room; those before it, whose
        endpoint is full, are parked until it has."""
        while queue:
            message = queue.popleft()
            key = self._key(tenant, message)
            if key is None or self._per_endpoint[key] < self._endpoint_limit(key):
                return message, key
            parked = self._parked.get(key)
            if parked is None:
                parked = self._parked[key] = deque()
            parked.append((lane, message))
        return None

    def _endpoint_limit(self, key: _Key) -> int:
        """``endpoint_limit`` for an endpoint in trouble (or always, without
        ``endpoint_slow_after``); else no limit but its tenant's."""
        if self._slow_after is None:
            return self.endpoint_limit
        now = self._clock()
        until = self._troubled.get(key)
        if until is not None:
            if until > now:
                return self.endpoint_limit
            del self._troubled[key]
        starts = self._starts.get(key)
        if starts and next(iter(starts.values())) < now - self._slow_after:
            self._troubled[key] = now + _TROUBLE_MEMORY
            return self.endpoint_limit
        return self.concurrency + self.express

    def _unpark(self, key: _Key) -> None:
        """One of ``key``'s slots was freed: its first parked message goes back to the
        front of its tenant's queue."""
        parked = self._parked.get(key)
        if not parked:
            return
        lane, message = parked.popleft()
        if not parked:
            del self._parked[key]
        queues = self._waiting[lane]
        queue = queues.get(key[0])
        if queue is None:
            queues[key[0]] = deque((message,))
        else:
            queue.appendleft(message)

    def _start(self, message: Message, lane: int, tenant: str, key: _Key | None) -> None:
        self._waiting_count -= 1
        if lane == self._retry_lane:
            self._retries_waiting -= 1
            self._retries_running += 1
        self._per_tenant[tenant] += 1
        task = (self._loop or asyncio.get_running_loop()).create_task(self._handle(message))
        now = self._clock()
        if key is not None:
            self._per_endpoint[key] += 1
            if self._slow_after is not None:
                self._starts.setdefault(key, {})[task] = now
        self._running[task] = message
        self._runs[task] = (lane, key, now)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[bool | None]) -> None:
        message = self._running.pop(task, None)
        if message is not None:
            lane, key, _ = self._runs.pop(task)
            if key is not None and self._slow_after is not None:
                self._note_endpoint(key, task)
            tenant = tenant_of(message)
            self._per_tenant[tenant] -= 1
            if not self._per_tenant[tenant]:
                del self._per_tenant[tenant]
            if lane == self._retry_lane:
                self._retries_running -= 1
            if key is not None:
                self._per_endpoint[key] -= 1
                if not self._per_endpoint[key]:
                    del self._per_endpoint[key]
                self._unpark(key)
            self._renewed.pop((message.stream, message.id), None)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: a task failed: %r", self._name, task.exception())
        self._start_ready()
        self._room.set()

    def _note_endpoint(self, key: _Key, task: asyncio.Task[bool | None]) -> None:
        """A handler for ``key`` ended: the endpoint is in trouble if the handler says so
        (or raised)."""
        starts = self._starts.get(key)
        if starts is not None:
            starts.pop(task, None)
            if not starts:
                del self._starts[key]
        if task.cancelled() or task.exception() is not None or task.result() is False:
            now = self._clock()
            if len(self._troubled) >= _TROUBLED_KEPT:  # past troubles of endpoints not seen since
                self._troubled = {k: t for k, t in self._troubled.items() if t > now}
            self._troubled[key] = now + _TROUBLE_MEMORY

    async def _renew_leases(self, stop: asyncio.Event, ended: asyncio.Event) -> None:
        while not (stop.is_set() or ended.is_set()):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._renew_every)
            if ended.is_set():
                return
            due = self._clock() - self._renew_every
            stale = [message for message, at in self._renewed.values() if at <= due]
            if not stale:
                continue
            try:
                await self._broker.extend(stale, self._consumer)
            except Exception as exc:
                log.warning("%s: renewing %d leases failed: %r", self._name, len(stale), exc)
                continue
            now = self._clock()
            for message in stale:
                if (message.stream, message.id) in self._renewed:
                    self._renewed[(message.stream, message.id)] = (message, now)

    async def stop(self, deadline: float) -> None:
        """Give back what waits; finish what runs within ``deadline`` seconds, hand back the
        rest."""
        waiting = [m for queues in self._waiting for q in queues.values() for m in q]
        waiting += [m for parked in self._parked.values() for _, m in parked]
        for queues in self._waiting:
            queues.clear()
        self._parked.clear()
        self._waiting_count = self._retries_waiting = 0
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
