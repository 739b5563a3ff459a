"""One-click unsubscribe (RFC 8058): signed links, a GET that changes nothing, a POST that
turns email off for one category."""

from __future__ import annotations

import base64

import orjson
import pytest

from clarion.security.unsubscribe import (
    Unsubscribe,
    UnsubscribeLinks,
    derive_key,
    make_token,
    read_claim,
)
from clarion.store import recipients as recipient_store
from clarion.store import tenants as tenant_store
from clarion.store.tenants import webhook_secrets
from harness import Harness

ONE_CLICK = {
    "content": b"List-Unsubscribe=One-Click",
    "headers": {"content-type": "application/x-www-form-urlencoded"},
}


async def link_path(
    harness: Harness, recipient_id: str = "u-1", category: str = "marketing"
) -> str:
    links = UnsubscribeLinks(webhook_secrets(harness.ctx.engine), "https://clarion.example/")
    url = await links.url(harness.tenant_id, recipient_id, category)
    assert url.startswith("https://clarion.example/v1/unsubscribe/v1.")
    return url.removeprefix("https://clarion.example")


async def preferences(harness: Harness, recipient_id: str = "u-1") -> dict[str, object] | None:
    return await recipient_store.get_preferences(
        harness.ctx.engine, harness.tenant_id, recipient_id
    )


async def test_get_shows_a_confirm_button_and_changes_nothing(lite: Harness) -> None:
    await lite.put_recipient("u-1", email="alex@example.com")
    before = await preferences(lite)
    path = await link_path(lite)

    response = await lite.client.get(path)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["referrer-policy"] == "no-referrer"
    assert '<form method="post">' in response.text
    assert "marketing" in response.text
    assert await preferences(lite) == before


async def test_one_click_post_turns_email_off_for_the_category_only(lite: Harness) -> None:
    await lite.put_recipient("u-1", email="alex@example.com")
    await recipient_store.set_preferences(
        lite.ctx.engine,
        lite.tenant_id,
        "u-1",
        {
            "channels": {"sms": False},
            "categories": {"marketing": {"push": True}, "news": {"email": True}},
            "quiet_hours": {"start": "22:00", "end": "07:00", "timezone": None},
        },
    )
    path = await link_path(lite)

    response = await lite.client.post(path, **ONE_CLICK)  # no API key: the token is enough
    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "unsubscribed",
        "category": "marketing",
        "channel": "email",
    }
    again = await lite.client.post(path, **ONE_CLICK)
    assert again.status_code == 200

    assert await preferences(lite) == {
        "channels": {"sms": False},
        "categories": {"marketing": {"push": True, "email": False}, "news": {"email": True}},
        "quiet_hours": {"start": "22:00", "end": "07:00", "timezone": None},
        "snooze_until": None,
        "workflows": {},
    }


async def test_post_without_earlier_preferences_and_from_a_browser(lite: Harness) -> None:
    await lite.put_recipient("u-1", email="alex@example.com")
    response = await lite.client.post(
        await link_path(lite, category="digest"),
        content=b"List-Unsubscribe=One-Click",
        headers={"accept": "text/html,*/*", "content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert await preferences(lite) == {
        "channels": {},
        "categories": {"digest": {"email": False}},
        "quiet_hours": None,
        "snooze_until": None,
        "workflows": {},
    }


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def bad_paths(harness: Harness) -> list[str]:
    good = (await link_path(harness)).removeprefix("/v1/unsubscribe/")
    version, payload, mac = good.split(".")
    other_recipient = b64(orjson.dumps([harness.tenant_id, "u-2", "marketing"]))
    other = await tenant_store.create_tenant(harness.ctx.engine, "other")
    # Signed with another tenant's key, naming this tenant.
    foreign = make_token(
        derive_key(other.webhook_secret), Unsubscribe(harness.tenant_id, "u-1", "marketing")
    )
    tokens = [
        f"{version}.{other_recipient}.{mac}",  # payload swapped, MAC kept
        f"{version}.{payload}.{b64(b'0' * 16)}",  # forged MAC
        f"v2.{payload}.{mac}",
        f"{version}.{payload}",
        f"{version}.!!!.{mac}",
        f"{version}.{b64(b'[1, 2, 3]')}.{mac}",
        f"{version}.{b64(b'not json')}.{mac}",
        "x" * 5000,
        foreign,
    ]
    return [f"/v1/unsubscribe/{token}" for token in tokens]


async def test_forged_or_malformed_links_are_404_and_change_nothing(lite: Harness) -> None:
    for rid in ("u-1", "u-2"):
        await lite.put_recipient(rid, email=f"{rid}@example.com")
    for path in await bad_paths(lite):
        for method in ("GET", "POST"):
            response = await lite.client.request(method, path, **ONE_CLICK)
            assert response.status_code == 404, (method, path)
            assert response.json()["error"]["code"] == "not_found"
    assert await preferences(lite, "u-1") == await preferences(lite, "u-2")
    assert (await preferences(lite, "u-2")) == {
        "channels": {},
        "categories": {},
        "quiet_hours": None,
        "snooze_until": None,
        "workflows": {},
    }


async def test_link_of_an_erased_recipient_is_404(lite: Harness) -> None:
    response = await lite.client.post(await link_path(lite, "never-existed"), **ONE_CLICK)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_claims_round_trip_and_unicode_ids() -> None:
    target = Unsubscribe("ten_1", "utilisateur-é", "marketing")
    claim = read_claim(make_token(b"k" * 32, target))
    assert claim is not None
    assert claim[0] == target


@pytest.mark.parametrize("url", ["https://clarion.exämple"])
async def test_public_url_must_be_ascii(lite: Harness, url: str) -> None:
    with pytest.raises(ValueError, match="ASCII"):
        UnsubscribeLinks(webhook_secrets(lite.ctx.engine), url)
