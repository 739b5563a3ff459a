"""The inbox's gate in one API process: recipient tokens in and out, revocations
followed, snoozed messages brought back, and the live events of every state change.

Checking a token reads no database: the tenant's inbox secret is cached (for
``provider_cache_ttl`` seconds, dropped at once when a rotation is seen) and revocations
are kept in memory, loaded once and then followed from ``inbox_revocations`` by
:meth:`InboxGate.upkeep` (every ``inbox_upkeep_interval`` seconds). A revocation also closes
this process's live connections that hold an older token.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from clarion.realtime.base import Event, Hub, arrivals, revocation
from clarion.realtime.slots import LiveSlots
from clarion.security import inbox_tokens
from clarion.security.inbox_tokens import InvalidToken, RecipientClaims
from clarion.store import inbox_access, inbox_changes, inbox_tickets
from clarion.store.db import AsyncEngine, utcnow
from clarion.store.inbox import State
from clarion.store.notifications import Admission, NewNotification
from clarion.store.pg import PgPool

log = logging.getLogger(__name__)

# Revocations committed slightly out of order are still seen: each poll looks this far back.
_OVERLAP = timedelta(seconds=5)
# How often tickets that expired unused are deleted.
_TICKET_SWEEP = 60.0


class UnknownTicket(InvalidToken):
    """A live connection's ticket that is unknown, used or expired (its token may be
    good: ask for another ticket)."""


Submit = Callable[[Sequence[NewNotification]], Awaitable[list[Admission]]]


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _fallback(row: dict[str, Any]) -> NewNotification:
    key = f"inapp-fallback:{row['id']}"
    return NewNotification(
        tenant_id=row["tenant_id"],
        template=row["template"],
        recipient_ids=[row["recipient_id"]],
        data=row["data"] or {},
        priority=row["priority"] or "normal",
        channels=[row["fallback_channel"]],
        send_at=None,
        expires_at=None,
        idempotency_key=key,
        request_hash=hashlib.sha256(key.encode()).hexdigest(),
    )


class InboxGate:
    def __init__(
        self, engine: AsyncEngine, hub: Hub, secret_ttl: float, slots: LiveSlots | None = None
    ) -> None:
        self.engine = engine
        self.hub = hub
        # The caps on this process's live connections (none unless given).
        self.slots = slots if slots is not None else LiveSlots(0, 0)
        self._secret_ttl = secret_ttl
        self._secrets: dict[str, tuple[float, str | None]] = {}
        self._revoked: dict[tuple[str, str], int] = {}
        self._watermark: datetime | None = None
        self._loaded = asyncio.Lock()
        self._ready = False
        # How an API process accepts a notification (its intake): offline fallbacks.
        self.submit: Submit | None = None
        # What time it is for snoozes and fallbacks (tests move it).
        self.clock: Callable[[], datetime] = utcnow
        self._next_sweep = 0.0
        # PostgreSQL's direct pool, for the upkeep's look (none on SQLite).
        self.pg: PgPool | None = None

    async def mint(self, tenant_id: str, recipient_id: str, ttl: int) -> tuple[str, datetime]:
        secret = await inbox_access.secret(self.engine, tenant_id, create=True)
        if secret is None:
            raise LookupError(tenant_id)
        self._secrets[tenant_id] = (time.monotonic() + self._secret_ttl, secret)
        now_ms = int(time.time() * 1000)
        token = inbox_tokens.mint(secret, tenant_id, recipient_id, now_ms, ttl)
        expires = datetime.fromtimestamp(now_ms // 1000 + ttl, tz=UTC)
        return token, expires

    async def verify(self, token: str) -> RecipientClaims:
        """The claims of a valid, unrevoked token; ``InvalidToken`` otherwise."""
        if not self._ready:
            await self._follow()
        tenant_id = inbox_tokens.tenant_of(token)
        secret = await self._secret(tenant_id)
        if secret is None:
            raise InvalidToken("invalid recipient token")
        claims = inbox_tokens.verify(secret, token)
        self._refuse_revoked(secret, claims)
        return claims

    def _refuse_revoked(self, secret: str, claims: RecipientClaims) -> None:
        digest = inbox_tokens.recipient_digest(secret, claims.recipient_id)
        for who in (digest, inbox_access.EVERYONE):
            at = self._revoked.get((claims.tenant_id, who))
            if at is not None and claims.issued_at_ms < at:
                raise InvalidToken("the recipient token has been revoked")

    async def ticket(self, claims: RecipientClaims) -> tuple[str, datetime]:
        """A single-use ticket that opens one live connection for the holder of ``claims``
        (store/inbox_tickets.py), and when it expires."""
        return await inbox_tickets.issue(self.engine, claims, self.clock())

    async def redeem(self, ticket: str) -> RecipientClaims:
        """The claims of a ticket's token, once; ``InvalidToken`` for a ticket that is
        unknown, used, expired, or whose token has expired or been revoked since."""
        if not self._ready:
            await self._follow()
        claims = await inbox_tickets.redeem(self.engine, ticket, self.clock())
        if claims is None:
            raise UnknownTicket("unknown, used or expired ticket")
        if claims.expires_at <= time.time():
            raise InvalidToken("the recipient token has expired", expired=True)
        secret = await self._secret(claims.tenant_id)
        if secret is None:
            raise UnknownTicket("unknown, used or expired ticket")
        self._refuse_revoked(secret, claims)
        return claims

    async def _secret(self, tenant_id: str) -> str | None:
        now = time.monotonic()
        hit = self._secrets.get(tenant_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        found = await inbox_access.secret(self.engine, tenant_id)
        if len(self._secrets) > 10_000:
            self._secrets.clear()
        self._secrets[tenant_id] = (now + self._secret_ttl, found)
        return found

    async def erased(self, tenant_id: str, recipient_id: str, at: datetime) -> None:
        """The recipient was erased (by this process): its tokens here and its live
        connections everywhere end at once (pushed through the hub); other processes
        refuse its tokens within ``inbox_upkeep_interval``."""
        secret = await self._secret(tenant_id)
        if secret is not None:
            digest = inbox_tokens.recipient_digest(secret, recipient_id)
            self._revoked[(tenant_id, digest)] = max(
                _ms(at), self._revoked.get((tenant_id, digest), 0)
            )
        self.hub.revoke(tenant_id, recipient_id, _ms(at))
        try:
            await self.hub.publish(tenant_id, recipient_id, revocation(_ms(at)))
        except Exception as exc:
            # The table is the truth: other processes follow it within the interval.
            log.warning("live push of a revocation failed: %r", exc)

    async def _apply(self, tenant_id: str, who: str, at: datetime) -> None:
        """Refuse older tokens of the recipient named by digest ``who`` (``*``: of the
        tenant) and close this process's live connections that hold one."""
        key = (tenant_id, who)
        at_ms = _ms(at)
        if self._revoked.get(key, -1) >= at_ms:
            return
        self._revoked[key] = at_ms
        if who == inbox_access.EVERYONE:
            self._secrets.pop(tenant_id, None)
            self.hub.revoke(tenant_id, None, at_ms)
            return
        secret = await self._secret(tenant_id)
        if secret is None:
            return
        for recipient_id in self.hub.recipients(tenant_id):
            if inbox_tokens.recipient_digest(secret, recipient_id) == who:
                self.hub.revoke(tenant_id, recipient_id, at_ms)

    async def _follow(self) -> None:
        async with self._loaded:
            revoked = await inbox_access.revocations_since(self.engine, self._since())
            await self._followed(revoked)

    def _since(self) -> datetime | None:
        return None if self._watermark is None else self._watermark - _OVERLAP

    async def _followed(self, revoked: list[tuple[str, str, datetime]]) -> None:
        """Apply revocations read after the watermark, and move it on (under ``_loaded``)."""
        for tenant_id, who, at in revoked:
            await self._apply(tenant_id, who, at)
            if self._watermark is None or at > self._watermark:
                self._watermark = at
        if self._watermark is None:
            self._watermark = utcnow() - _OVERLAP
        self._ready = True

    async def upkeep(self) -> int:
        """Follow revocations; bring back due snoozed messages; send due offline fallbacks.
        One read finds what there is to do (the API does this every second, so at rest
        it is a single look); a write follows only for what it found. Returns how many
        messages it acted on."""
        moment = self.clock()
        async with self._loaded:
            look = await inbox_changes.upkeep_look(
                self.engine, self._since(), moment, fallbacks=self.submit is not None, pg=self.pg
            )
            await self._followed(look.revoked)
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + _TICKET_SWEEP
            await inbox_tickets.sweep(self.engine, moment)
        fallen = await self._fall_back(look.fallbacks) if look.fallbacks else 0
        woken = await inbox_changes.wake_due(self.engine, moment) if look.snoozed else []
        if woken:
            await self.hub.publish_many(arrivals(woken))
        return len(woken) + fallen

    async def _fall_back(self, due: list[dict[str, Any]]) -> int:
        """Messages stored with a ``fallback_due`` of their own (by versions before an
        offline fallback became a step of its send's run, pipeline/runs.py), unseen in
        time: the notification goes out again on the fallback channel, as a notification
        of its own (preferences, quiet hours and all), once: its idempotency key is the
        message's, so processes that race submit one. No message is stored with one now."""
        items = [_fallback(row) for row in due if row["template"] is not None]
        if items and self.submit is not None:
            await self.submit(items)
        await inbox_changes.fallbacks_done(self.engine, [row["id"] for row in due])
        return len(due)

    async def changed(
        self,
        tenant_id: str,
        recipient_id: str,
        action: str,
        ids: list[str] | None,
        counts: State | None = None,
    ) -> None:
        """Tell the recipient's connections that messages changed (``ids`` None: many),
        with the counts the change committed."""
        event: Event = {"type": "changed", "action": action, "ids": ids}
        if counts is not None:
            event["counts"] = counts
        try:
            await self.hub.publish(tenant_id, recipient_id, event)
        except Exception as exc:
            log.warning("live push of an inbox change failed: %r", exc)
