"""JSON responses: orjson, timestamps as RFC 3339 with ``Z``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from starlette.responses import Response

from clarion.api.auth import Caller
from clarion.errors import NotFound
from clarion.store.db import AsyncEngine

T = TypeVar("T")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS)


def or_404(value: T | None, message: str) -> T:
    """``value``, unless there is none: then a 404 saying ``message``."""
    if value is None:
        raise NotFound(message)
    return value


# A store's read of one row of a tenant by its key (None when there is none).
Read = Callable[[AsyncEngine, str, str], Awaitable[dict[str, Any] | None]]


async def one_row(caller: Caller, read: Read, key: str, noun: str) -> JSONResponse:
    """The answer that shows one row of the caller's tenant: what ``read`` finds by ``key``,
    or a 404 ``no <noun> '<key>'``."""
    found = await read(caller.engine, caller.tenant_id, key)
    return JSONResponse(or_404(found, f"no {noun} {key!r}"))


def deleted(found: bool, noun: str, key: str) -> Response:
    """The answer to deleting one row of a tenant by its key: 204, or a 404
    ``no <noun> '<key>'`` when there was none (``found`` false)."""
    if not found:
        raise NotFound(f"no {noun} {key!r}")
    return Response(status_code=204)


# Every HTML page Clarion serves refuses to be framed by another site (clickjacking):
# ``frame-ancestors 'none'`` for browsers that read CSP, ``X-Frame-Options`` for the rest.
NO_FRAMING = "frame-ancestors 'none'"


def html_headers(csp: str, others: dict[str, str] | None = None) -> dict[str, str]:
    """The headers of an HTML page whose Content-Security-Policy is ``csp``, with framing
    forbidden (added to ``csp`` unless it already names ``frame-ancestors``)."""
    if "frame-ancestors" not in csp:
        csp = f"{csp}; {NO_FRAMING}"
    return {"Content-Security-Policy": csp, "X-Frame-Options": "DENY", **(others or {})}
