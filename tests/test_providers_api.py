"""``/v1/providers`` and the ProviderSet: validation, secrets at rest, choice, rotation."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select

from clarion.config import Settings
from clarion.domain.delivery import Delivery
from clarion.domain.models import ALL_CHANNELS
from clarion.errors import TransientError
from clarion.pipeline import planner
from clarion.pipeline.context import open_context
from clarion.providers import ProviderSet, kinds
from clarion.providers.base import Provider, ProviderEnv, ProviderSpec, SendResult
from clarion.providers.catalog import spec_of
from clarion.providers.configs import header_fields
from clarion.providers.sandbox import SandboxProvider
from clarion.security.secrets import Keyring, key_id, resolve_keyring
from clarion.store import providers as provider_store
from clarion.store import tenants as tenant_store
from clarion.store.db import migrate, sqlite_file
from clarion.store.tables import providers as providers_table
from harness import Harness, make_settings, running

# -- key material, generated once per run ---------------------------------------------------


def _pem(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


RSA_PEM = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
P8_PEM = _pem(ec.generate_private_key(ec.SECP256R1()))
VAPID_RAW = (
    base64.urlsafe_b64encode(
        ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value.to_bytes(32, "big")
    )
    .rstrip(b"=")
    .decode()
)
SERVICE_ACCOUNT = {
    "type": "service_account",
    "project_id": "demo-project",
    "private_key_id": "0123456789abcdef",
    "private_key": RSA_PEM,
    "client_email": "clarion@demo-project.iam.gserviceaccount.com",
    "token_uri": "https://oauth2.googleapis.com/token",
}

# kind → (channel, config, its secret values)
VALID: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "smtp": (
        "email",
        {
            "host": "smtp.example.com",
            "port": 2525,
            "username": "shop",
            "password": "smtp-pass-Zq81",
            "from": "Shop <shop@example.com>",
            "return_path": "bounces@example.com",
            "tls": "implicit",
        },
        {"password": "smtp-pass-Zq81"},
    ),
    "ses": (
        "email",
        {
            "region": "eu-west-1",
            "access_key_id": "AKIAEXAMPLE123",
            "secret_access_key": "ses-secret-Hw9Jd0",
            "from": "shop@example.com",
        },
        {"secret_access_key": "ses-secret-Hw9Jd0"},
    ),
    "sendgrid": (
        "email",
        {"api_key": "SG.sendgrid-secret-77Bq", "from": "shop@example.com"},
        {"api_key": "SG.sendgrid-secret-77Bq"},
    ),
    "twilio": (
        "sms",
        {"account_sid": "AC" + "0a" * 16, "auth_token": "twilio-token-4Kx", "from": "+14155550100"},
        {"auth_token": "twilio-token-4Kx"},
    ),
    "fcm": ("push", {"service_account": SERVICE_ACCOUNT}, {"service_account": SERVICE_ACCOUNT}),
    "apns": (
        "push",
        {
            "team_id": "ABCDE12345",
            "key_id": "KEY1234567",
            "private_key": P8_PEM,
            "topic": "com.example.shop",
            "environment": "sandbox",
        },
        {"private_key": P8_PEM},
    ),
    "webpush": (
        "webpush",
        {"vapid_private_key": VAPID_RAW, "vapid_subject": "mailto:ops@example.com"},
        {"vapid_private_key": VAPID_RAW},
    ),
    "webhook": ("webhook", {"base_url": "https://hooks.example.com/"}, {}),
    "sandbox": ("email", {}, {}),
    **{
        kind: ("chat", {"webhook_url": url, **more}, {"webhook_url": url})
        for kind, url, more in (
            ("slack_webhook", "https://hooks.slack.com/services/T0/B0/slack-hook-9Xq", {}),
            ("teams", "https://example.webhook.office.com/webhookb2/teams-hook-3Vb", {}),
            (
                "discord",
                "https://discord.com/api/webhooks/1/discord-hook-5Tn",
                {"username": "Shop"},
            ),
            (
                "mattermost",
                "https://chat.example.com/hooks/mm-hook-8Kd",
                {"username": "shop", "channel": "town-square"},
            ),
            (
                "google_chat",
                "https://chat.googleapis.com/v1/spaces/AAAA/messages?key=K&token=gchat-hook-2Pz",
                {},
            ),
        )
    },
    "slack": (
        "chat",
        {"token": "xoxb-1-2-slack-token-7Yw", "channel": "C0123456789", "username": "Shop"},
        {"token": "xoxb-1-2-slack-token-7Yw"},
    ),
    "telegram": (
        "chat",
        {"bot_token": "123456:telegram-token-4Rf9aaaaaaaaaa", "chat_id": "-1001234567"},
        {"bot_token": "123456:telegram-token-4Rf9aaaaaaaaaa"},
    ),
    "whatsapp_cloud": (
        "whatsapp",
        {
            "phone_number_id": "106540352242922",
            "access_token": "EAAG-wa-token-3Nm",
            "app_secret": "wa-app-secret-8Pq",
            "verify_token": "wa-verify-token-2Lc",
        },
        {
            "access_token": "EAAG-wa-token-3Nm",
            "app_secret": "wa-app-secret-8Pq",
            "verify_token": "wa-verify-token-2Lc",
        },
    ),
    "twilio_whatsapp": (
        "whatsapp",
        {
            "account_sid": "AC" + "0b" * 16,
            "auth_token": "twilio-wa-token-6Hs",
            "from": "+14155550100",
        },
        {"auth_token": "twilio-wa-token-6Hs"},
    ),
}


def _needles(secrets: dict[str, Any]) -> list[str]:
    """Fragments of secret values that must never appear in a response or a row."""
    found: list[str] = []
    for value in secrets.values():
        if isinstance(value, dict):
            found += [value["private_key"].splitlines()[1], value["client_email"]]
        elif "-----BEGIN" in value:
            found.append(value.splitlines()[1])
        else:
            found.append(value)
    return found


def body(kind: str, **extra: Any) -> dict[str, Any]:
    channel, config, _ = VALID[kind]
    return {"channel": channel, "kind": kind, "config": config, **extra}


async def put(h: Harness, name: str, payload: Any, key: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else h.auth
    return await h.client.put(f"/v1/providers/{name}", json=payload, headers=headers)


async def stored_rows(h: Harness) -> list[dict[str, Any]]:
    async with h.ctx.engine.connect() as conn:
        rows = (await conn.execute(select(providers_table))).mappings().all()
    return [dict(r) for r in rows]


# -- storing ----------------------------------------------------------------------------------


async def test_every_kind_is_stored_with_its_secrets_hidden(lite: Harness) -> None:
    for kind, (channel, config, secrets) in VALID.items():
        response = await put(lite, f"p-{kind}", body(kind, priority=3, rate_limit_per_second=50))
        assert response.status_code == 200, (kind, response.text)
        shown = response.json()
        assert shown["name"] == f"p-{kind}"
        assert (shown["channel"], shown["kind"]) == (channel, kind)
        assert (shown["priority"], shown["rate_limit_per_second"], shown["enabled"]) == (
            3,
            50,
            True,
        )
        for field in secrets:
            assert shown["config"][field] == "***"
        for field, value in config.items():
            if field not in secrets and field != "base_url":
                assert shown["config"][field] == value
        got = await lite.client.get(f"/v1/providers/p-{kind}", headers=lite.auth)
        assert got.status_code == 200
        assert got.json() == shown
        for needle in _needles(secrets):
            assert needle not in response.text
            assert needle not in got.text

        spec = await lite.ctx.providers.spec(lite.tenant_id, f"p-{kind}")
        assert spec is not None
        assert {k: spec.config[k] for k in config if k != "base_url"} == {
            k: v for k, v in config.items() if k != "base_url"
        }
        for needle in _needles(secrets):
            assert needle not in repr(spec)
            assert needle not in repr(spec.config)

    rows = await stored_rows(lite)
    assert len(rows) == len(VALID)
    everything = json.dumps([{k: str(v) for k, v in r.items()} for r in rows])
    for _, _, secrets in VALID.values():
        for needle in _needles(secrets):
            assert needle not in everything
    for row in rows:
        has_secrets = bool(VALID[row["kind"]][2])
        assert (row["secrets"] is not None) == has_secrets
        if has_secrets:
            assert row["secrets"].startswith(f"v1:{lite.ctx.keyring.current_id}:")


async def test_optional_secret_left_out_is_not_masked(lite: Harness) -> None:
    config = {"host": "relay.internal", "from": "a@example.com", "tls": "none"}
    response = await put(lite, "relay", {"channel": "email", "kind": "smtp", "config": config})
    assert response.status_code == 200, response.text
    assert response.json()["config"]["password"] is None
    assert (await stored_rows(lite))[0]["secrets"] is None


@pytest.mark.parametrize(
    ("kind", "change", "field"),
    [
        ("smtp", {"host": None}, "config.host"),
        ("smtp", {"port": 0}, "config.port"),
        ("smtp", {"tls": "sometimes"}, "config.tls"),
        ("smtp", {"bogus": 1}, "config.bogus"),
        ("smtp", {"base_url": "not a url"}, "config.base_url"),
        ("ses", {"region": "Europe"}, "config.region"),
        ("sendgrid", {"api_key": ""}, "config.api_key"),
        ("twilio", {"account_sid": "AC123"}, "config.account_sid"),
        ("fcm", {"service_account": "{not json"}, "config.service_account"),
        ("fcm", {"service_account": {"project_id": "x"}}, "config.service_account"),
        (
            "fcm",
            {"service_account": {k: v for k, v in SERVICE_ACCOUNT.items() if k != "token_uri"}},
            "config.service_account",
        ),
        (
            "fcm",
            {"service_account": {**SERVICE_ACCOUNT, "private_key": P8_PEM}},
            "config.service_account",
        ),
        ("apns", {"team_id": "short"}, "config.team_id"),
        ("apns", {"private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n"}, "config.private_key"),
        ("apns", {"private_key": RSA_PEM}, "config.private_key"),
        ("apns", {"environment": "staging"}, "config.environment"),
        ("webpush", {"vapid_private_key": "c2hvcnQ"}, "config.vapid_private_key"),
        ("webpush", {"vapid_subject": "ops@example.com"}, "config.vapid_subject"),
    ],
)
async def test_bad_config_is_a_422_naming_the_field(
    lite: Harness, kind: str, change: dict[str, Any], field: str
) -> None:
    payload = body(kind)
    config = {**payload["config"], **change}
    payload["config"] = {k: v for k, v in config.items() if v is not None}
    response = await put(lite, "bad", payload)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert field in [d["field"] for d in error["details"]]
    for needle in _needles(VALID[kind][2]):
        assert needle not in response.text
    assert (await lite.client.get("/v1/providers/bad", headers=lite.auth)).status_code == 404


@pytest.mark.parametrize(
    ("payload", "status", "code", "field"),
    [
        ({"channel": "email", "kind": "pigeon", "config": {}}, 422, "unknown_kind", "kind"),
        (body("twilio") | {"channel": "email"}, 422, "channel_not_supported", "channel"),
        (body("smtp") | {"channel": "push"}, 422, "channel_not_supported", "channel"),
        (body("sandbox") | {"channel": "fax"}, 422, "validation_error", "channel"),
        (body("sandbox") | {"priority": 0}, 422, "validation_error", "priority"),
        (body("sandbox") | {"rate_limit_per_second": 0}, 422, "validation_error", None),
        (body("sandbox") | {"enabled": "maybe"}, 422, "validation_error", "enabled"),
        (body("sandbox") | {"extra": 1}, 422, "validation_error", "extra"),
        ({"kind": "sandbox", "config": {}}, 422, "validation_error", "channel"),
        ([1, 2], 422, "validation_error", None),
    ],
)
async def test_bad_requests(
    lite: Harness, payload: Any, status: int, code: str, field: str | None
) -> None:
    response = await put(lite, "p1", payload)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    if field is not None:
        assert field in [d["field"] for d in error["details"]]


async def test_bad_names_and_reserved_names(lite: Harness) -> None:
    for name in ("sandbox", "webhook", "inapp"):
        response = await put(lite, name, body("sandbox"))
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "reserved_name"
    response = await put(lite, "a" * 101, body("sandbox"))
    assert response.status_code == 422
    response = await lite.client.get("/v1/providers/bad name!", headers=lite.auth)
    assert response.status_code == 422


async def test_unauthenticated_and_scopes(lite: Harness) -> None:
    assert (await lite.client.get("/v1/providers")).status_code == 401
    reader = await lite.new_tenant("reader-co", ["read"])
    response = await put(lite, "x", body("sandbox"), key=reader)
    assert response.status_code == 403
    response = await lite.client.delete(
        "/v1/providers/x", headers={"Authorization": f"Bearer {reader}"}
    )
    assert response.status_code == 403


async def test_masked_secret_round_trips(lite: Harness) -> None:
    assert (await put(lite, "mail", body("smtp"))).status_code == 200
    shown = (await lite.client.get("/v1/providers/mail", headers=lite.auth)).json()
    sent_back = {k: shown[k] for k in ("channel", "kind", "config", "priority", "enabled")}
    sent_back["config"] = {**shown["config"], "host": "smtp2.example.com"}
    response = await put(lite, "mail", sent_back)
    assert response.status_code == 200, response.text
    assert response.json()["config"]["host"] == "smtp2.example.com"
    assert response.json()["created_at"] == shown["created_at"]
    spec = await lite.ctx.providers.spec(lite.tenant_id, "mail")
    assert spec is not None
    assert spec.config["password"] == "smtp-pass-Zq81"
    assert spec.config["host"] == "smtp2.example.com"

    # Nothing stored to keep: a new provider, or another kind's secret.
    response = await put(lite, "fresh", sent_back)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "config.password"
    response = await put(
        lite,
        "mail",
        {"channel": "email", "kind": "sendgrid", "config": {"api_key": "***", "from": "a@b.c"}},
    )
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "config.api_key"


# Listing, reading, deleting and another tenant's 404: test_named_rows.py.


async def test_another_tenants_stored_secret_is_not_reachable(lite: Harness) -> None:
    assert (await put(lite, "mail", body("smtp"))).status_code == 200
    other = await lite.new_tenant("globex")
    # Not with "***" either: the other tenant has no provider of that name.
    masked = body("smtp")
    masked["config"] = {**masked["config"], "password": "***"}
    assert (await put(lite, "mail", masked, key=other)).status_code == 422
    assert (await lite.client.get("/v1/providers/mail", headers=lite.auth)).status_code == 200


async def test_a_sealed_value_copied_to_another_row_does_not_open(lite: Harness) -> None:
    assert (await put(lite, "one", body("smtp"))).status_code == 200
    assert (await put(lite, "two", body("sendgrid"))).status_code == 200
    rows = {r["name"]: r for r in await stored_rows(lite)}
    moved = provider_store.NAMED.of({**rows["two"], "secrets": rows["one"]["secrets"]})
    with pytest.raises(Exception, match="altered or belongs elsewhere"):
        moved.open_secrets(lite.ctx.keyring)


# -- without a key (PostgreSQL) ----------------------------------------------------------------


async def test_postgres_without_a_secret_key(migrated_postgres_url: str, redis_url: str) -> None:
    async with running(make_settings(migrated_postgres_url, redis_url)) as h:
        assert h.ctx.keyring.current is None
        response = await put(h, "mail", body("smtp"))
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "secret_key_missing"
        assert "CLARION_SECRET_KEY" in response.json()["error"]["message"]
        assert response.headers["retry-after"]
        assert await stored_rows(h) == []
        # A provider without credentials needs no key.
        assert (await put(h, "box", body("sandbox"))).status_code == 200


async def test_postgres_with_a_secret_key(migrated_postgres_url: str, redis_url: str) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    async with running(make_settings(migrated_postgres_url, redis_url, secret_key=key)) as h:
        for kind in ("smtp", "fcm"):
            assert (await put(h, kind + "-1", body(kind))).status_code == 200
        everything = json.dumps([{k: str(v) for k, v in r.items()} for r in await stored_rows(h)])
        for kind in ("smtp", "fcm"):
            for needle in _needles(VALID[kind][2]):
                assert needle not in everything
        spec = await h.ctx.providers.spec(h.tenant_id, "fcm-1")
        assert spec is not None
        assert spec.config["service_account"] == SERVICE_ACCOUNT


# -- choosing and building ---------------------------------------------------------------------


class Recording(Provider):
    """A stand-in for a configurable kind: records its lifecycle."""

    kind = "recording"
    built: list[Recording] = []

    def __init__(self, spec: ProviderSpec, env: ProviderEnv) -> None:
        self.spec = spec
        self.started = self.closed = False
        Recording.built.append(self)

    async def start(self) -> None:
        self.started = True

    async def send(self, message: Delivery) -> SendResult:
        return SendResult(provider_message_id=f"{self.spec.name}:{message.id}")

    async def aclose(self) -> None:
        self.closed = True


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> type[Recording]:
    Recording.built = []
    for kind in ("smtp", "sendgrid", "twilio", "fcm", "apns"):
        monkeypatch.setitem(
            kinds.KINDS,
            kind,
            dataclasses.replace(kinds.KINDS[kind], provider=f"{__name__}:Recording"),
        )
    return Recording


async def test_choice_by_priority_then_name(lite: Harness) -> None:
    providers = lite.ctx.providers
    t = lite.tenant_id
    # Unprepared or unconfigured: the built-ins and the default.
    assert providers.name_for(t, "email") == "sandbox"
    assert providers.name_for(t, "webhook") == "webhook"
    assert providers.name_for(t, "inapp") == "inapp"
    assert providers.name_for("ten_nobody", "sms") == "sandbox"

    for name, priority, enabled in (
        ("z-first", 1, True),
        ("a-first", 1, True),
        ("off", 0 + 1, False),
        ("second", 2, True),
    ):
        response = await put(lite, name, body("sendgrid", priority=priority, enabled=enabled))
        assert response.status_code == 200
    await providers.prepare([t, "ten_nobody"])
    assert providers.name_for(t, "email") == "a-first"
    assert [s.name for s in providers.chain(t, "email")] == ["a-first", "z-first", "second"]
    assert providers.name_for(t, "sms") == "sandbox"
    [fallback] = providers.chain(t, "sms")
    assert (fallback.name, fallback.kind, fallback.config, fallback.channel) == (
        "sandbox",
        "sandbox",
        {},
        "sms",
    )
    assert [s.name for s in providers.chain(t, "webhook")] == ["webhook"]
    # A change through this process is seen at once.
    assert (await put(lite, "second", body("sendgrid", priority=0 + 1))).status_code == 200
    response = await lite.client.delete("/v1/providers/a-first", headers=lite.auth)
    assert response.status_code == 204
    await providers.prepare([t])
    assert [s.name for s in providers.chain(t, "email")] == ["second", "z-first"]


async def test_changes_from_another_process_are_seen(migrated_sqlite_url: str) -> None:
    settings = make_settings(migrated_sqlite_url, "embedded://", provider_cache_ttl=0)
    async with running(settings) as h:
        other = await open_context(settings)
        try:
            await other.providers.prepare([h.tenant_id])
            assert other.providers.name_for(h.tenant_id, "email") == "sandbox"
            assert (await put(h, "mail-box", body("sandbox"))).status_code == 200
            await other.providers.prepare([h.tenant_id])
            assert other.providers.name_for(h.tenant_id, "email") == "mail-box"
        finally:
            await other.aclose()


async def test_get_builds_once_and_rebuilds_on_change(
    lite: Harness, recording: type[Recording]
) -> None:
    providers, t = lite.ctx.providers, lite.tenant_id
    assert (await put(lite, "mail", body("smtp"))).status_code == 200
    first = await providers.get(t, "mail")
    assert isinstance(first, Recording)
    assert first.started
    assert first.spec.config["password"] == "smtp-pass-Zq81"
    assert await providers.get(t, "mail") is first
    assert await providers.sender(t, "email", "mail") is first

    changed = body("smtp")
    changed["config"] = {**changed["config"], "password": "***", "port": 465}
    assert (await put(lite, "mail", changed)).status_code == 200
    second = await providers.get(t, "mail")
    assert second is not first
    assert isinstance(second, Recording)
    assert second.spec.config["port"] == 465
    assert second.spec.config["password"] == "smtp-pass-Zq81"
    assert not first.closed  # still finishing its sends; closed after a grace

    # Built-ins are shared by every tenant; a tenant's sandbox-kind provider is the built-in.
    sandbox = await providers.get(t, "sandbox")
    assert isinstance(sandbox, SandboxProvider)
    assert await providers.get("ten_other", "sandbox") is sandbox
    assert (await put(lite, "mail-box", body("sandbox"))).status_code == 200
    assert await providers.get(t, "mail-box") is sandbox
    with pytest.raises(KeyError):
        await providers.get(t, "nope")
    with pytest.raises(KeyError):
        await providers.get("ten_other", "mail")

    # Deleted: its instance is retired; aclose closes everything at once.
    assert (await lite.client.delete("/v1/providers/mail", headers=lite.auth)).status_code == 204
    with pytest.raises(KeyError):
        await providers.get(t, "mail")
    await providers.aclose()
    assert first.closed
    assert second.closed


async def test_push_fans_out_to_each_platform(lite: Harness, recording: type[Recording]) -> None:
    pytest.importorskip("clarion.providers.push")
    providers, t = lite.ctx.providers, lite.tenant_id
    assert (await put(lite, "fcm-main", body("fcm", priority=1))).status_code == 200
    assert (await put(lite, "apns-main", body("apns", priority=2))).status_code == 200
    assert (await put(lite, "apns-backup", body("apns", priority=3))).status_code == 200
    await providers.prepare([t])
    assert providers.name_for(t, "push") == "fcm-main"
    fanout = await providers.sender(t, "push", "fcm-main")
    assert type(fanout).__name__ == "PushFanout"
    assert await providers.sender(t, "push", "apns-main") is fanout
    message = Delivery(
        id="dlv_1",
        tenant=t,
        notification="ntf_1",
        recipient="u1",
        channel="push",
        to=[{"platform": "apns", "token": "a1"}],
        content={"title": "t"},
        priority="normal",
        attempt=1,
    )
    assert (await fanout.send(message)).provider_message_id == "apns-main:dlv_1"
    # A sandbox-kind provider on the push channel is not fanned out.
    assert (await put(lite, "push-box", body("sandbox") | {"channel": "push"})).status_code == 200
    assert isinstance(await providers.sender(t, "push", "push-box"), SandboxProvider)


async def test_undecryptable_credentials_fail_softly(
    migrated_sqlite_url: str, recording: type[Recording]
) -> None:
    key_a, key_b = os.urandom(32), os.urandom(32)
    db = migrated_sqlite_url
    settings = make_settings(db, "embedded://", secret_key=base64.b64encode(key_a).decode())
    async with running(settings) as h:
        assert (await put(h, "mail", body("smtp"))).status_code == 200
        stranger = ProviderSet(h.settings, h.ctx.engine, h.ctx.webhook_secret, Keyring(key_b))
        try:
            await stranger.prepare([h.tenant_id])
            assert stranger.name_for(h.tenant_id, "email") == "mail"
            spec = await stranger.spec(h.tenant_id, "mail")
            assert spec is not None
            assert "password" not in spec.config
            with pytest.raises(TransientError) as caught:
                await stranger.get(h.tenant_id, "mail")
            assert caught.value.reason == "secret_key_mismatch"
            assert "smtp-pass" not in caught.value.message
        finally:
            await stranger.aclose()
        # Round-tripping "***" needs the stored value, which cannot be opened: resend it.
        masked = body("smtp")
        masked["config"] = {**masked["config"], "password": "***"}
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(h.ctx, "keyring", Keyring(key_b))
            response = await put(h, "mail", masked)
        assert response.status_code == 422
        assert response.json()["error"]["details"][0]["field"] == "config.password"


# -- rotation ------------------------------------------------------------------------------------


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


async def _seed(settings: Settings) -> str:
    ctx = await open_context(settings)
    try:
        await migrate(ctx.engine)
        tenant = await tenant_store.create_tenant(ctx.engine, "acme")
        for kind in ("smtp", "twilio", "fcm", "sandbox"):
            channel, config, _ = VALID[kind]
            spec = ProviderSpec(tenant.id, f"p-{kind}", kind, channel, config)
            await provider_store.put(ctx.engine, ctx.keyring, spec, kinds.secret_fields(kind))
        return tenant.id
    finally:
        await ctx.aclose()


async def _kids_and_specs(settings: Settings, tenant_id: str) -> tuple[set[str], dict[str, Any]]:
    ctx = await open_context(settings)
    try:
        rows = await provider_store.load_tenants(ctx.engine, [tenant_id])
        kids = {r.secrets.split(":")[1] for r in rows if r.secrets}
        specs = {r.name: dict(spec_of(r, r.open_secrets(ctx.keyring)).config) for r in rows}
        return kids, specs
    finally:
        await ctx.aclose()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clarion.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow  # runs the CLI in processes of its own: about 12 s
def test_rotate_secret_reencrypts_every_provider(tmp_path: Path) -> None:
    old, new = os.urandom(32), os.urandom(32)
    url = f"sqlite+aiosqlite:///{tmp_path / 'clarion.db'}"
    tenant_id = asyncio.run(_seed(Settings(database_url=url, secret_key=_b64(old))))
    env = {
        "CLARION_DATABASE_URL": url,
        "CLARION_SECRET_KEY": _b64(new),
        "CLARION_PREVIOUS_SECRET_KEYS": _b64(old),
        "CLARION_LOG_LEVEL": "WARNING",
    }
    done = _cli(env, "keys", "rotate-secret")
    assert done.returncode == 0, done.stderr
    assert f"re-encrypted 3 provider(s) with key {key_id(new)}" in done.stdout
    again = _cli(env, "keys", "rotate-secret")
    assert again.returncode == 0, again.stderr
    assert "re-encrypted 0 provider(s)" in again.stdout

    # The old key is no longer needed.
    kids, specs = asyncio.run(
        _kids_and_specs(Settings(database_url=url, secret_key=_b64(new)), tenant_id)
    )
    assert kids == {key_id(new)}
    assert specs["p-smtp"]["password"] == "smtp-pass-Zq81"
    assert specs["p-fcm"]["service_account"] == SERVICE_ACCOUNT
    assert specs["p-sandbox"] == {}

    # A row no key opens is reported, not lost.
    stranger = {
        **env,
        "CLARION_SECRET_KEY": _b64(os.urandom(32)),
        "CLARION_PREVIOUS_SECRET_KEYS": "",
    }
    refused = _cli(stranger, "keys", "rotate-secret")
    assert refused.returncode == 1
    assert "re-encrypted 0 provider(s)" in refused.stdout
    assert "'p-smtp'" in refused.stderr
    assert "smtp-pass" not in refused.stderr


async def test_rotation_in_batches_keeps_the_api_working(migrated_sqlite_url: str) -> None:
    old, new = os.urandom(32), os.urandom(32)
    url = migrated_sqlite_url
    async with running(make_settings(url, "embedded://", secret_key=_b64(old))) as h:
        for i in range(7):
            assert (await put(h, f"mail-{i}", body("sendgrid"))).status_code == 200
        assert (await put(h, "box", body("sandbox"))).status_code == 200
    settings = make_settings(
        url, "embedded://", secret_key=_b64(new), previous_secret_keys=_b64(old)
    )
    async with running(settings) as h:
        outcome = await provider_store.rotate(h.ctx.engine, h.ctx.keyring, batch_size=3)
        assert (outcome.changed, outcome.unreadable) == (7, [])
        outcome = await provider_store.rotate(h.ctx.engine, h.ctx.keyring, batch_size=3)
        assert outcome.changed == 0
    only_new = make_settings(url, "embedded://", secret_key=_b64(new))
    assert resolve_keyring(only_new, sqlite_file(url)).previous == ()
    async with running(only_new) as h:
        got = await h.client.get("/v1/providers/mail-6", headers=h.auth)
        assert got.status_code == 200
        assert got.json()["config"]["api_key"] == "***"
        spec = await h.ctx.providers.spec(h.tenant_id, "mail-6")
        assert spec is not None
        assert spec.config["api_key"] == "SG.sendgrid-secret-77Bq"


# -- end to end -----------------------------------------------------------------------------------


async def _send_one_email(app: Harness) -> dict[str, Any]:
    await app.put_recipient("u-1", email="alex@example.com")
    await app.put_template(
        "hello", {"channels": {"email": {"subject": "Hi", "text": "Hello", "html": "<p>Hi</p>"}}}
    )
    sent = await app.send({"template": "hello", "to": {"recipient_id": "u-1"}})
    assert sent.status_code == 202, sent.text
    await app.drain()
    note = await app.notification(sent.json()["id"])
    [delivery] = note["deliveries"]
    captured = (await app.client.get("/v1/sandbox/messages", headers=app.auth)).json()["data"]
    assert [m["delivery_id"] for m in captured] == [delivery["id"]]
    return dict(delivery)


async def test_a_tenants_provider_carries_its_channel(app: Harness) -> None:
    if "prepare(" not in inspect.getsource(planner):
        pytest.skip("the planner does not call ctx.providers.prepare() before name_for() yet")
    response = await put(app, "mail-box", body("sandbox", priority=1))
    assert response.status_code == 200, response.text
    delivery = await _send_one_email(app)
    assert (delivery["provider"], delivery["status"]) == ("mail-box", "sent")


async def test_the_worker_sends_through_the_prepared_choice(app: Harness) -> None:
    response = await put(app, "mail-box", body("sandbox", priority=1))
    assert response.status_code == 200, response.text
    # What the planner does before choosing (the API and the planner share this process).
    await app.ctx.providers.prepare([app.tenant_id])
    delivery = await _send_one_email(app)
    assert (delivery["provider"], delivery["status"]) == ("mail-box", "sent")


async def test_a_channel_whose_providers_are_all_disabled_sends_nothing(lite: Harness) -> None:
    """Disabling a tenant's only email provider must not send its mail to the default."""
    response = await lite.client.put(
        "/v1/providers/mail-off",
        json={"channel": "email", "kind": "sandbox", "config": {}, "enabled": False},
        headers=lite.auth,
    )
    assert response.status_code == 200, response.text
    await lite.put_recipient("u1", email="u1@example.com")
    await lite.put_template("t", {"channels": {"email": {"subject": "s", "text": "t"}}})

    response = await lite.send({"template": "t", "to": {"recipient_id": "u1"}})
    assert response.status_code == 202
    await lite.drain()

    [delivery] = (await lite.notification(response.json()["id"]))["deliveries"]
    assert delivery["status"] == "failed"
    assert delivery["reason"] == "no_provider"
    assert delivery["attempts"] == 1
    captured = (await lite.client.get("/v1/sandbox/messages", headers=lite.auth)).json()
    assert captured["data"] == []


