"""The server span of each HTTP request, when tracing is on: an ASGI middleware around
:func:`clarion.observability.tracing.serving` that continues the caller's trace when it
sent a ``traceparent``, and names the span after the route once routing has found it."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clarion.observability import tracing


class TraceRequests:
    """Installed outermost, and only when tracing is on (``api/app.py``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not tracing.ON:
            await self.app(scope, receive, send)
            return
        carried = None
        for key, value in scope.get("headers", ()):
            if key == b"traceparent":
                carried = value.decode("latin-1")
        method = scope.get("method", "GET")
        with tracing.serving(method, scope["path"], carried) as span:

            async def sending(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                await send(message)

            try:
                await self.app(scope, receive, sending)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if isinstance(route, str):
                    span.set_attribute("http.route", route)
                    span.update_name(f"{method} {route}")
