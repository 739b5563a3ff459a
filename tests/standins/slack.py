"""A local Slack: incoming webhooks and the Web API's ``chat.postMessage``.

It checks what Slack checks. An incoming webhook (``POST /services/T…/B…/<secret>``) takes
JSON with ``text`` or ``blocks`` and answers ``200 ok``, or a plain-text error code with a
status: ``400 invalid_payload`` / ``no_text`` / ``invalid_blocks``, ``403 invalid_token``
(a wrong secret), ``404 no_service`` (a webhook that was removed), ``410
channel_is_archived``. ``chat.postMessage`` (``POST /api/chat.postMessage``) needs
``Authorization: Bearer <bot token>`` and a JSON body, and answers ``200`` with
``{"ok": true, "channel", "ts", "message"}`` or ``{"ok": false, "error"}``
(``not_authed``, ``invalid_auth``, ``channel_not_found``, ``not_in_channel``,
``is_archived``, ``no_text``, ``invalid_blocks``, ``msg_too_long``); a scripted ``429``
carries ``Retry-After`` and ``{"ok": false, "error": "ratelimited"}``. Blocks are checked
as Block Kit: at most 50 objects of a known ``type``, sections with text objects.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from standins.web import WebStandin, json_body

BLOCK_TYPES = frozenset(
    {"section", "divider", "image", "actions", "context", "input", "header", "rich_text",
     "video", "file"}
)  # fmt: skip
TEXT_TYPES = frozenset({"mrkdwn", "plain_text"})
MAX_BLOCKS = 50
MAX_TEXT = 40_000


def _text_object(value: Any, plain: bool = False) -> bool:
    if not isinstance(value, dict) or not isinstance(value.get("text"), str):
        return False
    return value.get("type") == "plain_text" if plain else value.get("type") in TEXT_TYPES


def blocks_problem(blocks: Any) -> str | None:
    """Why Slack would refuse these blocks (``invalid_blocks``), or None."""
    if not isinstance(blocks, list) or not 1 <= len(blocks) <= MAX_BLOCKS:
        return "blocks must be an array of 1 to 50 blocks"
    for i, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") not in BLOCK_TYPES:
            return f"unknown block type at [{i}]"
        if block["type"] == "section" and not (
            _text_object(block.get("text")) or isinstance(block.get("fields"), list)
        ):
            return f"a section needs text or fields at [{i}]"
        if block["type"] == "header" and not _text_object(block.get("text"), plain=True):
            return f"a header needs plain_text at [{i}]"
    return None


@dataclass
class Posted:
    """A message Slack accepted: where, and the JSON it was given."""

    channel: str
    body: dict[str, Any]
    via: str  # "webhook" or "api"

    @property
    def text(self) -> str:
        return str(self.body.get("text", ""))


@dataclass
class Hook:
    channel: str
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    removed: bool = False
    archived: bool = False


class SlackStandin(WebStandin):
    def __init__(self) -> None:
        super().__init__()
        self.token = "xoxb-1-2-" + secrets.token_hex(12)
        # Channels the workspace has, and those the bot was invited to.
        self.channels: set[str] = {"C0ALERTS01", "C0OPSROOM1", "C0PRIVATE1", "C0ARCHIVE1"}
        self.member_of: set[str] = {"C0ALERTS01", "C0OPSROOM1", "C0ARCHIVE1"}
        self.archived: set[str] = {"C0ARCHIVE1"}
        self.hooks: dict[str, Hook] = {}
        self.received: list[Posted] = []
        self._ts = itertools.count(1)

    # -- set-up ---------------------------------------------------------------------------

    def hook(self, channel: str = "C0ALERTS01") -> str:
        """A new incoming webhook posting to ``channel``: its URL."""
        made = Hook(channel)
        key = f"T0STANDIN/B{secrets.token_hex(5).upper()}"
        self.hooks[key] = made
        return f"{self.url}/services/{key}/{made.secret}"

    def hook_of(self, url: str) -> Hook:
        key = "/".join(url.split("/services/", 1)[1].split("/")[:2])
        return self.hooks[key]

    def config(self, **overrides: Any) -> dict[str, Any]:
        """A ``slack`` (bot) provider config for this workspace."""
        return {"token": self.token, "base_url": self.url, **overrides}

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/services/{team}/{hook}/{secret}", self._webhook)
        app.router.add_post("/api/chat.postMessage", self._post_message)

    # -- incoming webhooks ----------------------------------------------------------------

    async def _webhook(self, request: web.Request) -> web.Response:
        key = f"{request.match_info['team']}/{request.match_info['hook']}"
        hook = self.hooks.get(key)
        if hook is None or hook.removed:
            return self._hook_error(404, "no_service")
        if not secrets.compare_digest(hook.secret, request.match_info["secret"]):
            return self._hook_error(403, "invalid_token")
        if hook.archived:
            return self._hook_error(410, "channel_is_archived")
        body = await json_body(request)
        if not isinstance(body, dict):
            return self._hook_error(400, "invalid_payload")
        problem = self._message_problem(body)
        if problem is not None:
            return self._hook_error(400, problem)
        scripted = self.scripted()
        if scripted is not None:
            return scripted
        self.received.append(Posted(hook.channel, body, "webhook"))
        return web.Response(text="ok", content_type="text/html")

    def _hook_error(self, status: int, code: str) -> web.Response:
        self.refused.append(f"{status} {code}")
        return web.Response(status=status, text=code, content_type="text/html")

    # -- chat.postMessage -----------------------------------------------------------------

    async def _post_message(self, request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return self._api_error("not_authed")
        if not secrets.compare_digest(token, self.token):
            return self._api_error("invalid_auth")
        body = await json_body(request)
        if not isinstance(body, dict):
            return self._api_error("invalid_arguments")
        channel = body.get("channel")
        if not isinstance(channel, str) or channel not in self.channels:
            return self._api_error("channel_not_found")
        if channel not in self.member_of:
            # Slack answers a private channel the bot is not in as not found.
            return self._api_error(
                "channel_not_found" if channel == "C0PRIVATE1" else "not_in_channel"
            )
        if channel in self.archived:
            return self._api_error("is_archived")
        problem = self._message_problem(body)
        if problem is not None:
            return self._api_error(problem)
        scripted = self.scripted()
        if scripted is not None:
            return scripted
        self.received.append(Posted(channel, body, "api"))
        ts = f"1700000000.{next(self._ts):06d}"
        message = {"type": "message", "text": body.get("text", ""), "ts": ts, "bot_id": "B0BOT"}
        return web.json_response({"ok": True, "channel": channel, "ts": ts, "message": message})

    def _api_error(self, code: str) -> web.Response:
        self.refused.append(code)
        return web.json_response({"ok": False, "error": code})

    def ratelimit_next(self, retry_after: int = 30) -> None:
        """The next message is answered as Slack answers a rate-limited call."""
        self.script(429, {"ok": False, "error": "ratelimited"}, Retry_After=str(retry_after))

    # -- both -----------------------------------------------------------------------------

    @staticmethod
    def _message_problem(body: dict[str, Any]) -> str | None:
        text, blocks = body.get("text"), body.get("blocks")
        if text is not None and not isinstance(text, str):
            return "invalid_arguments"
        if not text and blocks is None:
            return "no_text"
        if isinstance(text, str) and len(text) > MAX_TEXT:
            return "msg_too_long"
        if blocks is not None and blocks_problem(blocks) is not None:
            return "invalid_blocks"
        return None
