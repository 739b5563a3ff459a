"""The live inbox over a real socket, on both backends: SSE and WebSocket receive what a
worker stored, resume returns exactly what was missed, hostile frames get error frames,
erasure and rotation close connections, a stalled client is cut without delaying others."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from clarion.security import inbox_tokens
from clarion.store import inbox, inbox_access
from harness import Harness, make_settings, running
from inbox_kit import (
    Socket,
    Stream,
    bearer,
    event_stream,
    feed,
    inbox_ready,
    send,
    serving,
    token_for,
    websocket,
)


@pytest.fixture
async def base(app: Harness) -> AsyncIterator[str]:
    async with serving(app) as url:
        yield url


async def test_websocket_receives_a_message_from_the_worker(app: Harness, base: str) -> None:
    token = await inbox_ready(app, "u-1")
    async with websocket(base, token) as ws:
        assert await ws.next() == {
            "type": "count",
            "unread": 0,
            "unseen": 0,
            "total": 0,
            "cursor": "0",
        }
        await send(app, "u-1", 1)
        event = await ws.until("message")
        assert event["message"]["title"] == "Shipped 1"
        assert event["message"]["read_at"] is None
        assert event["cursor"] == "1"
        counted = await ws.until("count")
        assert counted == {"type": "count", "unread": 1, "unseen": 1, "total": 1, "cursor": "1"}
        # A change made elsewhere (another device, over REST) reaches this connection.
        mid = event["message"]["id"]
        response = await app.client.post(f"/v1/inbox/{mid}/read", headers=bearer(token))
        assert response.status_code == 200
        changed = await ws.until("changed")
        assert changed == {"type": "changed", "action": "read", "ids": [mid]}
        counted = await ws.until("count")
        assert counted == {"type": "count", "unread": 0, "unseen": 0, "total": 1, "cursor": "1"}
        await ws.send({"type": "ping"})
        assert await ws.until("pong") == {"type": "pong"}


async def test_sse_receives_a_message_from_the_worker(app: Harness, base: str) -> None:
    token = await inbox_ready(app, "u-1")
    async with event_stream(base, token) as stream:
        ident, first = await stream.next()
        assert first["type"] == "count"
        assert ident == "0"  # nothing yet: resuming from "0" means from the start
        await send(app, "u-1", 1)
        ident, event = await stream.until("message")
        assert ident == event["cursor"] == "1"
        ident, counted = await stream.until("count")
        assert counted["unread"] == 1
        assert ident == "1"


async def test_a_connection_never_sees_another_recipients_events(app: Harness, base: str) -> None:
    mine = await inbox_ready(app, "u-1")
    await app.put_recipient("u-2", email="u-2@example.com")
    async with websocket(base, mine) as ws:
        await ws.until("count")
        await send(app, "u-2", 1)
        await send(app, "u-1", 2)
        event = await ws.until("message")
        assert event["message"]["title"] == "Shipped 2"
        [only] = (await feed(app, mine))["data"]
        assert only["id"] == event["message"]["id"]


async def _receive_n(ws: Socket, n: int) -> list[dict[str, Any]]:
    return [await ws.until("message") for _ in range(n)]


async def arrival_order(app: Harness, rid: str) -> list[str]:
    """The recipient's message ids in arrival order (the order a resume replays)."""
    return [m["id"] for _, m in await inbox.since(app.ctx.engine, app.tenant_id, rid, 0)]


