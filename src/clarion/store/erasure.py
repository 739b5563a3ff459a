"""Everything stored about one recipient: exporting it, and erasing it.

Erasure removes the recipient's row (addresses, tokens, subscriptions, preferences, data),
its topic memberships, its place in recurring schedules (one addressed to it alone is
deleted), its inbox and its sandbox captures, and strips the delivery history of anything
personal: deliveries keep their status, channel and timestamps for the tenant's
counts, but lose their address, content and errors, and both the recipient id and the
delivery id (which is derived from the recipient id) are replaced by values that owe
nothing to the person.
What was still waiting is suppressed (reason ``cancelled``) and dead letters become failures,
so nothing is sent or replayed without an address. Notifications forget the recipient, and
their data when it was about that person alone; stored responses of recipient batches that
list the id are dropped.

On SQLite, ``secure_delete`` overwrites what is deleted in the database file, but the
write-ahead log still holds the pages as they were until a checkpoint: erasure therefore
ends with ``wal_checkpoint(TRUNCATE)``, which copies the log into the file and empties it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Text, bindparam, cast, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.domain.ids import renamed_delivery_id
from clarion.domain.models import TERMINAL_STATUSES, DeliveryStatus
from clarion.store import audit, inbox_access, run_digests
from clarion.store import digests as digest_store
from clarion.store import recipients as recipient_store
from clarion.store import runs as run_store
from clarion.store import schedules as schedule_store
from clarion.store import topics as topic_store
from clarion.store.db import shown, utcnow, write_tx
from clarion.store.sql import chunks
from clarion.store.tables import (
    deliveries,
    delivery_events,
    idempotency_keys,
    inbox_counters,
    inbox_messages,
    inbox_tickets,
    notifications,
    recipients,
    sandbox_messages,
    tenants,
    workflow_runs,
)

log = logging.getLogger(__name__)

ERASED = "erased"
_CHECKPOINT_TRIES = 20
EXPORT_LIMIT = 10_000
_BATCH_SCOPE = "recipients.batch"


async def erase(
    engine: AsyncEngine, tenant_id: str, recipient_id: str, *, actor: str = audit.SYSTEM
) -> datetime | None:
    """Erase the recipient in one transaction; when it was done (its recipient tokens
    issued before are revoked), or None if there is no such recipient. The audit log names
    the recipient by :func:`clarion.store.audit.erased_name`, never by its id."""
    erased_at = utcnow()
    async with write_tx(engine) as conn:
        removed = await conn.execute(
            delete(recipients).where(
                recipients.c.tenant_id == tenant_id, recipients.c.id == recipient_id
            )
        )
        if not removed.rowcount:
            return None
        await inbox_access.revoke(conn, tenant_id, recipient_id, erased_at)
        # Before their runs: the digest windows they carry and the triggers they gave, and
        # their category digest windows (locked before their carriers, as closing does).
        await run_digests.forget_recipient(conn, tenant_id, recipient_id)
        await digest_store.forget_recipient(conn, tenant_id, recipient_id)
        # The counter row before the messages: the inbox's lock order (inbox_changes.py).
        tables = (inbox_counters, inbox_messages, sandbox_messages, inbox_tickets, workflow_runs)
        for table in tables:
            await conn.execute(
                delete(table).where(
                    table.c.tenant_id == tenant_id, table.c.recipient_id == recipient_id
                )
            )
        await topic_store.forget_recipient(conn, tenant_id, recipient_id)
        await schedule_store.forget_recipient(conn, tenant_id, recipient_id)
        await _scrub_deliveries(conn, tenant_id, recipient_id)
        await _forget_in_notifications(conn, tenant_id, recipient_id)
        await _forget_batch_responses(conn, tenant_id, recipient_id)
        await _audit_erasure(conn, tenant_id, recipient_id, actor)
    if engine.dialect.name == "sqlite":
        await checkpoint(engine)
    return erased_at


async def _audit_erasure(
    conn: AsyncConnection, tenant_id: str, recipient_id: str, actor: str
) -> None:
    key = (
        await conn.execute(select(tenants.c.webhook_secret).where(tenants.c.id == tenant_id))
    ).scalar()
    name = audit.erased_name(key or tenant_id, recipient_id)
    await audit.record(
        conn, audit.Change(tenant_id, actor, audit.Resource.RECIPIENT, name, audit.Action.ERASE)
    )


async def checkpoint(engine: AsyncEngine) -> bool:
    """Copy SQLite's write-ahead log into the database file and truncate it; True once done.
    A reader holding an old snapshot keeps the log busy: tried again briefly."""
    for attempt in range(_CHECKPOINT_TRIES):
        async with engine.connect() as conn:
            row = (await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")).one()
        if row[0] == 0:  # (busy, log frames, frames checkpointed)
            return True
        await asyncio.sleep(0.01 * (attempt + 1))
    log.warning(
        "the write-ahead log stayed busy: erased data remains in it until the next checkpoint"
    )
    return False


async def _scrub_deliveries(conn: AsyncConnection, tenant_id: str, recipient_id: str) -> None:
    mine = (deliveries.c.tenant_id == tenant_id) & (deliveries.c.recipient_id == recipient_id)
    # What is still waiting is never sent: there is no address left to send it to.
    await conn.execute(
        update(deliveries)
        .where(mine, deliveries.c.status.not_in(list(TERMINAL_STATUSES)))
        .values(status=DeliveryStatus.SUPPRESSED, reason="cancelled", watched_since=None)
    )
    # Nor can a dead letter be replayed: it leaves the dead-letter queue as a failure.
    await conn.execute(
        update(deliveries)
        .where(mine, deliveries.c.status == DeliveryStatus.DEAD)
        .values(status=DeliveryStatus.FAILED)
    )
    ids = list((await conn.execute(select(deliveries.c.id).where(mine))).scalars())
    events = (
        update(delivery_events)
        .where(delivery_events.c.delivery_id == bindparam("b_old"))
        .values(delivery_id=bindparam("b_new"), detail=None)
    )
    rows = (
        update(deliveries)
        .where(deliveries.c.id == bindparam("b_old"))
        .values(
            id=bindparam("b_new"),
            recipient_id=ERASED,
            address=None,
            content=None,
            last_error=None,
        )
    )
    for part in chunks(ids, 1000):
        renames = [{"b_old": old, "b_new": renamed_delivery_id(old)} for old in part]
        await conn.execute(events, renames)
        await conn.execute(rows, renames)


async def _rows_mentioning(
    conn: AsyncConnection, column: Any, where: Any, recipient_id: str
) -> list[Any]:
    """Rows whose JSON ``column`` holds the id as a string. The SQL match on the JSON text
    only narrows the search (LIKE ignores ASCII case on SQLite); callers check exactly."""
    needle = orjson.dumps(recipient_id).decode()
    query = select(*column.table.primary_key.columns, column).where(
        where, cast(column, Text).contains(needle, autoescape=True)
    )
    return list(await conn.execute(query))


async def _forget_in_notifications(
    conn: AsyncConnection, tenant_id: str, recipient_id: str
) -> None:
    t = notifications
    rows = await _rows_mentioning(conn, t.c.recipient_ids, t.c.tenant_id == tenant_id, recipient_id)
    changes = []
    for row in rows:
        if recipient_id not in row.recipient_ids:
            continue
        rest = [rid for rid in row.recipient_ids if rid != recipient_id]
        changes.append({"b_id": row.id, "b_ids": rest, "b_alone": not rest})
    if not changes:
        return
    stmt = update(t).where(t.c.id == bindparam("b_id")).values(recipient_ids=bindparam("b_ids"))
    for part in chunks(changes, 1000):
        await conn.execute(stmt, [{"b_id": c["b_id"], "b_ids": c["b_ids"]} for c in part])
    # A notification to this person alone carried data about them.
    alone = [c["b_id"] for c in changes if c["b_alone"]]
    for ids in chunks(alone, 1000):
        await conn.execute(update(t).where(t.c.id.in_(ids)).values(data={}))


async def _forget_batch_responses(conn: AsyncConnection, tenant_id: str, recipient_id: str) -> None:
    """Stored responses of recipient batches list the ids they upserted."""
    k = idempotency_keys
    where = (k.c.tenant_id == tenant_id) & (k.c.scope == _BATCH_SCOPE)
    rows = await _rows_mentioning(conn, k.c.response, where, recipient_id)
    for row in rows:
        stored = row._mapping
        response = stored["response"]
        results = response.get("results", []) if isinstance(response, dict) else []
        if any(isinstance(r, dict) and r.get("id") == recipient_id for r in results):
            await conn.execute(delete(k).where(where, k.c.key == stored["key"]))


async def export(engine: AsyncEngine, tenant_id: str, recipient_id: str) -> dict[str, Any] | None:
    """Everything stored about the recipient; None if there is no such recipient.

    Inbox messages, deliveries and sandbox captures are the newest ``EXPORT_LIMIT`` of each;
    ``truncated`` says whether any list was cut."""
    async with engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    select(recipients).where(
                        recipients.c.tenant_id == tenant_id, recipients.c.id == recipient_id
                    )
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            return None
        inbox = await _newest(conn, inbox_messages, tenant_id, recipient_id, _INBOX_COLUMNS)
        sent = await _newest(conn, deliveries, tenant_id, recipient_id, _DELIVERY_COLUMNS)
        sandbox = await _newest(conn, sandbox_messages, tenant_id, recipient_id, _SANDBOX_COLUMNS)
        topics = await topic_store.of_recipient(conn, tenant_id, recipient_id)
        held = await digest_store.open_windows(conn, tenant_id, recipient_id)
        runs = await _newest(conn, workflow_runs, tenant_id, recipient_id, None)
    shown_runs = await run_store.shown(engine, runs[0])
    return {
        "recipient": recipient_store.to_public(row),
        "preferences": recipient_store.preferences_of(row),
        "topics": topics,
        "digests": [
            {
                "channel": w["channel"],
                "category": w["category"],
                "key": w["dkey"],
                "held": w["items"],
                "opened_at": w["opened_at"],
                "closes_at": w["closes_at"],
            }
            for w in held
        ],
        "inbox_messages": inbox[0],
        "deliveries": sent[0],
        "sandbox_messages": sandbox[0],
        "workflow_runs": [
            {**run, "notification_id": row["notification_id"]}
            for run, row in zip(shown_runs, runs[0], strict=True)
        ],
        "truncated": inbox[1] or sent[1] or sandbox[1] or runs[1],
    }


async def _newest(
    conn: AsyncConnection,
    table: Any,
    tenant_id: str,
    recipient_id: str,
    columns: tuple[str, ...] | None,
) -> tuple[list[dict[str, Any]], bool]:
    """The recipient's newest ``EXPORT_LIMIT`` rows of ``table`` (these columns, or
    whole), and whether there were more."""
    query = (
        select(table)
        .where(table.c.tenant_id == tenant_id, table.c.recipient_id == recipient_id)
        .order_by(table.c.created_at.desc(), table.c.id.desc())
        .limit(EXPORT_LIMIT + 1)
    )
    rows = (await conn.execute(query)).mappings().all()
    kept = rows[:EXPORT_LIMIT]
    shown_rows = [dict(r) for r in kept] if columns is None else [shown(r, columns) for r in kept]
    return shown_rows, len(rows) > EXPORT_LIMIT


# What an export shows of each row of the recipient's messages.
_INBOX_COLUMNS = (
    "id",
    "delivery_id",
    "content",
    "category",
    "status",
    "created_at",
    "read_at",
    "seen_at",
    "archived_at",
    "snoozed_until",
)
_DELIVERY_COLUMNS = (
    "id",
    "notification_id",
    "channel",
    "provider",
    "status",
    "reason",
    "attempts",
    "created_at",
    "sent_at",
    "address",
    "content",
)
_SANDBOX_COLUMNS = ("id", "delivery_id", "channel", "to", "content", "created_at")