def test_every_kind_descriptor_is_whole() -> None:
    from clarion.providers import registry

    for name, kind in kinds.KINDS.items():
        assert kind.name == name
        assert kind.channels, name
        assert kind.channels <= set(ALL_CHANNELS), name
        if not kind.built_in:
            assert issubclass(registry.load(name), Provider), name
            assert kind.config is not None, name
        if kind.reports is not None:
            reader = kind.report_reader() or kind.json_report_reader()
            assert callable(reader), name
        if kind.handshake is not None:
            assert callable(kind.subscription_check()), name
    assert {"sandbox", "webhook", "inapp"} == kinds.BUILT_IN
    assert {"apns", "fcm"} == kinds.PUSH_PLATFORMS
    assert {"webhook", "inapp"} == kinds.UNGUARDED
    assert "inapp" not in kinds.CONFIGURABLE


# Characters that end a header line for one reader or another, or are control characters.
BAD_CHARACTERS = ["\r", "\n", "\x00", "\x85", "\u2028", "\u2029", "\x1b", "\x7f", "\t", "\x9b"]
# The fields of each kind that travel in a header, a request line or as an address. A new
# field of a kind must be decided here: checked by the header rules, or not one of them.
HEADER_FIELDS = {
    "smtp": {"host", "username", "from", "return_path"},
    "ses": {"access_key_id", "from"},
    "sendgrid": {"api_key", "from"},
    "twilio": {"from"},
    "fcm": set(),  # its service account's fields: checked by the credential check (below)
    "apns": {"topic"},
    "webpush": {"vapid_subject"},
    "sandbox": set(),
    "webhook": set(),
    "slack_webhook": {"webhook_url"},
    "slack": {"token", "username"},
    "teams": {"webhook_url"},
    "discord": {"webhook_url", "username"},
    "mattermost": {"webhook_url", "username"},
    "google_chat": {"webhook_url"},
    "telegram": {"bot_token"},
    "whatsapp_cloud": {"access_token"},
    "twilio_whatsapp": set(),  # `from`: a number or a messaging service SID, by its pattern
}


