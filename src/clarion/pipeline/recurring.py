"""Recurring schedules, in the scheduler role: create each due run once, then fire it.

A pass has two steps, each safe with several schedulers at once (docs/schedules.md):

1. *Advance*: for each schedule whose ``next_run_at`` has come, the due times since its
   watermark (in its zone, or in each zone among its recipients), recorded as runs in the
   same transaction as the watermark's guarded move.
2. *Fire*: take runs whose lease has passed, and make each into notifications through the
   intake's store path, with an idempotency key derived from the schedule, the due time,
   the zone and the chunk, so a run taken over after a crash repeats nothing.

Each notification a run makes is charged to the tenant's intake quota, as a send through
the API is. A run over the quota waits (it is handed back, to be taken again when the
quota allows, with the reason in its ``error``); one that still cannot go out
``CLARION_SCHEDULE_CATCHUP`` after its due time is ``skipped``, saying why.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timedelta
from typing import Any

from clarion.domain.cron import RECIPIENT, Cron, next_look, window_start
from clarion.domain.cron import zone as zone_info
from clarion.domain.models import PLAN_STREAM
from clarion.domain.refusal import Refused
from clarion.observability import tracing
from clarion.pipeline.context import Context
from clarion.pipeline.messages import plan_payload
from clarion.resilience.quota import TenantQuotas
from clarion.store import notifications as notification_store
from clarion.store import schedule_runs as runs
from clarion.store import schedules as store
from clarion.store.batching import is_outage

log = logging.getLogger(__name__)

_SCAN = 100  # schedules advanced per pass
_TAKE = 20  # runs fired per pass
_PER_ZONE = 100  # due times of one zone recorded per advance (a catch-up is bounded)
_RETRY = timedelta(minutes=1)  # before a schedule that failed to advance is looked at again
CHUNK = 1000  # recipients per notification: the most a notification lists
_QUOTA_WAIT = 0.1  # the least a run over its tenant's quota waits before it tries again


def idempotency_key(name: str, due_at: datetime, zone: str, first: str) -> str:
    """The key of a run's notification for the chunk starting at ``first`` ("" for a
    topic send): the same on every attempt, so a repeated step stores nothing new."""
    text = f"{name}\x1f{due_at.isoformat()}\x1f{zone}\x1f{first}"
    return "schedule:" + hashlib.sha256(text.encode()).hexdigest()[:40]


def usable_zones(names: list[str]) -> list[str]:
    """The names that are IANA zones (a stored recipient's zone was checked on the way in;
    one that no longer loads is left out, with a warning)."""
    found = []
    for name in names:
        try:
            zone_info(name)
        except ValueError:
            log.warning("recipients with the unknown time zone %r get no recurring sends", name)
            continue
        found.append(name)
    return found


class Recurring:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._quotas = TenantQuotas(ctx.settings, ctx.engine)

    async def run_once(self) -> int:
        """One pass; the number of runs created or fired (0: nothing was due)."""
        now = self._ctx.clock()
        done = await self.advance(now)
        return done + await self.fire(now)

    # -- advance -----------------------------------------------------------------------

    async def zones(self, schedule: dict[str, Any]) -> list[str]:
        if schedule["timezone"] != RECIPIENT:
            return [schedule["timezone"]]
        to = schedule["notification"]["to"]
        return usable_zones(await store.zones(self._ctx.engine, schedule["tenant_id"], to))

    async def advance(self, now: datetime) -> int:
        created = 0
        for schedule in await store.due(self._ctx.engine, now, _SCAN, self._ctx.pg):
            try:
                created += await self._advance(schedule, now)
            except Exception as exc:
                if is_outage(exc):
                    raise
                # One schedule that cannot be advanced must not hold up the others.
                log.error("schedule %r cannot be advanced: %r", schedule["name"], exc)
                await store.postpone(self._ctx.engine, schedule, now + _RETRY)
        if created:
            self._ctx.made_progress()
        return created

    async def _advance(self, schedule: dict[str, Any], now: datetime) -> int:
        settings = self._ctx.settings
        cron = Cron(schedule["cron"])
        zones = await self.zones(schedule)
        since = max(schedule["fired_through"], now - timedelta(seconds=settings.schedule_catchup))
        since = window_start(since, schedule["starts_at"])
        ends_at = schedule["ends_at"]
        due = [
            (at, name)
            for name in zones
            for at in cron.between(name, since, now, _PER_ZONE)
            if ends_at is None or at <= ends_at
        ]
        recipient = schedule["timezone"] == RECIPIENT
        rescan = now + timedelta(seconds=settings.schedule_zone_rescan) if recipient else None
        following = next_look(
            cron, zones, now, starts_at=schedule["starts_at"], ends_at=ends_at, rescan=rescan
        )
        history = now - timedelta(seconds=settings.schedule_history)
        return await runs.plan(self._ctx.engine, schedule, due, now, following, history)

    # -- fire --------------------------------------------------------------------------

    async def fire(self, now: datetime) -> int:
        lease = self._ctx.settings.broker_lease
        taken = await runs.take(self._ctx.engine, now, lease, _TAKE, self._ctx.pg)
        for run in taken:
            try:
                await self._fire(run)
            except Exception as exc:
                if is_outage(exc):
                    raise
                # Left to its lease: taken again later, after the others.
                log.error("run %s of schedule %r failed: %r", run["id"], run["schedule"], exc)
        if taken:
            self._ctx.made_progress()
        return len(taken)

    async def _fire(self, run: dict[str, Any]) -> None:
        engine = self._ctx.engine
        schedule = await store.current(engine, run["tenant_id"], run["schedule"])
        if schedule is None:
            return  # deleted, with its runs
        if not schedule["enabled"]:
            await runs.finish(engine, run, runs.SKIPPED, self._ctx.clock(), "schedule disabled")
            return
        with tracing.schedule_run(run, schedule.get("trace")):
            await self._make(run, schedule)

    async def _make(self, run: dict[str, Any], schedule: dict[str, Any]) -> None:
        """Make the run's notifications, from its cursor on."""
        engine = self._ctx.engine
        to = schedule["notification"]["to"]
        if to.get("topic") and schedule["timezone"] != RECIPIENT:
            # The whole topic at one time: one topic send, planned in chunks as any other.
            if await self._send(run, schedule, None):
                await runs.finish(engine, run, runs.COMPLETED, self._ctx.clock())
            return
        zone = run["zone"] if schedule["timezone"] == RECIPIENT else None
        while True:
            ids = await store.audience_chunk(
                engine, run["tenant_id"], to, zone, run["cursor"], CHUNK
            )
            if not ids:
                await runs.finish(engine, run, runs.COMPLETED, self._ctx.clock())
                return
            if not await self._send(run, schedule, ids):
                return

    async def _send(
        self, run: dict[str, Any], schedule: dict[str, Any], ids: list[str] | None
    ) -> bool:
        """Make one notification of the run (``ids``: a chunk of its audience; None: the
        topic) and record it; False when the run ends here (failed, or no longer ours)."""
        engine, clock = self._ctx.engine, self._ctx.clock
        if not await self._charge(run):
            return False
        new = self._notification(run, schedule, ids)
        new.trace = tracing.traceparent()  # the run's span (tracing on), kept with it
        [outcome] = await notification_store.accept(
            engine, [new], outbox_grace=self._ctx.settings.outbox_grace, pg=self._ctx.pg
        )
        if isinstance(outcome, Refused):
            await runs.finish(
                engine, run, runs.FAILED, clock(), f"{outcome.code}: {outcome.message}"
            )
            return False
        if outcome.created:
            await self._publish(outcome.id, run["tenant_id"], new.trace)
        lease = clock() + timedelta(seconds=self._ctx.settings.broker_lease)
        return await runs.step(
            engine,
            run,
            cursor=ids[-1] if ids else None,
            notification_ids=[outcome.id],
            recipients=len(ids) if ids else 0,
            lease_until=lease,
        )

    async def _charge(self, run: dict[str, Any]) -> bool:
        """Charge one notification to the tenant's intake quota; when over it, hand the
        run back until the quota allows (or skip it, past the catch-up window) and say
        False."""
        tenant_id = run["tenant_id"]
        quota = await self._quotas.quota(tenant_id)
        [decision] = await self._ctx.resilience.limiter.take_many([quota.take(tenant_id, 1)])
        if decision.allowed:
            return True
        now = self._ctx.clock()
        why = f"rate_limited: over the intake quota of {quota.describe()}"
        retry_at = now + timedelta(seconds=max(decision.retry_after, _QUOTA_WAIT))
        deadline = run["due_at"] + timedelta(seconds=self._ctx.settings.schedule_catchup)
        if retry_at <= deadline:
            await runs.wait(self._ctx.engine, run, retry_at, f"{why}; waiting for it")
            return False
        sent = f" after {run['recipients']} recipients" if run["recipients"] else ""
        why += f"; not sent{sent} within CLARION_SCHEDULE_CATCHUP of its due time"
        await runs.finish(self._ctx.engine, run, runs.SKIPPED, now, why)
        return False

    async def _publish(self, notification_id: str, tenant_id: str, trace: str | None) -> None:
        try:
            payload = plan_payload(notification_id, tenant_id, trace)
            await self._ctx.broker.publish(PLAN_STREAM, [payload])
        except Exception as exc:  # the relay publishes it from the outbox instead
            log.warning("publishing scheduled notification %s failed: %r", notification_id, exc)

    def _notification(
        self, run: dict[str, Any], schedule: dict[str, Any], ids: list[str] | None
    ) -> notification_store.NewNotification:
        body = schedule["notification"]
        key = idempotency_key(run["schedule"], run["due_at"], run["zone"], ids[0] if ids else "")
        expires = body.get("expires_at")
        return notification_store.NewNotification(
            tenant_id=run["tenant_id"],
            template=body.get("template") or "",
            recipient_ids=ids or [],
            data=body.get("data") or {},
            priority=body.get("priority") or "normal",
            channels=body.get("channels"),
            send_at=None,
            expires_at=datetime.fromisoformat(expires) if expires else None,
            idempotency_key=key,
            request_hash=hashlib.sha256(key.encode()).hexdigest(),
            topic=body["to"]["topic"] if ids is None else None,
            workflow=body.get("workflow"),
            cancellation_key=body.get("cancellation_key"),
        )
