"""Notifications: the group-committed intake, the outbox, and reads."""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, delete, exists, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.domain.ids import new_id
from clarion.domain.models import NotificationStatus
from clarion.domain.outcome import cancellation, shown_status, shown_to
from clarion.domain.refusal import Reason, Refused
from clarion.domain.runs import ENDED
from clarion.store import deliveries as delivery_store
from clarion.store import runs as run_store
from clarion.store import send_totals
from clarion.store.db import as_utc, shown, utcnow, write_tx
from clarion.store.intake import (
    UNKNOWN_NAME,
    UNKNOWN_TOPIC,
    Inserted,
    IntakeTx,
    Stored,
    intake_tx,
)
from clarion.store.pg import PgPool
from clarion.store.sql import chunks, finds_any, first_row
from clarion.store.tables import deliveries, notifications, outbox, topic_stripes, workflow_runs


@dataclass(slots=True)
class NewNotification:
    """A validated request to notify, not yet stored."""

    tenant_id: str
    template: str
    recipient_ids: list[str]
    data: dict[str, Any]
    priority: str
    channels: list[str] | None
    send_at: datetime | None
    expires_at: datetime | None
    idempotency_key: str | None
    request_hash: str
    # A topic send: every subscriber of the topic when it is planned (recipient_ids empty).
    topic: str | None = None
    # The traceparent of the span it is accepted in (tracing on), stored with it.
    trace: str | None = None
    # A workflow send (``template`` is empty): the workflow, and its cancellation key.
    workflow: str | None = None
    cancellation_key: str | None = None
    id: str = field(default_factory=lambda: new_id("ntf"))


@dataclass(frozen=True, slots=True)
class Accepted:
    id: str
    status: str
    # Whether this request created it (False: an idempotent repeat of an earlier one).
    created: bool
    # When the relay should publish it: now-ish for immediate sends, send_at for scheduled.
    publish_now: bool


# What intake answers for each item: stored (or replayed), or refused.
Admission = Accepted | Refused


async def _unknown_references(tx: IntakeTx, items: Sequence[NewNotification]) -> dict[int, Refused]:
    """Unknown templates, recipients and topics, found with one query for the batch."""
    templates, known, topics, workflows = await tx.known(
        {(item.tenant_id, item.template) for item in items if item.workflow is None},
        {(item.tenant_id, rid) for item in items for rid in item.recipient_ids},
        {(item.tenant_id, item.topic) for item in items if item.topic is not None},
        {(item.tenant_id, item.workflow) for item in items if item.workflow is not None},
    )
    errors: dict[int, Refused] = {}
    for index, item in enumerate(items):
        named = (
            (item.tenant_id, item.workflow) in workflows
            if item.workflow is not None
            else (item.tenant_id, item.template) in templates
        )
        topic = item.topic is None or (item.tenant_id, item.topic) in topics
        error = _refusal(item, named, topic, known)
        if error is not None:
            errors[index] = error
    return errors


def _refusal(
    item: NewNotification, named: bool, topic: bool, recipients: Container[tuple[str, str]]
) -> Refused | None:
    """Why ``item`` is refused, if it is: its template (or workflow) is not ``named``, its
    topic not found, or a recipient not among the (tenant, id) pairs of ``recipients``
    (or a :class:`_Found`)."""
    if not named:
        if item.workflow is not None:
            return Refused(Reason.UNKNOWN_WORKFLOW, f"no workflow with key {item.workflow!r}")
        return Refused(Reason.UNKNOWN_TEMPLATE, f"no template named {item.template!r}")
    if not topic:
        return Refused(
            Reason.UNKNOWN_TOPIC,
            f"no topic named {item.topic!r}",
            [{"field": "to.topic", "topic": item.topic}],
        )
    missing = [rid for rid in item.recipient_ids if (item.tenant_id, rid) not in recipients]
    if missing:
        return Refused(
            Reason.UNKNOWN_RECIPIENT,
            f"no recipient with id {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
            [{"recipient_id": rid} for rid in missing[:100]],
        )
    return None