async def test_websocket_resume_returns_exactly_what_was_missed(app: Harness, base: str) -> None:
    token = await inbox_ready(app, "u-1")
    async with websocket(base, token) as ws:
        await ws.until("count")
        for i in range(2):
            await send(app, "u-1", i)
        seen = await _receive_n(ws, 2)
    for i in range(2, 5):
        await send(app, "u-1", i)
    await app.drain()
    everything = await arrival_order(app, "u-1")
    assert everything[:2] == [e["message"]["id"] for e in seen]
    cursor = seen[-1]["cursor"]
    async with websocket(base, token) as ws:
        await ws.send({"type": "resume", "after": cursor})
        await ws.until("count")  # the connection's opening count
        replayed = await _receive_n(ws, 3)
        assert [e["message"]["id"] for e in replayed] == everything[2:]
        assert [int(e["cursor"]) for e in replayed] == sorted(int(e["cursor"]) for e in replayed)
        assert (await ws.until("count"))["total"] == 5
        # Nothing more: a ping's answer comes next, no message twice.
        await ws.send({"type": "ping"})
        assert (await ws.next())["type"] == "pong"
        # Resuming again from the same place sends nothing this connection already sent.
        await ws.send({"type": "resume", "after": cursor})
        assert (await ws.next())["type"] == "count"


async def test_a_resume_after_a_message_id_still_works(lite: Harness) -> None:
    """Clients of earlier versions resume after the id of the last message they got."""
    token = await inbox_ready(lite, "u-1")
    for i in range(3):
        await send(lite, "u-1", i)
    await lite.drain()
    everything = await arrival_order(lite, "u-1")
    async with serving(lite) as base, websocket(base, token) as ws:
        await ws.until("count")
        await ws.send({"type": "resume", "after": everything[0]})
        replayed = await _receive_n(ws, 2)
        assert [e["message"]["id"] for e in replayed] == everything[1:]
        assert (await ws.next())["type"] == "count"
        # A cursor past the end, or neither a cursor nor a message id: reload.
        for bad in ("99", "12345678901234567890123", "nonsense"):
            await ws.send({"type": "resume", "after": bad})
            assert await ws.next() == {"type": "reset", "reason": "unknown_message"}
            assert (await ws.next())["type"] == "count"


async def test_sse_resume_with_last_event_id(app: Harness, base: str) -> None:
    token = await inbox_ready(app, "u-1")
    async with event_stream(base, token) as stream:
        await stream.next()
        await send(app, "u-1", 0)
        last, _ = await stream.until("message")
    assert last is not None
    for i in range(1, 4):
        await send(app, "u-1", i)
    await app.drain()
    expected = (await arrival_order(app, "u-1"))[1:]
    async with event_stream(base, token, last_event_id=last) as stream:
        got = []
        while True:
            ident, event = await stream.next()
            if event["type"] == "message":
                got.append(event["message"]["id"])
                assert ident == event["cursor"]
            elif event["type"] == "count":
                break
        assert got == expected
        assert event["total"] == 4


async def test_bad_frames_get_error_frames_and_the_connection_lives(
    app: Harness, base: str
) -> None:
    token = await inbox_ready(app, "u-1")
    async with websocket(base, token) as ws:
        await ws.until("count")
        cases = [
            ("{not json", "invalid_json"),
            ("[1, 2]", "invalid_frame"),
            ('{"no": "type"}', "invalid_frame"),
            ('{"type": "explode"}', "unknown_type"),
            ('{"type": "resume"}', "invalid_frame"),
            ('{"type": "resume", "after": 5}', "invalid_frame"),
            ('{"type": "' + "x" * 5000 + '"}', "frame_too_large"),
            (b"\x00\x01binary", "binary_frame"),
        ]
        for frame, code in cases:
            await ws.send(frame)
            error = await ws.until("error")
            assert error["code"] == code, (frame, error)
        # An unknown resume id asks the client to reload, and the connection goes on.
        await ws.send({"type": "resume", "after": "msg_unknown"})
        assert await ws.next() == {"type": "reset", "reason": "unknown_message"}
        await send(app, "u-1", 1)
        assert (await ws.until("message"))["message"]["title"] == "Shipped 1"
    # A frame larger than the server takes closes that connection with 1009; others live.
    async with websocket(base, token, max_size=None) as ws:
        await ws.until("count")
        await ws.send("x" * (2 * 1024 * 1024))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.next()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
    async with websocket(base, token) as ws:
        assert (await ws.next())["type"] == "count"


