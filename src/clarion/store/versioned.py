"""Versioned definitions: a head row per key naming its active and latest version, and a row
per version; every change is a new version, audited."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, Table, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.store import audit
from clarion.store.db import shown, utcnow, write_tx
from clarion.store.sql import first_row, upsert

# What a new version changes of its head.
_HEAD_UPDATED = ["active_version", "latest_version", "updated_at"]


@dataclass(frozen=True, slots=True)
class Versioned:
    """One kind of versioned definition: its head and version tables, the column that keys
    both (with ``tenant_id``), what a version stores, and its audit resource."""

    heads: Table
    versions: Table
    key: str
    content: tuple[str, ...]
    resource: audit.Resource
    public: Callable[[Any], dict[str, Any]]
    # Called in the transaction of every write (put, rollback, delete) with its tenant: a
    # kind that readers cache by a tenant's version moves it there.
    touch: Callable[[AsyncConnection, str], Awaitable[None]] | None = None

    async def _touched(self, conn: AsyncConnection, tenant_id: str) -> None:
        if self.touch is not None:
            await self.touch(conn, tenant_id)

    def _head_of(self, tenant_id: str, key: str) -> ColumnElement[bool]:
        h = self.heads.c
        return (h.tenant_id == tenant_id) & (h[self.key] == key)

    def _versions_of(self, tenant_id: str, key: str) -> ColumnElement[bool]:
        v = self.versions.c
        return (v.tenant_id == tenant_id) & (v[self.key] == key)

    async def active(
        self, conn: AsyncConnection, tenant_id: str, key: str, *, lock: bool = False
    ) -> int | None:
        """The active version of ``key``; None when there is no such definition."""
        query = select(self.heads.c.active_version).where(self._head_of(tenant_id, key))
        if lock:
            query = query.with_for_update()
        found: int | None = (await conn.execute(query)).scalar()
        return found

    async def _audited(
        self, conn: AsyncConnection, tenant_id: str, key: str, version: int | None
    ) -> dict[str, Any] | None:
        if version is None:
            return None
        query = select(self.versions).where(
            self._versions_of(tenant_id, key), self.versions.c.version == version
        )
        row = (await conn.execute(query)).mappings().first()
        if row is None:
            return None
        public = self.public(row)
        return {k: public[k] for k in ("version", *self.content)}

    async def put(
        self,
        engine: AsyncEngine,
        tenant_id: str,
        key: str,
        content: dict[str, Any],
        *,
        actor: str = audit.SYSTEM,
    ) -> int:
        """Store ``content`` as a new version and make it active; returns its number."""
        async with write_tx(engine) as conn:
            return await self.put_in(conn, tenant_id, key, content, actor=actor)

    async def put_in(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        key: str,
        content: dict[str, Any],
        *,
        actor: str = audit.SYSTEM,
    ) -> int:
        """:meth:`put`, in the caller's write transaction."""
        now = utcnow()
        head = (
            await conn.execute(
                select(self.heads.c.latest_version, self.heads.c.active_version)
                .where(self._head_of(tenant_id, key))
                .with_for_update()
            )
        ).first()
        version = 1 if head is None else head.latest_version + 1
        before = await self._audited(
            conn, tenant_id, key, None if head is None else head.active_version
        )
        ids = {"tenant_id": tenant_id, self.key: key}
        stored = {"version": version, **content}
        await conn.execute(self.versions.insert().values(**ids, **stored, created_at=now))
        heads = upsert(conn, self.heads, ["tenant_id", self.key], _HEAD_UPDATED)
        made = {"active_version": version, "latest_version": version, "updated_at": now}
        await conn.execute(heads.values(**ids, **made))
        action = audit.Action.CREATE if head is None else audit.Action.UPDATE
        change = audit.diff(before, stored)
        await audit.record(conn, audit.Change(tenant_id, actor, self.resource, key, action, change))
        await self._touched(conn, tenant_id)
        return version

    def version_query(self, tenant_id: str, key: str, version: int | None) -> Select[Any]:
        """The stored version asked for, else the active one."""
        v = self.versions
        query = select(v).where(self._versions_of(tenant_id, key))
        if version is not None:
            return query.where(v.c.version == version)
        h = self.heads
        return query.join(
            h,
            (h.c.tenant_id == v.c.tenant_id)
            & (h.c[self.key] == v.c[self.key])
            & (h.c.active_version == v.c.version),
        )

    async def get(
        self, engine: AsyncEngine, tenant_id: str, key: str, version: int | None = None
    ) -> dict[str, Any] | None:
        row = await first_row(engine, self.version_query(tenant_id, key, version))
        return self.public(row) if row else None

    async def heads_page(
        self,
        engine: AsyncEngine,
        tenant_id: str,
        listed: tuple[str, ...],
        *,
        after: str | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Heads by key, each with ``listed`` of its active version (``listed`` names the
        head's columns too); ``after`` is the last key of the previous page."""
        h, v = self.heads, self.versions
        columns = [h.c[c] if c in h.c else v.c[c] for c in listed]
        query = (
            select(*columns)
            .join_from(
                h,
                v,
                (v.c.tenant_id == h.c.tenant_id)
                & (v.c[self.key] == h.c[self.key])
                & (v.c.version == h.c.active_version),
            )
            .where(h.c.tenant_id == tenant_id)
        )
        if after is not None:
            query = query.where(h.c[self.key] > after)
        async with engine.connect() as conn:
            rows = await conn.execute(query.order_by(h.c[self.key]).limit(limit))
            return [shown(r, listed) for r in rows.mappings()]

    async def versions_page(
        self,
        engine: AsyncEngine,
        tenant_id: str,
        key: str,
        listed: tuple[str, ...],
        *,
        before: int | None,
        limit: int,
    ) -> list[dict[str, Any]] | None:
        """The versions of ``key``, newest first, each with ``listed`` of its row and
        whether it is the active one; ``before`` is the last version of the previous page.
        None when there is no such definition."""
        v = self.versions
        query = select(*(v.c[c] for c in listed)).where(self._versions_of(tenant_id, key))
        if before is not None:
            query = query.where(v.c.version < before)
        query = query.order_by(v.c.version.desc()).limit(limit)
        async with engine.connect() as conn:
            active = await self.active(conn, tenant_id, key)
            if active is None:
                return None
            rows = (await conn.execute(query)).mappings().all()
        return [{**shown(r, listed), "active": r["version"] == active} for r in rows]

    async def rollback(
        self, engine: AsyncEngine, tenant_id: str, key: str, version: int, *, actor: str
    ) -> str | None:
        """Make a stored version active again.

        Returns None when done, else what is missing: ``"head"`` or ``"version"``."""
        stored = (
            select(self.versions.c.version)
            .where(self._versions_of(tenant_id, key), self.versions.c.version == version)
            .exists()
        )
        statement = (
            update(self.heads)
            .where(self._head_of(tenant_id, key), stored)
            .values(active_version=version, updated_at=utcnow())
        )
        async with write_tx(engine) as conn:
            current = await self.active(conn, tenant_id, key, lock=True)
            if current is None:
                return "head"
            if (await conn.execute(statement)).rowcount != 1:
                return "version"
            change = {"active_version": {"from": current, "to": version}}
            await audit.record(
                conn,
                audit.Change(tenant_id, actor, self.resource, key, audit.Action.ROLLBACK, change),
            )
            await self._touched(conn, tenant_id)
        return None

    async def delete(
        self, engine: AsyncEngine, tenant_id: str, key: str, *, actor: str = audit.SYSTEM
    ) -> bool:
        """Delete the definition with every version, audited; False if there was none."""
        async with write_tx(engine) as conn:
            current = await self.active(conn, tenant_id, key, lock=True)
            if current is None:
                return False
            await self.delete_in(conn, tenant_id, key, current, actor=actor)
        return True

    async def delete_in(
        self, conn: AsyncConnection, tenant_id: str, key: str, current: int, *, actor: str
    ) -> None:
        """:meth:`delete`, in the caller's write transaction, once the caller has locked
        the head (:meth:`active` with ``lock``) and found its active version ``current``."""
        before = await self._audited(conn, tenant_id, key, current)
        await conn.execute(delete(self.versions).where(self._versions_of(tenant_id, key)))
        await conn.execute(delete(self.heads).where(self._head_of(tenant_id, key)))
        change = audit.diff(before, None)
        await audit.record(
            conn, audit.Change(tenant_id, actor, self.resource, key, audit.Action.DELETE, change)
        )
        await self._touched(conn, tenant_id)


def shown_version(columns: tuple[str, ...]) -> Callable[[Any], dict[str, Any]]:
    """What the API shows of a stored version: ``columns`` of its row."""

    def public(row: Any) -> dict[str, Any]:
        return shown(row, columns)

    return public
