"""``/v1/inbox/stream`` (Server-Sent Events) and ``/v1/inbox/ws`` (WebSocket): the live
inbox. Both take the recipient token in ``Authorization``, or a single-use ticket as
``?ticket=`` (browsers cannot send headers there; see api/inbox_auth.py); the WebSocket
also ``?token=``, for clients of earlier versions. The events are those of
:mod:`clarion.api.live`.

SSE: each event is ``id: <cursor>`` (the connection's place in the arrival order, see
:mod:`clarion.api.live`) and ``data: <json>``; a reconnecting ``EventSource`` sends it
back as ``Last-Event-ID`` and first receives what it missed. A comment
(``: heartbeat``) goes out when nothing else has for ``CLARION_INBOX_HEARTBEAT`` seconds.

WebSocket: a missing, bad or expired token (or an API key) is refused before the handshake
completes, with the HTTP status and JSON error body of the REST routes (401, 403).
``?after=<cursor>`` replays what was missed before anything else. The client may send
``{"type": "resume", "after": "<cursor>"}`` (first, to be answered before any live
event, or at any time) and ``{"type": "ping"}`` (answered
``{"type": "pong"}``). A frame that is not JSON, not an object, larger than 4 KiB, binary,
or of an unknown type is answered with ``{"type": "error", "code", "message"}`` and the
connection stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request, WebSocket
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from clarion.api.errors import api_error_response
from clarion.api.inbox_auth import live
from clarion.api.live import LiveSession
from clarion.errors import ApiError, TooManyRequests, Unauthorized
from clarion.realtime.base import TOKEN_EXPIRED, Event, Subscription
from clarion.realtime.gate import InboxGate
from clarion.realtime.slots import LimitReached, Slot
from clarion.security.inbox_tokens import RecipientClaims

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/inbox", tags=["inbox"])

MAX_FRAME = 4096
# The first frame may be a resume: live events wait for it this long.
_FIRST_FRAME = 1.0
# How long a connection's end waits for its reader and writer to stop (seconds).
_STOP_WAIT = 5.0
# A refused connection may try again this many seconds later (a cap is freed by a
# connection that ends).
_RETRY_AFTER = "10"
_CLOSE_CODES = {
    "too_slow": 4008,
    "revoked": 4001,
    "token_expired": 4001,
    "resync": 4009,
    "server_stopping": 1012,
}


async def _stream_reader(request: Request) -> RecipientClaims:
    return await live(request)


@contextlib.contextmanager
def _expiry(sub: Subscription, who: RecipientClaims) -> Iterator[None]:
    """Closes the connection when its token expires, whatever the traffic: one timer for
    the connection's life (not a timeout on every wait: see realtime/base.py,
    Subscription)."""
    timer = asyncio.get_running_loop().call_later(
        max(0.0, who.expires_at - time.time()), sub.close, TOKEN_EXPIRED
    )
    try:
        yield
    finally:
        timer.cancel()


def _sse(event: Event, cursor: str) -> bytes:
    # Every event's id is the connection's cursor as of that event: what a reconnect
    # resumes after.
    ident = event.get("cursor")
    ident = ident if isinstance(ident, str) else cursor
    return b"id: " + ident.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def _clean_id(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > 40 or not value.isascii():
        return None
    return value


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream(
    request: Request,
    who: Annotated[RecipientClaims, Depends(_stream_reader)],
    last_event_id: Annotated[str | None, Header(max_length=200)] = None,
    after: Annotated[str | None, Query(max_length=40)] = None,
) -> StreamingResponse:
    """Live inbox events (Server-Sent Events)."""
    gate: InboxGate = request.app.state.ctx.inbox
    heartbeat = request.app.state.ctx.settings.inbox_heartbeat
    resume_after = _clean_id(last_event_id) or _clean_id(after)
    slot = _admit(gate, who)

    async def events() -> AsyncIterator[bytes]:
        async with (
            _holding(slot),
            gate.hub.subscribe(who.tenant_id, who.recipient_id, who.issued_at_ms) as sub,
        ):
            with _expiry(sub, who):
                session = LiveSession(gate, who, sub)
                first = await session.open()
                if resume_after is not None:
                    first = await session.resume(resume_after)
                yield b"retry: 2000\n\n"
                for event in first:
                    yield _sse(event, session.position)
                while True:
                    try:
                        batch = await sub.next_batch(heartbeat)
                    except TimeoutError:
                        yield b": heartbeat\n\n"
                        continue
                    if batch is None:
                        yield _sse({"type": "closed", "reason": sub.reason}, session.position)
                        return
                    for event in await session.translate(batch):
                        yield _sse(event, session.position)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        # A stream whose client left before it began never runs its body: its slot is
        # given back after the response all the same.
        background=BackgroundTask(_released, slot),
    )


def _admit(gate: InboxGate, who: RecipientClaims) -> Slot:
    """A place for one more live connection of ``who``, or a 429 (``Retry-After``)."""
    try:
        return gate.slots.take(who.tenant_id, who.recipient_id)
    except LimitReached as exc:
        raise TooManyRequests(
            f"{exc}: close one before opening another",
            code="too_many_connections",
            details=[{"limit": exc.scope, "max": exc.limit}],
            headers={"Retry-After": _RETRY_AFTER},
        ) from exc


async def _released(slot: Slot) -> None:
    # A coroutine, so that it runs on the event loop (a plain function would be run in a
    # worker thread, beside the loop that counts the slots).
    slot.release()


@contextlib.asynccontextmanager
async def _holding(slot: Slot) -> AsyncIterator[None]:
    try:
        yield
    finally:
        slot.release()


class _Socket:
    """A WebSocket whose sends are one at a time (the reader answers pings and errors
    while the writer forwards events)."""

    def __init__(self, websocket: WebSocket) -> None:
        self.ws = websocket
        self._lock = asyncio.Lock()

    async def send(self, event: Event) -> None:
        async with self._lock:
            await self.ws.send_text(orjson.dumps(event).decode())

    async def error(self, code: str, message: str) -> None:
        await self.send({"type": "error", "code": code, "message": message})


def _frame(message: Mapping[str, Any]) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
    """A client frame read: (the object, None) or (None, (error code, message))."""
    text = message.get("text")
    if text is None:
        return None, ("binary_frame", "frames are JSON text")
    if len(text) > MAX_FRAME:
        return None, ("frame_too_large", f"frames are at most {MAX_FRAME} bytes")
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None, ("invalid_json", "the frame is not JSON")
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        return None, ("invalid_frame", 'a frame is an object with a "type"')
    return frame, None


async def _answer(sock: _Socket, session: LiveSession, frame: dict[str, Any]) -> None:
    kind = frame["type"]
    if kind == "ping":
        await sock.send({"type": "pong"})
    elif kind == "resume":
        after = frame.get("after")
        if not isinstance(after, str) or not 1 <= len(after) <= 40:
            await sock.error("invalid_frame", '"after" is a cursor (or a message id)')
            return
        for event in await session.resume(after):
            await sock.send(event)
    else:
        await sock.error("unknown_type", f"unknown frame type {kind[:40]!r}")


async def _handle(sock: _Socket, session: LiveSession, message: Mapping[str, Any]) -> bool:
    """Answer one client message; False once the client has gone."""
    if message["type"] == "websocket.disconnect":
        return False
    frame, problem = _frame(message)
    if problem is not None:
        await sock.error(*problem)
    elif frame is not None:
        await _answer(sock, session, frame)
    return True


async def _read(sock: _Socket, session: LiveSession) -> None:
    while await _handle(sock, session, await sock.ws.receive()):
        pass


async def _write(sock: _Socket, session: LiveSession) -> None:
    sub = session.sub
    while (batch := await sub.next_batch()) is not None:
        for event in await session.translate(batch):
            await sock.send(event)


async def _refuse(websocket: WebSocket, exc: ApiError) -> None:
    """Refuse the handshake: an HTTP 401, 403 or 429 with the JSON error body (and its
    headers: ``Retry-After``), before any WebSocket exists. A server without the
    denial-response extension of ASGI answers the close before accept with a bare 403."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(api_error_response(exc))
    else:
        await websocket.close(code=4000 + exc.status, reason=exc.code)


