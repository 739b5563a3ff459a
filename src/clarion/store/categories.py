"""Categories: the tenant's kinds of notification and the policy each carries.

A category row is a plain dict::

    {"name": "marketing", "critical": False, "default_channels": ["email"] | None,
     "digest": {"window": "1h", "key": "project" | None} | None,
     "max_per_hour": 10 | None, "max_per_day": 50 | None,
     "overflow": "drop" | "defer" | "digest", "during_snooze": "defer" | "drop",
     "tracking": {"opens": False, "clicks": False},
     "built_in": True, "created_at": datetime | None, "updated_at": datetime | None}

``transactional``, ``marketing`` and ``security`` exist for every tenant without being
stored (their timestamps are then None). A tenant may store a row under a built-in name to
set its policy (a ``max_per_hour`` on marketing, say), but ``security`` stays critical.

Every write moves the tenant's version (``category_versions``) in its transaction: a reader
that caches a tenant's categories asks for the version (``versions``) and reloads when it has
moved, so what is accepted after a write is planned under it, in any process. Writes of the
tenant's layouts and brand (store/layouts.py) move the same version: the planner caches them
by it too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.domain.refusal import Reason, Refused
from clarion.store import audit
from clarion.store.db import as_utc, utcnow, write_tx
from clarion.store.sql import first_row, upsert
from clarion.store.tables import categories, category_versions

POLICY = (
    "critical",
    "default_channels",
    "digest",
    "max_per_hour",
    "max_per_day",
    "overflow",
    "during_snooze",
    "tracking",
)
ALWAYS_CRITICAL = frozenset({"security"})
# A category tracks neither opens nor clicks unless it says so (docs/tracking.md).
NO_TRACKING = {"opens": False, "clicks": False}


def _built_in(name: str, critical: bool) -> dict[str, Any]:
    return {
        "name": name,
        "critical": critical,
        "default_channels": None,
        "digest": None,
        "max_per_hour": None,
        "max_per_day": None,
        "overflow": "drop",
        "during_snooze": "defer",
        "tracking": dict(NO_TRACKING),
        "built_in": True,
        "created_at": None,
        "updated_at": None,
    }


BUILT_IN_CATEGORIES: dict[str, dict[str, Any]] = {
    "transactional": _built_in("transactional", critical=False),
    "marketing": _built_in("marketing", critical=False),
    "security": _built_in("security", critical=True),
}


def _from_row(row: Any) -> dict[str, Any]:
    name = row["name"]
    return {
        "name": name,
        "critical": bool(row["critical"]) or name in ALWAYS_CRITICAL,
        "default_channels": row["default_channels"],
        "digest": _digest(row["digest"]),
        "max_per_hour": row["max_per_hour"],
        "max_per_day": row["max_per_day"],
        "overflow": row["overflow"] or "drop",
        "during_snooze": row["during_snooze"] or "defer",
        "tracking": _tracking(row["tracking"]),
        "built_in": name in BUILT_IN_CATEGORIES,
        "created_at": as_utc(row["created_at"]),
        "updated_at": as_utc(row["updated_at"]),
    }


def _digest(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    # Stored before digests had keys: {"window": ...} alone.
    return None if not value else {"window": value["window"], "key": value.get("key")}


def _tracking(value: Mapping[str, Any] | None) -> dict[str, bool]:
    # Stored before tracking existed: null, none of it.
    return {key: bool((value or {}).get(key)) for key in NO_TRACKING}


def _copy_built_ins() -> dict[str, dict[str, Any]]:
    return {
        name: {**row, "tracking": dict(row["tracking"])}
        for name, row in BUILT_IN_CATEGORIES.items()
    }


async def put(
    engine: AsyncEngine,
    tenant_id: str,
    name: str,
    body: Mapping[str, Any],
    *,
    actor: str = audit.SYSTEM,
) -> dict[str, Any] | Refused:
    """Create or replace a category's policy; ``body`` holds the keys of ``POLICY`` (absent
    ones reset to their defaults). Returns the category as stored, or refuses a policy that
    makes an always critical category not critical."""
    critical = bool(body.get("critical", False))
    if name in ALWAYS_CRITICAL and not critical:
        return Refused(
            Reason.INVALID_POLICY,
            f"category {name!r} is always critical",
            [{"field": "critical", "message": "must be true for this category"}],
        )
    now = utcnow()
    row = {
        "tenant_id": tenant_id,
        "name": name,
        "critical": critical,
        "default_channels": body.get("default_channels"),
        "digest": body.get("digest"),
        "max_per_hour": body.get("max_per_hour"),
        "max_per_day": body.get("max_per_day"),
        "overflow": body.get("overflow") or "drop",
        "during_snooze": body.get("during_snooze") or "defer",
        "tracking": _tracking(body.get("tracking")),
        "created_at": now,
        "updated_at": now,
    }
    mine = (categories.c.tenant_id == tenant_id) & (categories.c.name == name)
    async with write_tx(engine) as conn:
        old = (await conn.execute(select(categories).where(mine).with_for_update())).mappings()
        stored = old.first()
        before = _from_row(stored) if stored is not None else BUILT_IN_CATEGORIES.get(name)
        stmt = upsert(conn, categories, ["tenant_id", "name"], [*POLICY, "updated_at"])
        await conn.execute(stmt, [row])
        found = _from_row((await conn.execute(select(categories).where(mine))).mappings().one())
        change = audit.diff(_policy(before), _policy(found))
        action = audit.Action.CREATE if before is None else audit.Action.UPDATE
        await audit.record(
            conn, audit.Change(tenant_id, actor, audit.Resource.CATEGORY, name, action, change)
        )
        await bump(conn, tenant_id)
    return found


async def bump(conn: AsyncConnection, tenant_id: str) -> None:
    """Move the tenant's version, in the transaction of the write it stamps. Every write of
    what the planner caches per tenant by this version moves it: categories, and the
    layouts and brand (store/layouts.py) email is dressed in."""
    v = category_versions
    stmt: Any = (
        postgresql.insert(v) if conn.dialect.name == "postgresql" else sqlite.insert(v)
    ).values(tenant_id=tenant_id, version=1)
    await conn.execute(
        stmt.on_conflict_do_update(index_elements=["tenant_id"], set_={"version": v.c.version + 1})
    )


async def versions(conn: AsyncConnection, tenant_ids: Iterable[str]) -> dict[str, int]:
    """The version of each tenant's categories (0 for one never written), one query."""
    wanted = sorted(set(tenant_ids))
    found = dict.fromkeys(wanted, 0)
    if wanted:
        v = category_versions
        query = select(v.c.tenant_id, v.c.version).where(v.c.tenant_id.in_(wanted))
        found.update({row.tenant_id: row.version for row in await conn.execute(query)})
    return found


