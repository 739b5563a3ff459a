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
import dataclasses
import logging
import math
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import msgspec

from clarion.broker import Message
from clarion.domain.delivery import Delivery, Stored
from clarion.domain.ids import delivery_id
from clarion.domain.layouts import NO_LOOK, Look
from clarion.domain.models import (
    CHUNK_STREAM,
    PLAN_CRITICAL_STREAM,
    PLAN_HIGH_STREAM,
    PLAN_STREAM,
    WAITING_STATUSES,
    DeliveryStatus,
    NotificationStatus,
    Priority,
)
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
from clarion.pipeline.layouts import LookCache
from clarion.pipeline.lead import Lead
from clarion.pipeline.messages import (
    by_due_time,
    plan_payload,
    planned_ids,
    publish_deliveries,
)
from clarion.pipeline.runs import Runs, StepAsk, offline_runs
from clarion.pipeline.status_events import StatusEvents
from clarion.pipeline.templates import TemplateCache
from clarion.pipeline.tracking import EMAIL, Tracker, Trackers
from clarion.pipeline.urgency import URGENT
from clarion.store import notifications as notification_store
from clarion.store import planning
from clarion.store.batching import is_outage
from clarion.store.bulk import StripeChunk
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
# Chunks of topic sends one planner works on at once (each its own stripe's), and the
# recipients it turns into deliveries between two looks at the event loop (a chunk's rows
# are built in Python: other work of the process gets its turn meanwhile).
CHUNKS_AT_ONCE = 4
_SLICE = 500


@dataclass(slots=True)
class Plan:
    made: list[Stored]  # new deliveries
    planned: list[str]  # notification ids this batch planned