class _Found:
    """The (tenant, recipient id) pairs found, as the complement of those not found."""

    __slots__ = ("_gone",)

    def __init__(self, gone: set[tuple[str, str]]) -> None:
        self._gone = gone

    def __contains__(self, key: object) -> bool:
        return key not in self._gone


async def unknown_template_or_workflow(
    engine: AsyncEngine,
    tenant_id: str,
    *,
    template: str | None,
    workflow: str | None,
    pg: PgPool | None = None,
) -> Refused | None:
    """The refusal ``accept`` would give a notification naming this template (or this
    workflow) that the tenant does not have, or None: the same check, storing nothing, for
    what is accepted later on the caller's behalf (a schedule's runs)."""
    item = NewNotification(
        tenant_id=tenant_id,
        template=template or "",
        recipient_ids=[],
        data={},
        priority="normal",
        channels=None,
        send_at=None,
        expires_at=None,
        idempotency_key=None,
        request_hash="",
        workflow=workflow,
    )
    async with intake_tx(engine, pg) as tx:
        return (await _unknown_references(tx, [item])).get(0)


def _replay(item: NewNotification, row: Stored) -> Admission:
    if row.request_hash != item.request_hash:
        return Refused(
            Reason.IDEMPOTENCY_CONFLICT, "this idempotency key was used with a different request"
        )
    return Accepted(row.id, row.status, created=False, publish_now=False)


def _row(item: NewNotification, now: datetime) -> dict[str, Any]:
    scheduled = item.send_at is not None and item.send_at > now
    return {
        "id": item.id,
        "tenant_id": item.tenant_id,
        "template": item.template,
        "recipient_ids": item.recipient_ids,
        "data": item.data,
        "priority": item.priority,
        "channels": item.channels,
        "send_at": item.send_at,
        "expires_at": item.expires_at,
        "status": NotificationStatus.SCHEDULED if scheduled else NotificationStatus.ACCEPTED,
        "idempotency_key": item.idempotency_key,
        "request_hash": item.request_hash,
        "created_at": now,
        "topic": item.topic,
        "trace": item.trace,
        "workflow": item.workflow,
        "cancellation_key": item.cancellation_key,
    }


async def accept(
    engine: AsyncEngine,
    items: Sequence[NewNotification],
    *,
    outbox_grace: float,
    pg: PgPool | None = None,
) -> list[Admission]:
    """Store notifications and their outbox rows in one transaction; one outcome per item."""
    now = utcnow()
    outcomes: list[Admission | None] = [None] * len(items)
    repeats: dict[int, int] = {}  # an item repeating a key earlier in the batch → that item
    created: dict[str, dict[str, Any]] = {}
    async with intake_tx(engine, pg) as tx:
        if not tx.checks_references:
            for index, error in (await _unknown_references(tx, items)).items():
                outcomes[index] = error
        todo = [index for index, outcome in enumerate(outcomes) if outcome is None]
        while todo:
            todo = await _store(tx, items, todo, outcomes, repeats, created, now, outbox_grace)
    for index, item in enumerate(items):
        if outcomes[index] is None and index not in repeats:
            row = created[item.id]
            outcomes[index] = Accepted(
                item.id, row["status"], created=True, publish_now=row["send_at"] is None
            )
    for index, first in repeats.items():
        outcome = outcomes[first]
        if isinstance(outcome, Accepted):
            stored = Stored(outcome.id, items[first].request_hash, outcome.status)
            outcomes[index] = _replay(items[index], stored)
        else:
            outcomes[index] = outcome
    return [o for o in outcomes if o is not None]


