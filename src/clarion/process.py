"""One Clarion process: its roles, its HTTP server, its signals.

The first SIGTERM or SIGINT stops taking work and drains within the shutdown deadline; a
second one exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import uvicorn

from clarion.api.app import create_app
from clarion.api.server import http_server
from clarion.config import Settings
from clarion.pipeline.context import Context, open_context
from clarion.pipeline.runtime import Roles, Runtime
from clarion.store import tenants as tenant_store
from clarion.store.db import migrate

log = logging.getLogger("clarion")


async def ensure_demo_tenant(ctx: Context) -> str | None:
    """On an empty database, create the `demo` tenant and return its new key."""
    if await tenant_store.count_tenants(ctx.engine):
        return None
    tenant = await tenant_store.create_tenant(ctx.engine, "demo")
    return await tenant_store.create_key(ctx.engine, tenant.id, ["send", "read", "manage", "admin"])


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            os._exit(1)  # a second signal: exit at once
        log.info("stopping: finishing work in flight (signal again to exit at once)")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)


async def run(settings: Settings, roles: Roles, *, demo: bool = False) -> None:
    ctx = await open_context(settings)
    try:
        await migrate(ctx.engine)
        if demo:
            key = await ensure_demo_tenant(ctx)
            if key:
                print(f"Created tenant 'demo'. Its API key (shown once):\n{key}", flush=True)
        runtime = Runtime(ctx, roles)
        await runtime.start()
        stop = asyncio.Event()
        _install_signals(stop)
        server: uvicorn.Server | None = None
        server_task: asyncio.Task[None] | None = None
        if roles.api:
            app = create_app(ctx, runtime.intake)
            server = http_server(app, settings)
            server_task = asyncio.create_task(server.serve(), name="http")
            print(
                f"Clarion listening on http://{settings.http_host}:{settings.http_port}", flush=True
            )
        stopped = asyncio.create_task(stop.wait())
        waiting = [stopped] + ([server_task] if server_task else [])
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if server is not None and server_task is not None:
            # Live inbox streams never end on their own: closed first, so the server's
            # shutdown does not wait on them.
            ctx.hub.close_all("server_stopping")
            server.should_exit = True
            await server_task
        stopped.cancel()
        await runtime.stop()
    finally:
        await ctx.aclose()
