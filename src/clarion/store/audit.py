"""The audit log: who changed what in a tenant's configuration, and when.

A store function that changes configuration (templates, providers, webhooks, categories,
API keys, tenant settings, topics, schedules), erases a recipient or replays dead letters
calls :func:`record` inside its own
transaction, so the change and its row commit together or not at all. Rows are only ever
inserted: nothing in Clarion updates or deletes them.

A diff holds the fields that changed, ``{field: {"from": old, "to": new}}`` (``from`` is
absent on creation, ``to`` on deletion). Secrets never enter it: a secret field is shown
as ``"***"`` when set, and a changed secret appears only as a change from ``"***"`` to
``"***"``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.domain.ids import new_id
from clarion.security.secrets import MASK
from clarion.store.db import as_utc, utcnow
from clarion.store.pages import Position, between, newest_first
from clarion.store.tables import audit_log

CLI = "cli"  # the actor of a change made with the `clarion` command
SYSTEM = "system"  # the actor of a change Clarion makes itself (the demo tenant)

# Fields that every row carries and that say nothing about the change itself.
_UNCHANGING = frozenset({"created_at", "updated_at", "tenant_id", "name"})


class Resource(StrEnum):
    TEMPLATE = "template"
    PROVIDER = "provider"
    WEBHOOK = "webhook"
    CATEGORY = "category"
    API_KEY = "api_key"
    TENANT = "tenant"
    RECIPIENT = "recipient"
    TOPIC = "topic"
    SCHEDULE = "schedule"
    DEAD_LETTER = "dead_letter"
    WORKFLOW = "workflow"
    LAYOUT = "layout"
    BRAND = "brand"
    SUPPRESSION = "suppression"


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    ROLLBACK = "rollback"
    REVOKE = "revoke"
    ROTATE = "rotate"
    REENCRYPT = "reencrypt"
    ERASE = "erase"
    REPLAY = "replay"


@dataclass(frozen=True, slots=True)
class Change:
    tenant_id: str
    actor: str
    resource: Resource
    name: str
    action: Action
    diff: dict[str, Any] | None = None


def masked(values: Mapping[str, Any], secret_fields: Iterable[str]) -> dict[str, Any]:
    """``values`` with each secret field that is set shown as ``"***"``."""
    hidden = set(secret_fields)
    return {k: (MASK if k in hidden and v is not None else v) for k, v in values.items()}


def diff(
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    *,
    secrets_changed: Iterable[str] = (),
) -> dict[str, Any]:
    """The fields that differ between two masked views of a resource (all of them for a
    creation or a deletion); each name in ``secrets_changed`` is listed as changed even if
    its masked views are equal."""
    old, new = dict(before or {}), dict(after or {})
    forced = set(secrets_changed)
    changes: dict[str, Any] = {}
    for key in sorted((old.keys() | new.keys()) - _UNCHANGING):
        whole = before is None or after is None  # a creation or a deletion: every field
        if not whole and old.get(key) == new.get(key) and key not in forced:
            continue
        entry: dict[str, Any] = {}
        if before is not None:
            entry["from"] = old.get(key)
        if after is not None:
            entry["to"] = new.get(key)
        changes[key] = entry
    for key in sorted(forced - changes.keys()):  # a secret inside a field (config.password)
        changes[key] = {"from": MASK, "to": MASK}
    return changes


def erased_name(tenant_secret: str, recipient_id: str) -> str:
    """How the log names an erased recipient: a keyed digest, so the erased person's id is
    kept nowhere, while the tenant (who holds the key, its webhook signing secret) can
    find the row of an id it erased."""
    mac = hmac.new(tenant_secret.encode(), recipient_id.encode(), hashlib.sha256)
    return "r_" + mac.hexdigest()[:40]


async def record(conn: AsyncConnection, *changes: Change) -> None:
    """Append ``changes`` inside the caller's transaction."""
    if not changes:
        return
    now = utcnow()
    await conn.execute(
        audit_log.insert(),
        [
            {
                "id": new_id("aud"),
                "tenant_id": c.tenant_id,
                "at": now,
                "actor": c.actor[:40],
                "resource": c.resource.value,
                "name": c.name[:200],
                "action": c.action.value,
                "diff": c.diff or None,
            }
            for c in changes
        ],
    )


@dataclass(frozen=True, slots=True)
class AuditFilter:
    resource: str | None = None
    name: str | None = None
    actor: str | None = None
    action: str | None = None
    after: datetime | None = None  # at >= after
    before: datetime | None = None  # at < before


def _query(
    tenant_id: str, where: AuditFilter, position: Position | None, limit: int
) -> Select[Any]:
    a = audit_log
    query = select(a).where(a.c.tenant_id == tenant_id, *between(a.c.at, where.after, where.before))
    for column, value in (
        (a.c.resource, where.resource),
        (a.c.name, where.name),
        (a.c.actor, where.actor),
        (a.c.action, where.action),
    ):
        if value is not None:
            query = query.where(column == value)
    return newest_first(query, a.c.at, a.c.id, position, limit)


async def list_page(
    engine: AsyncEngine,
    tenant_id: str,
    where: AuditFilter,
    position: Position | None,
    limit: int,
) -> list[dict[str, Any]]:
    """A tenant's audit rows, newest first, strictly after (older than) ``position``."""
    async with engine.connect() as conn:
        rows = (await conn.execute(_query(tenant_id, where, position, limit))).mappings()
        return [
            {
                "id": r["id"],
                "at": as_utc(r["at"]),
                "key_id": r["actor"],
                "action": r["action"],
                "resource": r["resource"],
                "name": r["name"],
                "diff": r["diff"] or {},
            }
            for r in rows
        ]
