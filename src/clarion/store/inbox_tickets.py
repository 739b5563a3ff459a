"""Inbox tickets: what a browser puts in a live connection's URL instead of its recipient
token (``EventSource`` and ``WebSocket`` cannot send an ``Authorization`` header, and a URL
is kept by proxies and access logs).

A ticket is asked for with the token (``POST /v1/inbox/ticket``), lives a minute, and
opens one connection: redeeming it deletes its row, in one statement, so of two API
processes that race for it one wins. Only its SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.security.inbox_tokens import RecipientClaims
from clarion.store.db import as_utc, write_tx
from clarion.store.tables import inbox_tickets as t

PREFIX = "itk_"
TTL = timedelta(seconds=60)


def _digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


def looks_like_ticket(text: str) -> bool:
    return text.startswith(PREFIX) and 20 < len(text) <= 100 and text.isascii()


async def issue(
    engine: AsyncEngine, claims: RecipientClaims, now: datetime
) -> tuple[str, datetime]:
    """A new ticket for the holder of ``claims``, and when it expires: in ``TTL``, or with
    its token if that is sooner."""
    ticket = PREFIX + secrets.token_urlsafe(32)
    expires = min(now + TTL, datetime.fromtimestamp(claims.expires_at, tz=UTC))
    async with write_tx(engine) as conn:
        await conn.execute(
            t.insert().values(
                id=_digest(ticket),
                tenant_id=claims.tenant_id,
                recipient_id=claims.recipient_id,
                token_issued_ms=claims.issued_at_ms,
                token_expires=claims.expires_at,
                expires_at=expires,
            )
        )
    return ticket, expires


async def redeem(engine: AsyncEngine, ticket: str, now: datetime) -> RecipientClaims | None:
    """The claims of the token the ticket was issued for, once: the ticket is gone after.
    None: unknown, already used, or expired."""
    if not looks_like_ticket(ticket):
        return None
    async with write_tx(engine) as conn:
        row = (
            await conn.execute(
                delete(t)
                .where(t.c.id == _digest(ticket))
                .returning(
                    t.c.tenant_id,
                    t.c.recipient_id,
                    t.c.token_issued_ms,
                    t.c.token_expires,
                    t.c.expires_at,
                )
            )
        ).first()
    if row is None or (as_utc(row.expires_at) or now) <= now:
        return None
    return RecipientClaims(
        row.tenant_id, row.recipient_id, int(row.token_issued_ms), int(row.token_expires)
    )


async def sweep(engine: AsyncEngine, now: datetime) -> int:
    """Forget tickets that expired unused; how many."""
    async with write_tx(engine) as conn:
        result = await conn.execute(delete(t).where(t.c.expires_at <= now))
    return int(result.rowcount or 0)
