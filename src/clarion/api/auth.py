"""Bearer API keys with scopes. Lookups are cached briefly: auth is on every request."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from clarion.errors import Forbidden, Unauthorized
from clarion.observability import logs
from clarion.pipeline.context import Context
from clarion.security.inbox_tokens import looks_like_token
from clarion.store import tenants as tenant_store
from clarion.store.db import AsyncEngine

_TTL = 30.0
_MISS_TTL = 5.0
# The scopes each dependency made by `require` allows, for the OpenAPI document (`x-scopes`).
SCOPES_OF: dict[Callable[..., object], tuple[str, ...]] = {}


@dataclass(frozen=True, slots=True)
class Principal:
    tenant_id: str
    key_id: str
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class Caller:
    """A request made with an API key: the key's principal and the process's context, the
    two things a route needs to reach its tenant's rows."""

    principal: Principal
    ctx: Context

    @property
    def tenant_id(self) -> str:
        return self.principal.tenant_id

    @property
    def key_id(self) -> str:
        """The key's id: who the audit log says made a change."""
        return self.principal.key_id

    @property
    def scopes(self) -> frozenset[str]:
        return self.principal.scopes

    @property
    def engine(self) -> AsyncEngine:
        return self.ctx.engine


class KeyCache:
    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, Principal | None]] = {}

    async def lookup(self, engine: AsyncEngine, secret: str) -> Principal | None:
        now = time.monotonic()
        hit = self._entries.get(secret)
        if hit is not None and hit[0] > now:
            return hit[1]
        grant = await tenant_store.find_key(engine, secret)
        principal = Principal(grant.tenant_id, grant.key_id, grant.scopes) if grant else None
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[secret] = (now + (_TTL if principal else _MISS_TTL), principal)
        return principal

    def forget(self, key_id: str) -> None:
        """Drop a key this process has cached (it was revoked here: refuse it at once;
        other processes see the revocation when their entry expires)."""
        stale = [s for s, (_, p) in self._entries.items() if p is not None and p.key_id == key_id]
        for secret in stale:
            del self._entries[secret]


def bearer(request: Request) -> str:
    return bearer_of(request.headers.get("authorization", ""))


def bearer_of(header: str) -> str:
    """The token of an ``Authorization: Bearer`` header's value, or a 401."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "missing API key: send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return token.strip()


# Declares the scheme in the OpenAPI document; the key is read and checked below (with
# Clarion's own error bodies, so FastAPI's auto_error is off).
API_KEY = HTTPBearer(
    scheme_name="HTTPBearer",
    description="An API key: `Authorization: Bearer <key>`",
    auto_error=False,
)
Declared = Annotated[HTTPAuthorizationCredentials | None, Depends(API_KEY)]


def require(
    scope: str, *others: str
) -> Callable[[Request, HTTPAuthorizationCredentials | None], Awaitable[Caller]]:
    """A dependency that authenticates the request and checks a scope (any one of
    ``scope`` and ``others``)."""
    allowed = (scope, *others)

    async def dependency(request: Request, _declared: Declared) -> Caller:
        ctx: Context = request.app.state.ctx
        principal = await authenticate(
            request.app.state.keys, ctx.engine, request.headers.get("authorization", ""), allowed
        )
        return Caller(principal, ctx)

    SCOPES_OF[dependency] = allowed
    return dependency


async def authenticate(
    keys: KeyCache, engine: AsyncEngine, authorization: str, allowed: tuple[str, ...]
) -> Principal:
    """The principal of an ``Authorization`` header's API key holding one of ``allowed``
    scopes; a 401 or 403 otherwise."""
    secret = bearer_of(authorization)
    if looks_like_token(secret):
        raise Forbidden(
            "a recipient token is accepted on /v1/inbox only; this route takes an API key",
            code="api_key_required",
        )
    principal = await keys.lookup(engine, secret)
    if principal is None:
        raise Unauthorized("invalid API key", headers={"WWW-Authenticate": "Bearer"})
    # The request's own task: every line it logs from here carries the tenant.
    logs.bind(tenant_id=principal.tenant_id)
    if not principal.scopes.intersection(allowed):
        wanted = " or ".join(repr(s) for s in allowed)
        raise Forbidden(f"this key lacks the {wanted} scope", code="insufficient_scope")
    return principal


# Who may call a route, by scope: the parameter a route declares for its principal.
Reader = Annotated[Caller, Depends(require("read"))]
Sender = Annotated[Caller, Depends(require("send"))]
Manager = Annotated[Caller, Depends(require("manage"))]
Admin = Annotated[Caller, Depends(require("admin"))]
