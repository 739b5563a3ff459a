"""Helpers for the inbox tests: a template with an in-app channel, a recipient token, sends."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import orjson
from websockets.asyncio.client import ClientConnection, connect

from clarion.api.server import http_server
from clarion.store import inbox
from harness import Harness

TEMPLATE = {
    "category": "transactional",
    "channels": {
        "inapp": {
            "title": "Shipped {{ n }}",
            "body": "Order {{ n }}",
            "action_url": "/orders/{{ n }}",
            "data": {"order": "{{ n }}"},
        }
    },
}


async def token_for(app: Harness, rid: str, **body: Any) -> str:
    response = await app.client.post(
        f"/v1/recipients/{rid}/token", json=body or None, headers=app.auth
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


async def inbox_ready(app: Harness, rid: str) -> str:
    """The template and the recipient exist; returns the recipient's token."""
    await app.put_template("shipped", TEMPLATE)
    await app.put_recipient(rid, email=f"{rid}@example.com")
    return await token_for(app, rid)


async def send(app: Harness, rid: str, n: int) -> str:
    response = await app.send(
        {"template": "shipped", "to": {"recipient_id": rid}, "data": {"n": n}}
    )
    assert response.status_code == 202, response.text
    nid: str = response.json()["id"]
    return nid


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def feed(app: Harness, token: str, **params: Any) -> dict[str, Any]:
    response = await app.client.get("/v1/inbox", params=params, headers=bearer(token))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def counts(app: Harness, token: str) -> dict[str, int]:
    """The counts the API answers, checked against the messages themselves."""
    response = await app.client.get("/v1/inbox/count", headers=bearer(token))
    assert response.status_code == 200, response.text
    body: dict[str, int] = response.json()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert body == await inbox.recount(app.ctx.engine, claims["tid"], claims["sub"])
    return body


@contextlib.asynccontextmanager
async def serving(app: Harness) -> AsyncIterator[str]:
    """The harness's API on a real socket (for SSE and WebSockets); yields its base URL."""
    asgi = app.client._transport.app  # type: ignore[attr-defined]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    server = http_server(asgi, app.settings)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        app.ctx.hub.close_all("server_stopping")
        server.should_exit = True
        await task
        listener.close()


class Socket:
    """A WebSocket client on the inbox that reads JSON events."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            frame = await self.conn.recv()
        event: dict[str, Any] = orjson.loads(frame)
        return event

    async def until(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next event of ``kind``, skipping others."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.next(timeout)
                if event["type"] == kind:
                    return event

    async def send(self, frame: Any) -> None:
        await self.conn.send(
            frame if isinstance(frame, str | bytes) else orjson.dumps(frame).decode()
        )


@contextlib.asynccontextmanager
async def websocket(
    base: str,
    token: str,
    *,
    header: bool = False,
    query: dict[str, str] | None = None,
    **kwargs: Any,
) -> AsyncIterator[Socket]:
    """A WebSocket on the inbox, the token in the query (or the header when ``header``),
    with ``query`` added to the URL."""
    params = dict(query or {})
    if header:
        kwargs["additional_headers"] = {"Authorization": f"Bearer {token}"}
    else:
        params["token"] = token
    url = base.replace("http://", "ws://") + "/v1/inbox/ws"
    if params:
        url += "?" + urlencode(params)
    async with connect(url, **kwargs) as conn:
        yield Socket(conn)


class Stream:
    """A Server-Sent Events client on the inbox: events as (id, data)."""

    def __init__(self, lines: AsyncIterator[str]) -> None:
        self._lines = lines
        self.comments: list[str] = []

    async def next(self, timeout: float = 10.0) -> tuple[str | None, dict[str, Any]]:
        ident: str | None = None
        data: list[str] = []
        async with asyncio.timeout(timeout):
            async for line in self._lines:
                if line.startswith(":"):
                    self.comments.append(line)
                elif line.startswith("id:"):
                    ident = line[3:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "" and data:
                    event: dict[str, Any] = orjson.loads("\n".join(data))
                    return ident, event
        raise EOFError("the stream ended")

    async def comment(self, timeout: float = 10.0) -> str:
        """The next comment line (a heartbeat), skipping events."""
        async with asyncio.timeout(timeout):
            async for line in self._lines:
                if line.startswith(":"):
                    return line
        raise EOFError("the stream ended")

    async def until(self, kind: str, timeout: float = 10.0) -> tuple[str | None, dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while True:
                ident, event = await self.next(timeout)
                if event["type"] == kind:
                    return ident, event


@contextlib.asynccontextmanager
async def event_stream(
    base: str, token: str, last_event_id: str | None = None
) -> AsyncIterator[Stream]:
    headers = {"Authorization": f"Bearer {token}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with (
        httpx.AsyncClient(base_url=base, timeout=30) as client,
        client.stream("GET", "/v1/inbox/stream", headers=headers) as response,
    ):
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield Stream(response.aiter_lines())
