"""``Idempotency-Key`` for POSTs that create things: a repeat gets the original response."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import Request

from clarion.api.responses import JSONResponse
from clarion.errors import Conflict, ValidationFailed
from clarion.store import idempotency as store

Handler = Callable[[], Awaitable[tuple[int, Any]]]


def request_hash(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


MAX_KEY = 255


def header_key(request: Request) -> str | None:
    """The request's ``Idempotency-Key``, if any; 422 if longer than a stored key can be."""
    return checked_key(request.headers.get("idempotency-key"))


def checked_key(key: str | None) -> str | None:
    """An ``Idempotency-Key`` header's value, if any; 422 if too long."""
    if key is not None and len(key) > MAX_KEY:
        raise ValidationFailed(f"Idempotency-Key is longer than {MAX_KEY} characters")
    return key or None


async def idempotent(
    request: Request, tenant_id: str, scope: str, body: Any, handler: Handler
) -> JSONResponse:
    """Run ``handler`` once per key; repeats with the same body get its stored response."""
    key = header_key(request)
    if not key:
        status, content = await handler()
        return JSONResponse(content, status_code=status)
    engine = request.app.state.ctx.engine
    digest = request_hash(body)
    earlier = await store.claim(engine, tenant_id, key, scope, digest)
    if earlier is not None:
        if earlier.request_hash != digest:
            raise Conflict(
                "this idempotency key was used with a different request",
                code="idempotency_conflict",
            )
        if earlier.status == store.IN_PROGRESS:
            raise Conflict(
                "a request with this idempotency key is still in progress",
                code="idempotency_in_progress",
            )
        return JSONResponse(earlier.response, status_code=earlier.status)
    try:
        status, content = await handler()
    except BaseException:
        await store.release(engine, tenant_id, key, scope)
        raise
    jsonable = orjson.loads(orjson.dumps(content))
    await store.complete(engine, tenant_id, key, scope, status, jsonable)
    return JSONResponse(jsonable, status_code=status)
