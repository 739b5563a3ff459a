"""A local Telegram Bot API: ``POST /bot<token>/sendMessage``.

It checks what Telegram checks: the bot token in the path (``401 Unauthorized`` for a
token it does not know, ``404 Not Found`` for one that is not a token at all), a JSON body
with ``chat_id`` (``400 Bad Request: chat not found``) and ``text`` (``400 Bad Request:
message text is empty``, ``... message is too long`` over 4,096 characters),
``parse_mode`` (``HTML``, ``MarkdownV2``, ``Markdown``; HTML must use Telegram's tags,
balanced: ``400 Bad Request: can't parse entities``). A chat whose user blocked the bot
answers ``403 Forbidden: bot was blocked by the user``. Every answer is ``{"ok", "result"}``
or ``{"ok": false, "error_code", "description", "parameters"?}``; a scripted flood answer
is ``429`` with ``parameters.retry_after``.
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

from aiohttp import web

from standins.web import WebStandin, json_body

MAX_TEXT = 4096
PARSE_MODES = frozenset({"HTML", "MarkdownV2", "Markdown"})
HTML_TAGS = frozenset(
    {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a",
     "code", "pre", "blockquote", "tg-emoji"}
)  # fmt: skip
TOKEN = re.compile(r"^[0-9]+:[A-Za-z0-9_-]{20,}$")


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.problem: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in HTML_TAGS:
            self.problem = f'unsupported start tag "{tag}"'
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            self.problem = f'can\'t find end tag corresponding to start tag "{tag}"'


def html_problem(text: str) -> str | None:
    parser = _Tags()
    parser.feed(text)
    parser.close()
    if parser.problem is None and parser.open:
        return f'can\'t find end tag corresponding to start tag "{parser.open[-1]}"'
    return parser.problem


@dataclass
class Sent:
    chat_id: str
    body: dict[str, Any]
    message_id: int


class TelegramStandin(WebStandin):
    def __init__(self) -> None:
        super().__init__()
        self.token = f"{secrets.randbelow(10**9) + 10**8}:{secrets.token_urlsafe(26)}"
        self.chats: set[str] = {"4242001", "-1001000000001", "@clarion_ops"}
        self.blocked: set[str] = {"4242666"}
        self.received: list[Sent] = []
        self._ids = itertools.count(1)

    def config(self, **overrides: Any) -> dict[str, Any]:
        return {"bot_token": self.token, "base_url": self.url, **overrides}

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/{bot}/sendMessage", self._send_message)

    def flood_next(self, retry_after: int = 7) -> None:
        description = f"Too Many Requests: retry after {retry_after}"
        self.script(
            429,
            {
                "ok": False,
                "error_code": 429,
                "description": description,
                "parameters": {"retry_after": retry_after},
            },
        )

    async def _send_message(self, request: web.Request) -> web.Response:
        bot = request.match_info["bot"]
        token = bot.removeprefix("bot")
        if not bot.startswith("bot") or not TOKEN.match(token):
            return self._error(404, "Not Found")
        if not secrets.compare_digest(token, self.token):
            return self._error(401, "Unauthorized")
        body = await json_body(request)
        if not isinstance(body, dict):
            return self._error(400, "Bad Request: message text is empty")
        chat = body.get("chat_id")
        chat = str(chat) if isinstance(chat, int | str) else ""
        if chat in self.blocked:
            return self._error(403, "Forbidden: bot was blocked by the user")
        if chat not in self.chats:
            return self._error(400, "Bad Request: chat not found")
        problem = _text_problem(body)
        if problem is not None:
            return self._error(400, f"Bad Request: {problem}")
        scripted = self.scripted()
        if scripted is not None:
            return scripted
        sent = Sent(chat, body, next(self._ids))
        self.received.append(sent)
        result = {
            "message_id": sent.message_id,
            "date": int(time.time()),
            "chat": {"id": chat, "type": "private"},
            "text": body["text"],
        }
        return web.json_response({"ok": True, "result": result})

    def _error(self, code: int, description: str) -> web.Response:
        self.refused.append(f"{code} {description}")
        body = {"ok": False, "error_code": code, "description": description}
        return web.json_response(body, status=code)


def _text_problem(body: dict[str, Any]) -> str | None:
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        return "message text is empty"
    if len(text) > MAX_TEXT:
        return "message is too long"
    mode = body.get("parse_mode")
    if mode is not None and mode not in PARSE_MODES:
        return "unsupported parse_mode"
    if mode == "HTML":
        problem = html_problem(text)
        if problem is not None:
            return f"can't parse entities: {problem}"
    markup = body.get("reply_markup")
    if markup is not None and not (
        isinstance(markup, dict) and isinstance(markup.get("inline_keyboard"), list)
    ):
        return "can't parse reply keyboard markup JSON object"
    return None
