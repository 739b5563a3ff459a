"""Rows a tenant names itself (providers, webhooks): a table keyed by (tenant_id, name).

Each kind of row is a :class:`Named`: its table, the resource its audit records name and
the dataclass a stored row becomes, whose ``audited()`` view the audit records compare. Every
change is audited in its own transaction; a row's sealed secrets are bound to its (tenant,
name) and re-sealed by :func:`rotate`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from sqlalchemy import ColumnElement, RowMapping, Table, delete, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.security.secrets import MASK, Keyring, SecretError
from clarion.store import audit
from clarion.store.db import utcnow, write_tx
from clarion.store.sql import chunks, first_row, upsert


class Stored(Protocol):
    """A dataclass with a field for each column of its table."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    def audited(self) -> dict[str, Any]:
        """What the audit log compares of a row: never a secret."""
        ...


R = TypeVar("R", bound=Stored)


@dataclass
class Rotation:
    changed: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Named(Generic[R]):
    table: Table
    resource: audit.Resource
    row_type: type[R]

    def of(self, row: Mapping[Any, Any]) -> R:
        """A stored row as its dataclass."""
        return self.row_type(**{f.name: row[f.name] for f in fields(self.row_type)})

    def matching(self, tenant_id: str, name: str) -> ColumnElement[bool]:
        """The row of that tenant and name."""
        return (self.table.c.tenant_id == tenant_id) & (self.table.c.name == name)

    def _audited(self, row: RowMapping | None) -> dict[str, Any] | None:
        return self.of(row).audited() if row is not None else None

    async def get(self, engine: AsyncEngine, tenant_id: str, name: str) -> R | None:
        query = select(self.table).where(self.matching(tenant_id, name))
        row = await first_row(engine, query)
        return self.of(row) if row is not None else None

    async def list_page(
        self, engine: AsyncEngine, tenant_id: str, *, after: str | None, limit: int
    ) -> list[R]:
        """A tenant's rows by name, those after ``after``."""
        t = self.table
        query = select(t).where(t.c.tenant_id == tenant_id)
        if after is not None:
            query = query.where(t.c.name > after)
        async with engine.connect() as conn:
            rows = (await conn.execute(query.order_by(t.c.name).limit(limit))).mappings()
            return [self.of(r) for r in rows]

    async def of_tenants(
        self, engine: AsyncEngine, tenant_ids: Iterable[str], *where: ColumnElement[bool]
    ) -> list[R]:
        """Every row of these tenants that matches ``where`` (a query per thousand tenants)."""
        found: list[R] = []
        async with engine.connect() as conn:
            for part in chunks(sorted(set(tenant_ids)), 1000):
                query = select(self.table).where(self.table.c.tenant_id.in_(part), *where)
                found.extend(self.of(r) for r in (await conn.execute(query)).mappings())
        return found

    def columns(self, source: object, given: Mapping[str, Any]) -> dict[str, Any]:
        """A row to store: each column the value ``given`` for it, else ``source``'s
        attribute of its name; ``created_at`` and ``updated_at`` are now."""
        now = utcnow()
        values = {"created_at": now, "updated_at": now, **given}
        for f in fields(self.row_type):
            if f.name not in values:
                values[f.name] = getattr(source, f.name)
        return values

    async def put(
        self,
        engine: AsyncEngine,
        source: object,
        given: Mapping[str, Any],
        *,
        keep: Collection[str] = (),
        actor: str,
        secrets_changed: Callable[[R | None], list[str]],
    ) -> R:
        """Create or replace the row of ``source``'s tenant and name (its columns: see
        :meth:`columns`) and audit it. A replacement writes every column but the keys,
        ``created_at`` and those in ``keep``. ``secrets_changed`` names the secret fields
        that differ from those of the row before (None for a new row), which the audit
        record cannot show."""
        values = self.columns(source, given)
        unchanged = {"tenant_id", "name", "created_at", *keep}
        updated = [f.name for f in fields(self.row_type) if f.name not in unchanged]
        t, tenant_id, name = self.table, values["tenant_id"], values["name"]
        mine = self.matching(tenant_id, name)
        async with write_tx(engine) as conn:
            old = (await conn.execute(select(t).where(mine).with_for_update())).mappings().first()
            await conn.execute(upsert(conn, t, ["tenant_id", "name"], list(updated)).values(values))
            found = (await conn.execute(select(t).where(mine))).mappings().one()
            before = self.of(old) if old is not None else None
            change = audit.diff(
                self._audited(old), self._audited(found), secrets_changed=secrets_changed(before)
            )
            action = audit.Action.UPDATE if old else audit.Action.CREATE
            await audit.record(
                conn, audit.Change(tenant_id, actor, self.resource, name, action, change)
            )
        return self.of(found)

    async def delete_one(
        self, engine: AsyncEngine, tenant_id: str, name: str, *, actor: str = audit.SYSTEM
    ) -> bool:
        """Delete the row and audit it; False if there was none."""
        mine = self.matching(tenant_id, name)
        async with write_tx(engine) as conn:
            query = select(self.table).where(mine).with_for_update()
            row = (await conn.execute(query)).mappings().first()
            if row is None:
                return False
            await conn.execute(delete(self.table).where(mine))
            change = audit.diff(self._audited(row), None)
            deleted = audit.Change(
                tenant_id, actor, self.resource, name, audit.Action.DELETE, change
            )
            await audit.record(conn, deleted)
        return True


async def rotate(
    engine: AsyncEngine,
    keyring: Keyring,
    kind: Named[Any],
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
                changed = kind.matching(tenant_id, name) & (column == sealed)
                result = await conn.execute(update(t).where(changed).values({sealed_in: resealed}))
                outcome.changed += result.rowcount
                if result.rowcount:
                    await audit.record(conn, _resealed(kind, tenant_id, name, sealed_in, actor))
        if len(rows) < batch_size:
            return outcome
        after = (rows[-1][0], rows[-1][1])


def _resealed(
    kind: Named[Any], tenant_id: str, name: str, sealed_in: str, actor: str
) -> audit.Change:
    change = {sealed_in: {"from": MASK, "to": MASK}}
    return audit.Change(tenant_id, actor, kind.resource, name, audit.Action.REENCRYPT, change)
