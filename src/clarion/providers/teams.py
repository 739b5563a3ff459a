"""Microsoft Teams: a workflow's "When a Teams webhook request is received" URL (Power
Automate), or a channel's incoming webhook (an Office 365 connector).

Both take a message with Adaptive Card attachments; a connector also takes a legacy
``MessageCard``. A workflow answers ``202 Accepted``; a connector ``200`` with ``1``, or, for
an error of the channel behind it, ``200`` with words such as ``Webhook message delivery
failed with error: Microsoft Teams endpoint returned HTTP error 429 ...`` (read here as that
status). ``404`` or ``410``: the workflow or connector is gone.
"""

from __future__ import annotations

import re
from typing import Any

from clarion.domain.chat import ChatContent
from clarion.domain.delivery import Delivery
from clarion.net.answers import Meaning, Meanings
from clarion.providers.chat import GONE, ChatProvider, Target, error
from clarion.providers.configs import TeamsConfig

ADAPTIVE = "application/vnd.microsoft.card.adaptive"
CARD_VERSION = "1.4"
_DELIVERY_FAILED = re.compile(r"delivery failed.*?HTTP error (\d{3})", re.IGNORECASE | re.DOTALL)
MEANINGS: Meanings = {
    (404, ""): GONE,
    (410, ""): GONE,
    (401, ""): Meaning("invalid_address"),
    (403, ""): Meaning("invalid_address"),
}


def text_card(text: str) -> dict[str, Any]:
    """An Adaptive Card showing ``text``."""
    return {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "body": [{"type": "TextBlock", "text": text, "wrap": True}],
    }


def attachment(card: dict[str, Any]) -> dict[str, Any]:
    return {"contentType": ADAPTIVE, "contentUrl": None, "content": card}


def teams_message(content: ChatContent) -> dict[str, Any]:
    """The part's ``blocks``: an Adaptive Card (``"type": "AdaptiveCard"``) sent as the
    message's attachment; a ``MessageCard`` (``"@type"``) sent as it is, for a connector; an
    array, the message's attachments themselves. Without blocks, a card of the text."""
    blocks = content.blocks
    if isinstance(blocks, dict) and blocks.get("@type") == "MessageCard":
        return {"text": content.text, **blocks}
    if isinstance(blocks, dict) and blocks.get("type") == "AdaptiveCard":
        attachments = [attachment(blocks)]
    elif isinstance(blocks, list):
        attachments = blocks
    else:
        attachments = [attachment(text_card(content.text))]
    return {"type": "message", "summary": content.text[:250], "attachments": attachments}


def failed_status(text: str) -> int | None:
    """The status a connector's ``200`` answer reports as a failure, if it does."""
    found = _DELIVERY_FAILED.search(text)
    return int(found.group(1)) if found else None


class TeamsProvider(ChatProvider):
    """Posts to Teams workflow or connector URLs: the recipient's ``{"kind": "teams",
    "webhook_url"}`` addresses, else the provider's own ``webhook_url``."""

    kind = "teams"
    SERVICE = "teams"
    CONFIG = TeamsConfig

    async def post(self, target: Target, content: ChatContent, message: Delivery) -> str | None:
        reply = await self.post_json(self.url(target), teams_message(content))
        status = failed_status(reply.text) if 200 <= reply.status < 300 else None
        failed = error("Teams webhook", reply, target, meanings=MEANINGS, status=status)
        if failed is not None:
            raise failed
        return reply.headers.get("x-ms-workflow-run-id") or reply.headers.get("request-id")
