"""Recipient tokens on the inbox routes: ``Authorization: Bearer <recipient token>`` (or,
on the WebSocket, ``?token=``). API keys are refused here (403), as recipient tokens are on
every tenant route."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from clarion.errors import Forbidden, Unauthorized
from clarion.security.inbox_tokens import InvalidToken, RecipientClaims, looks_like_token

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def token_of(conn: HTTPConnection, *, query: bool = False) -> str:
    header = conn.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if query and conn.query_params.get("token"):
        return conn.query_params["token"]
    raise Unauthorized(
        "missing recipient token: send `Authorization: Bearer <token>`", headers=_CHALLENGE
    )


async def check(conn: HTTPConnection, token: str) -> RecipientClaims:
    if not looks_like_token(token):
        if token.startswith("ck_"):
            raise Forbidden(
                "API keys are not accepted on inbox routes: use a recipient token "
                "(POST /v1/recipients/{id}/token)",
                code="recipient_token_required",
            )
        raise Unauthorized("invalid recipient token", code="invalid_token", headers=_CHALLENGE)
    try:
        return await conn.app.state.ctx.inbox.verify(token)  # type: ignore[no-any-return]
    except InvalidToken as exc:
        code = "token_expired" if exc.expired else "invalid_token"
        raise Unauthorized(str(exc), code=code, headers=_CHALLENGE) from exc


# Declares the scheme in the OpenAPI document; the token is read and checked above.
RECIPIENT_TOKEN = HTTPBearer(
    scheme_name="RecipientToken",
    description="A recipient token from `POST /v1/recipients/{id}/token` (the inbox only)",
    auto_error=False,
)
Declared = Annotated[HTTPAuthorizationCredentials | None, Depends(RECIPIENT_TOKEN)]


async def recipient(request: Request, _declared: Declared) -> RecipientClaims:
    """The dependency of the inbox's REST routes."""
    return await check(request, token_of(request))
