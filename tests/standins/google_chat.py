"""A local Google Chat incoming webhook: ``POST /v1/spaces/<space>/messages?key=&token=``.

It checks what Google checks: the webhook's ``key`` and ``token`` (``403
PERMISSION_DENIED``), the space (``404 NOT_FOUND``), a JSON ``Message`` with ``text`` or
``cardsV2`` (``400 INVALID_ARGUMENT``), each card ``{"cardId", "card"}`` with ``sections``
of ``widgets``. It answers ``200`` with the message created (``name``
``spaces/<space>/messages/<id>``); errors are Google's ``{"error": {"code", "message",
"status"}}``, a scripted quota one ``429 RESOURCE_EXHAUSTED``.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from standins.web import WebStandin, json_body


@dataclass
class Space:
    key: str
    token: str
    deleted: bool = False


def cards_problem(cards: Any) -> str | None:
    if not isinstance(cards, list):
        return 'Invalid JSON payload received. Unknown name "cardsV2": not a list'
    for card in cards:
        inner = card.get("card") if isinstance(card, dict) else None
        sections = inner.get("sections") if isinstance(inner, dict) else None
        if not isinstance(card, dict) or not isinstance(card.get("cardId"), str):
            return "Invalid card: cardId is required"
        if not isinstance(sections, list) or not all(
            isinstance(s, dict) and isinstance(s.get("widgets"), list) for s in sections
        ):
            return "Invalid card: sections must hold widgets"
    return None


class GoogleChatStandin(WebStandin):
    def __init__(self) -> None:
        super().__init__()
        self.spaces: dict[str, Space] = {}
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._ids = itertools.count(1)

    def webhook(self) -> str:
        space = "AAAA" + secrets.token_hex(4)
        made = Space(secrets.token_urlsafe(20), secrets.token_urlsafe(20))
        self.spaces[space] = made
        return f"{self.url}/v1/spaces/{space}/messages?key={made.key}&token={made.token}"

    def exhausted_next(self) -> None:
        self.script(
            429,
            {
                "error": {
                    "code": 429,
                    "message": "Resource has been exhausted",
                    "status": "RESOURCE_EXHAUSTED",
                }
            },
        )

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/spaces/{space}/messages", self._create)

    async def _create(self, request: web.Request) -> web.Response:
        space_id = request.match_info["space"]
        space = self.spaces.get(space_id)
        if space is None or space.deleted:
            return self._error(404, "NOT_FOUND", "Requested entity was not found.")
        key, token = request.query.get("key", ""), request.query.get("token", "")
        if not (
            secrets.compare_digest(key, space.key) and secrets.compare_digest(token, space.token)
        ):
            return self._error(403, "PERMISSION_DENIED", "The caller does not have permission")
        body = await json_body(request)
        if not isinstance(body, dict):
            return self._error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        if not body.get("text") and not body.get("cardsV2"):
            return self._error(400, "INVALID_ARGUMENT", "Message cannot be empty.")
        if "cardsV2" in body:
            problem = cards_problem(body["cardsV2"])
            if problem is not None:
                return self._error(400, "INVALID_ARGUMENT", problem)
        scripted = self.scripted()
        if scripted is not None:
            return scripted
        name = f"spaces/{space_id}/messages/{next(self._ids)}"
        self.received.append((space_id, body))
        return web.json_response(
            {
                "name": name,
                "sender": {"type": "BOT"},
                "text": body.get("text", ""),
                "space": {"name": f"spaces/{space_id}"},
            }
        )

    def _error(self, code: int, status: str, message: str) -> web.Response:
        self.refused.append(f"{code} {status}")
        return web.json_response(
            {"error": {"code": code, "message": message, "status": status}}, status=code
        )
