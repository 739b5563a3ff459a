"""The Microsoft Teams, Google Chat and Mattermost providers against local stand-ins of
their incoming webhooks: what each sends of the chat part, and what each answer means."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from clarion.config import Settings
from clarion.domain.delivery import Delivery
from clarion.errors import PermanentError, TransientError
from clarion.providers import registry
from clarion.providers.base import Provider, ProviderEnv, ProviderSpec
from standins import serving
from standins.google_chat import GoogleChatStandin
from standins.mattermost import MattermostStandin
from standins.teams import ADAPTIVE, TeamsStandin

Make = Callable[..., Awaitable[Provider]]
CARD = {
    "type": "AdaptiveCard",
    "version": "1.5",
    "body": [{"type": "TextBlock", "text": "Order 42", "weight": "Bolder"}],
}


@pytest.fixture
async def teams() -> AsyncIterator[TeamsStandin]:
    async with serving(TeamsStandin()) as server:
        yield server


@pytest.fixture
async def gchat() -> AsyncIterator[GoogleChatStandin]:
    async with serving(GoogleChatStandin()) as server:
        yield server


@pytest.fixture
async def mattermost() -> AsyncIterator[MattermostStandin]:
    async with serving(MattermostStandin()) as server:
        yield server


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    engine = create_async_engine("sqlite+aiosqlite://")
    env = ProviderEnv(settings=Settings(allow_private_webhooks=True), engine=engine)
    made: list[Provider] = []

    async def build(kind: str, config: dict[str, Any] | None = None) -> Provider:
        spec = ProviderSpec("t1", f"{kind}-main", kind, "chat", config or {})
        provider = registry.load(kind)(spec, env)
        await provider.start()
        made.append(provider)
        return provider

    yield build
    for provider in made:
        await provider.aclose()
    await engine.dispose()


def chat(kind: str, url: str | None, text: str = "Order 42 shipped", **part: Any) -> Delivery:
    to = [] if url is None else [{"kind": kind, "webhook_url": url}]
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


# -- Teams --------------------------------------------------------------------------------


async def test_teams_sends_the_text_as_an_adaptive_card(teams: TeamsStandin, make: Make) -> None:
    provider = await make("teams")
    await provider.send(chat("teams", teams.workflow()))
    [received] = teams.received
    assert received.via == "workflow"
    assert received.body["type"] == "message"
    [attachment] = received.body["attachments"]
    assert attachment["contentType"] == ADAPTIVE
    assert attachment["content"]["body"] == [
        {"type": "TextBlock", "text": "Order 42 shipped", "wrap": True}
    ]


async def test_teams_sends_the_parts_own_card(teams: TeamsStandin, make: Make) -> None:
    provider = await make("teams")
    await provider.send(chat("teams", teams.workflow(), blocks={"teams": CARD, "slack": []}))
    assert teams.received[0].body["attachments"][0]["content"] == CARD


async def test_teams_connector_takes_a_message_card(teams: TeamsStandin, make: Make) -> None:
    provider = await make("teams")
    card = {"@type": "MessageCard", "@context": "https://schema.org/extensions", "title": "42"}
    await provider.send(chat("teams", teams.connector(), blocks=card))
    [received] = teams.received
    assert received.via == "connector"
    assert received.body == {**card, "text": "Order 42 shipped"}


async def test_teams_connector_failure_behind_a_200_is_read_as_its_status(
    teams: TeamsStandin, make: Make
) -> None:
    provider = await make("teams")
    teams.fail_in_channel(429)
    with pytest.raises(TransientError) as caught:
        await provider.send(chat("teams", teams.connector()))
    assert caught.value.reason == "http_429"
    assert teams.received == []


async def test_teams_gone_and_refused(teams: TeamsStandin, make: Make) -> None:
    provider = await make("teams")
    gone = f"{teams.url}/webhookb2/0000"
    with pytest.raises(PermanentError) as removed:
        await provider.send(chat("teams", gone))
    assert removed.value.reason == "unregistered"
    forged = teams.workflow().rsplit("sig=", 1)[0] + "sig=forged"
    with pytest.raises(PermanentError) as refused:
        await provider.send(chat("teams", forged))
    assert refused.value.reason == "invalid_address"
    assert refused.value.dead_address is None
    bad = {"type": "AdaptiveCard", "body": "not a list"}
    with pytest.raises(PermanentError) as unreadable:
        await provider.send(chat("teams", teams.workflow(), blocks=bad))
    assert unreadable.value.reason == "provider_rejected"


# -- Google Chat --------------------------------------------------------------------------


async def test_google_chat_sends_text_and_cards(gchat: GoogleChatStandin, make: Make) -> None:
    provider = await make("google_chat")
    cards = [
        {
            "cardId": "order",
            "card": {"sections": [{"widgets": [{"textParagraph": {"text": "Order 42"}}]}]},
        }
    ]
    result = await provider.send(chat("google_chat", gchat.webhook(), blocks=cards))
    [(space, body)] = gchat.received
    assert body == {"text": "Order 42 shipped", "cardsV2": cards}
    assert result.provider_message_id == f"spaces/{space}/messages/1"


async def test_google_chat_answers(gchat: GoogleChatStandin, make: Make) -> None:
    provider = await make("google_chat")
    url = gchat.webhook()
    gchat.exhausted_next()
    with pytest.raises(TransientError) as quota:
        await provider.send(chat("google_chat", url))
    assert quota.value.reason == "http_429"
    forged = url.rsplit("token=", 1)[0] + "token=forged"
    with pytest.raises(PermanentError) as denied:
        await provider.send(chat("google_chat", forged))
    assert denied.value.reason == "invalid_address"
    assert "permission" in denied.value.message
    with pytest.raises(PermanentError) as invalid:
        await provider.send(chat("google_chat", url, blocks=[{"card": {}}]))
    assert invalid.value.reason == "provider_rejected"
    space = url.split("/spaces/")[1].split("/")[0]
    gchat.spaces[space].deleted = True
    with pytest.raises(PermanentError) as gone:
        await provider.send(chat("google_chat", url))
    assert gone.value.reason == "unregistered"


async def test_google_chat_own_webhook_is_the_room(gchat: GoogleChatStandin, make: Make) -> None:
    provider = await make("google_chat", {"webhook_url": gchat.webhook()})
    await provider.send(chat("google_chat", None))
    assert len(gchat.received) == 1
    [(_, rate)] = provider.pacing(chat("google_chat", None))
    assert rate == 1.0


# -- Mattermost ---------------------------------------------------------------------------


async def test_mattermost_sends_text_attachments_and_channel(
    mattermost: MattermostStandin, make: Make
) -> None:
    provider = await make("mattermost", {"username": "clarion", "channel": "alerts"})
    url = mattermost.hook()
    attachments = [{"fallback": "Order 42", "color": "#36a64f", "title": "Order 42"}]
    to_ops = {"kind": "mattermost", "webhook_url": url, "channel": "ops"}
    message = chat("mattermost", url, blocks=attachments)
    result = await provider.send(message)
    await provider.send(msgspec.structs.replace(message, to=[to_ops]))
    (first, body), (second, _) = mattermost.received
    assert body == {
        "text": "Order 42 shipped",
        "attachments": attachments,
        "channel": "alerts",
        "username": "clarion",
    }
    # The address's channel before the provider's.
    assert (first, second) == ("alerts", "ops")
    assert result.provider_message_id


async def test_mattermost_answers(mattermost: MattermostStandin, make: Make) -> None:
    provider = await make("mattermost")
    with pytest.raises(PermanentError) as gone:
        await provider.send(chat("mattermost", f"{mattermost.url}/hooks/unknown"))
    assert gone.value.reason == "unregistered"
    locked = mattermost.hook(locked=True)
    to = [{"kind": "mattermost", "webhook_url": locked, "channel": "ops"}]
    with pytest.raises(PermanentError) as refused:
        await provider.send(msgspec.structs.replace(chat("mattermost", None), to=to))
    assert refused.value.reason == "provider_rejected"
    assert "not permitted" in refused.value.message
    mattermost.script(503, {"id": "api.context.unavailable", "message": "down"})
    with pytest.raises(TransientError) as down:
        await provider.send(chat("mattermost", mattermost.hook()))
    assert down.value.reason == "http_503"
