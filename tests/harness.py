"""An in-process Clarion for tests: every role running, and an HTTP client on its API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx

from clarion.api.app import create_app
from clarion.config import Settings
from clarion.pipeline.context import Context, open_context
from clarion.pipeline.runtime import Roles, Runtime
from clarion.store import tenants as tenant_store
from clarion.store.db import migrate, utcnow
from clarion.store.tables import deliveries

FAST = {
    "allow_private_webhooks": True,
    "retry_schedule": "10ms,20ms,40ms",
    "max_attempts": 3,
    "broker_lease": 10.0,
    "outbox_grace": 1.0,
    "shutdown_timeout": 3.0,
    "webhook_timeout": 2.0,
}

# Every backend, for the few end-to-end tests that also run on a Redis Cluster (the
# session's, cluster_servers.py): parametrize ``backend`` (conftest.py) with these, indirect.
WITH_CLUSTER = ["sqlite+embedded", "postgres+redis", "postgres+redis-cluster"]
# A broker on the cluster keeps each stream in this many shards (slots) in those tests.
CLUSTER_SHARDS = 2


def make_settings(database_url: str, broker_url: str, **overrides: Any) -> Settings:
    return Settings(database_url=database_url, broker_url=broker_url, **{**FAST, **overrides})


@dataclass
class Harness:
    settings: Settings
    ctx: Context
    runtime: Runtime
    client: httpx.AsyncClient
    key: str
    tenant_id: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def new_tenant(self, name: str, scopes: list[str] | None = None) -> str:
        tenant = await tenant_store.create_tenant(self.ctx.engine, name)
        return await tenant_store.create_key(
            self.ctx.engine, tenant.id, scopes or ["send", "read", "manage", "admin"]
        )

    async def drain(self, timeout: float = 30.0) -> None:
        await self.runtime.drain(timeout)

    async def until(self, check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
        """Wait until ``check()`` holds, looking again whenever a stage makes progress."""
        async with asyncio.timeout(timeout):
            while not await check():
                self.ctx.progress.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.ctx.progress.wait(), 0.05)

    async def put_recipient(self, rid: str, **fields: Any) -> None:
        response = await self.client.put(f"/v1/recipients/{rid}", json=fields, headers=self.auth)
        assert response.status_code == 200, response.text

    async def put_template(self, name: str, body: dict[str, Any]) -> None:
        response = await self.client.put(f"/v1/templates/{name}", json=body, headers=self.auth)
        assert response.status_code == 200, response.text

    async def subscribe(self, topic: str, recipient_ids: list[str]) -> None:
        response = await self.client.put(
            f"/v1/topics/{topic}/subscribers",
            json={"recipient_ids": recipient_ids},
            headers=self.auth,
        )
        assert response.status_code == 200, response.text

    async def send(self, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.client.post(
            "/v1/notifications", json=body, headers={**self.auth, **(headers or {})}
        )

    async def notification(self, nid: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/notifications/{nid}", headers=self.auth)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@contextlib.asynccontextmanager
async def running(settings: Settings, roles: Roles | None = None) -> AsyncIterator[Harness]:
    ctx = await open_context(settings)
    runtime: Runtime | None = None
    try:
        await migrate(ctx.engine)
        tenant = await tenant_store.get_tenant_by_name(
            ctx.engine, "acme"
        ) or await tenant_store.create_tenant(ctx.engine, "acme")
        key = await tenant_store.create_key(
            ctx.engine, tenant.id, ["send", "read", "manage", "admin"]
        )
        runtime = Runtime(ctx, roles or Roles.everything())
        await runtime.start()
        app = create_app(ctx, runtime.intake)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://clarion") as client:
            yield Harness(settings, ctx, runtime, client, key, tenant.id)
    finally:
        await _stopped(runtime, ctx)


# A harness stops within this (its runtime's ``shutdown_timeout`` is 3 s), or the test
# fails with what each task was waiting for, rather than the per-test timeout's thread
# stacks, which show only an idle event loop.
STOP_WITHIN = 60.0


async def _stopped(runtime: Runtime | None, ctx: Context) -> None:
    async def stop() -> None:
        if runtime is not None:
            await runtime.stop()
        await ctx.aclose()

    stopping = asyncio.ensure_future(stop())
    done, _ = await asyncio.wait({stopping}, timeout=STOP_WITHIN)
    if not done:
        waits = "\n\n".join(
            "\n".join([repr(task), *_awaiting(task.get_coro())])
            for task in asyncio.all_tasks()
            if task is not asyncio.current_task()
        )
        stopping.cancel()
        raise AssertionError(f"the harness did not stop in {STOP_WITHIN:g}s; its tasks:\n{waits}")
    await stopping


def _awaiting(coro: object) -> list[str]:
    """Where a coroutine waits: its frame, then each it awaits, down to the future."""
    lines = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            lines.append(f"  {coro!r}")
            break
        lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return lines


# A webhook template whose body names the recipient (planned_webhooks).
HOOK_TEMPLATE = {"channels": {"webhook": {"body": {"hello": "{{ recipient.id }}"}}}}


async def planned_webhooks(
    app: Harness, rids: list[str], url: str = "http://127.0.0.1:9"
) -> tuple[str, list[str]]:
    """A notification to ``rids`` (webhooks under ``url``), planned: its id and its
    deliveries' ids, in ``rids`` order."""
    await app.put_template("hook", HOOK_TEMPLATE)
    for rid in rids:
        await app.put_recipient(rid, webhook_url=f"{url}/{rid}")
    response = await app.send({"template": "hook", "to": {"recipient_ids": rids}})
    assert response.status_code == 202, response.text
    nid: str = response.json()["id"]

    async def planned() -> bool:
        return len((await app.notification(nid))["deliveries"]) == len(rids)

    await app.until(planned)
    by_recipient = {d["recipient_id"]: d["id"] for d in (await app.notification(nid))["deliveries"]}
    return nid, [by_recipient[rid] for rid in rids]


class StillClock:
    """A monotonic clock for code that takes one as a function: it stands still unless a
    test moves ``now``."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def stored_deliveries(app: Harness, statuses: list[str]) -> list[str]:
    """Deliveries of the tenant written straight to the store, one per status, a second
    apart (the last the newest), made a minute ago (recent: retention leaves them be);
    their ids, ``dlv_0000`` on."""
    base = utcnow() - timedelta(minutes=1)
    rows = [
        {
            "id": f"dlv_{i:04d}",
            "notification_id": "ntf_x",
            "tenant_id": app.tenant_id,
            "recipient_id": "u-1",
            "channel": "webhook",
            "priority": "normal",
            "status": status,
            "attempts": 1,
            "created_at": base + timedelta(seconds=i),
            "updated_at": base,
        }
        for i, status in enumerate(statuses)
    ]
    async with app.ctx.engine.begin() as conn:
        await conn.execute(deliveries.insert(), rows)
    return [row["id"] for row in rows]
