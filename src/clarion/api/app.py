"""The FastAPI application."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from clarion import __version__
from clarion.api import errors, openapi
from clarion.api.auth import KeyCache
from clarion.api.inbox_cors import InboxCors
from clarion.api.limits import EdgeGuard
from clarion.api.request_spans import TraceRequests
from clarion.api.routes import (
    admin_web,
    api_docs,
    audit,
    categories,
    dead_letters,
    health,
    inbox,
    inbox_live,
    inbox_web,
    keys,
    layouts,
    message_log,
    metrics,
    notifications,
    provider_callbacks,
    provider_feedback,
    provider_health,
    provider_tests,
    providers,
    recipients,
    sandbox,
    schedules,
    stats,
    suppressions,
    template_drafts,
    templates,
    topics,
    tracking,
    unsubscribe,
    webhooks,
    workflow_tests,
    workflows,
)
from clarion.api.send_one import PATH as SEND_PATH
from clarion.api.send_one import SendOne
from clarion.api.server import NO_FRAMEWORK_TELEMETRY
from clarion.observability import tracing
from clarion.pipeline.context import Context
from clarion.pipeline.intake import Intake
from clarion.pipeline.scrape import Sources

DESCRIPTION = """
Clarion's HTTP API, version 1.

Conventions: JSON bodies; `Authorization: Bearer <api key>`; errors as
`{"error": {"code", "message", "details"}}`; request bodies up to 512 KiB; batches up to
1,000 items (`batch_too_large` past that). `POST` requests that create things take an
`Idempotency-Key` header (notifications also `idempotency_key` in the body): a repeat with
the same body gets the original response, a different body a 409 `idempotency_conflict`.
Unknown templates, recipients and topics are a 422 (`unknown_template`,
`unknown_recipient`, `unknown_topic`). Each operation's `x-scopes` lists the API key
scopes that allow it (any one of them).

Input is checked before any handler: JSON nested deeper than 32 levels, integers beyond
64 bits, NaN or Infinity, NUL or lone surrogates in strings, NUL in the path or query are a
400 `invalid_input`; timestamps must carry a zone and lie between 1970 and 9998. Limits of
the server: headers within 10 s and 64 KiB (else 408 `request_timeout`, 431
`headers_too_large`), the body within 30 s (408), a cap on open connections (503
`server_busy` with `Retry-After`). Each limit closes the connection.
"""


def create_app(ctx: Context, intake: Intake | None, sources: Sources | None = None) -> FastAPI:
    """The API of ``ctx``. ``sources``: what ``/metrics`` reads at scrape time (by default
    everything, as for ``clarion serve``)."""
    app = FastAPI(
        title="Clarion",
        version=__version__,
        description=DESCRIPTION,
        generate_unique_id_function=openapi.operation_id,
        docs_url=None,
        redoc_url=None,
        telemetry=NO_FRAMEWORK_TELEMETRY,
    )
    app.state.ctx = ctx
    app.state.metrics_sources = sources or Sources(ctx, inbox=True)
    app.state.intake = intake
    app.state.keys = KeyCache()
    errors.install(app)
    openapi.install(app)
    for module in (
        health,
        metrics,
        notifications,
        recipients,
        categories,
        templates,
        layouts,
        workflows,
        providers,
        sandbox,
        topics,
    ):
        app.include_router(module.router)
    app.include_router(provider_callbacks.router)
    app.include_router(provider_feedback.router)
    app.include_router(suppressions.router)
    app.include_router(dead_letters.router)
    app.include_router(provider_health.router)
    app.include_router(provider_tests.router)
    app.include_router(unsubscribe.router)
    app.include_router(tracking.router)
    app.include_router(webhooks.router)
    app.include_router(inbox.router)
    app.include_router(inbox_live.router)
    app.include_router(inbox_web.router)
    app.include_router(template_drafts.router)
    app.include_router(workflow_tests.router)
    app.include_router(stats.router)
    app.include_router(message_log.router)
    app.include_router(schedules.router)
    app.include_router(audit.router)
    app.include_router(keys.router)
    app.include_router(admin_web.router)
    app.include_router(api_docs.router)
    # Inside the edge guard, which hands it the checked body: one notification per request
    # answered without FastAPI's routing (api/send_one.py).
    app.add_middleware(
        SendOne, state=app.state, route=_route(notifications.router, "POST", SEND_PATH)
    )
    app.add_middleware(
        EdgeGuard,
        body_timeout=ctx.settings.http_body_timeout,
        large_bodies=ctx.settings.http_large_bodies,
    )
    app.add_middleware(InboxCors)
    if tracing.ON:  # outermost: the request's span covers everything else
        app.add_middleware(TraceRequests)
    return app


def _route(router: APIRouter, method: str, path: str) -> APIRoute:
    for route in router.routes:
        if isinstance(route, APIRoute) and route.path == path and method in (route.methods or ()):
            return route
    raise LookupError(f"no route {method} {path}")
