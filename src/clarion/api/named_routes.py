"""What the routes of rows a tenant names itself (``/v1/providers``, ``/v1/webhooks``)
share: one row, the rows by name, deleting one. Rows are shown by their ``public()`` view
(secrets masked), and a change drops the tenant's copy cached for sending."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

from fastapi import APIRouter, Depends
from pydantic import BaseModel
from starlette.responses import Response

from clarion.api.auth import Caller, require
from clarion.api.listing import ShortKeyCursor, Size, by, page
from clarion.api.openapi import operation_id_of
from clarion.api.responses import JSONResponse
from clarion.api.schemas import ShortNamePath
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
    """The routes of one kind of named row (``noun``): read with the ``reads`` scope,
    changed with ``manage``."""

    named: Named[R]
    noun: str
    copies: Callable[[Context], TenantCopies]
    reads: str = "read"

    def missing(self, name: str) -> NotFound:
        return NotFound(f"no {self.noun} named {name!r}")

    def changed(self, caller: Caller) -> None:
        """Drop the caller's tenant's cached copy (this process's at once, others' when
        their copy expires)."""
        self.copies(caller.ctx).invalidate(caller.tenant_id)

    def declare(
        self,
        router: APIRouter,
        module: str,
        shown: type[BaseModel],
        paged: type[BaseModel],
        *,
        one: str,
        listed: str,
        deleted: str,
    ) -> None:
        """``GET /{name}`` (one row, as ``shown``), ``GET ""`` (a page of rows, as
        ``paged``) and ``DELETE /{name}``, declared on ``router`` with their summaries as
        the operations of ``module``: ``<module>_get``, ``<module>_list_<module>`` and
        ``<module>_delete`` (api/openapi.py)."""
        listing = "list_" + module.rsplit(".", 1)[-1]
        ids = partial(operation_id_of, module)
        reader = Depends(require(self.reads))
        manager = Depends(require("manage"))

        @router.get("/{name}", summary=one, response_model=shown, operation_id=ids("get"))
        async def get(*, caller: Caller = reader, name: ShortNamePath) -> JSONResponse:
            row = await self.named.get(caller.engine, caller.tenant_id, name)
            if row is None:
                raise self.missing(name)
            return JSONResponse(row.public())

        @router.get("", summary=listed, response_model=paged, operation_id=ids(listing))
        async def list_rows(
            *, caller: Caller = reader, limit: Size = 50, cursor: ShortKeyCursor = None
        ) -> JSONResponse:
            rows = await self.named.list_page(
                caller.engine, caller.tenant_id, after=cursor, limit=limit + 1
            )
            return JSONResponse(page([r.public() for r in rows], limit, by("name")))

        @router.delete("/{name}", status_code=204, summary=deleted, operation_id=ids("delete"))
        async def delete(*, caller: Caller = manager, name: ShortNamePath) -> Response:
            if not await self.named.delete_one(
                caller.engine, caller.tenant_id, name, actor=caller.key_id
            ):
                raise self.missing(name)
            self.changed(caller)
            return Response(status_code=204)
