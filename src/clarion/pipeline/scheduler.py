"""The scheduler role: the outbox relay, the sweeper, retention (closed digest windows
included), and recovery of the embedded broker."""

from __future__ import annotations

import logging
from datetime import timedelta

from clarion.pipeline.context import Context
from clarion.pipeline.messages import by_due_time, plan_messages, publish_deliveries
from clarion.store import deliveries as delivery_store
from clarion.store import digests as digest_store
from clarion.store import notifications as notification_store
from clarion.store import retention, sweeps
from clarion.store.db import utcnow

log = logging.getLogger(__name__)

_RELAY_BATCH = 1000
_SWEEP_BATCH = 1000


class Relay:
    """Publishes due outbox rows: scheduled notifications, and any the API did not, each
    with the trace context it was accepted in."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def run_once(self) -> int:
        ids = await notification_store.claim_due_outbox(
            self._ctx.engine,
            _RELAY_BATCH,
            lease=self._ctx.settings.broker_lease,
            now=self._ctx.clock(),
            pg=self._ctx.pg,
        )
        if not ids:
            return 0
        # Critical notifications are planned from a stream of their own.
        outboxed = await notification_store.outboxed(self._ctx.engine, ids)
        streams = plan_messages(outboxed)
        for stream, payloads in streams.items():
            await self._ctx.broker.publish(stream, payloads)
        self._ctx.made_progress()
        return len(ids)


class Sweeper:
    """Publishes again deliveries left `queued` too long (work lost between store and
    broker), and those `sending` whose worker's lease ran out (it died in the attempt).

    Each pass first watches what was made since the last one and still waits (store/
    sweeps.py), then publishes the stale among the watched."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def run_once(self) -> int:
        engine, patience = self._ctx.engine, self._ctx.settings.sweep_after
        now = utcnow()
        cutoff = now - timedelta(seconds=patience)
        overlap = min(sweeps.OVERLAP, timedelta(seconds=patience))
        behind = await sweeps.watch_new(engine, now, cutoff, overlap)
        stale = await sweeps.stale(engine, cutoff, _SWEEP_BATCH)
        if stale:
            log.info("sweeper: publishing %d stale queued deliveries again", len(stale))
            # Stale means due: whatever its scheduled time, it goes on its lane now.
            deliveries = [item.delivery for item in stale]
            await publish_deliveries(self._ctx.broker, deliveries)
            await delivery_store.touch(engine, [d.id for d in deliveries])
        # Behind (a pass after a long pause): at once again.
        return len(stale) + (1 if behind else 0)


class Retention:
    """Day partitions made ahead, what is older than the retention horizon removed
    (store/retention.py), digest windows closed more than a day ago forgotten (store/
    digests.py ``prune``, whatever the horizon), and an overdue open window without a
    carrier run given one (``adopt``)."""

    MAX_BATCHES = 20

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def run_once(self) -> int:
        """One pass; non-zero when it stopped with rows still to remove (run again soon)."""
        settings = self._ctx.settings
        # The wall clock, not the context's (which tests move across months).
        now = utcnow()
        report = await retention.maintain(
            self._ctx.engine, now, settings.retention_days, self.MAX_BATCHES
        )
        full = self.MAX_BATCHES * retention.BATCH
        left = sum(1 for count in report.deleted.values() if count >= full)
        pruned = await digest_store.prune(self._ctx.engine, now, digest_store.PRUNE_BATCH)
        adopted = await digest_store.adopt(self._ctx.engine, now, digest_store.PRUNE_BATCH)
        if adopted:
            log.warning("gave %d open digest windows the carrier run they lacked", adopted)
        return left + (1 if max(pruned, adopted) >= digest_store.PRUNE_BATCH else 0)


async def recover_embedded(ctx: Context) -> int:
    """Refill an empty in-process broker from the database after a start or a crash:
    every queued delivery goes back on its lane, or on the delayed set if a retry is due
    later, and every one that was being sent goes back on its lane for the same attempt.
    The process is the only one, so no broker holds the plan messages of what it had
    accepted and not planned: their outbox rows are made due now, for the relay to publish
    at once (in accept order) instead of after their grace; a notification scheduled for
    later keeps its time."""
    now = utcnow()
    # Deliveries being sent when it stopped are due again, each its same attempt.
    await delivery_store.release_leases(ctx.engine)
    released = await notification_store.release_outbox(ctx.engine, now)
    if released:
        log.info("publishing %d accepted notifications not yet planned", released)
    after: str | None = None
    total = 0
    while True:
        waiting = await delivery_store.all_queued(ctx.engine, after, 1000)
        if not waiting:
            return total
        after = waiting[-1].delivery.id
        total += len(waiting)
        ready, later = by_due_time(waiting, now.timestamp())
        await publish_deliveries(ctx.broker, ready, later)
