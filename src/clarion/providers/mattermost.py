"""Mattermost: incoming webhooks, ``POST`` of ``{"text", "channel", "attachments", ...}``.

It answers ``200 ok``, or an application error ``{"id", "message", "status_code"}``: an
unknown webhook (``web.incoming_webhook.invalid.app_error``, or a 404) is gone; a locked
channel or a disabled override is refused (403); 429 and 5xx are worth trying again.
"""

from __future__ import annotations

from typing import Any

from clarion.domain.chat import ChatContent
from clarion.domain.delivery import Delivery
from clarion.net.answers import Meaning, Meanings
from clarion.providers.chat import GONE, ChatProvider, Target, error, json_of
from clarion.providers.configs import MattermostConfig

MEANINGS: Meanings = {
    (404, ""): GONE,
    (None, "web.incoming_webhook.invalid.app_error"): GONE,
    (None, "web.incoming_webhook.disabled.app_error"): Meaning("provider_rejected"),
    (None, "web.incoming_webhook.user.app_error"): Meaning("invalid_address"),
    (None, "web.incoming_webhook.channel.app_error"): Meaning("invalid_address"),
}


def mattermost_message(
    content: ChatContent, channel: str | None, config: MattermostConfig
) -> dict[str, Any]:
    """``text``; the part's ``blocks`` as ``attachments`` (an array) or its object's fields
    under Clarion's own; the address's (else the provider's) ``channel``, ``username`` and
    ``icon_url``."""
    payload: dict[str, Any] = {}
    if isinstance(content.blocks, dict):
        payload.update(content.blocks)
    elif isinstance(content.blocks, list):
        payload["attachments"] = content.blocks
    payload["text"] = content.text
    if channel or config.channel:
        payload["channel"] = channel or config.channel
    if config.username:
        payload["username"] = config.username
    if config.icon_url:
        payload["icon_url"] = str(config.icon_url)
    return payload


class MattermostProvider(ChatProvider):
    """Posts to Mattermost incoming webhooks: the recipient's ``{"kind": "mattermost",
    "webhook_url", "channel"?}`` addresses, else the provider's own ``webhook_url``."""

    kind = "mattermost"
    SERVICE = "mattermost"
    CONFIG = MattermostConfig

    async def post(self, target: Target, content: ChatContent, message: Delivery) -> str | None:
        channel = target.address.get("channel")
        payload = mattermost_message(
            content, channel if isinstance(channel, str) else None, self.config
        )
        reply = await self.post_json(self.url(target), payload)
        answer = json_of(reply)
        answer = answer if isinstance(answer, dict) else {}
        failed = error(
            "Mattermost webhook",
            reply,
            target,
            code=str(answer.get("id") or ""),
            meanings=MEANINGS,
            detail=str(answer.get("message") or reply.text[:300]),
        )
        if failed is not None:
            raise failed
        return reply.headers.get("x-request-id")
