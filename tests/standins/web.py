"""What the HTTP stand-ins of chat services share: an aiohttp server on a free local port,
and a queue of scripted answers a test puts in front of the next request."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Scripted:
    """An answer for the next request that passes the service's checks."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> web.Response:
        if isinstance(self.body, str):
            return web.Response(status=self.status, text=self.body, headers=self.headers)
        return web.json_response(self.body, status=self.status, headers=self.headers)


class WebStandin:
    """A local HTTP server; subclasses add their routes in :meth:`routes`."""

    def __init__(self) -> None:
        self.port = 0
        self.upcoming: deque[Scripted] = deque()
        # Why requests were refused (what a test reads when a send did not go through).
        self.refused: list[str] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def script(self, status: int, body: Any = None, **headers: str) -> None:
        """Answer the next request that passes the checks with this (a 429, a 5xx ...)."""
        self.upcoming.append(
            Scripted(status, body, {k.replace("_", "-"): v for k, v in headers.items()})
        )

    def scripted(self) -> web.Response | None:
        return self.upcoming.popleft().response() if self.upcoming else None

    async def start(self) -> WebStandin:
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def json_body(request: web.Request) -> Any:
    """The request's JSON, or None when it is not JSON (or not sent as JSON)."""
    if request.content_type != "application/json":
        return None
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None