def _policy(category: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if category is None else {k: category[k] for k in POLICY}


async def get(engine: AsyncEngine, tenant_id: str, name: str) -> dict[str, Any] | None:
    """One category of the tenant, built-ins included; None if it does not exist."""
    query = select(categories).where(categories.c.tenant_id == tenant_id, categories.c.name == name)
    row = await first_row(engine, query)
    if row is not None:
        return _from_row(row)
    built_in = BUILT_IN_CATEGORIES.get(name)
    return dict(built_in) if built_in is not None else None


async def list_(
    engine: AsyncEngine, tenant_id: str, *, after: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """The tenant's categories, built-ins included, in name order, ``limit`` of them from
    the first name after ``after``."""
    query = select(categories).where(categories.c.tenant_id == tenant_id)
    if after is not None:
        query = query.where(categories.c.name > after)
    query = query.order_by(categories.c.name).limit(limit)
    async with engine.connect() as conn:
        stored = {row["name"]: _from_row(row) for row in (await conn.execute(query)).mappings()}
    merged = {
        name: dict(row)
        for name, row in BUILT_IN_CATEGORIES.items()
        if after is None or name > after
    }
    merged.update(stored)
    return [merged[name] for name in sorted(merged)][:limit]


async def load_for(
    engine: AsyncEngine, tenant_ids: Iterable[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Every category of these tenants, built-ins included, by tenant then name (one query).

    Each tenant's entry holds the built-ins, so ``load_for(...)[tenant][name]`` answers for
    any category a stored template can name."""
    wanted = sorted(set(tenant_ids))
    found: dict[str, dict[str, dict[str, Any]]] = {t: _copy_built_ins() for t in wanted}
    if not wanted:
        return found
    query = select(categories).where(categories.c.tenant_id.in_(wanted))
    async with engine.connect() as conn:
        for row in (await conn.execute(query)).mappings():
            found[row["tenant_id"]][row["name"]] = _from_row(row)
    return found


async def known(
    engine_or_conn: AsyncEngine | AsyncConnection, tenant_id: str, names: Iterable[str]
) -> set[str]:
    """Which of ``names`` are categories of the tenant (built-ins always are)."""
    wanted = set(names)
    found = wanted & BUILT_IN_CATEGORIES.keys()
    rest = sorted(wanted - found)
    if not rest:
        return found
    query = select(categories.c.name).where(
        categories.c.tenant_id == tenant_id, categories.c.name.in_(rest)
    )
    if isinstance(engine_or_conn, AsyncEngine):
        async with engine_or_conn.connect() as conn:
            found.update((await conn.execute(query)).scalars())
    else:
        found.update((await engine_or_conn.execute(query)).scalars())
    return found
