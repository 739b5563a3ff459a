"""One live inbox connection, whatever carries it (Server-Sent Events or a WebSocket).

A session subscribes to the hub first, then reads what the client missed from the inbox
table, so nothing committed in between is lost; a message that comes both ways is sent
once (the session remembers the ids it sent).

The session's cursor is a place in the recipient's arrival order (``inbox_messages.seq``,
given in commit order): everything up to it has been sent on this connection, or was in
the inbox before the connection opened. Every event carries it (SSE: ``id:``; WebSocket:
``"cursor"``), and a client resumes after it. Live messages may come through the hub out
of that order (two workers publish after their commits); when one arrives past a gap,
the session first reads the gap from the table, so the cursor never passes a message
the client has not been sent.

Every batch of events is followed by the recipient's counts. The events of a change carry
the counts it committed, with the counter row's ``version``: the newest version wins,
whatever order events arrive in; the counts are read again only for an event that
carries none.

Events sent to the client:

- ``{"type": "message", "message": {...}, "cursor": "..."}`` a new message (or one back
  from snooze);
- ``{"type": "changed", "action": "read" | ..., "ids": [...] | null}`` messages changed
  (``ids`` null: many, as with read-all);
- ``{"type": "count", "unread": N, "unseen": N, "total": N, "cursor": "..."}``;
- ``{"type": "reset", "reason": ...}`` more was missed than a resume replays, or the
  resume cursor is unknown: reload the list;
- ``{"type": "closed", "reason": ...}`` the server ends the connection
  (``too_slow``, ``revoked``, ``token_expired``, ``resync``, ``server_stopping``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from clarion.realtime.base import Event, Subscription
from clarion.realtime.gate import InboxGate
from clarion.security.inbox_tokens import RecipientClaims
from clarion.store import inbox

_REMEMBERED = 2048
_MAX_CURSOR = 2**63 - 1


def parse_cursor(text: str) -> int | str | None:
    """A resume cursor: a place in the arrival order (decimal digits), or, as clients of
    earlier versions send, a message id (``msg_...``); None when it is neither."""
    if text.isdigit() and text.isascii():
        value = int(text)
        return value if value <= _MAX_CURSOR else None
    if text.startswith("msg_") and 4 < len(text) <= 40 and text.isascii():
        return text
    return None


class LiveSession:
    def __init__(self, gate: InboxGate, claims: RecipientClaims, sub: Subscription) -> None:
        self.gate = gate
        self.claims = claims
        self.sub = sub
        self._sent: OrderedDict[str, None] = OrderedDict()
        self.cursor = 0
        self._counts: dict[str, int] = {"unread": 0, "unseen": 0, "total": 0}
        self._version = -1

    @property
    def position(self) -> str:
        return str(self.cursor)

    async def open(self) -> list[Event]:
        """What a new connection first gets: its counts, and the cursor of now."""
        state = await inbox.state(self.gate.engine, self.claims.tenant_id, self.claims.recipient_id)
        self.cursor = state["seq"]
        self._take(state)
        return [self.count()]

    async def resume(self, after: str) -> list[Event]:
        """The messages after cursor ``after``, in arrival order, that this connection has
        not sent, then the counts."""
        tenant_id, recipient_id = self.claims.tenant_id, self.claims.recipient_id
        state = await inbox.state(self.gate.engine, tenant_id, recipient_id)
        self._take(state)
        cursor = parse_cursor(after)
        if isinstance(cursor, str):
            cursor = await inbox.position(self.gate.engine, tenant_id, recipient_id, cursor)
        if cursor is None or cursor > state["seq"]:
            return [{"type": "reset", "reason": "unknown_message"}, self.count()]
        replay = await self._missed(cursor)
        if replay is None:
            return [{"type": "reset", "reason": "too_many_missed"}, self.count()]
        return [*replay, self.count()]

    async def _missed(self, after: int) -> list[Event] | None:
        """What arrived after ``after`` and this connection has not sent (None: more than a
        resume replays); the cursor moves past it."""
        tenant_id, recipient_id = self.claims.tenant_id, self.claims.recipient_id
        missed = await inbox.since(self.gate.engine, tenant_id, recipient_id, after)
        if len(missed) > inbox.RESUME_LIMIT:
            return None
        events: list[Event] = []
        for seq, message in missed:
            self.cursor = max(self.cursor, seq)
            if message["id"] in self._sent:
                # Sent earlier on this connection, so held by a client that gets the
                # frame before: that frame's place reaches past it.
                if events:
                    events[-1]["cursor"] = str(seq)
                continue
            event = self._message(message)
            # Its own place, not the connection's: the replay runs in arrival order, so
            # everything up to it has reached the client, and a client that drops after
            # this frame resumes with the next one. (The connection's cursor may already
            # be further: it opened at "now".)
            event["cursor"] = str(seq)
            events.append(event)
        return events

    async def translate(self, batch: list[Event]) -> list[Event]:
        """Hub events to client events: messages already sent are dropped, a message past
        a gap in the arrival order brings the gap first, and the batch ends with the
        counts."""
        out: list[Event] = []
        counted = True
        for event in batch:
            kind = event.get("type")
            if kind == "message":
                out.extend(await self._arrived(event))
            elif kind == "changed":
                out.append({k: v for k, v in event.items() if k != "counts"})
            else:
                continue
            counts = event.get("counts")
            if isinstance(counts, dict):
                self._take(counts)
            else:
                counted = False
        if not counted:
            self._take(
                await inbox.state(self.gate.engine, self.claims.tenant_id, self.claims.recipient_id)
            )
        out.append(self.count())
        return out

    async def _arrived(self, event: Event) -> list[Event]:
        message = event.get("message")
        seq = event.get("seq")
        if not isinstance(message, dict) or not isinstance(message.get("id"), str):
            return []
        out: list[Event] = []
        if isinstance(seq, int) and seq > self.cursor + 1:
            gap = await self._missed(self.cursor)
            if gap is None:
                self.cursor = seq
                return [{"type": "reset", "reason": "too_many_missed"}]
            out.extend(gap)
        if message["id"] in self._sent:
            return out
        if isinstance(seq, int):
            self.cursor = max(self.cursor, seq)
        sent = self._message(message)
        sent["cursor"] = self.position
        out.append(sent)
        return out

    def _take(self, state: dict[str, Any]) -> None:
        """Counts from a change (or the table), unless newer ones are known."""
        version = state.get("version")
        if not isinstance(version, int):
            return
        if version > self._version:
            self._version = version
            self._counts = {k: int(state.get(k) or 0) for k in ("unread", "unseen", "total")}

    def count(self) -> Event:
        return {"type": "count", **self._counts, "cursor": self.position}

    def _message(self, message: dict[str, Any]) -> Event:
        self._sent[message["id"]] = None
        if len(self._sent) > _REMEMBERED:
            self._sent.popitem(last=False)
        return {"type": "message", "message": message}
