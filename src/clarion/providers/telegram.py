"""Telegram: the Bot API's ``sendMessage``, ``POST <base>/bot<token>/sendMessage``.

Every answer is ``{"ok": ..., "result" | "error_code", "description", "parameters"}``.
``429`` carries ``parameters.retry_after`` (seconds); ``403`` means the bot may not write to
that chat: blocked by the user, kicked from the group, the user deactivated (the address is
gone) or never started by the user; ``400 chat not found`` an address the bot cannot reach;
``401`` or ``404`` a bot token Telegram does not know. Telegram takes about one message a
second per chat: sends are paced per chat.
"""

from __future__ import annotations

from typing import Any

from clarion.domain.chat import ChatContent
from clarion.domain.delivery import Delivery
from clarion.net.answers import Meaning, Meanings
from clarion.providers.chat import GONE, ChatProvider, Target, json_of, refusal, seconds
from clarion.providers.configs import TelegramConfig

API_URL = "https://api.telegram.org"
PER_CHAT = 1.0
# Words of a 403's description that say the chat is lost to the bot for good.
_GONE_WORDS = ("blocked", "kicked", "deactivated", "not a member", "chat was deleted")
MEANINGS: Meanings = {
    (403, "gone"): GONE,
    (403, ""): Meaning("invalid_address"),
    (None, "chat_not_found"): Meaning("invalid_address"),
    (None, "migrated"): Meaning("invalid_address"),
    (404, ""): Meaning("bad_credentials"),
}


def telegram_message(chat_id: str, content: ChatContent, config: TelegramConfig) -> dict[str, Any]:
    """``chat_id``, ``text``, ``parse_mode`` when the part names one, the part's object
    ``blocks`` as ``reply_markup`` (an inline keyboard), and link previews off if asked."""
    payload: dict[str, Any] = {"chat_id": chat_id, "text": content.text}
    if content.parse_mode:
        payload["parse_mode"] = content.parse_mode
    if isinstance(content.blocks, dict):
        payload["reply_markup"] = content.blocks
    if config.disable_link_preview:
        payload["link_preview_options"] = {"is_disabled": True}
    return payload


def code_of(status: int, description: str, parameters: dict[str, Any]) -> str:
    """A code for :data:`MEANINGS` from what Telegram's error says in words."""
    text = description.lower()
    if status == 403:
        return "gone" if any(word in text for word in _GONE_WORDS) else ""
    if "migrate_to_chat_id" in parameters:
        return "migrated"
    if "chat not found" in text or "user not found" in text:
        return "chat_not_found"
    return ""


class TelegramProvider(ChatProvider):
    """Sends with ``sendMessage`` as the bot: to the recipient's ``{"kind": "telegram",
    "chat_id"}`` addresses, else the provider's own ``chat_id``."""

    kind = "telegram"
    SERVICE = "telegram"
    FIELD = "chat_id"
    CONFIG = TelegramConfig
    PACE = PER_CHAT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        base = str(self.config.base_url or API_URL).rstrip("/")
        self._endpoint = f"{base}/bot{self.config.bot_token}/sendMessage"

    async def post(self, target: Target, content: ChatContent, message: Delivery) -> str | None:
        chat_id = str(target.address["chat_id"])
        payload = telegram_message(chat_id, content, self.config)
        reply = await self.post_json(self._endpoint, payload)
        answer = json_of(reply)
        answer = answer if isinstance(answer, dict) else {}
        if 200 <= reply.status < 300 and answer.get("ok") is True:
            result = answer.get("result")
            found = result.get("message_id") if isinstance(result, dict) else None
            return f"{chat_id}/{found}" if isinstance(found, int) else None
        status = answer.get("error_code")
        status = status if isinstance(status, int) and 400 <= status < 600 else reply.status
        parameters = answer.get("parameters")
        parameters = parameters if isinstance(parameters, dict) else {}
        description = str(answer.get("description") or reply.text[:300])
        if "migrate_to_chat_id" in parameters:
            description += f" (the group is now chat {parameters['migrate_to_chat_id']})"
        raise refusal(
            "Telegram sendMessage",
            reply,
            target,
            code=code_of(status, description, parameters),
            meanings=MEANINGS,
            detail=description,
            retry_after=seconds(parameters.get("retry_after")),
            status=status if status >= 300 else 400,
            credentials=True,
        )
