"""``POST /v1/notifications`` answered in front of FastAPI's routing (ASGI middleware).

One notification per request is how most backends call Clarion, so this request's fixed
cost bounds what one API process accepts. FastAPI's middleware, routing and dependency
solving cost several times the work itself (docs/performance.md), so this middleware
answers the route's ordinary requests directly, with the same steps in the same order —
authenticate, validate, charge the quota, store — through the same functions as the
FastAPI route (:func:`clarion.api.routes.notifications.accept_one`).

It sits inside :class:`clarion.api.limits.EdgeGuard`, which has read the body within its
limits, checked it against the input rules and left the parsed JSON in the scope. A
request it does not take as ordinary — no parsed JSON object, a missing or wrong key, an
invalid notification — goes on to the FastAPI route untouched, which gives the answer
(nothing has been charged or stored by then), so every refusal is the route's own.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter
from starlette.datastructures import State
from starlette.types import ASGIApp, Receive, Scope, Send

from clarion.api.auth import KeyCache, authenticate
from clarion.api.errors import response_for
from clarion.api.idempotency import checked_key
from clarion.api.limits import PARSED_JSON
from clarion.api.routes.notifications import accept_one
from clarion.api.schemas import NotificationIn
from clarion.observability import metrics

PATH = "/v1/notifications"
_ITEM = TypeAdapter(NotificationIn)
_SCOPES = ("send",)


class SendOne:
    def __init__(self, app: ASGIApp, state: State, route: Any = None) -> None:
        self.app = app
        self.state = state
        # The FastAPI route it answers for, set in the scope as the router would set it
        # (a request's trace span and logs name it).
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        parsed = scope.get(PARSED_JSON)
        ready = await self._ordinary(scope, parsed) if isinstance(parsed, dict) else None
        if ready is None:
            await self.app(scope, receive, send)
            return
        tenant_id, item, key = ready
        scope["route"] = self.route
        try:
            response = await accept_one(self.state, tenant_id, item, key)
        except Exception as exc:
            response, code = response_for(exc)
            if code is not None:
                metrics.refused(code)
        await response(scope, receive, send)

    async def _ordinary(
        self, scope: Scope, body: dict[str, Any]
    ) -> tuple[str, NotificationIn, str | None] | None:
        """The tenant, notification and idempotency key of a request that is in order, or
        None for the route to answer."""
        authorization: bytes | None = None
        key: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"authorization" and authorization is None:
                authorization = value
            elif name == b"idempotency-key" and key is None:
                key = value
        keys: KeyCache = self.state.keys
        try:
            principal = await authenticate(
                keys, self.state.ctx.engine, (authorization or b"").decode("latin-1"), _SCOPES
            )
            item = _ITEM.validate_python(body)
            checked = checked_key(key.decode("latin-1") if key is not None else None)
        except Exception:  # refused, or the store out of reach: the route answers
            return None
        return principal.tenant_id, item, checked
