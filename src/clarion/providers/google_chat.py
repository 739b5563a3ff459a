"""Google Chat: a space's incoming webhook, ``POST`` of a ``Message`` (``text``, ``cardsV2``).

It answers ``200`` with the message created (its ``name``, ``spaces/.../messages/...``, is
the provider message id), or a Google API error ``{"error": {"code", "message",
"status"}}``: ``404 NOT_FOUND`` (the space or webhook is gone), ``403 PERMISSION_DENIED``,
``400 INVALID_ARGUMENT``, ``429 RESOURCE_EXHAUSTED`` (a space takes about one message a
second: sends are paced per webhook).
"""

from __future__ import annotations

from typing import Any

from clarion.domain.chat import ChatContent
from clarion.domain.delivery import Delivery
from clarion.net.answers import Meaning, Meanings
from clarion.providers.chat import GONE, ChatProvider, Target, error, json_of
from clarion.providers.configs import GoogleChatConfig

PER_SPACE = 1.0
MEANINGS: Meanings = {
    (404, ""): GONE,
    (None, "NOT_FOUND"): GONE,
    (None, "PERMISSION_DENIED"): Meaning("invalid_address"),
    (None, "UNAUTHENTICATED"): Meaning("invalid_address"),
    (None, "RESOURCE_EXHAUSTED"): Meaning(transient=True),
    (None, "UNAVAILABLE"): Meaning(transient=True),
}


def google_chat_message(content: ChatContent) -> dict[str, Any]:
    """``text``, and the part's ``blocks``: an array as ``cardsV2``, an object's fields
    (``cardsV2``, ``accessoryWidgets``, ...) under the text."""
    payload: dict[str, Any] = {}
    if isinstance(content.blocks, dict):
        payload.update(content.blocks)
    elif isinstance(content.blocks, list):
        payload["cardsV2"] = content.blocks
    payload["text"] = content.text
    return payload


class GoogleChatProvider(ChatProvider):
    """Posts to Google Chat webhooks: the recipient's ``{"kind": "google_chat",
    "webhook_url"}`` addresses, else the provider's own ``webhook_url``."""

    kind = "google_chat"
    SERVICE = "google_chat"
    CONFIG = GoogleChatConfig
    PACE = PER_SPACE

    async def post(self, target: Target, content: ChatContent, message: Delivery) -> str | None:
        reply = await self.post_json(self.url(target), google_chat_message(content))
        answer = json_of(reply)
        answer = answer if isinstance(answer, dict) else {}
        problem = answer.get("error")
        problem = problem if isinstance(problem, dict) else {}
        failed = error(
            "Google Chat webhook",
            reply,
            target,
            code=str(problem.get("status") or ""),
            meanings=MEANINGS,
            detail=str(problem.get("message") or reply.text[:300]),
        )
        if failed is not None:
            raise failed
        name = answer.get("name")
        return name if isinstance(name, str) else None
