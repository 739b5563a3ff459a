"""The planner: turns accepted notifications into deliveries, in batches.

For a batch of plan messages it loads the notifications, their recipients (preferences
included), templates and categories with one query each, decides per recipient which
channels go now, which wait for the end of quiet hours and which are suppressed, renders
each channel's content in the recipient's locale, inserts the deliveries (deterministic ids,
so a replayed plan adds nothing) and publishes them: to their channel's lane, or to the
broker's delayed set until the quiet window ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from clarion.broker import Message
from clarion.domain.ids import delivery_id
from clarion.domain.models import PLAN_STREAM, DeliveryStatus, NotificationStatus, Priority
from clarion.domain.preferences import (
    CategoryPolicy,
    Decision,
    Preferences,
    candidate_channels,
    decide,
)
from clarion.domain.rendering import CompiledVersion
from clarion.domain.routing import address_for
from clarion.errors import TemplateError
from clarion.observability import logs, metrics, tracing
from clarion.pipeline import digests, throttle
from clarion.pipeline.categories import CategoryCache, Policies
from clarion.pipeline.context import Context
from clarion.pipeline.inflight import holding
from clarion.pipeline.messages import of_rows, plan_payload, publish_deliveries
from clarion.pipeline.status_events import StatusEvents
from clarion.pipeline.templates import TemplateCache
from clarion.store import notifications as notification_store
from clarion.store import planning
from clarion.store.batching import is_outage
from clarion.store.db import as_utc, utcnow

log = logging.getLogger(__name__)

# A step of planning (a batch of listed sends, or one chunk of a topic send) that has not
# finished in this many seconds never will: it is given up (TimeoutError, an outage), its
# plan messages are not acked and come back after their lease, to be planned again, which
# adds nothing twice. A step takes about a second for 5,000 recipients; every wait in it is
# bounded far below this on its own (statements, pooled connections, Redis replies), so
# this catches only what nothing else does. Without it, a step stuck on an await would hold
# its plan messages for good: their leases are renewed while it runs (inflight.holding).
STEP_DEADLINE = 300.0

_RECIPIENT_VARS = ("id", "email", "phone", "locale", "timezone")


@dataclass(slots=True)
class Plan:
    rows: list[dict[str, Any]]  # new deliveries
    planned: list[str]  # notification ids this batch planned


def render_context(notification: dict[str, Any], recipient: dict[str, Any]) -> dict[str, Any]:
    context: dict[str, Any] = dict(recipient.get("data") or {})
    context.update(notification["data"] or {})
    context["recipient"] = {name: recipient.get(name) for name in _RECIPIENT_VARS}
    return context


def _planning_topic(note: dict[str, Any]) -> bool:
    """A topic send whose subscribers are not all planned yet."""
    return (
        note["topic"] is not None
        and note["planned_at"] is None
        and note["status"]
        in (
            NotificationStatus.ACCEPTED,
            NotificationStatus.SCHEDULED,
            NotificationStatus.PROCESSING,
        )
    )


def _common_row(note: dict[str, Any], policy: CategoryPolicy, now: datetime) -> dict[str, Any]:
    """What the rows of a notification's deliveries share (a new row is a copy)."""
    return {
        "id": None,
        "notification_id": note["id"],
        "tenant_id": note["tenant_id"],
        "recipient_id": None,
        "channel": None,
        "provider": None,
        "priority": note["priority"],
        "status": DeliveryStatus.QUEUED,
        "reason": None,
        "attempts": 0,
        "last_error": None,
        "address": None,
        "content": None,
        "provider_message_id": None,
        "category": policy.name,
        "fallback": None,
        "critical": policy.critical,
        "scheduled_for": None,
        "expires_at": as_utc(note["expires_at"]),
        "created_at": now,
        "updated_at": now,
        "sent_at": None,
    }