def render_context(
    notification: dict[str, Any], recipient: dict[str, Any], brand: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A template's variables: the notification's data over the recipient's, then
    ``recipient`` and the tenant's ``brand`` (when it has one), which data cannot replace."""
    context: dict[str, Any] = dict(recipient.get("data") or {})
    context.update(notification["data"] or {})
    context["recipient"] = {name: recipient.get(name) for name in _RECIPIENT_VARS}
    if brand is not None:
        context["brand"] = brand
    return context


def accept_order(note: dict[str, Any]) -> tuple[datetime, str]:
    """Sorts notifications in the order they were accepted: by the commit that stored them,
    then by id (time-ordered; those of one commit were accepted together). Caps count what
    comes first, so a batch is planned in this order whatever order the store read it in."""
    return note["created_at"], note["id"]


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


def _common(note: dict[str, Any], policy: CategoryPolicy, expires_at: datetime | None) -> Delivery:
    """What a notification's deliveries share (each is a copy that adds its recipient and
    channel): their first attempt."""
    return Delivery(
        id="",
        tenant=note["tenant_id"],
        notification=note["id"],
        recipient="",
        channel="",
        priority=note["priority"],
        attempt=1,
        expires_at=None if expires_at is None else expires_at.timestamp(),
        category=policy.name,
        critical=policy.critical,
    )


def _address(channel: str, recipient: dict[str, Any], roomed: set[str]) -> Any:
    """The recipient's address on a channel; for one whose provider has a destination of
    its own, an empty one rather than none (the provider sends to its destination)."""
    address = address_for(channel, recipient)
    return [] if address is None and channel in roomed else address


class _Draft(NamedTuple):
    """What the deliveries of one recipient are made from."""

    version: CompiledVersion
    recipient: dict[str, Any]
    context: dict[str, Any]  # the template's variables
    decision: Decision  # the recipient's preferences, applied
    look: Look  # the tenant's layouts, for its email
    tracker: Tracker | None  # the category's open and click tracking of its email


def _stripe_of(message: Message) -> int | None:
    """The stripe a plan message asks to plan the next chunk of (a topic send), if any."""
    stripe = message.payload.get("stripe")
    return stripe if type(stripe) is int and stripe >= 0 else None


def _carrying(message: Message, ids: list[str]) -> Message:
    """The plan message as if it carried only ``ids`` (a batch's bisection): acked as the
    message it is part of."""
    payload = {**message.payload, "notification": ids[0], "more": ids[1:]}
    return dataclasses.replace(message, payload=payload)


async def _no_wait(tenant: str) -> None:
    pass


async def _together(work: list[Coroutine[Any, Any, None]]) -> None:
    """Run a batch's units side by side (one alone needs no task); if one fails, the
    others are cancelled and its exception is raised as it is, so the batch's bisection
    sees an outage as an outage."""
    if len(work) == 1:
        await work[0]
        return
    try:
        async with asyncio.TaskGroup() as group:
            for unit in work:
                group.create_task(unit)
    except BaseExceptionGroup as failed:
        errors = list(failed.exceptions)
        raise next((e for e in errors if is_outage(e)), errors[0]) from None


class Planner:
    def __init__(self, ctx: Context, consumer: str) -> None:
        self._ctx = ctx
        self._consumer = consumer
        self._templates = TemplateCache()
        self._looks = LookCache()
        self._trackers = Trackers(ctx)
        self._events = StatusEvents(ctx)
        # Notifications a plan batch takes: a read asks for as many messages as carry
        # about this many, by what the stream's last messages carried each (intake groups
        # a commit's notifications, pipeline/messages.py); a read that brings more than
        # this is planned in steps of this many.
        self.batch_size = 200
        self._carried: dict[str, float] = {}
        # One process leads the planning while it keeps up (pipeline/lead.py), of the plan
        # stream and, apart, of the high-priority one; topic chunks, each a large unit of
        # work, go to whichever planner is free.
        self.lead = Lead(ctx.broker, PLAN_STREAM, consumer)
        self.high_lead = Lead(ctx.broker, PLAN_HIGH_STREAM, consumer)
        self.runs = Runs(ctx, self)

    async def run_once(self, timeout: float, stop: asyncio.Event | None = None) -> int:
        """Plan one batch of whatever is waiting; returns how many messages it took."""
        return await self._led(self.lead, PLAN_STREAM, timeout, stop)

    async def run_high_once(self, timeout: float, stop: asyncio.Event | None = None) -> int:
        """Plan one batch of the high-priority notifications waiting. They have a leader
        of their own, as the plan stream does, so that a flow of them is planned in
        batches rather than spread over every planner; a leader busy with the plan
        stream's batch or a broadcast's chunk does not hold them up (its lead of this
        stream is another read, in a loop of its own)."""
        return await self._led(self.high_lead, PLAN_HIGH_STREAM, timeout, stop, urgent=True)

    async def run_critical_once(self, timeout: float, stop: asyncio.Event | None = None) -> int:
        """Plan the critical notifications waiting. Every planner reads them at once,
        whoever leads: a critical send never waits for a stand-by's pause, nor behind a
        leader's batch."""
        stream = PLAN_CRITICAL_STREAM
        return await self._run((stream,), self._ask(stream), timeout, stop, urgent=True)

    def _ask(self, stream: str) -> int:
        """How many messages a read of a plan stream asks for."""
        return max(1, math.ceil(self.batch_size / self._carried.get(stream, 1.0)))

    async def _led(
        self,
        lead: Lead,
        stream: str,
        timeout: float,
        stop: asyncio.Event | None,
        urgent: bool = False,
    ) -> int:
        block = await lead.turn(timeout, stop)
        taken = await self._run((stream,), self._ask(stream), block, stop, urgent)
        lead.took(taken, self.batch_size)
        return taken

    async def run_chunks_once(self, timeout: float, stop: asyncio.Event | None = None) -> int:
        """Plan the next chunks of topic sends, up to ``CHUNKS_AT_ONCE`` side by side (one
        per stripe), apart from the plan stream: a broadcast's chunks never hold up the
        planning of other notifications, critical ones included."""
        return await self._run((CHUNK_STREAM,), CHUNKS_AT_ONCE, timeout, stop)

    async def _run(
        self,
        streams: Sequence[str],
        count: int,
        timeout: float,
        stop: asyncio.Event | None,
        urgent: bool = False,
    ) -> int:
        """Take and plan up to ``count`` messages; returns the notifications (or chunks)
        they asked for."""
        messages = await self._ctx.broker.consume(
            list(streams), self._consumer, count, timeout, stop=stop
        )
        taken = sum(len(planned_ids(m)) or 1 for m in messages)
        if messages:
            if len(streams) == 1:
                self._carried[streams[0]] = taken / len(messages)
            logs.bind(stage="planner", batch=len(messages))
            started = time.perf_counter()
            lease = self._ctx.settings.broker_lease
            # Planning a critical or high-priority send: the broadcasts' chunks give way.
            tenants = [
                str(m.payload.get("tenant", ""))
                for m in messages
                if urgent or m.payload.get("priority") in URGENT
            ]
            with tracing.planning(messages, planned_ids), self._ctx.urgency.holding(tenants):
                async with holding(self._ctx.broker, messages, self._consumer, lease):
                    await self._handle_isolated(messages)
            await self._ctx.broker.ack(messages)
            self._ctx.made_progress()
            metrics.planner_batch(taken, time.perf_counter() - started)
        return taken

    async def _handle_isolated(self, messages: list[Message]) -> None:
        """Plan a batch; one that fails for anything but an outage is bisected, so that a
        notification that cannot be planned fails alone and its neighbours go on."""
        try:
            await self.handle(messages)
        except Exception as exc:
            if is_outage(exc):
                raise
            if len(messages) == 1 and len(ids := planned_ids(messages[0])) > 1:
                messages = [_carrying(messages[0], ids[:1]), _carrying(messages[0], ids[1:])]
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
        plain = [m for m in messages if _stripe_of(m) is None]
        ids = list(dict.fromkeys(nid for m in plain for nid in planned_ids(m)))
        redelivered = {nid for m in plain if m.redelivered for nid in planned_ids(m)}
        work: list[Coroutine[Any, Any, None]] = []
        for start in range(0, len(ids), self.batch_size):
            step = ids[start : start + self.batch_size]
            again = [nid for nid in step if nid in redelivered]
            async with asyncio.timeout(STEP_DEADLINE):
                plan, republish, topical = await self._plan(step, again)
                await self._events.emit_new(plan.made)
                metrics.planned(plan.made)
                await self._publish([*plan.made, *republish])
            work.extend(self._open_topic(note) for note in topical)
        chunks = sorted(
            {(m.payload["notification"], s) for m in messages if (s := _stripe_of(m)) is not None}
        )
        if chunks:
            notes = await self._notifications([nid for nid, _ in chunks])
            work.extend(
                self._plan_chunk(notes[nid], stripe)
                for nid, stripe in chunks
                if nid in notes and _planning_topic(notes[nid])
            )
        # Each chunk (and each send's stripes being made) a step: bounded as a whole.
        async with asyncio.timeout(STEP_DEADLINE):
            await _together(work)

    async def _notifications(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        async with planning.reads(self._ctx.engine, self._ctx.pg) as reads:
            return await reads.notifications(list(dict.fromkeys(ids)))

    async def _publish(self, items: list[Stored]) -> None:
        ready, later = by_due_time(
            (item for item in items if item.status in WAITING_STATUSES), utcnow().timestamp()
        )
        await publish_deliveries(self._ctx.broker, ready, later)

    async def _plan(
        self, ids: list[str], redelivered: list[str]
    ) -> tuple[Plan, list[Stored], list[dict[str, Any]]]:
        """Plan the notifications to listed recipients; return the topic sends still being
        planned, whose next chunk is planned apart (``_plan_chunk``)."""
        now = utcnow()
        engine, pg = self._ctx.engine, self._ctx.pg
        async with planning.reads(engine, pg) as reads:
            notes, heads, category_versions, unplanned = await reads.batch(ids)
            topical = [n for n in notes.values() if _planning_topic(n)]
            ready = sorted(
                (
                    n
                    for n in notes.values()
                    if n["topic"] is None
                    and n["id"] in unplanned
                    and n["status"] in (NotificationStatus.ACCEPTED, NotificationStatus.SCHEDULED)
                ),
                key=accept_order,
            )
            # A workflow send is planned as runs (pipeline/runs.py), after the batch.
            todo = [n for n in ready if n.get("workflow") is None]
            flows = [n for n in ready if n.get("workflow") is not None]
            tenants = {n["tenant_id"] for n in todo}
            await self._ctx.providers.prepare(tenants)
            categories = await self._ctx.categories.load(
                engine, {t: category_versions[t] for t in tenants}
            )
            await self._trackers.prepare(categories)
            looks = await self._looks.load(engine, {t: category_versions[t] for t in tenants})
            compiled = await self._templates.load(
                engine, [(t, name, v) for (t, name), v in heads.items()]
            )
            people = await reads.recipients(
                {(n["tenant_id"], rid) for n in todo for rid in n["recipient_ids"]}
            )
            plan = Plan(made=[], planned=[n["id"] for n in todo])
            holding = digests.Holding()
            for note in todo:
                head = heads.get((note["tenant_id"], note["template"]))
                version = compiled.get((note["tenant_id"], note["template"], head or 0))
                policies = categories.get(note["tenant_id"], {})
                look = looks.get(note["tenant_id"], NO_LOOK)
                plan.made.extend(
                    self._deliveries(note, version, people, policies, now, holding, look)
                )
            existing = await reads.existing_deliveries([item.delivery.id for item in plan.made])
            # A topic send's chunks are published as they are planned; one whose publish
            # was lost is found by the sweeper, not by reading the whole send again here.
            listed = [nid for nid in redelivered if notes.get(nid, {}).get("topic") is None]
            republish = await reads.waiting_deliveries(listed) if listed else []
        plan.made = [item for item in plan.made if item.delivery.id not in existing]
        exempt = {n["id"] for n in todo if n.get("digest_of")}
        await self._cap_and_hold(plan.made, categories, holding, now, exempt)
        await self.runs.store_offline(self._offline_runs(todo, heads, compiled, plan.made, now))
        # A topic send keeps its outbox row until its last chunk is planned.
        outbox_ids = [nid for nid in ids if notes.get(nid, {}).get("topic") is None]
        flow_ids = {n["id"] for n in flows}
        outbox_ids = [nid for nid in outbox_ids if nid not in flow_ids]
        inserted = await planning.store_plan(engine, pg, plan.made, plan.planned, outbox_ids, now)
        plan.made = [item for item in plan.made if item.delivery.id in inserted]
        if flows:
            await self.runs.start(flows, now)
        return plan, republish, topical

    async def plan_steps(
        self, asks: list[StepAsk], now: datetime
    ) -> tuple[list[list[str]], list[Stored]]:
        """Make and store the deliveries of workflow channel steps (pipeline/runs.py), each
        as a template send of the step's template to one recipient on the step's channels
        would be (preferences, quiet hours, caps, digests, providers): for each ask, the ids
        of its deliveries (made now, or by an earlier try of the same step); and the
        deliveries this call inserted, for :meth:`publish_made`."""
        engine, pg = self._ctx.engine, self._ctx.pg
        tenants = {ask.note["tenant_id"] for ask in asks}
        async with planning.reads(engine, pg) as reads:
            heads = await reads.active_versions(
                {(ask.note["tenant_id"], ask.template) for ask in asks}
            )
            category_versions = await reads.category_versions(tenants)
            # The runs' advance has just read most of them.
            people = {
                (ask.note["tenant_id"], ask.recipient): ask.person
                for ask in asks
                if ask.person is not None
            }
            unread = {(a.note["tenant_id"], a.recipient) for a in asks} - people.keys()
            if unread:
                people.update(await reads.recipients(unread))
        await self._ctx.providers.prepare(tenants)
        categories = await self._ctx.categories.load(engine, category_versions)
        await self._trackers.prepare(categories)
        looks = await self._looks.load(engine, category_versions)
        compiled = await self._templates.load(engine, [(t, n, v) for (t, n), v in heads.items()])
        holding = digests.Holding()
        per_ask: list[list[str]] = []
        made: list[Stored] = []
        for ask in asks:
            tenant = ask.note["tenant_id"]
            version = compiled.get((tenant, ask.template, heads.get((tenant, ask.template)) or 0))
            part = {
                **ask.note,
                "template": ask.template,
                "channels": list(ask.channels),
                "recipient_ids": [ask.recipient],
                "step": ask.step,
            }
            if ask.digest is not None:
                # A step after a digest: its template reads the digest as `digest`.
                part["data"] = {**(ask.note["data"] or {}), "digest": ask.digest}
            policies, look = categories.get(tenant, {}), looks.get(tenant, NO_LOOK)
            # A step walked ahead of its delay's end is decided for that time, and what
            # would go now is scheduled for it.
            at = ask.not_before or now
            items = self._deliveries(part, version, people, policies, at, holding, look)
            if ask.not_before is not None:
                items = [_scheduled_for(item, ask.not_before) for item in items]
            per_ask.append([item.delivery.id for item in items])
            made.extend(items)
        async with planning.reads(engine, pg) as reads:
            existing = await reads.existing_deliveries([item.delivery.id for item in made])
        made = [item for item in made if item.delivery.id not in existing]
        await self._cap_and_hold(made, categories, holding, now)
        # The notifications are named as planned: only those not cancelled get deliveries.
        notes = list({ask.note["id"] for ask in asks})
        inserted = await planning.store_plan(engine, pg, made, notes, [], now)
        return per_ask, [item for item in made if item.delivery.id in inserted]

    async def compiled(
        self, keys: set[tuple[str, str, int]]
    ) -> dict[tuple[str, str, int], CompiledVersion]:
        """Compiled template versions (cached: a version never changes)."""
        return await self._templates.load(self._ctx.engine, keys)

    @staticmethod
    def _offline_runs(
        notes: list[dict[str, Any]],
        heads: dict[tuple[str, str], int],
        compiled: dict[tuple[str, str, int], CompiledVersion],
        made: list[Stored],
        now: datetime,
    ) -> list[dict[str, Any]]:
        """The runs of those of these template sends whose template's in-app part has an
        offline fallback: the fallback is a step of their run (pipeline/runs.py
        ``offline_runs``). A send of any other template stores no run."""
        sends = {}
        for note in notes:
            head = heads.get((note["tenant_id"], note["template"]))
            version = compiled.get((note["tenant_id"], note["template"], head or 0))
            if head and version and version.offline and note.get("digest_of") is None:
                sends[note["id"]] = (note, head, version.offline)
        return offline_runs(sends, made, now) if sends else []

    async def publish_made(self, made: list[Stored]) -> None:
        """Announce and publish deliveries :meth:`plan_steps` stored."""
        await self._events.emit_new(made)
        metrics.planned(made)
        await self._publish(made)

    async def _open_topic(self, note: dict[str, Any]) -> None:
        """A topic send's first plan message: split its subscribers into stripes (once) and
        ask for the first chunk of each stripe not done yet, so that free planners plan
        them side by side. Met again (the relay published the send once more: planning
        stalled), it asks again for every stripe not done; a stripe asked for twice is
        planned once (``_plan_chunk``)."""
        settings = self._ctx.settings
        engine, nid, tenant = self._ctx.engine, note["id"], note["tenant_id"]
        stripes = await planning.open_stripes(
            engine, note, settings.topic_stripes, settings.topic_chunk
        )
        if stripes is None:
            return  # cancelled, or planned already
        if not stripes:
            await planning.finish_topic(engine, self._ctx.pg, nid, utcnow())
            return
        trace = tracing.carried(nid)
        await self._ctx.broker.publish(
            CHUNK_STREAM, [{**plan_payload(nid, tenant, trace), "stripe": s} for s in stripes]
        )

    async def _plan_chunk(self, note: dict[str, Any], stripe: int) -> None:
        """Plan the next chunk of a topic send's stripe, exactly as a listed send's
        recipients are planned, and commit it with the stripe's cursor; then ask for the
        stripe's next chunk through the chunk stream, behind the other stripes' chunks."""
        # While urgent work is under way, a chunk waits before its reads and before its
        # store (pipeline/urgency.py): its rows are built between two looks at the event
        # loop anyway, and its publishes are light. A critical or high-priority broadcast
        # is urgent work itself: it gives way to nothing (its own deliveries would hold it
        # up).
        gives_way = self._ctx.settings.broadcast_give_way and note["priority"] not in URGENT
        give_way = self._ctx.urgency.give_way if gives_way else _no_wait
        tenant, size, nid = note["tenant_id"], self._ctx.settings.topic_chunk, note["id"]
        await give_way(tenant)
        now = utcnow()
        engine, pg = self._ctx.engine, self._ctx.pg
        async with planning.reads(engine, pg) as reads:
            cursor = await reads.stripe(nid, stripe)
            if cursor is None or cursor["done_at"] is not None:
                return  # planned already (a message asked for twice)
            after, last = cursor["planned_through"], cursor["last_id"]
            chunk = await reads.topic_chunk(tenant, note["topic"], after, last, size)
            heads = await reads.active_versions({(tenant, note["template"])})
            category_versions = await reads.category_versions([tenant])
        await self._ctx.providers.prepare({tenant})
        categories = await self._ctx.categories.load(engine, category_versions)
        await self._trackers.prepare(categories)
        look = (await self._looks.load(engine, category_versions)).get(tenant, NO_LOOK)
        compiled = await self._templates.load(engine, [(t, n, v) for (t, n), v in heads.items()])
        version = compiled.get(
            (tenant, note["template"], heads.get((tenant, note["template"])) or 0)
        )
        through = chunk[-1]["id"] if chunk else after
        done = len(chunk) < size or (last is not None and through == last)
        retry_at = now + timedelta(seconds=self._ctx.settings.outbox_grace)
        stored = StripeChunk(nid, stripe, after, through, done, now, retry_at)
        if note.get("workflow") is not None:
            # A workflow send: the chunk's recipients become runs (pipeline/runs.py).
            if await self.runs.start_chunk(note, [p["id"] for p in chunk], stored, now):
                await self._next_chunk(note, stripe, done)
            return
        people = {(tenant, person["id"]): person for person in chunk}
        holding = digests.Holding()
        made: list[Stored] = []
        policies = categories.get(tenant, {})
        for start in range(0, len(chunk), _SLICE):
            if start:
                await asyncio.sleep(0)
            part = {**note, "recipient_ids": [p["id"] for p in chunk[start : start + _SLICE]]}
            made.extend(self._deliveries(part, version, people, policies, now, holding, look))
        await self._cap_and_hold(made, categories, holding, now)
        await self.runs.store_offline(self._offline_runs([note], heads, compiled, made, now))
        await give_way(tenant)
        inserted = await planning.store_stripe(engine, pg, made, stored)
        if inserted is None:
            return  # another planner stored this chunk, or the send was cancelled
        made = [item for item in made if item.delivery.id in inserted]
        await self._events.emit_new(made)
        metrics.planned(made)
        for start in range(0, len(made), _SLICE):
            await self._publish(made[start : start + _SLICE])
        await self._next_chunk(note, stripe, done)

    async def _next_chunk(self, note: dict[str, Any], stripe: int, done: bool) -> None:
        """After a chunk is stored: the send is planned if it was its stripe's last (and
        the last stripe), else the stripe's next chunk is asked for."""
        nid, tenant = note["id"], note["tenant_id"]
        if done:
            await planning.finish_topic(self._ctx.engine, self._ctx.pg, nid, utcnow())
        else:
            trace = tracing.carried(nid)
            payload = {**plan_payload(nid, tenant, trace), "stripe": stripe}
            await self._ctx.broker.publish(CHUNK_STREAM, [payload])

    async def _cap_and_hold(
        self,
        made: list[Stored],
        categories: dict[str, Policies],
        holding: digests.Holding,
        now: datetime,
        exempt: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        """Apply the categories' caps (pipeline/throttle.py), then hold what goes into
        digests (pipeline/digests.py), before the deliveries are stored."""
        await throttle.cap(self._ctx.resilience.limiter, made, categories, holding, now, exempt)
        await digests.hold(self._ctx, holding.held(made), now)

    def _deliveries(
        self,
        note: dict[str, Any],
        version: CompiledVersion | None,
        people: dict[tuple[str, str], dict[str, Any]],
        policies: Policies,
        now: datetime,
        holding: digests.Holding,
        look: Look = NO_LOOK,
    ) -> list[Stored]:
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
        # A workflow's channel step (pipeline/runs.py): its deliveries' ids name the step.
        step: str | None = note.get("step")
        expires_at = as_utc(note["expires_at"])
        common = _common(note, policy, expires_at)
        providers = {channel: self._ctx.providers.name_for(tenant, channel) for channel in channels}
        # Channels whose provider has a destination of its own (a chat room): planned for a
        # recipient with no address there too.
        roomed = {c for c in channels if self._ctx.providers.has_destination(tenant, c)}
        tracker = self._trackers.tracker(tenant, policy)
        made = []
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
                workflow=note.get("workflow"),
            )
            context = render_context(note, recipient, look.brand)
            draft = _Draft(version, recipient, context, decision, look, tracker)
            for channel in channels:
                delivery = msgspec.structs.replace(
                    common,
                    id=delivery_id(nid, rid, channel if step is None else f"{step}/{channel}"),
                    recipient=rid,
                    channel=channel,
                    provider=providers[channel],
                    to=_address(channel, recipient, roomed),
                )
                if channel in digestible:
                    holding.offer(delivery, note, policy)
                made.append(self._settle(delivery, draft, now, expires_at))
        return made

    def _settle(
        self, delivery: Delivery, draft: _Draft, now: datetime, expires_at: datetime | None
    ) -> Stored:
        """What becomes of one channel: suppressed, expired, held for a digest, failed to
        render, deferred (quiet hours, snooze), or queued."""
        channel, decision = delivery.channel, draft.decision
        if channel in decision.suppressed:
            return Stored(delivery, DeliveryStatus.SUPPRESSED, decision.suppressed[channel])
        if delivery.to is None:
            return Stored(delivery, DeliveryStatus.SUPPRESSED, "no_address")
        if expires_at is not None and expires_at <= now:
            return Stored(delivery, DeliveryStatus.FAILED, "expired")
        if channel in decision.held:
            return digests.Holding.hold(Stored(delivery))
        try:
            content = _render(draft, channel, delivery.id)
        except TemplateError as exc:
            return Stored(delivery, DeliveryStatus.FAILED, "render_error", last_error=exc.message)
        # Rendered: the delivery with its content, and the fallback's.
        delivery = msgspec.structs.replace(
            delivery, content=content, fallback=self._fallback(delivery, draft)
        )
        until = decision.deferred.get(channel)
        if until is None:
            return Stored(delivery)
        if expires_at is not None and expires_at <= until:
            # The wait outlasts the notification: it would expire while waiting.
            return Stored(delivery, DeliveryStatus.FAILED, "expired")
        reason = decision.deferred_for.get(channel, "deferred")
        return Stored(delivery, DeliveryStatus.SCHEDULED, reason, until)

    @staticmethod
    def _fallback(delivery: Delivery, draft: _Draft) -> dict[str, Any] | None:
        """For a critical delivery whose template names a fallback channel: that channel's
        address and content, rendered now, so a worker can switch without the planner."""
        target = draft.version.fallbacks.get(delivery.channel)
        if target is None or not (delivery.critical or delivery.priority == Priority.CRITICAL):
            return None
        address = address_for(target, draft.recipient)
        if address is None:
            return None
        try:
            content = _render(draft, target, delivery.id)
        except TemplateError:
            return None
        return {"channel": target, "address": address, "content": content}


def _scheduled_for(item: Stored, when: datetime) -> Stored:
    """A delivery that would go now, scheduled for ``when`` instead (reason ``delay``)."""
    if item.status != DeliveryStatus.QUEUED:
        return item
    return msgspec.structs.replace(
        item, status=DeliveryStatus.SCHEDULED, reason="delay", scheduled_for=when
    )


def _render(draft: _Draft, channel: str, delivery_id: str) -> Any:
    """A channel's content for one recipient, an email laid out in its layout, then
    tracked when its category says so (pipeline/tracking.py)."""
    _, template = draft.version.for_channel(channel, draft.recipient.get("locale"))
    content = template.render(draft.context)
    dressed = draft.look.dress(channel, draft.version.layout, content, draft.context)
    if draft.tracker is None or channel != EMAIL:
        return dressed
    return draft.tracker.apply(dressed, delivery_id)