@router.websocket("/ws")
async def ws(websocket: WebSocket) -> None:
    try:
        who = await live(websocket, query_token=True)
    except ApiError as exc:
        await _refuse(websocket, exc)
        return
    except Exception:
        await _refuse(websocket, Unauthorized("invalid recipient token"))
        return
    gate: InboxGate = websocket.app.state.ctx.inbox
    try:
        slot = _admit(gate, who)
    except ApiError as exc:
        await _refuse(websocket, exc)
        return
    async with _holding(slot):
        await _connected(websocket, gate, who)


async def _connected(websocket: WebSocket, gate: InboxGate, who: RecipientClaims) -> None:
    await websocket.accept()
    sock = _Socket(websocket)
    async with gate.hub.subscribe(who.tenant_id, who.recipient_id, who.issued_at_ms) as sub:
        session = LiveSession(gate, who, sub)
        with _expiry(sub, who):
            await _serve(websocket, sock, session, _clean_id(websocket.query_params.get("after")))
        reason = sub.reason
    await _close(websocket, reason)


async def _serve(
    websocket: WebSocket, sock: _Socket, session: LiveSession, resume_after: str | None
) -> None:
    opening = await session.open()
    if resume_after is not None:
        # ``?after=``: the replay comes before anything else, as on SSE, so no frame
        # this connection sends carries a place past what the client holds.
        opening = await session.resume(resume_after)
    for event in opening:
        await sock.send(event)
    if resume_after is None:
        # A first frame (a resume) is answered before any live event goes out.
        first: Mapping[str, Any] | None = None
        with contextlib.suppress(TimeoutError):
            first = await asyncio.wait_for(websocket.receive(), _FIRST_FRAME)
        if first is not None and not await _handle(sock, session, first):
            return
    tasks = [
        asyncio.create_task(_read(sock, session), name="inbox-ws-read"),
        asyncio.create_task(_write(sock, session), name="inbox-ws-write"),
        # A writer blocked on a client that stopped reading still ends at the close.
        asyncio.create_task(session.sub.closed.wait(), name="inbox-ws-closed"),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        # Bounded: a task that lost its cancellation (docs/architecture.md) ends when the
        # subscription closes, right after this.
        done, pending = await asyncio.wait(tasks, timeout=_STOP_WAIT)
        for task in done:
            if not task.cancelled():
                task.exception()  # retrieved: the connection's end is told otherwise
        if pending:
            log.warning("a live connection's %d task(s) did not stop when asked", len(pending))


async def _close(websocket: WebSocket, reason: str | None) -> None:
    if websocket.client_state != WebSocketState.CONNECTED:
        return
    code = _CLOSE_CODES.get(reason or "", 1000)
    # A client that stopped reading may never take the close frame: bounded.
    with contextlib.suppress(TimeoutError, WebSocketDisconnect, RuntimeError, OSError):
        async with asyncio.timeout(2.0):
            await websocket.close(code=code, reason=reason or "")
