"""Runs the roles of one process and stops them in order.

``serve`` runs every role; ``api``, ``worker`` and ``scheduler`` run one each. Every role is
a loop over a stream or a table; stopping means: stop taking work, finish or hand back what
is in flight within the deadline, then close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from clarion.broker import Message
from clarion.domain.backoff import resting_pause
from clarion.domain.models import (
    ALL_CHANNELS,
    BULK_LANES,
    LANES,
    PLAN_STREAMS,
    Priority,
    channel_streams,
)
from clarion.observability import metrics
from clarion.pipeline.consumer import READ_WAIT, unavailable
from clarion.pipeline.context import Context
from clarion.pipeline.intake import Intake
from clarion.pipeline.planner import Planner
from clarion.pipeline.recurring import Recurring
from clarion.pipeline.scheduler import Relay, Retention, Sweeper, recover_embedded
from clarion.pipeline.status_events import EVENTS_RETRY_STREAM, EVENTS_STREAM
from clarion.pipeline.status_webhooks import EventDispatcher
from clarion.pipeline.worker import ChannelWorker, StatusWriter
from clarion.store import notifications as notification_store
from clarion.store import runs as run_store
from clarion.store.batching import Batcher

log = logging.getLogger(__name__)

# drain() waits for delayed messages due within this many seconds (retries), not for those
# due later (deliveries deferred past quiet hours).
_DRAIN_HORIZON = 60.0
# How long the planner's run waker rests when no workflow run was due: it looks again
# after RUNS_IDLE, then less often while none is due, down to once a RUNS_RESTING (a run
# resumes within that of its due time after a quiet spell, within RUNS_IDLE while runs
# keep falling due); the other RUN_WAKERS - 1 add hands only while it finds a backlog.
RUNS_IDLE = 0.5
RUNS_RESTING = 1.0
RUN_WAKERS = 2
# How long the lead of the plan stream's read blocks at most: its lease (pipeline/lead.py,
# 5 s) is renewed between reads, so well within it.
LEAD_READ = 2.5
# The scheduler's relay of the outbox: every RELAY_IDLE while it finds work, resting up to
# RELAY_RESTING between looks after a quiet spell.
RELAY_IDLE = 0.2
RELAY_RESTING = 1.0
# How often the event loop's lag is sampled (clarion_event_loop_lag_seconds).
LAG_EVERY = 0.5
# While acks come several at a time, each batch waits this long for more before it goes
# (store/batching.py): nothing waits on an ack, and at a moderate rate each trip to the
# broker then carries a few times as many (docs/performance.md).
ACK_LINGER = 0.02


def consumer_name(role: str) -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{role}"


@dataclass
class Roles:
    api: bool = False
    planner: bool = False
    channels: Sequence[str] = ()
    scheduler: bool = False
    # The lanes the channel workers take and the planner plans for (``clarion worker
    # --lanes``): each urgent lane's plan stream, and with a bulk lane (normal, low) the
    # plan and chunk streams and the workflow wake-ups.
    lanes: Sequence[str] = LANES

    @classmethod
    def everything(cls) -> Roles:
        return cls(api=True, planner=True, channels=ALL_CHANNELS, scheduler=True)


@dataclass
class Runtime:
    ctx: Context
    roles: Roles
    intake: Intake | None = None
    workers: list[ChannelWorker] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _status: StatusWriter | None = None
    _events: EventDispatcher | None = None
    _acks: Batcher[Message, None] | None = None
    _planner: Planner | None = None
    _lag_timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        ctx = self.ctx
        self._sample_lag()
        gives_way = ctx.settings.broadcast_give_way and ctx.resilience.redis is not None
        if gives_way and (self.roles.planner or self.roles.channels):
            # Urgent work in one process makes the others' broadcast work give way too.
            ctx.urgency.share(ctx.resilience.redis, consumer_name("urgency"))
        if self.roles.api:
            self.intake = Intake(ctx)
            self.intake.start()
            ctx.inbox.submit = self.intake.accept
            # Revoked recipient tokens, snoozed inbox messages whose time has come.
            upkeep = self._loop(ctx.inbox.upkeep, idle=ctx.settings.inbox_upkeep_interval)
            self._spawn("inbox-upkeep", upkeep)
        if self.roles.scheduler and ctx.settings.broker_url.startswith("embedded://"):
            recovered = await recover_embedded(ctx)
            if recovered:
                log.info("recovered %d queued deliveries into the embedded broker", recovered)
        if self.roles.channels:
            self._status = StatusWriter(ctx)
            self._status.start()
            self._acks = Batcher(self._ack, max_items=2000, name="acks", linger=ACK_LINGER)
            self._acks.start()
            for channel in self.roles.channels:
                worker = ChannelWorker(
                    ctx, channel, consumer_name(channel), self._status, self._acks, self.roles.lanes
                )
                self.workers.append(worker)
                self._spawn(f"worker-{channel}", worker.run(self._stop))
            # Status events go out wherever deliveries do.
            self._events = EventDispatcher(ctx, consumer_name("events"), self._acks)
            self._events.start()
            self._spawn("events", self._events.run(self._stop))
        if self.roles.planner:
            planner = self._planner = Planner(ctx, consumer_name("planner"))
            if Priority.CRITICAL in self.roles.lanes:
                critical = self._loop(lambda: planner.run_critical_once(READ_WAIT, self._stop))
                self._spawn("planner-critical", critical)
            if Priority.HIGH in self.roles.lanes:
                high = self._loop(lambda: planner.run_high_once(LEAD_READ, self._stop))
                self._spawn("planner-high", high)
            if BULK_LANES & set(self.roles.lanes):
                self._plan_bulk(planner)
        if self.roles.scheduler:
            relay, sweeper = Relay(ctx), Sweeper(ctx)
            relaying = self._loop(relay.run_once, idle=RELAY_IDLE, resting=RELAY_RESTING)
            self._spawn("relay", relaying)
            recurring = Recurring(ctx)
            self._spawn("schedules", self._loop(recurring.run_once, idle=0.5, resting=1.0))
            interval = min(30.0, ctx.settings.sweep_after / 4)
            self._spawn("sweeper", self._loop(sweeper.run_once, idle=interval))
            keeper = Retention(ctx)
            self._spawn(
                "retention", self._loop(keeper.run_once, idle=ctx.settings.retention_interval)
            )

    def _plan_bulk(self, planner: Planner) -> None:
        """The planner's loops for the bulk lanes: the plan stream (one leader at a time),
        topic chunks, and workflow runs whose wait is over."""
        self._spawn("planner", self._loop(lambda: planner.run_once(LEAD_READ, self._stop)))
        chunks = self._loop(lambda: planner.run_chunks_once(READ_WAIT, self._stop))
        self._spawn("planner-chunks", chunks)
        # Workflow runs whose wait is over (pipeline/runs.py): one waker looks at the
        # table; while it finds more due than a batch, the others join in, a few
        # batches at once (each takes runs no other holds: SKIP LOCKED on PostgreSQL).
        wakes = self._loop(planner.runs.wake_once, idle=RUNS_IDLE, resting=RUNS_RESTING)
        self._spawn("runs-0", wakes)
        for waker in range(1, RUN_WAKERS):
            helping = self._loop(lambda: planner.runs.help_once(self._stop))
            self._spawn(f"runs-{waker}", helping)

    def _sample_lag(self) -> None:
        """Every ``LAG_EVERY``, how late the loop ran a timer: what anything ready waited
        then behind the work in hand (a stall shows as a lag as long). A bare timer, not a
        task: at rest each sample costs the loop one turn."""
        loop = asyncio.get_running_loop()

        def sample(due: float) -> None:
            try:
                metrics.loop_lag(max(0.0, loop.time() - due))
            finally:
                if not self._stop.is_set():
                    schedule()

        def schedule() -> None:
            due = loop.time() + LAG_EVERY
            self._lag_timer = loop.call_at(due, sample, due)

        schedule()

    async def _ack(self, messages: list[Message]) -> list[None]:
        await self.ctx.broker.ack(messages)
        return [None] * len(messages)

    def _spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    async def _loop(
        self, step: Callable[[], Awaitable[int]], idle: float = 0.0, resting: float = 0.0
    ) -> None:
        """Run ``step`` until stopped; when it found nothing, wait ``idle`` or for the stop,
        and after each further look that found nothing twice as long, up to ``resting``
        (none: always ``idle``): at rest a loop looks seldom, and a look that finds work
        brings it back to ``idle``. A failing step (database or broker away) is logged and
        retried after a pause."""
        pause, empty = idle, 0
        while not self._stop.is_set():
            try:
                found = await step()
                empty = 0 if found else empty + 1
                pause = resting_pause(idle, empty, resting)
            except Exception as exc:
                task = asyncio.current_task()
                name = task.get_name() if task is not None else "loop"
                log.warning("%s failed%s: %r", name, unavailable(exc), exc)
                found, pause = 0, min(max(pause * 2, 0.5), 10.0)
            if not found and pause > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), pause)

    def streams(self) -> list[str]:
        streams = list(PLAN_STREAMS)
        for channel in ALL_CHANNELS:
            streams.extend(channel_streams(channel))
        streams += [EVENTS_STREAM, EVENTS_RETRY_STREAM]
        return streams

    async def idle(self) -> bool:
        """True when no work is waiting anywhere this runtime can see."""
        if any(w.inflight for w in self.workers):
            return False
        if self._events is not None and self._events.inflight:
            return False
        if self._acks is not None and (self._acks.pending or self._status_pending()):
            return False
        # A delivery deferred for hours is waiting, not work in progress.
        horizon = time.time() + _DRAIN_HORIZON
        backlog = await self.ctx.broker.backlog(self.streams(), due_before=horizon)
        if any(backlog.values()):
            return False
        due = await run_store.next_wake(self.ctx.engine)
        if due is not None and due.timestamp() < horizon:
            return False
        return await notification_store.outbox_size(self.ctx.engine) == 0

    def _status_pending(self) -> bool:
        return self._status is not None and self._status.pending > 0

    async def drain(self, timeout: float = 60.0) -> None:
        """Wait until every accepted notification has gone as far as it can (tests). A look
        that fails (the broker or database away for a moment) counts as not idle, and the
        next is taken, as the roles' own loops retry theirs."""
        async with asyncio.timeout(timeout):
            quiet = 0
            while quiet < 2:
                self.ctx.progress.clear()
                try:
                    idle = await self.idle()
                except Exception as exc:
                    log.warning("drain: the look at what is left failed: %r", exc)
                    idle = False
                quiet = quiet + 1 if idle else 0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.ctx.progress.wait(), 0.05)

    async def stop(self) -> None:
        """Stop taking work, finish or hand back what is in flight, close."""
        self._stop.set()
        if self._lag_timer is not None:
            self._lag_timer.cancel()
        deadline = self.ctx.settings.shutdown_timeout
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=deadline)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._planner is not None:
            await self._planner.lead.step_down()
            await self._planner.high_lead.step_down()
        for worker in self.workers:
            await worker.stop(deadline)
        if self._events is not None:
            await self._events.stop(deadline)
        if self.intake is not None:
            await self.intake.close()
        if self._status is not None:
            await self._status.close()
        if self._acks is not None:
            await self._acks.close()
        await self.ctx.urgency.aclose()
