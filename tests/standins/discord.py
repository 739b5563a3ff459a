"""A local Discord webhook endpoint: ``POST /api/webhooks/<id>/<token>[?wait=true]``.

It checks what Discord checks: the webhook id (``404 {"code": 10015, "message": "Unknown
Webhook"}``) and its token (``401 {"code": 50027, "message": "Invalid Webhook Token"}``), a
JSON body with ``content`` (at most 2,000 characters) or ``embeds`` (at most 10 objects)
(``400 {"code": 50006, "message": "Cannot send an empty message"}``, ``400 {"code": 50035,
"message": "Invalid Form Body", "errors": {...}}``), and ``allowed_mentions`` as an object.
With ``wait=true`` it answers ``200`` with the message, else ``204``. A scripted rate limit
answers as Discord does: ``429`` with ``{"message", "retry_after": <seconds, float>,
"global"}``, a ``Retry-After`` header in whole seconds and the ``X-RateLimit-*`` headers.
"""

from __future__ import annotations

import itertools
import math
import secrets
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from standins.web import WebStandin, json_body

MAX_CONTENT = 2000
MAX_EMBEDS = 10


@dataclass
class Webhook:
    id: str
    token: str
    deleted: bool = False


@dataclass
class Message:
    webhook: str
    body: dict[str, Any]
    id: str


class DiscordStandin(WebStandin):
    def __init__(self) -> None:
        super().__init__()
        self.webhooks: dict[str, Webhook] = {}
        self.received: list[Message] = []
        self._ids = itertools.count(1_100_000_000_000_000_001)

    def webhook(self) -> str:
        """A new webhook: its URL."""
        made = Webhook(str(next(self._ids)), secrets.token_urlsafe(32))
        self.webhooks[made.id] = made
        return f"{self.url}/api/webhooks/{made.id}/{made.token}"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/webhooks/{id}/{token}", self._execute)

    def ratelimit_next(self, retry_after: float = 1.25) -> None:
        self.script(
            429,
            {"message": "You are being rate limited.", "retry_after": retry_after, "global": False},
            Retry_After=str(math.ceil(retry_after)),
            X_RateLimit_Limit="5",
            X_RateLimit_Remaining="0",
            X_RateLimit_Reset_After=str(retry_after),
            X_RateLimit_Scope="shared",
        )

    async def _execute(self, request: web.Request) -> web.Response:
        hook = self.webhooks.get(request.match_info["id"])
        if hook is None or hook.deleted:
            return self._error(404, 10015, "Unknown Webhook")
        if not secrets.compare_digest(hook.token, request.match_info["token"]):
            return self._error(401, 50027, "Invalid Webhook Token")
        body = await json_body(request)
        if not isinstance(body, dict):
            return self._error(400, 50109, "The request body contains invalid JSON.")
        problem = _problem(body)
        if problem is not None:
            return self._error(400, *problem)
        scripted = self.scripted()
        if scripted is not None:
            return scripted
        message = Message(hook.id, body, str(next(self._ids)))
        self.received.append(message)
        if request.query.get("wait") != "true":
            return web.Response(status=204)
        return web.json_response(
            {
                "id": message.id,
                "type": 0,
                "content": body.get("content", ""),
                "channel_id": "1000000000000000001",
                "webhook_id": hook.id,
                "embeds": body.get("embeds", []),
            }
        )

    def _error(self, status: int, code: int, message: str, **more: Any) -> web.Response:
        self.refused.append(f"{status} {code} {message}")
        return web.json_response({"message": message, "code": code, **more}, status=status)


def _problem(body: dict[str, Any]) -> tuple[int, str] | None:
    content, embeds = body.get("content"), body.get("embeds")
    if content is not None and not isinstance(content, str):
        return 50035, "Invalid Form Body"
    if embeds is not None and not (
        isinstance(embeds, list)
        and len(embeds) <= MAX_EMBEDS
        and all(isinstance(e, dict) for e in embeds)
    ):
        return 50035, "Invalid Form Body"
    if not content and not embeds:
        return 50006, "Cannot send an empty message"
    if isinstance(content, str) and len(content) > MAX_CONTENT:
        return 50035, "Invalid Form Body"
    mentions = body.get("allowed_mentions")
    if mentions is not None and not isinstance(mentions, dict):
        return 50035, "Invalid Form Body"
    return None
