"""``/v1/inbox``: a recipient's own inbox, with a recipient token (see ``api/inbox_auth.py``).

Every change is committed first, then pushed to the recipient's live connections
(``changed``), which follow it with the new counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request

from clarion.api.inbox_auth import recipient
from clarion.api.listing import Size, cursor_of, position_of
from clarion.api.outputs import InboxCounts, InboxMessage, InboxPage, InboxTicket, Updated
from clarion.api.responses import JSONResponse
from clarion.api.schemas import AwareDatetime, Body
from clarion.errors import NotFound, ValidationFailed
from clarion.realtime.gate import InboxGate
from clarion.security.inbox_tokens import RecipientClaims
from clarion.store import inbox as store
from clarion.store import inbox_changes as changes
from clarion.store.db import utcnow

router = APIRouter(prefix="/v1/inbox", tags=["inbox"])

MessageId = Annotated[str, Path(min_length=1, max_length=40)]
Action = Literal["read", "unread", "seen", "archive", "unarchive"]


class SnoozeIn(Body):
    until: AwareDatetime


@dataclass(frozen=True, slots=True)
class Inbox:
    """The inbox a recipient token opens, and the gate that tells its live connections
    of each change."""

    claims: RecipientClaims
    gate: InboxGate

    @property
    def owner(self) -> tuple[str, str]:
        """(tenant id, recipient id): whose inbox it is, as the store takes it."""
        return self.claims.tenant_id, self.claims.recipient_id

    async def changed(self, action: str, ids: list[str] | None, counts: store.State) -> None:
        await self.gate.changed(*self.owner, action, ids, counts)


async def _inbox(request: Request, claims: Annotated[RecipientClaims, Depends(recipient)]) -> Inbox:
    return Inbox(claims, request.app.state.ctx.inbox)


Reader = Annotated[Inbox, Depends(_inbox)]


@router.get("", response_model=InboxPage)
async def list_inbox(
    who: Reader,
    status: Literal["unread", "read", "archived", "all"] | None = None,
    limit: Size = 50,
    cursor: Annotated[str | None, Query(max_length=300)] = None,
) -> JSONResponse:
    """The recipient's inbox, newest first.

    `status`: `unread`, `read`, `archived`, or `all`; without it, everything not archived.
    Snoozed messages are left out until their time comes."""
    data, following = await store.page(
        who.gate.engine,
        *who.owner,
        status=status,
        # The inbox answered `validation_error` to a bad cursor before `invalid_cursor` existed.
        cursor=position_of(cursor, code="validation_error"),
        limit=limit,
    )
    return JSONResponse({"data": data, "next_cursor": cursor_of(following) if following else None})


@router.get("/count", response_model=InboxCounts)
async def count(who: Reader) -> JSONResponse:
    """Unread, unseen and total messages (archived and snoozed apart)."""
    return JSONResponse(await store.counts(who.gate.engine, *who.owner))


@router.post("/ticket", response_model=InboxTicket)
async def ticket(who: Reader) -> JSONResponse:
    """A single-use ticket for a live connection's URL.

    Browsers cannot send a header when they open `/v1/inbox/stream` (EventSource) or
    `/v1/inbox/ws` (WebSocket): they put this ticket in the URL as `?ticket=` instead of the
    token, which a URL would leave in proxies' and servers' logs. A ticket opens one connection,
    within 60 seconds (or before its token expires, if sooner), for the token's recipient; the
    connection lives as long as the token."""
    issued, expires_at = await who.gate.ticket(who.claims)
    return JSONResponse({"ticket": issued, "expires_at": store.stamp(expires_at)})


@router.post("/read-all", response_model=Updated)
async def read_all(who: Reader) -> JSONResponse:
    """Mark every unread message read."""
    return await _change_all(who, "read")


@router.post("/archive-read", response_model=Updated)
async def archive_read(who: Reader) -> JSONResponse:
    """Archive every read message."""
    return await _change_all(who, "archive")


async def _change_all(who: Inbox, action: str) -> JSONResponse:
    changed, counts = await changes.change_all(who.gate.engine, *who.owner, action)
    if changed:
        await who.changed(f"{action}_all", None, counts)
    return JSONResponse({"updated": changed})


@router.post("/{message_id}/snooze", response_model=InboxMessage)
async def snooze(who: Reader, message_id: MessageId, body: SnoozeIn) -> JSONResponse:
    """Hide a message until a time; it comes back then."""
    if body.until <= utcnow():
        raise ValidationFailed(
            "until must be in the future",
            details=[{"field": "until", "message": "must be in the future"}],
        )
    found = await changes.snooze(who.gate.engine, *who.owner, message_id, body.until)
    return await _changed_one(who, message_id, "snooze", found)


@router.post("/{message_id}/{action}", response_model=InboxMessage)
async def change(who: Reader, message_id: MessageId, action: Action) -> JSONResponse:
    """Mark one message read, unread, seen, archived or not."""
    found = await changes.change(who.gate.engine, *who.owner, message_id, action)
    return await _changed_one(who, message_id, action, found)


async def _changed_one(
    who: Inbox, message_id: str, action: str, found: changes.Changed | None
) -> JSONResponse:
    """The message a change left (404 if the inbox has none of that id), once the live
    connections are told."""
    if found is None:
        raise NotFound(f"no message {message_id!r} in this inbox")
    message, counts = found
    await who.changed(action, [message_id], counts)
    return JSONResponse(message)
