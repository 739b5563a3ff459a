"""The chat channel through Clarion: recipients' chat addresses and templates' chat parts
checked at the edge, deliveries planned, sent through Slack, Discord and Telegram
stand-ins on both stores, a provider's own destination for recipients without an address,
dead addresses removed, and hostile addresses refused."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from harness import Harness, make_settings, running
from standins import serving
from standins.discord import DiscordStandin
from standins.slack import SlackStandin
from standins.telegram import TelegramStandin

TEMPLATE = {
    "channels": {
        "chat": {
            "text": "Order {{ orderId }} shipped",
            "blocks": {
                "slack": [
                    {"type": "section", "text": {"type": "mrkdwn", "text": "*{{ orderId }}*"}}
                ],
                "discord": [{"title": "Order {{ orderId }}"}],
            },
        }
    }
}


@pytest.fixture
async def slack() -> AsyncIterator[SlackStandin]:
    async with serving(SlackStandin()) as server:
        yield server


@pytest.fixture
async def discord() -> AsyncIterator[DiscordStandin]:
    async with serving(DiscordStandin()) as server:
        yield server


@pytest.fixture
async def telegram() -> AsyncIterator[TelegramStandin]:
    async with serving(TelegramStandin()) as server:
        yield server


SECRET_KEY = base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
async def app(backend: tuple[str, str]) -> AsyncIterator[Harness]:
    """Clarion on each store, with a key to seal the chat providers' secrets."""
    async with running(make_settings(*backend, secret_key=SECRET_KEY)) as harness:
        yield harness


@pytest.fixture
async def lite(migrated_sqlite_url: str) -> AsyncIterator[Harness]:
    settings = make_settings(migrated_sqlite_url, "embedded://", secret_key=SECRET_KEY)
    async with running(settings) as harness:
        yield harness


@pytest.fixture
async def strict(migrated_sqlite_url: str) -> AsyncIterator[Harness]:
    """A deployment that allows no private address and no plain-http webhook (the
    default)."""
    settings = make_settings(
        migrated_sqlite_url, "embedded://", allow_private_webhooks=False, secret_key=SECRET_KEY
    )
    async with running(settings) as harness:
        yield harness


async def configure(app: Harness, name: str, kind: str, config: dict[str, Any]) -> None:
    body = {"channel": "chat", "kind": kind, "config": config}
    response = await app.client.put(f"/v1/providers/{name}", json=body, headers=app.auth)
    assert response.status_code == 200, response.text
    # name_for and has_destination (the planner's) answer from what prepare() loaded.
    await app.ctx.providers.prepare([app.tenant_id])


async def deliver(app: Harness, *recipients: str) -> list[dict[str, Any]]:
    """Send the template to the recipients; their chat deliveries once all is done."""
    await app.put_template("shipped", TEMPLATE)
    response = await app.send(
        {"template": "shipped", "to": {"recipient_ids": list(recipients)}, "data": {"orderId": 42}}
    )
    assert response.status_code == 202, response.text
    await app.drain()
    deliveries: list[dict[str, Any]] = (await app.notification(response.json()["id"]))["deliveries"]
    return sorted(deliveries, key=lambda d: d["recipient_id"])


