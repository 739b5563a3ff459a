"""The edge of the API (ASGI middleware): size limit and input rules, before any handler.

The body is read up front, never more than the limit, so an oversized request is refused
with a 413 before any handler sees it, whether or not it declared its length; a body that
does not arrive whole within the body timeout is a 408 ``request_timeout``. The path, the
query string and a JSON body are then checked against the rules of
:mod:`clarion.api.inputs`; a request that breaks one is a 400 ``invalid_input``.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clarion.api.errors import error_body
from clarion.api.inputs import InputRefused, check_target, parse_json

MAX_BODY = 512 * 1024
BODY_TIMEOUT = 30.0
# Bodies of this size or more are handled at most LARGE_BODIES at a time per process.
LARGE_BODY = 64 * 1024
LARGE_BODIES = 4
_TRIM_DELAY = 0.5
# The scope key under which a JSON body, once parsed and checked here, is handed on.
PARSED_JSON = "clarion.json"
# Set in the scope by the HTTP server (api/server.py) once a request's body has all
# arrived: reading it then waits for nothing, and needs no timer.
BODY_COMPLETE = "clarion.body_complete"


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to call
        return None
    return trim


_trim = _malloc_trim()
_trim_pending = False


def release_memory() -> None:
    """Hand memory freed by Python back to the system soon (glibc keeps it otherwise);
    calls made while one is pending are one."""
    global _trim_pending
    if _trim is None or _trim_pending:
        return
    _trim_pending = True
    asyncio.get_running_loop().call_later(_TRIM_DELAY, _trim_now)


def _trim_now() -> None:
    global _trim_pending
    _trim_pending = False
    if _trim is not None:
        _trim(0)


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers") or ():
        if name == b"content-type":
            kind: bytes = value.split(b";", 1)[0].strip().lower()
            return kind == b"application/json" or kind.endswith(b"+json")
    return False


class _ClientGone(Exception):
    """The client went away before its body was read: nothing will read an answer."""


class EdgeGuard:
    def __init__(
        self,
        app: ASGIApp,
        limit: int = MAX_BODY,
        body_timeout: float = BODY_TIMEOUT,
        large_bodies: int = LARGE_BODIES,
    ) -> None:
        self.app = app
        self.limit = limit
        self.body_timeout = body_timeout
        self._large = asyncio.Semaphore(large_bodies)
        self._large_in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            check_target(scope["path"], scope.get("query_string", b""))
        except InputRefused as exc:
            await _refuse_input(send, exc)
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        try:
            if scope.get(BODY_COMPLETE):
                body = await self._read(scope, receive)
            else:
                async with asyncio.timeout(self.body_timeout):
                    body = await self._read(scope, receive)
        except _ClientGone:
            return
        except TimeoutError:
            message = f"the request body did not arrive within {self.body_timeout:g}s"
            await _answer(send, 408, error_body("request_timeout", message), close=True)
            return
        if body is None:
            await self._refuse(send)
            return
        if len(body) < LARGE_BODY:
            await self._handle(scope, body, receive, send)
            return
        # A large body becomes many times its size in objects while it is handled: only a
        # few are handled at once, and their memory is handed back to the system after.
        async with self._large:
            self._large_in_flight += 1
            try:
                await self._handle(scope, body, receive, send)
            finally:
                self._large_in_flight -= 1
        if self._large_in_flight == 0:
            release_memory()

    async def _handle(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        if body and _is_json(scope):
            try:
                scope[PARSED_JSON] = parse_json(body)
            except InputRefused as exc:
                await _refuse_input(send, exc)
                return
            except ValueError:
                pass  # not JSON at all: the handler answers `invalid_json`
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or None when it is over the limit."""
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse(self, send: Send) -> None:
        message = f"the request body is larger than {self.limit // 1024} KiB"
        await _answer(send, 413, error_body("payload_too_large", message), close=True)


async def _refuse_input(send: Send, exc: InputRefused) -> None:
    details = [{"field": exc.where, "message": exc.message, "type": "invalid_input"}]
    await _answer(send, 400, error_body("invalid_input", exc.message, details))


async def _answer(send: Send, status: int, payload: dict[str, Any], close: bool = False) -> None:
    body = orjson.dumps(payload)
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class EdgeParsedRoute(APIRoute):
    """A route that reads a JSON body as :class:`EdgeGuard` parsed it, instead of parsing
    it again (for a batch of a thousand notifications, a second parse is a tenth of the
    request's work). The edge's value is what ``json.loads`` gives for a body that passed
    its rules; a body the edge did not parse (not declared JSON) is read as before."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_parsed_body(request: Request) -> Response:
            parsed = request.scope.get(PARSED_JSON, _UNPARSED)
            if parsed is not _UNPARSED:
                # Starlette's Request keeps the parsed body here (Request.json caches it).
                request._json = parsed
            return await handler(request)

        return with_parsed_body


_UNPARSED = object()