def _spoiled(value: str, bad: str) -> str:
    middle = len(value) // 2
    return value[:middle] + bad + value[middle:]


async def test_header_and_address_fields_are_checked_when_stored(lite: Harness) -> None:
    app = lite
    assert set(HEADER_FIELDS) == kinds.CONFIGURABLE
    for kind, fields in sorted(HEADER_FIELDS.items()):
        model = kinds.KINDS[kind].config
        assert model is not None
        assert header_fields(model) == fields, kind
        for field in sorted(fields):
            for bad in BAD_CHARACTERS:
                payload = body(kind)
                payload["config"] = {
                    **payload["config"],
                    field: _spoiled(payload["config"][field], bad),
                }
                response = await put(app, f"p-{kind}", payload)
                # NUL is refused at the edge, for every field of every request (400).
                status, code = (
                    (400, "invalid_input") if bad == "\x00" else (422, "validation_error")
                )
                assert response.status_code == status, (kind, field, repr(bad), response.text)
                error = response.json()["error"]
                assert error["code"] == code
                assert [d["field"] for d in error["details"]] == [f"config.{field}"], error
    for name in ("project_id", "client_email", "token_uri"):
        for bad in BAD_CHARACTERS:
            account = {**SERVICE_ACCOUNT, name: _spoiled(SERVICE_ACCOUNT[name], bad)}
            response = await put(app, "p-fcm", body("fcm", config={"service_account": account}))
            assert response.status_code in (400, 422), (name, repr(bad), response.text)
            field = response.json()["error"]["details"][0]["field"]
            assert field.startswith("config.service_account"), field
    assert await stored_rows(app) == []
    # Addresses are checked for their form as well.
    refused = {
        "from": [
            "Shop <shop@example.com>, other@example.com",
            "=?utf-8?q?Shop=0D=0ABcc:_x@example.com?= <shop@example.com>",
            "shop@localhost",
            "Señal <ñ@example.com>",
            "no address at all",
        ]
    }
    for value in refused["from"]:
        response = await put(app, "p", body("smtp", config={**VALID["smtp"][1], "from": value}))
        assert response.status_code == 422, value
        assert response.json()["error"]["details"][0]["field"] == "config.from"
    for value in ("+1 415 555 0100", "TooLongSenderId", "+0123", "Acme-Shop!"):
        config = {**VALID["twilio"][1], "from": value}
        response = await put(app, "p", body("twilio", config=config))
        assert response.status_code == 422, value
    for value in ("Acme Café <no-reply@acme.test>", "first.last@mail.example.com"):
        response = await put(app, "p", body("smtp", config={**VALID["smtp"][1], "from": value}))
        assert response.status_code == 200, (value, response.text)
    for value in ("+15005550006", "12345", "Acme Shop", "MG" + "ab" * 16):
        response = await put(app, "p", body("twilio", config={**VALID["twilio"][1], "from": value}))
        assert response.status_code == 200, (value, response.text)
