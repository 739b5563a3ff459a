"""Rows a tenant names itself (providers, webhooks): a table keyed by (tenant_id, name).

Each kind of row is a :class:`Named`: its table, the resource its audit records name and
the view of a row they compare. Every change is audited in its own transaction; a row's
sealed secrets are bound to its (tenant, name) and re-sealed by :func:`rotate`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, RowMapping, Table, delete, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.security.secrets import MASK, Keyring, SecretError
from clarion.store import audit
from clarion.store.db import write_tx
from clarion.store.sql import chunks, upsert


@dataclass(frozen=True, slots=True)
class Named:
    table: Table
    resource: audit.Resource
    # What the audit log compares of a row: never a secret.
    audited: Callable[[RowMapping], dict[str, Any]]


@dataclass
class Rotation:
    changed: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def _mine(table: Table, tenant_id: str, name: str) -> ColumnElement[bool]:
    return (table.c.tenant_id == tenant_id) & (table.c.name == name)


async def get_one(engine: AsyncEngine, table: Table, tenant_id: str, name: str) -> Any:
    """The row as a mapping, or None."""
    query = select(table).where(_mine(table, tenant_id, name))
    async with engine.connect() as conn:
        return (await conn.execute(query)).mappings().first()


async def list_page(
    engine: AsyncEngine, table: Table, tenant_id: str, *, after: str | None, limit: int
) -> Sequence[RowMapping]:
    """A tenant's rows by name, those after ``after``."""
    query = select(table).where(table.c.tenant_id == tenant_id)
    if after is not None:
        query = query.where(table.c.name > after)
    query = query.order_by(table.c.name).limit(limit)
    async with engine.connect() as conn:
        return (await conn.execute(query)).mappings().all()


async def of_tenants(
    engine: AsyncEngine, table: Table, tenant_ids: Iterable[str], *where: ColumnElement[bool]
) -> list[RowMapping]:
    """Every row of these tenants that matches ``where`` (one query per thousand tenants)."""
    found: list[RowMapping] = []
    async with engine.connect() as conn:
        for part in chunks(sorted(set(tenant_ids)), 1000):
            query = select(table).where(table.c.tenant_id.in_(part), *where)
            found.extend((await conn.execute(query)).mappings().all())
    return found


async def put_one(
    engine: AsyncEngine,
    kind: Named,
    values: dict[str, Any],
    updated: Sequence[str],
    *,
    actor: str,
    secrets_changed: Callable[[RowMapping | None], list[str]],
) -> RowMapping:
    """Create or replace the row ``values`` names (``updated``: the columns a replacement
    writes) and audit it; ``secrets_changed`` names the secret fields that differ from
    those of the row before (None for a new row), which the audit record cannot show."""
    table, tenant_id, name = kind.table, values["tenant_id"], values["name"]
    mine = _mine(table, tenant_id, name)
    async with write_tx(engine) as conn:
        before = (await conn.execute(select(table).where(mine).with_for_update())).mappings()
        old = before.first()
        await conn.execute(upsert(conn, table, ["tenant_id", "name"], list(updated)).values(values))
        found = (await conn.execute(select(table).where(mine))).mappings().one()
        change = audit.diff(
            kind.audited(old) if old else None,
            kind.audited(found),
            secrets_changed=secrets_changed(old),
        )
        action = audit.Action.UPDATE if old else audit.Action.CREATE
        await audit.record(
            conn, audit.Change(tenant_id, actor, kind.resource, name, action, change)
        )
    return found


async def delete_one(
    engine: AsyncEngine, kind: Named, tenant_id: str, name: str, *, actor: str
) -> bool:
    """Delete the row and audit it; False if there was none."""
    mine = _mine(kind.table, tenant_id, name)
    async with write_tx(engine) as conn:
        query = select(kind.table).where(mine).with_for_update()
        row = (await conn.execute(query)).mappings().first()
        if row is None:
            return False
        await conn.execute(delete(kind.table).where(mine))
        change = audit.diff(kind.audited(row), None)
        await audit.record(
            conn, audit.Change(tenant_id, actor, kind.resource, name, audit.Action.DELETE, change)
        )
    return True


async def rotate(
    engine: AsyncEngine,
    keyring: Keyring,
    kind: Named,
    sealed_in: str,
    aad: Callable[[str, str], bytes],
    *,
    batch_size: int,
    actor: str,
) -> Rotation:
    """Re-seal the secrets in column ``sealed_in`` of every row with the current key, a
    batch per transaction (``aad``: what binds a row's secret to its tenant and name).
    Idempotent: rows already sealed with the current key are left alone. A row changed
    meanwhile (its sealed value differs from the one read) is left to its writer, who
    sealed it with the current key."""
    outcome = Rotation()
    after: tuple[str, str] = ("", "")
    t, column = kind.table, kind.table.c[sealed_in]
    while True:
        async with write_tx(engine) as conn:
            query = (
                select(t.c.tenant_id, t.c.name, column)
                .where(column.is_not(None), tuple_(t.c.tenant_id, t.c.name) > after)
                .order_by(t.c.tenant_id, t.c.name)
                .limit(batch_size)
            )
            rows = (await conn.execute(query)).all()
            for tenant_id, name, sealed in rows:
                if keyring.is_current(sealed):
                    continue
                bound = aad(tenant_id, name)
                try:
                    plain = keyring.decrypt(sealed, bound)
                except SecretError:
                    outcome.unreadable.append((tenant_id, name))
                    continue
                resealed = keyring.encrypt(plain, bound)
                changed = _mine(t, tenant_id, name) & (column == sealed)
                result = await conn.execute(update(t).where(changed).values({sealed_in: resealed}))
                outcome.changed += result.rowcount
                if result.rowcount:
                    await audit.record(conn, _resealed(kind, tenant_id, name, sealed_in, actor))
        if len(rows) < batch_size:
            return outcome
        after = (rows[-1][0], rows[-1][1])


def _resealed(kind: Named, tenant_id: str, name: str, sealed_in: str, actor: str) -> audit.Change:
    change = {sealed_in: {"from": MASK, "to": MASK}}
    return audit.Change(tenant_id, actor, kind.resource, name, audit.Action.REENCRYPT, change)
