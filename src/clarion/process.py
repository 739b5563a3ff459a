"""One Clarion process: its roles, its HTTP server, its signals.

The first SIGTERM or SIGINT stops taking work and drains within the shutdown deadline; a
second one exits at once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal

import uvicorn

from clarion.api.app import create_app
from clarion.api.ops_server import ops_server
from clarion.api.server import http_server
from clarion.config import Settings
from clarion.domain.models import (
    BULK_LANES,
    CHUNK_STREAM,
    LANES,
    PLAN_STREAM,
    urgent_plan_streams,
)
from clarion.observability import metrics, stacks, tracing
from clarion.pipeline.context import Context, open_context
from clarion.pipeline.runtime import Roles, Runtime
from clarion.pipeline.scrape import Sources
from clarion.store import tenants as tenant_store
from clarion.store.db import migrate

log = logging.getLogger("clarion")


async def ensure_demo_tenant(ctx: Context) -> tuple[str, str] | None:
    """On an empty database, create the `demo` tenant and return its new key and its
    webhook signing secret."""
    if await tenant_store.count_tenants(ctx.engine):
        return None
    tenant = await tenant_store.create_tenant(ctx.engine, "demo")
    scopes = ["send", "read", "manage", "admin"]
    return await tenant_store.create_key(ctx.engine, tenant.id, scopes), tenant.webhook_secret


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            os._exit(1)  # a second signal: exit at once
        log.info("stopping: finishing work in flight (signal again to exit at once)")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)


def _plan_streams(lanes: list[str], bulk: bool) -> str:
    streams = urgent_plan_streams(lanes)
    return ", ".join(streams + ([PLAN_STREAM, CHUNK_STREAM] if bulk else []))


def describe(settings: Settings, roles: Roles) -> str:
    """What a process serves, for its "ready" line."""
    parts = []
    if roles.api:
        parts.append(f"api on http://{settings.http_host}:{settings.http_port}")
    lanes = [str(lane) for lane in LANES if lane in roles.lanes]
    bulk = bool(BULK_LANES & set(lanes))
    if roles.planner and (streams := _plan_streams(lanes, bulk)):
        parts.append(f"planner (streams {streams})")
    if roles.channels:
        channels = ", ".join(roles.channels)
        some = [*lanes, "retry"] if bulk else lanes
        taken = "<lane>" if len(lanes) == len(LANES) else "{" + ",".join(some) + "}"
        parts.append(f"channel workers for {channels} (streams send.<channel>.{taken}, events)")
    if roles.scheduler:
        parts.append("scheduler (outbox relay, sweeper, schedules)")
    if settings.metrics_port is not None:
        where = f"http://{settings.metrics_host}:{settings.metrics_port}"
        if settings.metrics == "on":
            parts.append(f"metrics and probes on {where}/metrics, /healthz, /readyz")
        else:
            parts.append(f"probes on {where}/healthz, /readyz (metrics off)")
    database = settings.database_url.split("://", 1)[0]
    broker = settings.broker_url.split("://", 1)[0]
    return f"ready: {'; '.join(parts)} [database {database}, broker {broker}]"


def sandbox_default(settings: Settings, roles: Roles) -> bool:
    """Whether this process sends through the sandbox by default on a production store."""
    sends = bool(roles.channels)
    return sends and not settings.is_sqlite and settings.default_provider == "sandbox"


def sources_for(ctx: Context, roles: Roles) -> Sources:
    """What this process's /metrics reads at scrape time: the shared streams, outbox and
    dead letters from the processes that consume them, not from every API process."""
    consumes = roles.planner or bool(roles.channels) or roles.scheduler
    return Sources(
        ctx,
        streams=consumes,
        outbox=roles.scheduler,
        dead_letters=roles.scheduler,
        inbox=roles.api,
    )


# Young collections every 50,000 allocations instead of 700 (see settle_heap).
GC_THRESHOLD = (50_000, 20, 10)


def settle_heap() -> None:
    """Keep the garbage collector off what startup built. The modules, the app and its
    schemas are some 170,000 objects that live as long as the process; each full
    collection walked all of them (a pause of 100 ms and more on this kind of machine,
    which landed on whatever request or delivery was running). Frozen, they are never
    walked again; collections look only at what the work itself allocates.

    And collect less often. An object alive at a young collection moves on towards the
    old generation, and every 25% growth of that generation costs a full collection,
    which walks every live object: with 10,000 inbox connections open (some 250 objects
    each), a pause of one to three seconds. At the default threshold (700) whatever a
    request or a push held for a tenth of a second was promoted, and under 1,000 pushes a
    second those pauses came every few seconds; at 50,000 most of it is gone before the
    collector looks."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


async def run(settings: Settings, roles: Roles, *, demo: bool = False) -> None:
    metrics.configure(tenant_label=settings.metrics_tenant_label, enabled=settings.metrics == "on")
    if tracing.configure():
        log.info("tracing on: spans exported as the OTEL_* variables say")
    ctx = await open_context(settings)
    try:
        await migrate(ctx.engine)
        if demo:
            created = await ensure_demo_tenant(ctx)
            if created:
                key, secret = created
                print(f"Created tenant 'demo'. Its webhook signing secret: {secret}", flush=True)
                print(f"Its API key (shown once):\n{key}", flush=True)
        runtime = Runtime(ctx, roles)
        await runtime.start()
        stop = asyncio.Event()
        _install_signals(stop)
        stacks.install()
        server: uvicorn.Server | None = None
        server_task: asyncio.Task[None] | None = None
        sources = sources_for(ctx, roles)
        ops = ops_server(ctx, sources)
        ops_task = asyncio.create_task(ops.serve(), name="ops-http") if ops else None
        if roles.api:
            app = create_app(ctx, runtime.intake, sources)
            server = http_server(app, settings, intake=runtime.intake)
            server_task = asyncio.create_task(server.serve(), name="http")
            base = f"http://{settings.http_host}:{settings.http_port}"
            print(f"Clarion listening on {base} (console: {base}/admin/)", flush=True)
        if sandbox_default(settings, roles):
            log.warning(
                "CLARION_DEFAULT_PROVIDER is `sandbox`: email, SMS, push and web push of "
                "tenants without a provider of their own are kept in the sandbox, not sent "
                "to anyone. Configure providers (PUT /v1/providers/{name}) or set "
                "CLARION_DEFAULT_PROVIDER."
            )
        log.info(describe(settings, roles))
        settle_heap()
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
        if ops is not None and ops_task is not None:
            # Probes answer until the work in flight is finished or handed back.
            ops.should_exit = True
            await ops_task
    finally:
        await ctx.aclose()
        if tracing.ON:
            tracing.disable()  # flushes the spans still waiting for export