async def recipient(app: Harness, rid: str) -> dict[str, Any]:
    response = await app.client.get(f"/v1/recipients/{rid}", headers=app.auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# -- through the pipeline, on both stores -------------------------------------------------


async def test_slack_bot_delivers_rendered_text_and_blocks(
    app: Harness, slack: SlackStandin
) -> None:
    await configure(app, "slack-bot", "slack", slack.config())
    await app.put_recipient("u-1", chat=[{"kind": "slack", "channel": "C0ALERTS01"}])
    [delivery] = await deliver(app, "u-1")
    assert (delivery["status"], delivery["channel"]) == ("sent", "chat"), delivery
    assert delivery["provider"] == "slack-bot"
    [posted] = slack.received
    assert posted.channel == "C0ALERTS01"
    assert posted.body["text"] == "Order 42 shipped"
    assert posted.body["blocks"] == [
        {"type": "section", "text": {"type": "mrkdwn", "text": "*42*"}}
    ]
    shown = await app.client.get(f"/v1/deliveries/{delivery['id']}", headers=app.auth)
    assert shown.json()["provider_message_id"].startswith("C0ALERTS01/")


async def test_a_slack_ops_room_takes_recipients_without_an_address(
    app: Harness, slack: SlackStandin
) -> None:
    room = slack.hook("C0OPSROOM1")
    await configure(app, "slack-ops", "slack_webhook", {"webhook_url": room})
    own = slack.hook("C0ALERTS01")
    await app.put_recipient("u-1")  # no chat address: the room
    await app.put_recipient("u-2", chat=[{"kind": "slack", "webhook_url": own}])
    deliveries = await deliver(app, "u-1", "u-2")
    assert [d["status"] for d in deliveries] == ["sent", "sent"], deliveries
    assert sorted(p.channel for p in slack.received) == ["C0ALERTS01", "C0OPSROOM1"]


async def test_without_a_destination_a_recipient_with_no_address_is_suppressed(
    app: Harness, slack: SlackStandin
) -> None:
    await configure(app, "slack-bot", "slack", slack.config())
    await app.put_recipient("u-1", email="u1@example.com")
    [delivery] = await deliver(app, "u-1")
    assert (delivery["status"], delivery["reason"]) == ("suppressed", "no_address")
    assert slack.received == []


async def test_discord_gone_webhook_is_removed_from_the_recipient(
    app: Harness, discord: DiscordStandin
) -> None:
    await configure(app, "discord", "discord", {"username": "Shop"})
    dead, live = discord.webhook(), discord.webhook()
    discord.webhooks[dead.split("/")[-2]].deleted = True
    addresses = [{"kind": "discord", "webhook_url": u} for u in (dead, live)]
    await app.put_recipient("u-1", chat=[*addresses, {"kind": "telegram", "chat_id": "1"}])
    [delivery] = await deliver(app, "u-1")
    assert delivery["status"] == "sent", delivery
    [message] = discord.received
    assert message.body["embeds"] == [{"title": "Order 42"}]
    assert message.body["allowed_mentions"] == {"parse": []}
    kept = (await recipient(app, "u-1"))["chat"]
    assert kept == [addresses[1], {"kind": "telegram", "chat_id": "1"}]


async def test_telegram_flood_is_retried_then_sent(app: Harness, telegram: TelegramStandin) -> None:
    await configure(app, "telegram", "telegram", telegram.config())
    await app.put_recipient("u-1", chat=[{"kind": "telegram", "chat_id": 4242001}])
    telegram.flood_next(retry_after=0)
    [delivery] = await deliver(app, "u-1")
    assert (delivery["status"], delivery["attempts"]) == ("sent", 2), delivery
    [sent] = telegram.received
    assert (sent.chat_id, sent.body["text"]) == ("4242001", "Order 42 shipped")


async def test_a_blocked_telegram_chat_fails_and_is_removed(
    app: Harness, telegram: TelegramStandin
) -> None:
    await configure(app, "telegram", "telegram", telegram.config())
    await app.put_recipient("u-1", chat=[{"kind": "telegram", "chat_id": "4242666"}])
    [delivery] = await deliver(app, "u-1")
    assert (delivery["status"], delivery["reason"]) == ("failed", "unregistered"), delivery
    assert (await recipient(app, "u-1"))["chat"] == []


async def test_chat_without_a_provider_goes_to_the_sandbox(lite: Harness) -> None:
    await lite.put_recipient("u-1", chat=[{"kind": "slack", "channel": "C0ALERTS01"}])
    [delivery] = await deliver(lite, "u-1")
    assert (delivery["status"], delivery["provider"]) == ("sent", "sandbox")
    captured = await lite.client.get("/v1/sandbox/messages?channel=chat", headers=lite.auth)
    [message] = captured.json()["data"]
    assert message["content"]["text"] == "Order 42 shipped"


async def test_a_chat_provider_can_be_tried_on_its_own_destination(
    lite: Harness, slack: SlackStandin
) -> None:
    await configure(lite, "slack-ops", "slack", slack.config(channel="C0OPSROOM1"))
    await lite.put_recipient("u-1")
    response = await lite.client.post(
        "/v1/providers/slack-ops/test", json={"recipient_id": "u-1"}, headers=lite.auth
    )
    assert response.json()["ok"] is True, response.text
    assert slack.received[0].channel == "C0OPSROOM1"


# -- at the edge --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "field"),
    [
        ({"kind": "irc", "channel": "#ops"}, "chat.0"),
        ({"kind": "slack"}, "chat.0.slack"),
        ({"kind": "slack", "channel": "C1", "webhook_url": "https://h.example/x"}, "chat.0.slack"),
        ({"kind": "slack", "channel": "C1\r\nX-Evil: 1"}, "chat.0.slack.channel"),
        ({"kind": "discord", "webhook_url": "not a url"}, "chat.0.discord.webhook_url"),
        ({"kind": "discord"}, "chat.0.discord.webhook_url"),
        ({"kind": "teams", "webhook_url": "ftp://files.example.com/x"}, "chat.0.teams.webhook_url"),
        ({"kind": "telegram", "chat_id": "12/../../getMe"}, "chat.0.telegram.chat_id"),
        ({"kind": "telegram", "chat_id": True}, "chat.0.telegram.chat_id"),
        (
            {"kind": "mattermost", "webhook_url": "https://m.example/h", "x": 1},
            "chat.0.mattermost.x",
        ),
        ("slack:C1", "chat.0"),
    ],
)
async def test_invalid_chat_addresses_are_422(lite: Harness, address: Any, field: str) -> None:
    response = await lite.client.put(
        "/v1/recipients/u-1", json={"chat": [address]}, headers=lite.auth
    )
    assert response.status_code == 422, response.text
    details = response.json()["error"]["details"]
    assert field in [d["field"] for d in details], details


