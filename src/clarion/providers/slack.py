"""Slack: incoming webhooks (``slack_webhook``) and the Web API's ``chat.postMessage`` with a
bot token (``slack``).

An incoming webhook takes ``{"text", "blocks"}`` and answers ``200 ok``, or an error code as
plain text with a status (``400 invalid_payload``, ``403 invalid_token``, ``404 no_service``,
``404 channel_not_found``, ``410 channel_is_archived``): a 404 or 410 says the webhook (or
its channel) is gone for good. ``chat.postMessage`` answers ``200`` with
``{"ok": false, "error": "..."}`` for its errors, and ``429`` with ``Retry-After`` when
rate limited. Slack takes about one message a second per channel: both kinds pace their
sends per destination (:attr:`ChatProvider.PACE`).
"""

from __future__ import annotations

import re
from typing import Any

from clarion.domain.chat import ChatContent
from clarion.domain.delivery import Delivery
from clarion.net.answers import Meaning, Meanings
from clarion.providers.chat import GONE, ChatProvider, Target, error, json_of, refusal
from clarion.providers.configs import SlackConfig, SlackWebhookConfig

API_URL = "https://slack.com"
POST_MESSAGE = "/api/chat.postMessage"
# Slack's documented pace for posting: about one message a second per channel.
PER_CHANNEL = 1.0
_CODE = re.compile(r"^[a-z_]{2,64}$")

# An incoming webhook's plain-text error codes (and statuses) that say more than a status.
WEBHOOK_MEANINGS: Meanings = {
    **{
        (None, code): GONE
        for code in ("no_service", "invalid_token", "channel_not_found", "channel_is_archived")
    },
    **{(None, code): GONE for code in ("no_team", "team_disabled", "no_service_id")},
    (404, ""): GONE,
    (410, ""): GONE,
    (None, "user_not_found"): Meaning("invalid_address"),
}

_TRANSIENT = (
    "ratelimited",
    "rate_limited",
    "fatal_error",
    "internal_error",
    "service_unavailable",
    "request_timeout",
)
_CREDENTIALS = (
    "invalid_auth",
    "not_authed",
    "account_inactive",
    "token_revoked",
    "token_expired",
    "no_permission",
    "missing_scope",
    "not_allowed_token_type",
    "ekm_access_denied",
    "access_denied",
    "team_access_not_granted",
)
_ADDRESS = ("channel_not_found", "is_archived", "cannot_dm_bot", "messages_tab_disabled")
# chat.postMessage's error codes (answered with 200 and ok: false, or with 429).
API_MEANINGS: Meanings = {
    **{(None, code): Meaning(f"slack_{code}", transient=True) for code in _TRANSIENT},
    **{(None, code): Meaning("bad_credentials") for code in _CREDENTIALS},
    **{(None, code): Meaning("invalid_address") for code in _ADDRESS},
}
# What to do about a refusal, said with it.
HINTS = {
    "not_in_channel": "invite the app to the channel (/invite @app)",
    "channel_not_found": "a private channel needs the app invited to it first",
    "missing_scope": "the bot token needs the chat:write scope",
}


def slack_message(content: ChatContent) -> dict[str, Any]:
    """A Slack message: ``text`` (the notification's preview, and what shows without
    blocks), and the part's ``blocks`` (an array), or the fields of its object (``blocks``,
    ``attachments``, ``unfurl_links`` ...) under Clarion's own."""
    payload: dict[str, Any] = {}
    if isinstance(content.blocks, dict):
        payload.update(content.blocks)
    elif isinstance(content.blocks, list):
        payload["blocks"] = content.blocks
    payload["text"] = content.text
    return payload


class SlackWebhookProvider(ChatProvider):
    """Posts to Slack incoming webhooks: the recipient's ``{"kind": "slack", "webhook_url"}``
    addresses, else the provider's own ``webhook_url``."""

    kind = "slack_webhook"
    SERVICE = "slack"
    FIELD = "webhook_url"
    CONFIG = SlackWebhookConfig
    PACE = PER_CHANNEL

    async def post(self, target: Target, content: ChatContent, message: Delivery) -> str | None:
        reply = await self.post_json(self.url(target), slack_message(content))
        text = reply.text.strip()
        code = text if _CODE.match(text) and text != "ok" else ""
        failed = error("Slack webhook", reply, target, code=code, meanings=WEBHOOK_MEANINGS)
        if failed is not None:
            raise failed
        return None


class SlackProvider(ChatProvider):
    """Posts with ``chat.postMessage`` as the app's bot: to the recipient's
    ``{"kind": "slack", "channel"}`` addresses, else the provider's own ``channel``."""

    kind = "slack"
    SERVICE = "slack"
    FIELD = "channel"
    CONFIG = SlackConfig
    PACE = PER_CHANNEL

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        base = str(self.config.base_url or API_URL).rstrip("/")
        self._endpoint = base + POST_MESSAGE
        self._auth = {"authorization": f"Bearer {self.config.token}"}

    def request(self, target: Target, content: ChatContent) -> dict[str, Any]:
        payload = slack_message(content)
        payload["channel"] = target.address["channel"]
        if self.config.username:
            payload["username"] = self.config.username
        if self.config.icon_emoji:
            payload["icon_emoji"] = self.config.icon_emoji
        return payload

    async def post(self, target: Target, content: ChatContent, message: Delivery) -> str | None:
        reply = await self.post_json(self._endpoint, self.request(target, content), self._auth)
        answer = json_of(reply)
        answer = answer if isinstance(answer, dict) else {}
        if reply.status == 200 and answer.get("ok") is True:
            channel, ts = answer.get("channel"), answer.get("ts")
            return f"{channel}/{ts}" if isinstance(ts, str) else None
        code = str(answer.get("error") or "")
        hint = HINTS.get(code)
        detail = (code or reply.text[:300]) + (f" ({hint})" if hint else "")
        raise refusal(
            "Slack chat.postMessage",
            reply,
            target,
            code=code,
            meanings=API_MEANINGS,
            detail=detail,
            # ok: false comes with a 200: a refusal, unless its code says otherwise.
            status=400 if 200 <= reply.status < 300 else None,
            credentials=True,
        )