async def test_bad_tokens_on_the_websocket_are_refused_before_the_handshake(
    app: Harness, base: str
) -> None:
    """No WebSocket opens: the upgrade is answered with the REST routes' status and JSON
    error body, whether the token comes in the query or the header."""
    await inbox_ready(app, "u-1")
    secret = await inbox_access.secret(app.ctx.engine, app.tenant_id)
    assert secret is not None
    past_ms = int((time.time() - 7200) * 1000)
    expired = inbox_tokens.mint(secret, app.tenant_id, "u-1", past_ms, 60)
    tampered = (await token_for(app, "u-1"))[:-4] + "AAAA"
    cases = [
        ("nonsense", 401, "invalid_token"),
        (tampered, 401, "invalid_token"),
        (expired, 401, "token_expired"),
        (app.key, 403, "recipient_token_required"),
    ]
    for (token, status, code), header in itertools.product(cases, (False, True)):
        with pytest.raises(InvalidStatus) as refused:
            async with websocket(base, token, header=header):
                pass
        response = refused.value.response
        assert response.status_code == status, (token, header)
        body = orjson.loads(response.body or b"{}")
        assert body["error"]["code"] == code
        assert set(body["error"]) == {"code", "message", "details"}
    # No token at all.
    url = base.replace("http://", "ws://") + "/v1/inbox/ws"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url):
            pass
    assert refused.value.response.status_code == 401
    # The server goes on: a good token connects.
    async with websocket(base, await token_for(app, "u-1")) as ws:
        assert (await ws.next())["type"] == "count"


async def test_erasure_closes_the_recipients_connections(app: Harness, base: str) -> None:
    token = await inbox_ready(app, "u-1")
    other = await inbox_ready(app, "u-2")
    async with websocket(base, token) as ws, websocket(base, other) as bystander:
        await ws.until("count")
        await bystander.until("count")
        response = await app.client.delete("/v1/recipients/u-1", headers=app.auth)
        assert response.status_code == 204
        with pytest.raises(ConnectionClosed) as closed:
            await ws.until("never")
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4001
        assert closed.value.rcvd.reason == "revoked"
        await bystander.send({"type": "ping"})
        assert (await bystander.until("pong"))["type"] == "pong"


