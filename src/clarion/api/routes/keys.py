"""``/v1/keys``: the tenant's API keys (scope ``admin``).

A key's secret is shown once, in the answer that made it; Clarion keeps only its SHA-256
hash, so it can neither show it again nor replay that answer (``POST`` takes no
``Idempotency-Key``: a retried creation makes a second key, which can be revoked). A key
can grant only scopes it holds itself, and cannot revoke itself: revoking the key making
the request would lock the caller out mid-session (revoke it with another admin key, or
``clarion keys revoke``). A revocation takes effect at once in the process that made it,
and in every other within 30 seconds (their key caches).
"""

from __future__ import annotations

import unicodedata
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from pydantic import Field, field_validator

from clarion.api.auth import Admin
from clarion.api.listing import Newest
from clarion.api.outputs import ApiKeyCreated, ApiKeyPage
from clarion.api.responses import JSONResponse
from clarion.api.schemas import Body, example
from clarion.domain.models import ALL_SCOPES, Scope
from clarion.errors import Conflict, Forbidden, NotFound
from clarion.store import tenants as store

router = APIRouter(prefix="/v1/keys", tags=["api keys"])
KeyId = Annotated[str, Path(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_-]+$")]


class KeyIn(Body):
    model_config = example({"name": "billing service", "scopes": ["send"]})

    name: str = Field(
        min_length=1, max_length=100, description="What the key is for (1 to 100 characters)"
    )
    scopes: list[Scope] = Field(
        min_length=1,
        max_length=len(ALL_SCOPES),
        description="Some of send, read, manage, admin; only scopes the calling key holds",
    )

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        text = value.strip()
        if not text:
            raise ValueError("a name has at least one visible character")
        if any(unicodedata.category(c) in ("Cc", "Cf") for c in text):
            raise ValueError("a name has no control characters")
        return text

    @field_validator("scopes")
    @classmethod
    def _distinct(cls, value: list[Scope]) -> list[Scope]:
        return sorted(set(value))


@router.get("", response_model=ApiKeyPage)
async def list_keys(caller: Admin, at: Newest) -> JSONResponse:
    """The tenant's API keys, newest first (never their secrets).

    Revoked keys are listed too, with `revoked_at`."""
    rows = await store.list_keys_page(caller.engine, caller.tenant_id, at.position, at.read)
    return JSONResponse(at.page(rows))


@router.post("", status_code=201, response_model=ApiKeyCreated)
async def create(caller: Admin, body: KeyIn) -> JSONResponse:
    """Create an API key; its secret is in this answer only.

    The answer's `secret` is the whole key; Clarion keeps only its hash and never shows it again.
    A key grants only scopes the calling key holds (403 `insufficient_scope` otherwise). No
    `Idempotency-Key`: an answer holding a secret is never stored, so a retried creation makes
    another key."""
    wanted = [s.value for s in body.scopes]
    missing = [s for s in wanted if s not in caller.scopes]
    if missing:
        raise Forbidden(
            f"this key cannot grant scopes it lacks: {', '.join(missing)}",
            code="insufficient_scope",
            details=[{"field": "scopes", "message": f"not held: {', '.join(missing)}"}],
        )
    made = await store.issue_key(
        caller.engine,
        caller.tenant_id,
        wanted,
        name=body.name,
        actor=caller.key_id,
    )
    return JSONResponse(made, status_code=201, headers={"Cache-Control": "no-store"})


@router.delete(
    "/{key_id}",
    status_code=204,
    responses={409: {"description": "The key would revoke itself (`cannot_revoke_own_key`)"}},
)
async def revoke(request: Request, caller: Admin, key_id: KeyId) -> Response:
    """Revoke an API key.

    Refused at once by this process and by every other within 30 seconds. Revoking a revoked key
    changes nothing (204). The key making the request cannot revoke itself: 409
    `cannot_revoke_own_key`."""
    if key_id == caller.key_id:
        raise Conflict(
            "a key cannot revoke itself: use another admin key, or `clarion keys revoke`",
            code="cannot_revoke_own_key",
        )
    outcome = await store.revoke_key(caller.engine, caller.tenant_id, key_id, actor=caller.key_id)
    if outcome == "unknown":
        raise NotFound(f"no API key {key_id!r}")
    request.app.state.keys.forget(key_id)
    return Response(status_code=204)
