"""The chat channel: a recipient's chat addresses and a chat message's content.

A chat address names the service it is on (its ``kind``) and where there::

    {"kind": "slack", "channel": "C0123456789"}          Slack, through a bot (chat.postMessage)
    {"kind": "slack", "webhook_url": "https://..."}      Slack, through an incoming webhook
    {"kind": "teams", "webhook_url": "https://..."}      a Teams workflow or connector URL
    {"kind": "discord", "webhook_url": "https://..."}
    {"kind": "mattermost", "webhook_url": "https://...", "channel": "town-square"}
    {"kind": "google_chat", "webhook_url": "https://..."}
    {"kind": "telegram", "chat_id": "123456789" | "@channelname"}

A chat part of a template is ``text`` (every service shows it; a notification's preview),
optionally ``blocks`` (the service's own rich JSON: Slack blocks, an Adaptive Card, Discord
embeds, Mattermost attachments, Google Chat cardsV2; or an object keyed by service giving
each its own) and ``parse_mode`` (Telegram's). Checked when the template is stored
(:func:`part_problems`); each provider takes what its service supports (:func:`content_for`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

# The fields of an address that say where on its service a message goes.
WHERE = ("webhook_url", "channel", "chat_id")
# The chat services, and each one's address fields besides ``kind``, as the API takes them
# (its schemas say which are required); what a CSV import's ``chat.<kind>.<field>`` columns
# may name.
ADDRESS_FIELDS: dict[str, tuple[str, ...]] = {
    "slack": ("channel", "webhook_url"),
    "teams": ("webhook_url",),
    "discord": ("webhook_url",),
    "mattermost": ("webhook_url", "channel"),
    "google_chat": ("webhook_url",),
    "telegram": ("chat_id",),
}
SERVICES = tuple(ADDRESS_FIELDS)
PARSE_MODES = ("HTML", "MarkdownV2", "Markdown")
# A Slack conversation as chat.postMessage takes it: an id (C…, G…, D…, or a user's U…/W… for
# a direct message from the app) or a #name.
SLACK_CHANNEL = r"^#?[A-Za-z0-9._-]{1,80}$"
# A Mattermost channel's name (town-square) or an @username, as an incoming webhook takes it.
MATTERMOST_CHANNEL = r"^@?[a-z0-9._-]{1,64}$"
# A Telegram chat: its id (an integer, negative for groups) or a public channel's @username.
TELEGRAM_CHAT = r"^(-?[1-9][0-9]{0,19}|@[A-Za-z][A-Za-z0-9_]{4,31})$"
PART_FIELDS = frozenset({"text", "blocks", "parse_mode"})


def chat_id_text(value: Any) -> Any:
    """A Telegram chat id given as a JSON number, as text (the form kept)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def addresses_of(to: Any, service: str, field: str) -> list[dict[str, Any]]:
    """The entries of a chat address list on ``service`` that have ``field`` (a non-empty
    string), malformed entries left out and repeats kept once."""
    if not isinstance(to, list):
        return []
    found: dict[str, dict[str, Any]] = {}
    for entry in to:
        if not isinstance(entry, Mapping) or entry.get("kind") != service:
            continue
        value = entry.get(field)
        if isinstance(value, str) and value:
            found.setdefault(address_key(entry) or value, dict(entry))
    return list(found.values())


def address_key(entry: Any) -> str | None:
    """What identifies a chat address: its service and where on it (``slack:C0123``); the
    key by which a dead one is removed from its recipient."""
    if not isinstance(entry, Mapping) or not isinstance(entry.get("kind"), str):
        return None
    where = [str(entry[f]) for f in WHERE if isinstance(entry.get(f), str) and entry[f]]
    return f"{entry['kind']}:{'|'.join(where)}" if where else None


@dataclass(frozen=True, slots=True)
class ChatContent:
    """What a service receives of a rendered chat part."""

    text: str
    # The service's rich content (its own JSON), or None.
    blocks: Any = None
    parse_mode: str | None = None


def content_for(content: Any, service: str) -> ChatContent:
    """The rendered chat part as ``service`` takes it: its ``blocks`` are the part's own,
    or, when the part's ``blocks`` is an object keyed by service, that service's entry."""
    part = content if isinstance(content, Mapping) else {}
    text = part.get("text")
    blocks = part.get("blocks")
    if _by_service(blocks):
        blocks = blocks.get(service)
    mode = part.get("parse_mode")
    return ChatContent(
        text=text if isinstance(text, str) else "",
        blocks=blocks if blocks not in (None, [], {}) else None,
        parse_mode=mode if mode in PARSE_MODES else None,
    )


def _by_service(blocks: Any) -> TypeGuard[Mapping[str, Any]]:
    return isinstance(blocks, Mapping) and bool(blocks) and set(blocks) <= set(SERVICES)


def part_problems(part: Any, where: str) -> list[dict[str, str]]:
    """What is wrong with a chat part of a template (``where`` prefixes each field), as
    validation details; [] when it is fine."""
    if not isinstance(part, Mapping):
        return [{"field": where, "message": "an object with text, blocks and parse_mode"}]
    problems = []
    for name in sorted(set(part) - PART_FIELDS - {"digest"}, key=str):
        problems.append({"field": f"{where}.{name}", "message": "not a field of a chat part"})
    text = part.get("text")
    if not isinstance(text, str) or not text.strip():
        problems.append({"field": f"{where}.text", "message": "the message text is required"})
    blocks = part.get("blocks")
    if blocks is not None and not isinstance(blocks, list | Mapping):
        problems.append({"field": f"{where}.blocks", "message": "a JSON array or object"})
    elif _by_service(blocks):
        for service, value in blocks.items():
            if not isinstance(value, list | Mapping):
                problems.append(
                    {"field": f"{where}.blocks.{service}", "message": "a JSON array or object"}
                )
    mode = part.get("parse_mode")
    if mode is not None and mode not in PARSE_MODES:
        problems.append(
            {"field": f"{where}.parse_mode", "message": f"one of {', '.join(PARSE_MODES)}"}
        )
    if "digest" in part:
        problems.extend(part_problems(part["digest"], f"{where}.digest"))
    return problems
