"""Discord webhooks: ``POST <webhook url>?wait=true`` with ``{"content", "embeds"}``.

With ``wait=true`` Discord answers ``200`` with the message it created (its ``id`` is the
provider message id). Errors carry Discord's JSON ``{"code", "message"}``: ``10015 Unknown
Webhook`` (404) and ``50027 Invalid Webhook Token`` (401) say the webhook is gone; a
``429`` says how long to wait in its body's ``retry_after`` (seconds, a float), more
precisely than its ``Retry-After`` header. Mentions in the content never ping anyone
(``allowed_mentions`` is empty): the text is rendered from data, which must not be able to
call ``@everyone``.
"""

from __future__ import annotations

from typing import Any

from clarion.domain.chat import ChatContent
from clarion.domain.delivery import Delivery
from clarion.net.answers import Meanings
from clarion.providers.chat import GONE, ChatProvider, Target, json_of, refusal, seconds
from clarion.providers.configs import DiscordConfig

UNKNOWN_WEBHOOK = 10015
INVALID_WEBHOOK_TOKEN = 50027
MEANINGS: Meanings = {
    (None, str(UNKNOWN_WEBHOOK)): GONE,
    (None, str(INVALID_WEBHOOK_TOKEN)): GONE,
    (404, ""): GONE,
}


def discord_message(content: ChatContent, config: DiscordConfig) -> dict[str, Any]:
    """``content`` (the text), ``embeds`` (the part's array, or its one object), and the
    configured ``username`` and ``avatar_url``; no mention pings."""
    payload: dict[str, Any] = {"content": content.text, "allowed_mentions": {"parse": []}}
    if isinstance(content.blocks, list):
        payload["embeds"] = content.blocks
    elif isinstance(content.blocks, dict):
        payload["embeds"] = [content.blocks]
    if config.username:
        payload["username"] = config.username
    if config.avatar_url:
        payload["avatar_url"] = str(config.avatar_url)
    return payload


def waiting(url: str) -> str:
    """The webhook URL asking Discord to answer with the message (``wait=true``)."""
    return url + ("&" if "?" in url else "?") + "wait=true"


class DiscordProvider(ChatProvider):
    """Posts to Discord webhooks: the recipient's ``{"kind": "discord", "webhook_url"}``
    addresses, else the provider's own ``webhook_url``."""

    kind = "discord"
    SERVICE = "discord"
    CONFIG = DiscordConfig

    async def post(self, target: Target, content: ChatContent, message: Delivery) -> str | None:
        url = waiting(self.url(target))
        reply = await self.post_json(url, discord_message(content, self.config))
        answer = json_of(reply)
        answer = answer if isinstance(answer, dict) else {}
        if 200 <= reply.status < 300:
            found = answer.get("id")
            return found if isinstance(found, str) else None
        code = answer.get("code")
        words = str(answer.get("message") or reply.text[:300])
        raise refusal(
            "Discord webhook",
            reply,
            target,
            code=str(code) if isinstance(code, int) else "",
            meanings=MEANINGS,
            detail=words,
            retry_after=seconds(answer.get("retry_after")),
        )