async def test_too_many_chat_addresses_are_422(lite: Harness) -> None:
    many = [{"kind": "telegram", "chat_id": str(1000 + i)} for i in range(21)]
    response = await lite.client.put("/v1/recipients/u-1", json={"chat": many}, headers=lite.auth)
    assert response.status_code == 422


async def test_plain_http_webhooks_are_refused_where_private_ones_are_not_allowed(
    strict: Harness,
) -> None:
    plain = {"kind": "slack", "webhook_url": "http://hooks.example.com/services/T/B/x"}
    response = await strict.client.put(
        "/v1/recipients/u-1", json={"chat": [plain]}, headers=strict.auth
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["field"] == "chat.0.webhook_url"
    batch = await strict.client.post(
        "/v1/recipients/batch",
        json={"recipients": [{"id": "u-1", "chat": [plain]}, {"id": "u-2"}]},
        headers=strict.auth,
    )
    results = batch.json()["results"]
    assert results[0]["error"]["details"][0]["field"] == "chat.0.webhook_url"
    assert results[1] == {"id": "u-2", "status": "ok"}
    provider = await strict.client.put(
        "/v1/providers/hooks",
        json={
            "channel": "chat",
            "kind": "discord",
            "config": {"webhook_url": plain["webhook_url"]},
        },
        headers=strict.auth,
    )
    assert provider.status_code == 422, provider.text
    assert provider.json()["error"]["details"][0]["field"] == "config.webhook_url"


async def test_a_recipient_webhook_on_a_private_address_is_refused_when_sent(
    strict: Harness, slack: SlackStandin
) -> None:
    # https passes the edge; the address is checked on the connection made, at send time.
    body = {"channel": "chat", "kind": "slack_webhook", "config": {}}
    await strict.client.put("/v1/providers/slack-hooks", json=body, headers=strict.auth)
    await strict.ctx.providers.prepare([strict.tenant_id])
    url = slack.hook().replace("http://", "https://")
    await strict.put_recipient("u-1", chat=[{"kind": "slack", "webhook_url": url}])
    [delivery] = await deliver(strict, "u-1")
    assert (delivery["status"], delivery["reason"]) == ("failed", "address_refused"), delivery
    assert slack.received == []
    # Refused is not gone: the address stays.
    assert len((await recipient(strict, "u-1"))["chat"]) == 1


@pytest.mark.parametrize(
    ("part", "field"),
    [
        ({"blocks": []}, "channels.chat.text"),
        ({"text": "  "}, "channels.chat.text"),
        ({"text": "hi", "blocks": "not json"}, "channels.chat.blocks"),
        ({"text": "hi", "blocks": {"slack": "x"}}, "channels.chat.blocks.slack"),
        ({"text": "hi", "parse_mode": "BBCode"}, "channels.chat.parse_mode"),
        ({"text": "hi", "title": "no"}, "channels.chat.title"),
        ({"text": "hi", "digest": {"blocks": []}}, "channels.chat.digest.text"),
    ],
)
async def test_invalid_chat_parts_are_422(lite: Harness, part: Any, field: str) -> None:
    body = {"channels": {"chat": part}}
    response = await lite.client.put("/v1/templates/t", json=body, headers=lite.auth)
    assert response.status_code == 422, response.text
    assert field in [d["field"] for d in response.json()["error"]["details"]]


async def test_a_locales_chat_part_is_checked_merged(lite: Harness) -> None:
    body = {
        "channels": {"chat": {"text": "Shipped"}},
        "locales": {"fr": {"chat": {"parse_mode": "Texte"}}},
    }
    response = await lite.client.put("/v1/templates/t", json=body, headers=lite.auth)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "locales.fr.chat.parse_mode"
    body["locales"] = {"fr": {"chat": {"text": "Expédiée", "parse_mode": "HTML"}}}
    response = await lite.client.put("/v1/templates/t", json=body, headers=lite.auth)
    assert response.status_code == 200, response.text
