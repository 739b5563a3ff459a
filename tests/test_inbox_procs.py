"""The live inbox across processes (PostgreSQL + Redis, and PostgreSQL + NATS): two
``clarion api`` processes and a ``clarion worker``. A notification accepted by one API
process, stored by the worker, reaches WebSocket and SSE connections held by the other;
erasure through one API process and ``clarion keys rotate-inbox-secret`` close connections
held by the other. With the NATS broker the events go through NATS, not Redis."""

from __future__ import annotations

import asyncio
import subprocess

import httpx
import pytest
from redis.asyncio import Redis
from websockets.exceptions import ConnectionClosed

from inbox_kit import TEMPLATE, event_stream, websocket
from procs import CLI, Procs, clarion_env, create_tenant, free_port, wait_ready

# Processes start in about 20 s: run with the slow step of scripts/test.
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(120)]


@pytest.fixture(params=["redis", pytest.param("nats", marks=pytest.mark.nats)])
def broker_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    return redis_url if request.param == "redis" else str(request.getfixturevalue("nats_url"))


async def _redis_channels(redis_url: str) -> list[bytes]:
    """The live inbox channels subscribed in Redis."""
    async with Redis.from_url(redis_url) as redis:
        return list(await redis.pubsub_channels("clarion:inbox:*"))


async def test_events_cross_api_processes(
    postgres_url: str, redis_url: str, broker_url: str, procs: Procs
) -> None:
    port_a, port_b = free_port(), free_port()
    settings = {
        "log_level": "WARNING",
        "inbox_upkeep_interval": 0.2,
        "shutdown_timeout": 3,
        "redis_url": redis_url,
    }
    env_a = clarion_env(postgres_url, broker_url, http_port=port_a, **settings)
    env_b = clarion_env(postgres_url, broker_url, http_port=port_b, **settings)
    key = await asyncio.to_thread(create_tenant, env_a, "acme")
    auth = {"Authorization": f"Bearer {key}"}
    api_a = procs.start("api-a", ["api"], env_a)
    api_b = procs.start("api-b", ["api"], env_b)
    procs.start("worker", ["worker", "--channels", "inapp"], env_a)
    base_a, base_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    async with (
        httpx.AsyncClient(base_url=base_a, timeout=30) as a,
        httpx.AsyncClient(base_url=base_b, timeout=30) as b,
    ):
        await wait_ready(a, api_a)
        await wait_ready(b, api_b)
        assert (await a.put("/v1/templates/shipped", json=TEMPLATE, headers=auth)).is_success
        for rid in ("u-1", "u-2"):
            assert (await a.put(f"/v1/recipients/{rid}", json={}, headers=auth)).is_success
        tokens = {}
        for rid in ("u-1", "u-2"):
            response = await a.post(f"/v1/recipients/{rid}/token", headers=auth)
            tokens[rid] = response.json()["token"]

        async with (
            websocket(base_b, tokens["u-1"]) as ws,
            event_stream(base_b, tokens["u-1"]) as stream,
            websocket(base_b, tokens["u-2"]) as other,
        ):
            await ws.until("count")
            await stream.until("count")
            await other.until("count")
            # Redis carries the events with the Redis broker, NATS with the NATS broker.
            assert bool(await _redis_channels(redis_url)) == (broker_url == redis_url)
            response = await a.post(
                "/v1/notifications",
                json={"template": "shipped", "to": {"recipient_id": "u-1"}, "data": {"n": 7}},
                headers=auth,
            )
            assert response.status_code == 202, response.text
            by_ws = await ws.until("message", timeout=30)
            _, by_sse = await stream.until("message", timeout=30)
            assert by_ws["message"]["title"] == by_sse["message"]["title"] == "Shipped 7"
            assert (await ws.until("count"))["unread"] == 1
            # A read through process A reaches the connection on process B.
            mid = by_ws["message"]["id"]
            bearer = {"Authorization": f"Bearer {tokens['u-1']}"}
            assert (await a.post(f"/v1/inbox/{mid}/read", headers=bearer)).is_success
            assert (await ws.until("count"))["unread"] == 0
            # The other recipient's connection, on the same process, saw none of it.
            await other.send({"type": "ping"})
            assert (await other.next())["type"] == "pong"

            # Erasure through A closes u-1's connections on B.
            assert (await a.delete("/v1/recipients/u-1", headers=auth)).status_code == 204
            with pytest.raises(ConnectionClosed) as closed:
                await ws.until("never", timeout=15)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.reason == "revoked"
            _, ended = await stream.until("closed", timeout=15)
            assert ended["reason"] == "revoked"

            # Rotating the tenant's inbox secret (the CLI) closes everyone else's.
            result = await asyncio.to_thread(
                subprocess.run,
                [*CLI, "keys", "rotate-inbox-secret", "acme"],
                env=env_a,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert result.returncode == 0, result.stderr
            with pytest.raises(ConnectionClosed) as closed:
                await other.until("never", timeout=15)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.reason == "revoked"
        response = await b.get("/v1/inbox", headers={"Authorization": f"Bearer {tokens['u-2']}"})
        assert response.status_code == 401