class Planner:
    def __init__(self, ctx: Context, consumer: str) -> None:
        self._ctx = ctx
        self._consumer = consumer
        self._templates = TemplateCache()
        self._events = StatusEvents(ctx)
        self.batch_size = 200

    async def run_once(self, timeout: float) -> int:
        """Plan one batch of whatever is waiting; returns how many messages it took."""
        messages = await self._ctx.broker.consume(
            [PLAN_STREAM], self._consumer, self.batch_size, timeout
        )
        if messages:
            logs.bind(stage="planner", batch=len(messages))
            started = time.perf_counter()
            lease = self._ctx.settings.broker_lease
            with tracing.planning(messages):
                async with holding(self._ctx.broker, messages, self._consumer, lease):
                    await self._handle_isolated(messages)
            await self._ctx.broker.ack(messages)
            self._ctx.made_progress()
            metrics.planner_batch(len(messages), time.perf_counter() - started)
        return len(messages)

    async def _handle_isolated(self, messages: list[Message]) -> None:
        """Plan a batch; one that fails for anything but an outage is bisected, so that a
        notification that cannot be planned fails alone and its neighbours go on."""
        try:
            await self.handle(messages)
        except Exception as exc:
            if is_outage(exc):
                raise
            if len(messages) > 1:
                middle = len(messages) // 2
                await self._handle_isolated(messages[:middle])
                await self._handle_isolated(messages[middle:])
                return
            nid = messages[0].payload.get("notification")
            with logs.bound(notification_id=nid, tenant_id=messages[0].payload.get("tenant")):
                log.error("notification %s cannot be planned: %r", nid, exc, exc_info=exc)
            if isinstance(nid, str):
                await notification_store.fail_unplannable(self._ctx.engine, nid)

    async def handle(self, messages: list[Message]) -> None:
        ids = list(dict.fromkeys(m.payload["notification"] for m in messages))
        redelivered = [m.payload["notification"] for m in messages if m.redelivered]
        async with asyncio.timeout(STEP_DEADLINE):
            plan, republish, topical = await self._plan(ids, redelivered)
            await self._events.emit_rows(plan.rows)
            metrics.planned(plan.rows)
            await self._publish([*plan.rows, *republish])
        for note in topical:
            async with asyncio.timeout(STEP_DEADLINE):
                await self._plan_chunk(note)

    async def _publish(self, rows: list[dict[str, Any]]) -> None:
        waiting = (DeliveryStatus.QUEUED, DeliveryStatus.SCHEDULED)
        ready, later = of_rows(
            (row for row in rows if row["status"] in waiting), utcnow().timestamp()
        )
        await publish_deliveries(self._ctx.broker, ready, later)

    async def _plan(
        self, ids: list[str], redelivered: list[str]
    ) -> tuple[Plan, list[dict[str, Any]], list[dict[str, Any]]]:
        """Plan the notifications to listed recipients; return the topic sends still being
        planned, whose next chunk is planned apart (``_plan_chunk``)."""
        now = utcnow()
        engine, pg = self._ctx.engine, self._ctx.pg
        async with planning.reads(engine, pg) as reads:
            notes = await reads.notifications(ids)
            topical = [n for n in notes.values() if _planning_topic(n)]
            todo = [
                n
                for n in notes.values()
                if n["topic"] is None
                and n["status"] in (NotificationStatus.ACCEPTED, NotificationStatus.SCHEDULED)
            ]
            tenants = {n["tenant_id"] for n in todo}
            await self._ctx.providers.prepare(tenants)
            categories = await self._ctx.categories.load(engine, tenants)
            heads = await reads.active_versions({(n["tenant_id"], n["template"]) for n in todo})
            compiled = await self._templates.load(
                engine, [(t, name, v) for (t, name), v in heads.items()]
            )
            people = await reads.recipients(
                {(n["tenant_id"], rid) for n in todo for rid in n["recipient_ids"]}
            )
            plan = Plan(rows=[], planned=[n["id"] for n in todo])
            holding = digests.Holding()
            for note in todo:
                head = heads.get((note["tenant_id"], note["template"]))
                version = compiled.get((note["tenant_id"], note["template"], head or 0))
                policies = categories.get(note["tenant_id"], {})
                plan.rows.extend(self._deliveries(note, version, people, policies, now, holding))
            existing = await reads.existing_deliveries([r["id"] for r in plan.rows])
            # A topic send's chunks are published as they are planned; one whose publish
            # was lost is found by the sweeper, not by reading the whole send again here.
            listed = [nid for nid in redelivered if notes.get(nid, {}).get("topic") is None]
            republish = await reads.waiting_deliveries(listed) if listed else []
        plan.rows = [row for row in plan.rows if row["id"] not in existing]
        exempt = {n["id"] for n in todo if n.get("digest_of")}
        await self._cap_and_hold(plan.rows, categories, holding, now, exempt)
        # A topic send keeps its outbox row until its last chunk is planned.
        outbox_ids = [nid for nid in ids if notes.get(nid, {}).get("topic") is None]
        inserted = await planning.store_plan(engine, pg, plan.rows, plan.planned, outbox_ids, now)
        plan.rows = [row for row in plan.rows if row["id"] in inserted]
        return plan, republish, topical

    async def _plan_chunk(self, note: dict[str, Any]) -> None:
        """Plan the next chunk of a topic send's subscribers, exactly as a listed send's
        recipients are planned, and commit it with the notification's cursor; then ask for
        the next chunk through the plan stream, behind whatever else is waiting there, so
        a broadcast never holds up other notifications' planning."""
        now = utcnow()
        engine, pg = self._ctx.engine, self._ctx.pg
        tenant, size = note["tenant_id"], self._ctx.settings.topic_chunk
        after = note["planned_through"]
        async with planning.reads(engine, pg) as reads:
            chunk = await reads.topic_chunk(tenant, note["topic"], after, size)
            heads = await reads.active_versions({(tenant, note["template"])})
        await self._ctx.providers.prepare({tenant})
        categories = await self._ctx.categories.load(engine, {tenant})
        compiled = await self._templates.load(engine, [(t, n, v) for (t, n), v in heads.items()])
        version = compiled.get(
            (tenant, note["template"], heads.get((tenant, note["template"])) or 0)
        )
        people = {(tenant, person["id"]): person for person in chunk}
        part = {**note, "recipient_ids": [person["id"] for person in chunk]}
        holding = digests.Holding()
        rows = self._deliveries(part, version, people, categories.get(tenant, {}), now, holding)
        await self._cap_and_hold(rows, categories, holding, now)
        done = len(chunk) < size
        through = chunk[-1]["id"] if chunk else after
        retry_at = now + timedelta(seconds=self._ctx.settings.outbox_grace)
        inserted = await planning.store_chunk(
            engine, pg, rows, note["id"], (after, through), done, now, retry_at
        )
        if inserted is None:
            return  # another planner planned this chunk, or the send was cancelled
        rows = [row for row in rows if row["id"] in inserted]
        await self._events.emit_rows(rows)
        metrics.planned(rows)
        await self._publish(rows)
        if not done:
            trace = tracing.carried(note["id"])
            await self._ctx.broker.publish(PLAN_STREAM, [plan_payload(note["id"], tenant, trace)])

    async def _cap_and_hold(
        self,
        rows: list[dict[str, Any]],
        categories: dict[str, Policies],
        holding: digests.Holding,
        now: datetime,
        exempt: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        """Apply the categories' caps (pipeline/throttle.py), then hold what goes into
        digests (pipeline/digests.py), before the deliveries are stored."""
        await throttle.cap(self._ctx.resilience.limiter, rows, categories, holding, now, exempt)
        await digests.hold(self._ctx, holding.held(rows), now)

    def _deliveries(
        self,
        note: dict[str, Any],
        version: CompiledVersion | None,
        people: dict[tuple[str, str], dict[str, Any]],
        policies: Policies,
        now: datetime,
        holding: digests.Holding,
    ) -> list[dict[str, Any]]:
        if version is None:
            log.warning("notification %s: template %r is gone", note["id"], note["template"])
            return []
        policy = CategoryCache.policy(policies, version.category)
        if note.get("digest_of") is not None:
            version = version.digest_version()
        digestible = holding.digestible(note, version, policy)
        # What is the same for every recipient of the notification, worked out once.
        channels = candidate_channels(list(version.channels), note["channels"], policy)
        tenant, nid = note["tenant_id"], note["id"]
        common = _common_row(note, policy, now)
        providers = {channel: self._ctx.providers.name_for(tenant, channel) for channel in channels}
        rows = []
        for rid in note["recipient_ids"]:
            recipient = people.get((tenant, rid))
            if recipient is None:
                continue
            decision = decide(
                channels=channels,
                preferences=Preferences.from_json(recipient.get("preferences")),
                recipient_timezone=recipient.get("timezone"),
                category=policy,
                priority=note["priority"],
                now=now,
                digestible=digestible,
            )
            context = render_context(note, recipient)
            for channel in channels:
                row = common.copy()
                row["id"] = delivery_id(nid, rid, channel)
                row["recipient_id"] = rid
                row["channel"] = channel
                row["provider"] = providers[channel]
                row["address"] = address_for(channel, recipient)
                if channel in digestible:
                    holding.offer(row, note, policy)
                self._settle(row, decision, version, recipient, context, now)
                rows.append(row)
        return rows

    def _settle(
        self,
        row: dict[str, Any],
        decision: Decision,
        version: CompiledVersion,
        recipient: dict[str, Any],
        context: dict[str, Any],
        now: datetime,
    ) -> None:
        """What becomes of one channel: suppressed, expired, held for a digest, failed to
        render, deferred (quiet hours, snooze), or queued."""
        channel = row["channel"]
        expires_at = row["expires_at"]
        if channel in decision.suppressed:
            row.update(status=DeliveryStatus.SUPPRESSED, reason=decision.suppressed[channel])
        elif row["address"] is None:
            row.update(status=DeliveryStatus.SUPPRESSED, reason="no_address")
        elif expires_at is not None and expires_at <= now:
            row.update(status=DeliveryStatus.FAILED, reason="expired")
        elif channel in decision.held:
            digests.Holding.hold(row)
        else:
            self._render(row, version, channel, recipient, context)
            if row["status"] == DeliveryStatus.QUEUED:
                row["fallback"] = self._fallback(row, version, recipient, context)
            until = decision.deferred.get(channel)
            if until is None or row["status"] != DeliveryStatus.QUEUED:
                return
            if expires_at is not None and expires_at <= until:
                # The wait outlasts the notification: it would expire while waiting.
                row.update(status=DeliveryStatus.FAILED, reason="expired")
            else:
                reason = decision.deferred_for.get(channel, "deferred")
                row.update(status=DeliveryStatus.SCHEDULED, reason=reason, scheduled_for=until)

    @staticmethod
    def _fallback(
        row: dict[str, Any],
        version: CompiledVersion,
        recipient: dict[str, Any],
        context: dict[str, Any],
    ) -> dict[str, Any] | None:
        """For a critical delivery whose template names a fallback channel: that channel's
        address and content, rendered now, so a worker can switch without the planner."""
        target = version.fallbacks.get(row["channel"])
        if target is None or not (row["critical"] or row["priority"] == Priority.CRITICAL):
            return None
        address = address_for(target, recipient)
        if address is None:
            return None
        _, template = version.for_channel(target, recipient.get("locale"))
        try:
            content = template.render(context)
        except TemplateError:
            return None
        return {"channel": target, "address": address, "content": content}

    @staticmethod
    def _render(
        row: dict[str, Any],
        version: CompiledVersion,
        channel: str,
        recipient: dict[str, Any],
        context: dict[str, Any],
    ) -> None:
        _, template = version.for_channel(channel, recipient.get("locale"))
        try:
            row["content"] = template.render(context)
        except TemplateError as exc:
            row.update(status=DeliveryStatus.FAILED, reason="render_error", last_error=exc.message)
