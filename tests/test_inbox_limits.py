"""Caps on live inbox connections: one recipient token, or one tenant, cannot take more
than its share of an API process's connections (and file descriptors). One more is
refused with a 429, ``Retry-After`` and the JSON error body (before the WebSocket opens);
another tenant is not held up; the counts are in ``/metrics``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from websockets.exceptions import InvalidStatus

from clarion.store import tenants as tenant_store
from harness import Harness, make_settings, running
from inbox_kit import Socket, event_stream, inbox_ready, serving, websocket
from test_metrics import scrape, total


@pytest.fixture
async def capped(backend: tuple[str, str]) -> AsyncIterator[Harness]:
    settings = make_settings(*backend, live_max_per_recipient=3, live_max_per_tenant=5)
    async with running(settings) as harness:
        yield harness


async def _refused(base: str, token: str) -> tuple[dict[str, Any], httpx.Headers]:
    """A WebSocket that must be refused: the error, and the response's headers."""
    with pytest.raises(InvalidStatus) as refused:
        async with websocket(base, token, header=True):
            pass
    response = refused.value.response
    assert response.status_code == 429
    headers = httpx.Headers(list(response.headers.raw_items()))
    error: dict[str, Any] = orjson.loads(response.body or b"{}")["error"]
    return error, headers


async def _open(stack: contextlib.AsyncExitStack, base: str, token: str) -> Socket:
    ws = await stack.enter_async_context(websocket(base, token, header=True))
    assert (await ws.next())["type"] == "count"
    return ws


async def test_a_recipient_and_a_tenant_cannot_pass_their_caps(capped: Harness) -> None:
    app = capped
    token = await inbox_ready(app, "u-1")
    others = [await inbox_ready(app, rid) for rid in ("u-2", "u-3")]
    tenant = await tenant_store.create_tenant(app.ctx.engine, "bystander")
    outsider, _ = await app.ctx.inbox.mint(tenant.id, "v-1", 3600)
    async with serving(app) as base, contextlib.AsyncExitStack() as stack:
        first = [await _open(stack, base, token) for _ in range(3)]
        # A fourth connection of the same token: refused before it opens, over either
        # transport.
        error, headers = await _refused(base, token)
        assert error["code"] == "too_many_connections"
        assert error["details"] == [{"limit": "recipient", "max": 3}]
        assert int(headers["retry-after"]) > 0
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            sse = await client.get("/v1/inbox/stream", headers={"Authorization": f"Bearer {token}"})
        assert sse.status_code == 429
        assert sse.headers["retry-after"] == headers["retry-after"]
        assert sse.json()["error"]["code"] == "too_many_connections"
        # The tenant's other recipients share the tenant's cap: two more, then none.
        await _open(stack, base, others[0])
        await _open(stack, base, others[0])
        error, _ = await _refused(base, others[1])
        assert error["details"] == [{"limit": "tenant", "max": 5}]
        # Another tenant is not held up by this one at its cap.
        await _open(stack, base, outsider)
        # The counts, in /metrics.
        _, samples = await scrape(app.client)
        assert total(samples, "clarion_inbox_connections") == 6
        assert total(samples, "clarion_inbox_connections_busiest", scope="tenant") == 5
        assert total(samples, "clarion_inbox_connections_busiest", scope="recipient") == 3
        assert total(samples, "clarion_inbox_connections_limit", scope="recipient") == 3
        assert total(samples, "clarion_inbox_connections_refused_total", scope="recipient") == 2
        assert total(samples, "clarion_inbox_connections_refused_total", scope="tenant") == 1
        # A connection that ends gives its place back.
        await first[0].conn.close()
        await app.until(lambda: _held(app, app.tenant_id, 4))
        await _open(stack, base, token)
    # Every place is given back when the connections end, SSE ones too.
    async with serving(app) as base:
        async with event_stream(base, token) as stream:
            assert (await stream.next())[1]["type"] == "count"
            assert app.ctx.inbox.slots.tenants() == {app.tenant_id: 1}
        await app.until(lambda: _held(app, app.tenant_id, 0))


async def _held(app: Harness, tenant_id: str, n: int) -> bool:
    return app.ctx.inbox.slots.tenants().get(tenant_id, 0) == n
