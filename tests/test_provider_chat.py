"""The chat providers against local stand-ins of Slack, Discord and Telegram: what each
sends (its mapping of the chat part), what each answer means, where a delivery goes (the
recipient's addresses, else the provider's own destination), and the per-destination
pacing they declare."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from clarion.config import Settings
from clarion.domain.delivery import Delivery
from clarion.errors import PermanentError, TransientError
from clarion.providers import registry
from clarion.providers.base import Provider, ProviderEnv, ProviderSpec
from standins import serving
from standins.discord import DiscordStandin
from standins.slack import SlackStandin
from standins.telegram import TelegramStandin

Make = Callable[..., Awaitable[Provider]]
BLOCKS = [
    {"type": "header", "text": {"type": "plain_text", "text": "Order shipped"}},
    {"type": "section", "text": {"type": "mrkdwn", "text": "*Order 42* is on its way"}},
]


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


async def _maker(allow_private: bool) -> AsyncIterator[Make]:
    engine = create_async_engine("sqlite+aiosqlite://")
    env = ProviderEnv(settings=Settings(allow_private_webhooks=allow_private), engine=engine)
    made: list[Provider] = []

    async def make(kind: str, config: dict[str, Any] | None = None) -> Provider:
        spec = ProviderSpec("t1", f"{kind}-main", kind, "chat", config or {})
        provider = registry.load(kind)(spec, env)
        await provider.start()
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()
    await engine.dispose()


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    async for maker in _maker(allow_private=True):
        yield maker


@pytest.fixture
async def guarded() -> AsyncIterator[Make]:
    """Providers of a deployment that allows no private address (the default)."""
    async for maker in _maker(allow_private=False):
        yield maker


def chat(to: Any, text: str = "Order 42 shipped", **part: Any) -> Delivery:
    return Delivery(
        id="dlv_1",
        tenant="t1",
        notification="ntf_1",
        recipient="u-1",
        channel="chat",
        to=to,
        content={"text": text, **part},
        priority="normal",
        attempt=1,
    )


# -- Slack incoming webhooks -------------------------------------------------------------


async def test_slack_webhook_posts_text_and_blocks(slack: SlackStandin, make: Make) -> None:
    url = slack.hook("C0ALERTS01")
    provider = await make("slack_webhook")
    result = await provider.send(chat([{"kind": "slack", "webhook_url": url}], blocks=BLOCKS))
    [posted] = slack.received
    assert (posted.via, posted.channel) == ("webhook", "C0ALERTS01")
    assert posted.body == {"text": "Order 42 shipped", "blocks": BLOCKS}
    assert result.provider_message_id is None  # a webhook answers "ok", nothing more


async def test_slack_webhook_takes_its_own_blocks_from_a_part_for_several_services(
    slack: SlackStandin, make: Make
) -> None:
    url = slack.hook()
    provider = await make("slack_webhook")
    blocks = {"slack": BLOCKS, "discord": [{"title": "Order 42"}]}
    await provider.send(chat([{"kind": "slack", "webhook_url": url}], blocks=blocks))
    assert slack.received[0].body["blocks"] == BLOCKS


@pytest.mark.parametrize("state", ["removed", "archived"])
async def test_a_dead_slack_webhook_is_gone_and_removed(
    slack: SlackStandin, make: Make, state: str
) -> None:
    url = slack.hook()
    setattr(slack.hook_of(url), state, True)
    address = {"kind": "slack", "webhook_url": url}
    provider = await make("slack_webhook")
    with pytest.raises(PermanentError) as caught:
        await provider.send(chat([address]))
    assert caught.value.reason == "unregistered"
    assert caught.value.dead_address == [address]
    assert slack.refused == ["404 no_service" if state == "removed" else "410 channel_is_archived"]


async def test_a_wrong_slack_webhook_secret_is_gone(slack: SlackStandin, make: Make) -> None:
    url = slack.hook()
    forged = url.rsplit("/", 1)[0] + "/not-the-secret"
    provider = await make("slack_webhook")
    with pytest.raises(PermanentError) as caught:
        await provider.send(chat([{"kind": "slack", "webhook_url": forged}]))
    assert caught.value.dead_address is not None
    assert slack.refused == ["403 invalid_token"]


async def test_invalid_slack_blocks_are_refused_not_retried(
    slack: SlackStandin, make: Make
) -> None:
    url = slack.hook()
    provider = await make("slack_webhook")
    bad = [{"type": "section"}]  # neither text nor fields
    with pytest.raises(PermanentError) as caught:
        await provider.send(chat([{"kind": "slack", "webhook_url": url}], blocks=bad))
    assert caught.value.reason == "provider_rejected"
    assert caught.value.dead_address is None
    assert "invalid_blocks" in caught.value.message


async def test_a_rate_limited_slack_webhook_waits_retry_after(
    slack: SlackStandin, make: Make
) -> None:
    url = slack.hook()
    provider = await make("slack_webhook")
    slack.script(429, "rate_limited", Retry_After="12")
    with pytest.raises(TransientError) as caught:
        await provider.send(chat([{"kind": "slack", "webhook_url": url}]))
    assert (caught.value.reason, caught.value.retry_after) == ("http_429", 12.0)
    slack.script(500, "rollup_error")
    with pytest.raises(TransientError) as server:
        await provider.send(chat([{"kind": "slack", "webhook_url": url}]))
    assert server.value.reason == "http_500"


async def test_slack_webhook_uses_its_own_destination_without_an_address(
    slack: SlackStandin, make: Make
) -> None:
    room = slack.hook("C0OPSROOM1")
    provider = await make("slack_webhook", {"webhook_url": room})
    # No chat address at all, or addresses of other services only: the ops room.
    await provider.send(chat([]))
    await provider.send(chat([{"kind": "telegram", "chat_id": "1"}]))
    assert [p.channel for p in slack.received] == ["C0OPSROOM1", "C0OPSROOM1"]
    # The recipient's own address comes first.
    own = slack.hook("C0ALERTS01")
    await provider.send(chat([{"kind": "slack", "webhook_url": own}]))
    assert slack.received[-1].channel == "C0ALERTS01"
    # The provider's own webhook, gone: never reported as the recipient's address.
    slack.hook_of(room).removed = True
    with pytest.raises(PermanentError) as caught:
        await provider.send(chat([]))
    assert caught.value.dead_address is None


async def test_no_address_and_no_destination_is_no_address(make: Make) -> None:
    provider = await make("slack_webhook")
    with pytest.raises(PermanentError) as caught:
        await provider.send(chat([{"kind": "slack", "channel": "C0ALERTS01"}]))
    assert caught.value.reason == "no_address"


# -- Slack chat.postMessage ---------------------------------------------------------------


async def test_post_message_sends_with_the_bot_token(slack: SlackStandin, make: Make) -> None:
    provider = await make("slack", slack.config(username="Shop", icon_emoji=":package:"))
    result = await provider.send(chat([{"kind": "slack", "channel": "C0ALERTS01"}], blocks=BLOCKS))
    [posted] = slack.received
    assert (posted.via, posted.channel) == ("api", "C0ALERTS01")
    assert posted.body == {
        "channel": "C0ALERTS01",
        "text": "Order 42 shipped",
        "blocks": BLOCKS,
        "username": "Shop",
        "icon_emoji": ":package:",
    }
    assert result.provider_message_id == "C0ALERTS01/1700000000.000001"


@pytest.mark.parametrize(
    ("channel", "reason", "words"),
    [
        ("C0NOWHERE1", "invalid_address", "channel_not_found"),
        ("C0PRIVATE1", "invalid_address", "invite"),
        ("C0ARCHIVE1", "invalid_address", "is_archived"),
    ],
)
async def test_post_message_refusals_of_the_channel(
    slack: SlackStandin, make: Make, channel: str, reason: str, words: str
) -> None:
    provider = await make("slack", slack.config())
    with pytest.raises(PermanentError) as caught:
        await provider.send(chat([{"kind": "slack", "channel": channel}]))
    assert caught.value.reason == reason
    assert words in caught.value.message
    # A bot's address may work once the app is invited: it is never removed.
    assert caught.value.dead_address is None


async def test_post_message_not_in_channel_says_to_invite(slack: SlackStandin, make: Make) -> None:
    slack.member_of.discard("C0ALERTS01")
    provider = await make("slack", slack.config())
    with pytest.raises(PermanentError) as caught:
        await provider.send(chat([{"kind": "slack", "channel": "C0ALERTS01"}]))
    assert caught.value.reason == "provider_rejected"
    assert "not_in_channel" in caught.value.message
    assert "/invite" in caught.value.message


async def test_post_message_with_a_wrong_token_is_bad_credentials(
    slack: SlackStandin, make: Make
) -> None:
    provider = await make("slack", slack.config(token="xoxb-1-2-forged"))
    with pytest.raises(PermanentError) as caught:
        await provider.send(chat([{"kind": "slack", "channel": "C0ALERTS01"}]))
    assert caught.value.reason == "bad_credentials"
    assert slack.refused == ["invalid_auth"]


async def test_post_message_rate_limited_is_transient_after_retry_after(
    slack: SlackStandin, make: Make
) -> None:
    provider = await make("slack", slack.config())
    slack.ratelimit_next(retry_after=30)
    with pytest.raises(TransientError) as caught:
        await provider.send(chat([{"kind": "slack", "channel": "C0ALERTS01"}]))
    assert (caught.value.reason, caught.value.retry_after) == ("slack_ratelimited", 30.0)
    slack.script(200, {"ok": False, "error": "internal_error"})
    with pytest.raises(TransientError) as internal:
        await provider.send(chat([{"kind": "slack", "channel": "C0ALERTS01"}]))
    assert internal.value.reason == "slack_internal_error"


async def test_post_message_uses_the_configured_channel_as_ops_room(
    slack: SlackStandin, make: Make
) -> None:
    provider = await make("slack", slack.config(channel="C0OPSROOM1"))
    await provider.send(chat([{"kind": "slack", "webhook_url": "https://hooks.slack.com/x"}]))
    assert slack.received[0].channel == "C0OPSROOM1"


async def test_slack_paces_per_channel(slack: SlackStandin, make: Make) -> None:
    provider = await make("slack", slack.config(channel="C0OPSROOM1"))
    to_two = chat([{"kind": "slack", "channel": "C0A"}, {"kind": "slack", "channel": "C0B"}])
    paces = provider.pacing(to_two)
    assert [rate for _, rate in paces] == [1.0, 1.0]
    assert len({key for key, _ in paces}) == 2
    assert provider.pacing(chat([])) == provider.pacing(chat([]))  # the room's own key
    webhook = await make("slack_webhook")
    url = slack.hook()
    [(key, _)] = webhook.pacing(chat([{"kind": "slack", "webhook_url": url}]))
    assert url not in key
    assert slack.hook_of(url).secret not in key
    assert webhook.pacing(chat([])) == ()  # nowhere to send: nothing to wait for


# -- Discord ------------------------------------------------------------------------------


async def test_discord_posts_content_and_embeds_without_pings(
    discord: DiscordStandin, make: Make
) -> None:
    url = discord.webhook()
    provider = await make("discord", {"username": "Shop"})
    embeds = [{"title": "Order 42", "description": "On its way", "color": 5814783}]
    result = await provider.send(
        chat([{"kind": "discord", "webhook_url": url}], text="@everyone 42 shipped", blocks=embeds)
    )
    [message] = discord.received
    assert message.body == {
        "content": "@everyone 42 shipped",
        "allowed_mentions": {"parse": []},
        "embeds": embeds,
        "username": "Shop",
    }
    assert result.provider_message_id == message.id


async def test_discord_one_embed_object(discord: DiscordStandin, make: Make) -> None:
    url = discord.webhook()
    provider = await make("discord")
    await provider.send(chat([{"kind": "discord", "webhook_url": url}], blocks={"title": "42"}))
    assert discord.received[0].body["embeds"] == [{"title": "42"}]


async def test_discord_rate_limit_waits_the_bodys_retry_after(
    discord: DiscordStandin, make: Make
) -> None:
    url = discord.webhook()
    provider = await make("discord")
    discord.ratelimit_next(retry_after=1.25)
    with pytest.raises(TransientError) as caught:
        await provider.send(chat([{"kind": "discord", "webhook_url": url}]))
    # The body's float, not the header's whole seconds.
    assert (caught.value.reason, caught.value.retry_after) == ("http_429", 1.25)


async def test_a_deleted_discord_webhook_is_gone(discord: DiscordStandin, make: Make) -> None:
    url = discord.webhook()
    live = discord.webhook()
    discord.webhooks[url.split("/")[-2]].deleted = True
    addresses = [{"kind": "discord", "webhook_url": url}, {"kind": "discord", "webhook_url": live}]
    provider = await make("discord")
    result = await provider.send(chat(addresses))
    # Sent through the live one; the gone one rides along to be removed.
    assert result.dead_addresses == (addresses[0],)
    assert len(discord.received) == 1
    forged = live.rsplit("/", 1)[0] + "/forged-token"
    with pytest.raises(PermanentError) as caught:
        await provider.send(chat([{"kind": "discord", "webhook_url": forged}]))
    assert caught.value.reason == "unregistered"
    assert "50027" in discord.refused[-1]


async def test_an_empty_discord_message_is_refused(discord: DiscordStandin, make: Make) -> None:
    provider = await make("discord")
    url = discord.webhook()
    with pytest.raises(PermanentError) as caught:
        await provider.send(chat([{"kind": "discord", "webhook_url": url}], text=" "))
    assert caught.value.reason == "render_error"  # refused before sending
    long = "x" * 2001
    with pytest.raises(PermanentError) as too_long:
        await provider.send(chat([{"kind": "discord", "webhook_url": url}], text=long))
    assert too_long.value.reason == "provider_rejected"
    assert "Invalid Form Body" in too_long.value.message


# -- Telegram -----------------------------------------------------------------------------


async def test_telegram_sends_text_with_parse_mode(telegram: TelegramStandin, make: Make) -> None:
    provider = await make("telegram", telegram.config(disable_link_preview=True))
    keyboard = {"inline_keyboard": [[{"text": "Track", "url": "https://shop.example/42"}]]}
    result = await provider.send(
        chat(
            [{"kind": "telegram", "chat_id": "4242001"}],
            text="<b>Order 42</b> shipped",
            parse_mode="HTML",
            blocks={"telegram": keyboard, "slack": BLOCKS},
        )
    )
    [sent] = telegram.received
    assert sent.body == {
        "chat_id": "4242001",
        "text": "<b>Order 42</b> shipped",
        "parse_mode": "HTML",
        "reply_markup": keyboard,
        "link_preview_options": {"is_disabled": True},
    }
    assert result.provider_message_id == f"4242001/{sent.message_id}"


async def test_telegram_blocked_by_the_user_is_gone(telegram: TelegramStandin, make: Make) -> None:
    provider = await make("telegram", telegram.config())
    address = {"kind": "telegram", "chat_id": "4242666"}
    with pytest.raises(PermanentError) as caught:
        await provider.send(chat([address]))
    assert caught.value.reason == "unregistered"
    assert caught.value.dead_address == [address]


async def test_telegram_unknown_chat_is_an_invalid_address(
    telegram: TelegramStandin, make: Make
) -> None:
    provider = await make("telegram", telegram.config())
    with pytest.raises(PermanentError) as caught:
        await provider.send(chat([{"kind": "telegram", "chat_id": "777"}]))
    assert caught.value.reason == "invalid_address"
    assert caught.value.dead_address is None
    assert "chat not found" in caught.value.message


async def test_telegram_flood_waits_parameters_retry_after(
    telegram: TelegramStandin, make: Make
) -> None:
    provider = await make("telegram", telegram.config())
    telegram.flood_next(retry_after=7)
    with pytest.raises(TransientError) as caught:
        await provider.send(chat([{"kind": "telegram", "chat_id": "4242001"}]))
    assert (caught.value.reason, caught.value.retry_after) == ("http_429", 7.0)


async def test_telegram_bad_markup_and_tokens(telegram: TelegramStandin, make: Make) -> None:
    provider = await make("telegram", telegram.config())
    to = [{"kind": "telegram", "chat_id": "4242001"}]
    with pytest.raises(PermanentError) as markup:
        await provider.send(chat(to, text="<b>unclosed", parse_mode="HTML"))
    assert markup.value.reason == "provider_rejected"
    assert "can't parse entities" in markup.value.message
    other = await make("telegram", telegram.config(bot_token="123:" + "x" * 30))
    with pytest.raises(PermanentError) as unknown:
        await other.send(chat(to))
    assert unknown.value.reason == "bad_credentials"


async def test_telegram_sends_to_its_own_chat_and_paces_per_chat(
    telegram: TelegramStandin, make: Make
) -> None:
    provider = await make("telegram", telegram.config(chat_id="@clarion_ops"))
    await provider.send(chat([]))
    assert telegram.received[0].chat_id == "@clarion_ops"
    [(_, rate)] = provider.pacing(chat([]))
    assert rate == 1.0


# -- hostile addresses --------------------------------------------------------------------


async def test_a_webhook_on_a_private_address_is_refused_by_the_guard(
    slack: SlackStandin, discord: DiscordStandin, guarded: Make
) -> None:
    for kind, service, url in (
        ("slack_webhook", "slack", slack.hook().replace("http://", "https://")),
        ("discord", "discord", discord.webhook().replace("http://", "https://")),
        ("slack_webhook", "slack", "https://10.0.0.7/services/T/B/x"),
        ("slack_webhook", "slack", "https://[::ffff:127.0.0.1]/services/T/B/x"),
    ):
        provider = await guarded(kind)
        with pytest.raises(PermanentError) as caught:
            await provider.send(chat([{"kind": service, "webhook_url": url}]))
        assert caught.value.reason == "address_refused", (kind, url)
    assert slack.received == []
    assert discord.received == []


async def test_plain_http_is_refused_unless_private_webhooks_are_allowed(
    slack: SlackStandin, guarded: Make
) -> None:
    provider = await guarded("slack_webhook")
    with pytest.raises(PermanentError) as caught:
        await provider.send(chat([{"kind": "slack", "webhook_url": "http://hooks.example.com/x"}]))
    assert caught.value.reason == "invalid_address"
    assert "https" in caught.value.message
