"""A local Mattermost incoming webhook: ``POST /hooks/<id>``.

It checks what Mattermost checks: the hook (``400 web.incoming_webhook.invalid.app_error``
for one it does not know), a JSON body with ``text`` or ``attachments``
(``web.incoming_webhook.text.app_error``), a ``channel`` override (``403
web.incoming_webhook.channel_locked.app_error`` on a hook locked to its channel, ``400
web.incoming_webhook.channel.app_error`` for a channel that does not exist) and a
``username`` override only where the server allows it. It answers ``200 ok``; errors are
Mattermost's application errors ``{"id", "message", "status_code"}``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from standins.web import WebStandin, json_body


@dataclass
class IncomingHook:
    channel: str
    locked: bool = False


class MattermostStandin(WebStandin):
    def __init__(self) -> None:
        super().__init__()
        self.channels = {"town-square", "alerts", "ops"}
        self.hooks: dict[str, IncomingHook] = {}
        self.allow_username_override = True
        self.received: list[tuple[str, dict[str, Any]]] = []

    def hook(self, channel: str = "town-square", locked: bool = False) -> str:
        made = secrets.token_hex(13)
        self.hooks[made] = IncomingHook(channel, locked)
        return f"{self.url}/hooks/{made}"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/hooks/{id}", self._incoming)

    async def _incoming(self, request: web.Request) -> web.Response:
        hook = self.hooks.get(request.match_info["id"])
        if hook is None:
            return self._error(400, "web.incoming_webhook.invalid.app_error", "Invalid webhook.")
        body = await json_body(request)
        if not isinstance(body, dict):
            return self._error(
                400, "api.webhook.incoming.parse.app_error", "Unable to parse incoming data."
            )
        if not body.get("text") and not body.get("attachments"):
            return self._error(400, "web.incoming_webhook.text.app_error", "No text specified.")
        channel = body.get("channel") or hook.channel
        if channel != hook.channel and hook.locked:
            return self._error(
                403,
                "web.incoming_webhook.channel_locked.app_error",
                "This webhook is not permitted to post to the requested channel.",
            )
        if not (isinstance(channel, str) and (channel in self.channels or channel.startswith("@"))):
            return self._error(
                400, "web.incoming_webhook.channel.app_error", "Couldn't find the channel."
            )
        if body.get("username") and not self.allow_username_override:
            body = {k: v for k, v in body.items() if k != "username"}
        scripted = self.scripted()
        if scripted is not None:
            return scripted
        self.received.append((channel, body))
        return web.Response(
            text="ok", content_type="text/plain", headers={"X-Request-Id": secrets.token_hex(13)}
        )

    def _error(self, status: int, error_id: str, message: str) -> web.Response:
        self.refused.append(f"{status} {error_id}")
        body = {
            "id": error_id,
            "message": message,
            "detailed_error": "",
            "request_id": secrets.token_hex(13),
            "status_code": status,
        }
        return web.json_response(body, status=status)
