"""Live connections from a browser carry a single-use ticket in their URL, never the
recipient token: a ticket opens one connection, for its token's recipient, within a
minute, across API processes (it is redeemed in the database)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from clarion.security.inbox_tokens import InvalidToken
from clarion.store import inbox_access
from clarion.store.db import utcnow
from harness import Harness
from inbox_kit import Socket, Stream, bearer, inbox_ready, send, serving, token_for


@pytest.fixture
async def base(app: Harness) -> AsyncIterator[str]:
    async with serving(app) as url:
        yield url


async def ticket_for(app: Harness, token: str) -> str:
    response = await app.client.post("/v1/inbox/ticket", headers=bearer(token))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"ticket", "expires_at"}
    ticket: str = body["ticket"]
    assert token not in ticket
    return ticket


def _ws_url(base: str, ticket: str) -> str:
    return base.replace("http://", "ws://") + "/v1/inbox/ws?ticket=" + ticket


async def _refused(base: str, ticket: str) -> tuple[int, str]:
    """A WebSocket opened with ``ticket`` that must be refused: (status, error code)."""
    with pytest.raises(InvalidStatus) as refused:
        async with connect(_ws_url(base, ticket)):
            pass
    response = refused.value.response
    return response.status_code, orjson.loads(response.body or b"{}")["error"]["code"]


async def test_a_ticket_opens_one_connection(app: Harness, base: str) -> None:
    token = await inbox_ready(app, "u-1")
    await app.put_recipient("u-2", email="u-2@example.com")
    ticket = await ticket_for(app, token)
    async with connect(_ws_url(base, ticket)) as conn:
        ws = Socket(conn)
        assert (await ws.next())["type"] == "count"
        # The ticket's recipient, nobody else's.
        await send(app, "u-2", 1)
        await send(app, "u-1", 2)
        assert (await ws.until("message"))["message"]["title"] == "Shipped 2"
        # Spent: a second connection with it is refused, this one lives on.
        assert await _refused(base, ticket) == (401, "invalid_ticket")
        await ws.send({"type": "ping"})
        assert (await ws.until("pong"))["type"] == "pong"
    # Server-Sent Events take one too, once.
    ticket = await ticket_for(app, token)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        async with client.stream("GET", "/v1/inbox/stream", params={"ticket": ticket}) as stream:
            assert stream.status_code == 200
            _, event = await Stream(stream.aiter_lines()).next()
            assert (event["type"], event["total"]) == ("count", 1)
        again = await client.get("/v1/inbox/stream", params={"ticket": ticket})
        assert again.status_code == 401
        assert again.json()["error"]["code"] == "invalid_ticket"


async def test_two_redeemers_of_one_ticket_get_one_connection(app: Harness) -> None:
    """Two API processes that race for the same ticket: the store's single delete
    decides, one wins."""
    token = await inbox_ready(app, "u-1")
    ticket = await ticket_for(app, token)
    results = await asyncio.gather(
        *(app.ctx.inbox.redeem(ticket) for _ in range(4)), return_exceptions=True
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    assert len(won) == 1
    assert won[0].recipient_id == "u-1"
    assert all(isinstance(r, InvalidToken) for r in results if r not in won)


async def test_a_ticket_expires_after_a_minute(app: Harness, base: str) -> None:
    token = await inbox_ready(app, "u-1")
    ticket = await ticket_for(app, token)
    await ticket_for(app, token)
    gate = app.ctx.inbox
    gate.clock = lambda: utcnow() + timedelta(seconds=61)
    try:
        assert await _refused(base, ticket) == (401, "invalid_ticket")
        # Tickets that expired unused are swept by the upkeep.
        gate._next_sweep = 0.0
        await gate.upkeep()
    finally:
        gate.clock = utcnow
    async with app.ctx.engine.connect() as conn:
        left = (await conn.exec_driver_sql("SELECT count(*) FROM inbox_tickets")).scalar()
    assert left == 0


async def test_a_ticket_of_a_revoked_token_opens_nothing(app: Harness, base: str) -> None:
    token = await inbox_ready(app, "u-1")
    ticket = await ticket_for(app, token)
    await inbox_access.rotate(app.ctx.engine, app.tenant_id)
    await app.ctx.inbox.upkeep()
    assert await _refused(base, ticket) == (401, "invalid_token")
    # Nor can a revoked token ask for one; a new token can.
    response = await app.client.post("/v1/inbox/ticket", headers=bearer(token))
    assert response.status_code == 401
    await ticket_for(app, await token_for(app, "u-1"))


async def test_erasure_leaves_no_ticket_of_the_recipient(app: Harness) -> None:
    token = await inbox_ready(app, "u-1")
    other = await inbox_ready(app, "u-2")
    await ticket_for(app, token)
    await ticket_for(app, other)
    response = await app.client.delete("/v1/recipients/u-1", headers=app.auth)
    assert response.status_code == 204
    async with app.ctx.engine.connect() as conn:
        rows = (await conn.exec_driver_sql("SELECT recipient_id FROM inbox_tickets")).all()
    assert [r[0] for r in rows] == ["u-2"]


async def test_tickets_are_for_recipient_tokens_only(lite: Harness) -> None:
    response = await lite.client.post("/v1/inbox/ticket", headers=lite.auth)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "recipient_token_required"
    response = await lite.client.post("/v1/inbox/ticket")
    assert response.status_code == 401
    for bad in ("itk_" + "x" * 40, "nonsense", "itk_" + "y" * 200):
        response = await lite.client.get("/v1/inbox/stream", params={"ticket": bad})
        assert response.status_code == 401, bad
        assert response.json()["error"]["code"] == "invalid_ticket"


async def test_the_stream_takes_no_token_in_its_url(
    lite: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A token in a URL stays in proxies' and servers' logs: Server-Sent Events refuse
    it (browsers use a ticket); a ticket is hidden from the access log too."""
    token = await inbox_ready(lite, "u-1")
    response = await lite.client.get("/v1/inbox/stream", params={"token": token})
    assert response.status_code == 401
    assert "ticket" in response.json()["error"]["message"]
    ticket = await ticket_for(lite, token)
    caplog.set_level("INFO")
    uvicorn_log = logging.getLogger("uvicorn.error")
    async with serving(lite) as base:
        uvicorn_log.addHandler(caplog.handler)  # uvicorn's loggers do not propagate
        try:
            async with connect(_ws_url(base, ticket)) as conn:
                assert (await Socket(conn).next())["type"] == "count"
        finally:
            uvicorn_log.removeHandler(caplog.handler)
    assert "WebSocket /v1/inbox/ws?ticket=***" in caplog.text
    assert ticket not in caplog.text