async def _store(
    tx: IntakeTx,
    items: Sequence[NewNotification],
    todo: list[int],
    outcomes: list[Admission | None],
    repeats: dict[int, int],
    created: dict[str, dict[str, Any]],
    now: datetime,
    outbox_grace: float,
) -> list[int]:
    """Insert the items of ``todo``; the outcome of each one refused, the rows of those
    created. Returns the items to try again: those repeating the idempotency key of one
    refused here for what it names (a store that checks references in its insert), tried
    as if that one had not been sent, as a store that checks first does."""
    # Repeats are rare: insert first, and look up only the keys that were taken.
    fresh: dict[tuple[str, str], int] = {}
    rows: list[dict[str, Any]] = []
    repeating: list[int] = []
    for index in todo:
        item = items[index]
        key = (item.tenant_id, item.idempotency_key) if item.idempotency_key else None
        if key is not None and key in fresh:
            repeats[index] = fresh[key]
            repeating.append(index)
            continue
        if key is not None:
            fresh[key] = index
        rows.append(_row(item, now))
    if repeating and tx.checks_references:
        # Not inserted, so not checked by the insert: what they name is read here.
        errors = await _unknown_references(tx, [items[index] for index in repeating])
        for at, error in errors.items():
            outcomes[repeating[at]] = error
            del repeats[repeating[at]]
    grace = now + timedelta(seconds=outbox_grace)
    done = await tx.insert(
        rows,
        [row["send_at"] if row["send_at"] and row["send_at"] > now else grace for row in rows],
    )
    refused = _refuse_unknown(items, todo, done, outcomes) if done.unknown else set()
    taken = {
        key
        for key, index in fresh.items()
        if items[index].id not in done.ids and index not in refused
    }
    if taken:
        # An earlier request (or another process a moment before) stored the same key.
        earlier = await tx.stored_by_key(taken)
        for key in taken:
            index = fresh[key]
            stored = earlier.get(key)
            outcomes[index] = (
                _replay(items[index], stored)
                if stored is not None
                else Refused(
                    Reason.IDEMPOTENCY_CONFLICT,
                    "this idempotency key is being used by another request",
                )
            )
    for row in rows:
        if row["id"] in done.ids:
            if row["send_at"] is not None and row["send_at"] <= now:
                row["send_at"] = None
            created[row["id"]] = row
    again = [index for index, first in repeats.items() if first in refused]
    for index in again:
        del repeats[index]
    return again


def _refuse_unknown(
    items: Sequence[NewNotification],
    todo: list[int],
    done: Inserted,
    outcomes: list[Admission | None],
) -> set[int]:
    """The refusals of the items an insert left out for what they name; those items."""
    refused: set[int] = set()
    found = _Found(done.missing_recipients)
    for index in todo:
        item = items[index]
        why = done.unknown.get(item.id)
        if why is None:
            continue
        error = _refusal(item, why != UNKNOWN_NAME, why != UNKNOWN_TOPIC, found)
        outcomes[index] = error or Refused(Reason.UNKNOWN_RECIPIENT, "a recipient is unknown")
        refused.add(index)
    return refused


_OUTBOX_DUE = "SELECT EXISTS (SELECT 1 FROM outbox WHERE available_at <= $1)"


