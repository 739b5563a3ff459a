"""Recipient tokens on the inbox routes: ``Authorization: Bearer <recipient token>``. API
keys are refused here (403), as recipient tokens are on every tenant route.

The live routes, which browsers open without headers (``EventSource``, ``WebSocket``),
take a single-use ticket instead (``?ticket=``, from ``POST /v1/inbox/ticket``): a URL is
kept by proxies and access logs, so it never carries the token itself. The WebSocket
still takes ``?token=`` from clients of earlier versions."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from clarion.errors import Forbidden, Unauthorized
from clarion.realtime.gate import UnknownTicket
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


async def live(conn: HTTPConnection, *, query_token: bool = False) -> RecipientClaims:
    """Who opens a live connection: the ``Authorization`` header, else a ticket
    (``?ticket=``, used up here), else (``query_token``) a token in ``?token=``."""
    if conn.headers.get("authorization"):
        return await check(conn, token_of(conn))
    ticket = conn.query_params.get("ticket")
    if ticket:
        try:
            return await conn.app.state.ctx.inbox.redeem(ticket)  # type: ignore[no-any-return]
        except InvalidToken as exc:
            code = "token_expired" if exc.expired else "invalid_token"
            if isinstance(exc, UnknownTicket):
                code = "invalid_ticket"
            raise Unauthorized(str(exc), code=code, headers=_CHALLENGE) from exc
    if query_token and conn.query_params.get("token"):
        return await check(conn, conn.query_params["token"])
    raise Unauthorized(
        "missing recipient token: send `Authorization: Bearer <token>`, or `?ticket=` with "
        "a ticket from POST /v1/inbox/ticket",
        headers=_CHALLENGE,
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
