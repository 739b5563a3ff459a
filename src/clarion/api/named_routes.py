"""What the routes of rows a tenant names itself (``/v1/providers``, ``/v1/webhooks``)
share: one row, the rows by name, deleting one. Rows are shown by their ``public()`` view
(secrets masked), and a change drops the tenant's copy cached for sending."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from starlette.responses import Response

from clarion.api.auth import Caller
from clarion.api.listing import by, page
from clarion.api.responses import JSONResponse
from clarion.errors import NotFound
from clarion.pipeline.context import Context
from clarion.store.named import Named, Stored


class Shown(Stored, Protocol):
    def public(self) -> dict[str, Any]:
        """The row as the API shows it."""
        ...


class TenantCopies(Protocol):
    def invalidate(self, tenant_id: str) -> None: ...


R = TypeVar("R", bound=Shown)


@dataclass(frozen=True, slots=True)
class NamedRoutes(Generic[R]):
    named: Named[R]
    noun: str
    copies: Callable[[Context], TenantCopies]

    def missing(self, name: str) -> NotFound:
        return NotFound(f"no {self.noun} named {name!r}")

    def changed(self, caller: Caller) -> None:
        """Drop the caller's tenant's cached copy (this process's at once, others' when
        their copy expires)."""
        self.copies(caller.ctx).invalidate(caller.tenant_id)

    async def one(self, caller: Caller, name: str) -> JSONResponse:
        row = await self.named.get(caller.engine, caller.tenant_id, name)
        if row is None:
            raise self.missing(name)
        return JSONResponse(row.public())

    async def page(self, caller: Caller, limit: int, after: str | None) -> JSONResponse:
        rows = await self.named.list_page(
            caller.engine, caller.tenant_id, after=after, limit=limit + 1
        )
        return JSONResponse(page([r.public() for r in rows], limit, by("name")))

    async def delete(self, caller: Caller, name: str) -> Response:
        found = await self.named.delete_one(
            caller.engine, caller.tenant_id, name, actor=caller.key_id
        )
        if not found:
            raise self.missing(name)
        self.changed(caller)
        return Response(status_code=204)