async def claim_due_outbox(
    engine: AsyncEngine,
    limit: int,
    lease: float,
    now: datetime | None = None,
    pg: PgPool | None = None,
) -> list[str]:
    """Take outbox rows due at ``now``: push their availability past a lease so other
    relays skip them while this one publishes, and return their notification ids. With
    none due, nothing is written (:func:`finds_any`)."""
    now = now or utcnow()

    def due() -> Select[Any]:
        return select(outbox.c.notification_id).where(outbox.c.available_at <= now)

    if not await finds_any(engine, pg, due, _OUTBOX_DUE, now):
        return []
    async with write_tx(engine) as conn:
        query = (
            select(outbox.c.notification_id)
            .where(outbox.c.available_at <= now)
            .order_by(outbox.c.available_at, outbox.c.notification_id)
            .limit(limit)
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        ids = list((await conn.execute(query)).scalars())
        if ids:
            await conn.execute(
                update(outbox)
                .where(outbox.c.notification_id.in_(ids))
                .values(available_at=now + timedelta(seconds=lease))
            )
    return ids


async def outboxed(
    engine: AsyncEngine, ids: Sequence[str]
) -> list[tuple[str, str, str | None, str | None]]:
    """Each outbox row's notification id, tenant, the trace it was accepted in (if traced)
    and its priority, in accept order."""
    o, n = outbox, notifications
    query = (
        select(o.c.notification_id, o.c.tenant_id, n.c.trace, n.c.priority)
        .select_from(o.outerjoin(n, n.c.id == o.c.notification_id))
        .where(o.c.notification_id.in_(ids))
        .order_by(n.c.created_at, o.c.notification_id)
    )
    async with engine.connect() as conn:
        rows = await conn.execute(query)
        return [(r.notification_id, r.tenant_id, r.trace, r.priority) for r in rows]


async def release_outbox(engine: AsyncEngine, now: datetime) -> int:
    """Make due at ``now`` every outbox row still waiting out its grace: those of
    notifications to send now (or whose ``send_at`` has passed) and of topic sends being
    planned; one scheduled for later keeps its time. For a process that knows no broker
    holds their plan messages (the embedded one, at its start). Returns how many moved."""
    n = notifications
    # Looked up by key from each outbox row (a few), never a scan of the notifications.
    later = select(n.c.id).where(n.c.id == outbox.c.notification_id, n.c.send_at > now)
    async with write_tx(engine) as conn:
        moved = await conn.execute(
            update(outbox)
            .where(outbox.c.available_at > now, ~later.exists())
            .values(available_at=now)
        )
    return moved.rowcount or 0


async def delete_outbox(conn: AsyncConnection, notification_ids: Sequence[str]) -> None:
    for part in chunks(list(notification_ids), 1000):
        await conn.execute(delete(outbox).where(outbox.c.notification_id.in_(part)))


async def outbox_size(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return len((await conn.execute(select(outbox.c.notification_id).limit(1000))).all())


async def outbox_backlog(engine: AsyncEngine) -> tuple[int, datetime | None]:
    """How many outbox rows there are, and when the oldest one became due (None: none)."""
    async with engine.connect() as conn:
        row = (await conn.execute(select(func.count(), func.min(outbox.c.available_at)))).one()
    return row[0] or 0, as_utc(row[1])


# A notification is planned when its outbox row goes, in the planner's statement that stores
# its deliveries; the planner does not rewrite the notification's row for it (a row lock
# keeps a cancellation out meanwhile, at a tenth of an update's cost). So a notification
# stored `accepted` or `scheduled` reads `processing` once its outbox row is gone. (A topic
# send, planned in chunks, is stored `processing` by its first chunk.)
_UNPLANNED = (NotificationStatus.ACCEPTED.value, NotificationStatus.SCHEDULED.value)


def waiting(n: Any = notifications) -> ColumnElement[bool]:
    """Whether the notification's outbox row is still there: it is not planned yet."""
    return exists().where(outbox.c.notification_id == n.c.id)


def planned_status(n: Any = notifications) -> ColumnElement[str]:
    """The notification's status with planning taken into account: ``processing`` for one
    stored ``accepted`` or ``scheduled`` whose outbox row is gone."""
    planned = and_(n.c.status.in_(_UNPLANNED), ~waiting(n))
    return case((planned, NotificationStatus.PROCESSING.value), else_=n.c.status)


def select_notifications(n: Any = notifications) -> Select[Any]:
    """Every column of the notification, its status as :func:`planned_status`."""
    columns = [c for c in n.c if c.name != "status"]
    return select(*columns, planned_status(n).label("status"))


async def load_many(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for part in chunks(list(ids), 1000):
        rows = await conn.execute(select(notifications).where(notifications.c.id.in_(part)))
        for row in rows.mappings():
            found[row["id"]] = dict(row)
    return found


# What the API shows of a delivery.
_DELIVERY_COLUMNS = (
    "id",
    "recipient_id",
    "channel",
    "provider",
    "status",
    "reason",
    "attempts",
    "last_error",
    "provider_message_id",
    "scheduled_for",
    "created_at",
    "updated_at",
    "sent_at",
)


def delivery_to_public(row: Any) -> dict[str, Any]:
    return shown(row, _DELIVERY_COLUMNS)


def notification_summary(
    row: Mapping[Any, Any], totals: Mapping[str, int], *, data: bool = False
) -> dict[str, Any]:
    """A notification as the API shows it, with its aggregate status and delivery totals
    (and its ``data`` when ``data``, as a single notification is shown)."""
    workflow = row.get("workflow")
    return {
        "id": row["id"],
        "status": shown_status(row, totals),
        "template": row["template"] if workflow is None else None,
        **({"workflow": workflow} if workflow is not None else {}),
        "priority": row["priority"],
        "to": shown_to(row),
        **({"data": row["data"]} if data else {}),
        **shown(row, ("channels", "send_at", "expires_at", "idempotency_key", "created_at")),
        "totals": dict(totals),
    }


async def get_with_deliveries(
    engine: AsyncEngine,
    tenant_id: str,
    notification_id: str,
    limit: int = 1000,
    fresh: bool = False,
) -> dict[str, Any] | None:
    """A notification with its first ``limit`` deliveries and its totals (a large send's
    as counted a moment ago, unless ``fresh``: store/send_totals.py)."""
    n = notifications
    async with engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    select_notifications().where(
                        n.c.id == notification_id, n.c.tenant_id == tenant_id
                    )
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            return None
        rows = (
            (
                await conn.execute(
                    delivery_store.select_deliveries()
                    .where(deliveries.c.notification_id == notification_id)
                    .order_by(deliveries.c.id)
                    .limit(limit + 1)
                )
            )
            .mappings()
            .all()
        )
        totals = (await send_totals.totals(engine, [notification_id], conn, fresh=fresh))[
            notification_id
        ]
    items = [delivery_to_public(r) for r in rows[:limit]]
    shown = {
        **notification_summary(row, totals, data=True),
        **({"cancel": cancel} if (cancel := cancellation(row["status"], totals)) else {}),
        "deliveries": items,
        "deliveries_truncated": len(rows) > limit,
    }
    shown.update(await _runs_shown(engine, row, shown["status"], fresh))
    return shown


# How many of a workflow send's runs its detail shows (the rest: GET .../runs).
RUNS_SHOWN = 100


async def _runs_shown(
    engine: AsyncEngine, row: Mapping[str, Any], status: str, fresh: bool = False
) -> dict[str, Any]:
    """A send's runs (a workflow send's, or a template send's whose in-app part falls
    back: pipeline/runs.py): their totals, the first ones, and a status that stays
    ``processing`` while a run has not ended (a run waiting in a delay has no delivery
    unfinished). Nothing for a send without runs."""
    nid = row["id"]
    run_totals = await send_totals.run_totals(engine, nid, fresh)
    if not run_totals and row["workflow"] is None:
        return {}
    listed = await run_store.of_notification(
        engine, row["tenant_id"], nid, after=None, limit=RUNS_SHOWN + 1
    )
    live = any(n for s, n in run_totals.items() if s not in ENDED)
    settled = (
        NotificationStatus.COMPLETED,
        NotificationStatus.PARTIAL,
        NotificationStatus.FAILED,
    )
    return {
        **({"status": NotificationStatus.PROCESSING} if live and status in settled else {}),
        "run_totals": run_totals,
        "runs": await run_store.shown(engine, listed[:RUNS_SHOWN]),
        "runs_truncated": len(listed) > RUNS_SHOWN,
    }


async def deliveries_page(
    engine: AsyncEngine, tenant_id: str, notification_id: str, after: str | None, limit: int
) -> list[dict[str, Any]] | None:
    """A notification's deliveries in id order after the cursor; None if the tenant has no
    such notification."""
    n, d = notifications, deliveries
    async with engine.connect() as conn:
        found = await conn.execute(
            select(n.c.id).where(n.c.id == notification_id, n.c.tenant_id == tenant_id)
        )
        if found.first() is None:
            return None
        query = delivery_store.select_deliveries().where(
            d.c.notification_id == notification_id, d.c.id > (after or "")
        )
        rows = (await conn.execute(query.order_by(d.c.id).limit(limit))).mappings().all()
    return [delivery_to_public(r) for r in rows]


_CANCELLABLE = (
    NotificationStatus.ACCEPTED,
    NotificationStatus.SCHEDULED,
    NotificationStatus.PROCESSING,
)


async def cancel(engine: AsyncEngine, tenant_id: str, notification_id: str) -> bool:
    """Cancel what of the notification is not sent yet: its status becomes ``cancelled``,
    its deliveries still waiting (queued, or scheduled for later) become ``cancelled`` with
    an event each, and a scheduled or still-planning send leaves the outbox. Deliveries
    in flight (their attempt claimed before this) are left to finish; none is claimed after
    this (store/deliveries.py ``stop_waiting``), and a retry of one that fails is cancelled
    at its claim. A notification already finished is left as it is. False if the
    tenant has no such notification."""
    for attempt in range(3):
        try:
            return await _cancel(engine, tenant_id, notification_id)
        except DBAPIError as exc:
            # The deliveries' UPDATE may meet a status writer's batch in another order.
            code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
            if code != "40P01" or attempt == 2:
                raise
    raise AssertionError("unreachable")


async def _cancel(engine: AsyncEngine, tenant_id: str, notification_id: str) -> bool:
    n, d = notifications, deliveries
    now = utcnow()
    async with write_tx(engine) as conn:
        # The notification's row first: the planner's write waits for it, or it for the
        # planner's (bulk.py), so no chunk is inserted after the cancellation.
        moved = await conn.execute(
            update(n)
            .where(n.c.id == notification_id, n.c.tenant_id == tenant_id)
            .where(n.c.status.in_(_CANCELLABLE))
            .values(status=NotificationStatus.CANCELLED)
        )
        if moved.rowcount != 1:
            found = await conn.execute(
                select(n.c.id).where(n.c.id == notification_id, n.c.tenant_id == tenant_id)
            )
            return found.first() is not None
        # A delivery claimed meanwhile is in flight: left alone, with no `cancelled` event.
        await delivery_store.stop_waiting(conn, d.c.notification_id == notification_id, now)
        # A workflow send's runs end here, whatever step they wait in.
        await run_store.cancel(conn, workflow_runs.c.notification_id == notification_id, now)
        await delete_outbox(conn, [notification_id])
        await _drop_stripes(conn, notification_id)
    return True


async def _drop_stripes(conn: AsyncConnection, notification_id: str) -> None:
    """A topic send that will not be planned further needs its stripes no more."""
    stripes = topic_stripes
    await conn.execute(delete(stripes).where(stripes.c.notification_id == notification_id))


async def fail_unplannable(engine: AsyncEngine, notification_id: str) -> None:
    """A notification whose planning fails on its own, every time: it is marked ``failed``
    and leaves the outbox, so that it is neither planned again forever nor holds up the
    notifications planned beside it."""
    async with write_tx(engine) as conn:
        await conn.execute(
            update(notifications)
            .where(notifications.c.id == notification_id)
            .values(status=NotificationStatus.FAILED)
        )
        await delete_outbox(conn, [notification_id])
        await _drop_stripes(conn, notification_id)


async def is_known(engine: AsyncEngine, tenant_id: str, notification_id: str) -> bool:
    n = notifications
    query = select(n.c.id).where(n.c.id == notification_id, n.c.tenant_id == tenant_id)
    return await first_row(engine, query) is not None