async def test_an_open_websocket_closes_when_its_token_expires(app: Harness, base: str) -> None:
    """A token that expires while its connection is open ends the connection then (4001
    ``token_expired``), with no event or heartbeat needed to notice; a fresh token
    reconnects."""
    await inbox_ready(app, "u-1")
    secret = await inbox_access.secret(app.ctx.engine, app.tenant_id)
    assert secret is not None
    # Expiry is in whole seconds: this one ends 2 to 3 s from now, time enough to connect.
    short = inbox_tokens.mint(secret, app.tenant_id, "u-1", int(time.time() * 1000), 3)
    async with websocket(base, short) as ws:
        assert (await ws.next())["type"] == "count"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.until("never", timeout=10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4001
    assert closed.value.rcvd.reason == "token_expired"
    async with websocket(base, await token_for(app, "u-1")) as ws:
        assert (await ws.next())["type"] == "count"


async def test_rotation_closes_every_connection_of_the_tenant(lite: Harness) -> None:
    token = await inbox_ready(lite, "u-1")
    async with serving(lite) as base, event_stream(base, token) as stream:
        await stream.next()
        await inbox_access.rotate(lite.ctx.engine, lite.tenant_id)
        _, closed = await stream.until("closed", timeout=10)
        assert closed["reason"] == "revoked"
    response = await lite.client.get("/v1/inbox", headers=bearer(token))
    assert response.status_code == 401
    assert (await feed(lite, await token_for(lite, "u-1")))["data"] == []


async def test_snooze_return_is_pushed_live(app: Harness, base: str) -> None:
    token = await inbox_ready(app, "u-1")
    await send(app, "u-1", 1)
    await app.drain()
    [message] = (await feed(app, token))["data"]
    async with websocket(base, token) as ws:
        assert (await ws.next())["total"] == 1
        until = datetime.now(UTC) + timedelta(seconds=1)
        response = await app.client.post(
            f"/v1/inbox/{message['id']}/snooze",
            json={"until": until.isoformat()},
            headers=bearer(token),
        )
        assert response.status_code == 200
        assert (await ws.until("changed"))["action"] == "snooze"
        assert (await ws.until("count"))["total"] == 0
        back = await ws.until("message")
        assert back["message"]["id"] == message["id"]
        assert (await ws.until("count"))["total"] == 1


async def test_a_stalled_client_is_cut_without_delaying_others(app: Harness, base: str) -> None:
    """A client that stops reading fills its socket, then its queue: it is closed as too
    slow, while another recipient's connection gets its events at once. Both hubs: in
    process, and Redis pub/sub (where the events travel through Redis)."""
    stalled = await inbox_ready(app, "u-slow")
    healthy = await inbox_ready(app, "u-ok")
    hub = app.ctx.hub
    async with websocket(base, healthy) as ok:
        await ok.until("count")
        async with websocket(base, stalled, max_queue=1) as slow:
            await slow.until("count")
            # The client stops reading: its frames pile up in the socket, then in the
            # server's bounded queue for it.
            blob = ["x" * 1000] * 60  # about 64 KB per event
            deadline = time.monotonic() + 30
            while hub.connections() == 2 and time.monotonic() < deadline:
                await hub.publish(
                    app.tenant_id, "u-slow", {"type": "changed", "action": "x", "ids": blob}
                )
                await asyncio.sleep(0)
            assert hub.connections() == 1, "the stalled connection was not cut"
            started = time.monotonic()
            await hub.publish(
                app.tenant_id, "u-ok", {"type": "changed", "action": "read", "ids": ["a"]}
            )
            assert (await ok.until("changed"))["ids"] == ["a"]
            assert time.monotonic() - started < 1.0


async def test_a_token_in_the_query_stays_out_of_the_log(
    lite: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    token = await inbox_ready(lite, "u-1")
    caplog.set_level("INFO")
    uvicorn_log = logging.getLogger("uvicorn.error")
    async with serving(lite) as base:
        uvicorn_log.addHandler(caplog.handler)  # uvicorn's loggers do not propagate
        try:
            async with websocket(base, token) as ws:
                await ws.until("count")
        finally:
            uvicorn_log.removeHandler(caplog.handler)
    assert "WebSocket /v1/inbox/ws?token=***" in caplog.text
    assert token not in caplog.text


async def test_the_websocket_takes_the_token_in_the_header(lite: Harness) -> None:
    token = await inbox_ready(lite, "u-1")
    async with serving(lite) as base, websocket(base, token, header=True) as ws:
        assert (await ws.next())["type"] == "count"


async def test_the_websocket_declines_compression(lite: Harness) -> None:
    # Frames are a few hundred bytes: a compressor per connection cost memory and CPU.
    token = await inbox_ready(lite, "u-1")
    async with serving(lite) as base, websocket(base, token, compression="deflate") as ws:
        assert ws.conn.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.conn.response.headers
        assert ws.conn.protocol.extensions == []
        assert (await ws.next())["type"] == "count"


async def test_sse_sends_heartbeats(migrated_sqlite_url: str) -> None:
    settings = make_settings(migrated_sqlite_url, "embedded://", inbox_heartbeat=0.1)
    async with running(settings) as harness:
        token = await inbox_ready(harness, "u-1")
        async with serving(harness) as base, event_stream(base, token) as stream:
            await stream.next()
            assert await stream.comment() == ": heartbeat"
            await send(harness, "u-1", 1)
            await stream.until("message")


class _Live:
    """One live connection, SSE or WebSocket, read as plain events."""

    def __init__(self, sse: Stream | None, ws: Socket | None) -> None:
        self.sse, self.ws = sse, ws

    async def next(self) -> dict[str, Any]:
        if self.sse is not None:
            return (await self.sse.next())[1]
        assert self.ws is not None
        try:
            return await self.ws.next()
        except ConnectionClosed as exc:
            frame = exc.rcvd
        return {"type": "closed", "reason": frame and frame.reason, "code": frame and frame.code}


@contextlib.asynccontextmanager
async def _live(base: str, token: str, transport: str) -> AsyncIterator[_Live]:
    if transport == "sse":
        async with event_stream(base, token) as stream:
            yield _Live(stream, None)
    else:
        async with websocket(base, token, header=True) as ws:
            yield _Live(None, ws)


async def _until_closed(app: Harness, live: _Live, rid: str) -> tuple[dict[str, Any], int]:
    """Keeps events flowing to the connection (a change, each pushed once the last one
    arrived) until it closes: the closing event, and how many changes it received."""
    counts = {"unread": 0, "unseen": 0, "total": 0, "seq": 0}
    received = 0
    async with asyncio.timeout(15):
        # Subscribed once the opening count is out: nothing published is lost.
        assert (await live.next())["type"] == "count"
        while True:
            event = {"type": "changed", "action": "read", "ids": [f"msg_{received}"]}
            event["counts"] = {**counts, "version": received + 1}
            await app.ctx.hub.publish(app.tenant_id, rid, event)
            while (got := await live.next())["type"] not in {"changed", "closed"}:
                pass
            if got["type"] == "closed":
                return got, received
            received += 1


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_a_live_connection_closes_at_its_token_expiry_while_events_flow(
    app: Harness, base: str, transport: str
) -> None:
    """No quiet moment is needed to notice the expiry: a timer per connection closes it
    then, with the reason (SSE ``closed`` event, WebSocket close 4001)."""
    await inbox_ready(app, "u-1")
    secret = await inbox_access.secret(app.ctx.engine, app.tenant_id)
    assert secret is not None
    # Expiry is in whole seconds: this one ends 3 to 4 s from now, time enough on a busy
    # machine for the connection to open and events to flow before it closes.
    short = inbox_tokens.mint(secret, app.tenant_id, "u-1", int(time.time() * 1000), 4)
    expires = jwt.decode(short, options={"verify_signature": False})["exp"]
    async with _live(base, short, transport) as live:
        closed, received = await _until_closed(app, live, "u-1")
    assert closed["reason"] == "token_expired"
    assert closed.get("code", 4001) == 4001
    assert received > 0
    assert time.time() >= expires


async def test_an_erasure_in_one_process_closes_connections_in_another_at_once(
    migrated_postgres_url: str, redis_url: str
) -> None:
    """The revocation is pushed through the hub to the processes that hold the
    recipient's connections: the other process (which would look at the revocations
    table only in an hour) closes them at once, while events flow."""
    async with (
        running(make_settings(migrated_postgres_url, redis_url)) as one,
        running(
            make_settings(migrated_postgres_url, redis_url, inbox_upkeep_interval=3600)
        ) as other,
    ):
        token = await inbox_ready(one, "u-1")
        bystander = await inbox_ready(one, "u-2")
        async with (
            serving(other) as base,
            _live(base, token, "sse") as live,
            _live(base, bystander, "ws") as ok,
        ):
            erase = asyncio.create_task(one.client.delete("/v1/recipients/u-1", headers=one.auth))
            closed, _ = await _until_closed(other, live, "u-1")
            assert closed["reason"] == "revoked"
            assert (await erase).status_code == 204
            assert ok.ws is not None
            await ok.ws.send({"type": "ping"})
            assert (await ok.ws.until("pong"))["type"] == "pong"
