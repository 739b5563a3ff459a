"""Recipients: create, replace, batch, preferences, export and erasure."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest
from sqlalchemy import select, text

from clarion.store import erasure
from clarion.store.tables import deliveries, metadata, notifications
from harness import Harness
from webhook_sink import WebhookSink

FULL = {
    "email": "alex@example.com",
    "phone": "+14155550100",
    "locale": "fr-CA",
    "timezone": "America/Toronto",
    "push_tokens": [{"platform": "apns", "token": "t1"}, {"platform": "fcm", "token": "t2"}],
    "webpush": [{"endpoint": "https://push.example.net/s/1", "keys": {"p256dh": "k", "auth": "a"}}],
    "webhook_url": "https://hooks.example.com/alex",
    "data": {"firstName": "Alex", "plan": {"tier": "gold"}},
}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body


def fields_named(body: dict[str, Any]) -> set[str]:
    return {d["field"] for d in body["error"]["details"]}


async def keyed(app: Harness, scopes: list[str], name: str = "other") -> dict[str, str]:
    """Auth headers for a new key of the harness's tenant with only these scopes."""
    from clarion.store import tenants as tenant_store

    key = await tenant_store.create_key(app.ctx.engine, app.tenant_id, scopes)
    return {"Authorization": f"Bearer {key}"}


# --- create, read, replace ---------------------------------------------------------------


async def test_put_then_get_returns_every_field(lite: Harness) -> None:
    response = await lite.client.put("/v1/recipients/u-1", json=FULL, headers=lite.auth)
    assert response.status_code == 200, response.text
    got = (await lite.client.get("/v1/recipients/u-1", headers=lite.auth)).json()
    assert got["id"] == "u-1"
    for name, value in FULL.items():
        assert got[name] == value, name
    assert got["created_at"].endswith("Z")
    assert "preferences" not in got


async def test_put_replaces_the_fields_but_keeps_preferences(lite: Harness) -> None:
    await lite.put_recipient("u", **FULL)
    prefs = {"channels": {"sms": False}, "categories": {}, "quiet_hours": None}
    response = await lite.client.put("/v1/recipients/u/preferences", json=prefs, headers=lite.auth)
    assert response.status_code == 200, response.text
    await lite.put_recipient("u", email="new@example.com")
    got = (await lite.client.get("/v1/recipients/u", headers=lite.auth)).json()
    assert got["email"] == "new@example.com"
    assert got["phone"] is None
    assert got["push_tokens"] == []
    assert got["data"] == {}
    kept = (await lite.client.get("/v1/recipients/u/preferences", headers=lite.auth)).json()
    assert kept["channels"] == {"sms": False}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"phone": "4155550100"}, "phone"),
        ({"phone": "+0123"}, "phone"),
        ({"email": "not-an-email"}, "email"),
        ({"email": "a@b"}, "email"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"locale": "french!"}, "locale"),
        ({"locale": "fr-" + "-".join(["abcd"] * 10)}, "locale"),
        ({"push_tokens": [{"platform": "blackberry", "token": "x"}]}, "push_tokens.0.platform"),
        ({"push_tokens": [{"platform": "fcm", "token": ""}]}, "push_tokens.0.token"),
        ({"webpush": [{"endpoint": "not a url", "keys": {"p256dh": "k", "auth": "a"}}]}, None),
        ({"webhook_url": "ftp://example.com/x"}, "webhook_url"),
        ({"data": [1, 2]}, "data"),
        ({"data": {"blob": "x" * (70 * 1024)}}, "data"),
        ({"surprise": True}, "surprise"),
        ({"push_tokens": [{"platform": "fcm", "token": "t"}] * 101}, "push_tokens"),
    ],
)
async def test_invalid_recipient_is_a_422_naming_the_field(
    lite: Harness, body: dict[str, Any], field: str | None
) -> None:
    response = await lite.client.put("/v1/recipients/u", json=body, headers=lite.auth)
    details = assert_error(response, 422, "validation_error")
    named = fields_named(details)
    if field is None:
        assert any(name.startswith("webpush.0.endpoint") for name in named), named
    else:
        assert field in named, named
    missing = await lite.client.get("/v1/recipients/u", headers=lite.auth)
    assert_error(missing, 404, "not_found")


async def test_recipient_id_too_long_is_a_422(lite: Harness) -> None:
    response = await lite.client.put(f"/v1/recipients/{'x' * 201}", json={}, headers=lite.auth)
    assert_error(response, 422, "validation_error")


async def test_body_over_the_size_limit_is_a_413(lite: Harness) -> None:
    body = {"data": {"blob": "x" * (600 * 1024)}}
    response = await lite.client.put("/v1/recipients/u", json=body, headers=lite.auth)
    assert_error(response, 413, "payload_too_large")


async def test_unknown_recipient_is_a_404(lite: Harness) -> None:
    for method, path in [
        ("GET", "/v1/recipients/ghost"),
        ("DELETE", "/v1/recipients/ghost"),
        ("GET", "/v1/recipients/ghost/export"),
        ("GET", "/v1/recipients/ghost/preferences"),
    ]:
        response = await lite.client.request(method, path, headers=lite.auth)
        assert_error(response, 404, "not_found")
    response = await lite.client.put(
        "/v1/recipients/ghost/preferences", json={"channels": {"sms": False}}, headers=lite.auth
    )
    assert_error(response, 404, "not_found")


async def test_another_tenants_recipient_is_a_404(lite: Harness) -> None:
    await lite.put_recipient("u", **FULL)
    other = {"Authorization": f"Bearer {await lite.new_tenant('globex')}"}
    for method, path in [
        ("GET", "/v1/recipients/u"),
        ("DELETE", "/v1/recipients/u"),
        ("GET", "/v1/recipients/u/export"),
        ("GET", "/v1/recipients/u/preferences"),
    ]:
        response = await lite.client.request(method, path, headers=other)
        assert_error(response, 404, "not_found")
    response = await lite.client.put(
        "/v1/recipients/u/preferences", json={"channels": {"sms": False}}, headers=other
    )
    assert_error(response, 404, "not_found")
    # The other tenant's attempts changed nothing here.
    assert (await lite.client.get("/v1/recipients/u", headers=lite.auth)).json()["email"]
    prefs = (await lite.client.get("/v1/recipients/u/preferences", headers=lite.auth)).json()
    assert prefs["channels"] == {}


async def test_wrong_scope_is_a_403(lite: Harness) -> None:
    await lite.put_recipient("u", **FULL)
    reader = await keyed(lite, ["read"])
    sender = await keyed(lite, ["send"])
    refused = [
        ("PUT", "/v1/recipients/u", reader, {}),
        ("POST", "/v1/recipients/batch", reader, {"recipients": []}),
        ("DELETE", "/v1/recipients/u", reader, None),
        ("PUT", "/v1/recipients/u/preferences", reader, {}),
        ("GET", "/v1/recipients/u", sender, None),
        ("GET", "/v1/recipients/u/export", sender, None),
        ("GET", "/v1/recipients/u/preferences", sender, None),
    ]
    for method, path, headers, body in refused:
        response = await lite.client.request(method, path, json=body, headers=headers)
        assert_error(response, 403, "insufficient_scope")
    for path in ("/v1/recipients/u", "/v1/recipients/u/export", "/v1/recipients/u/preferences"):
        assert (await lite.client.get(path, headers=reader)).status_code == 200
    assert (await lite.client.get("/v1/recipients/u", headers=lite.auth)).status_code == 200


# --- batch -------------------------------------------------------------------------------


async def test_batch_over_a_thousand_is_refused(lite: Harness) -> None:
    items = [{"id": f"r{i}"} for i in range(1001)]
    response = await lite.client.post(
        "/v1/recipients/batch", json={"recipients": items}, headers=lite.auth
    )
    assert_error(response, 422, "batch_too_large")
    assert_error(await lite.client.get("/v1/recipients/r0", headers=lite.auth), 404, "not_found")


async def test_batch_reports_each_item(lite: Harness) -> None:
    items: list[Any] = [
        {"id": "a", "email": "a@example.com"},
        {"id": "b", "phone": "12345"},
        {"email": "no-id@example.com"},
        {"id": "c", "timezone": "Nowhere/Special"},
        "not an object",
        {"id": "d", **FULL},
    ]
    response = await lite.client.post(
        "/v1/recipients/batch", json={"recipients": items}, headers=lite.auth
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(items)
    assert results[0] == {"id": "a", "status": "ok"}
    assert results[5] == {"id": "d", "status": "ok"}
    for index, field in [(1, "phone"), (2, "id"), (3, "timezone")]:
        assert results[index]["error"]["code"] == "validation_error"
        assert field in fields_named(results[index]), results[index]
    assert results[4]["error"]["code"] == "validation_error"
    for rid, status in [("a", 200), ("b", 404), ("c", 404), ("d", 200)]:
        got = await lite.client.get(f"/v1/recipients/{rid}", headers=lite.auth)
        assert got.status_code == status
    d = (await lite.client.get("/v1/recipients/d", headers=lite.auth)).json()
    assert d["push_tokens"] == FULL["push_tokens"]


async def test_batch_of_a_thousand_keeps_preferences(lite: Harness) -> None:
    await lite.put_recipient("r7")
    prefs = {"channels": {"email": False}}
    response = await lite.client.put("/v1/recipients/r7/preferences", json=prefs, headers=lite.auth)
    assert response.status_code == 200
    items = [{"id": f"r{i}", "email": f"r{i}@example.com"} for i in range(1000)]
    response = await lite.client.post(
        "/v1/recipients/batch", json={"recipients": items}, headers=lite.auth
    )
    assert response.status_code == 200
    assert all(r["status"] == "ok" for r in response.json()["results"])
    got = (await lite.client.get("/v1/recipients/r999", headers=lite.auth)).json()
    assert got["email"] == "r999@example.com"
    kept = (await lite.client.get("/v1/recipients/r7/preferences", headers=lite.auth)).json()
    assert kept["channels"] == {"email": False}


# --- preferences -------------------------------------------------------------------------


async def test_preferences_start_empty_and_round_trip(lite: Harness) -> None:
    await lite.put_recipient("u")
    path = "/v1/recipients/u/preferences"
    empty = (await lite.client.get(path, headers=lite.auth)).json()
    assert empty == {
        "channels": {},
        "categories": {},
        "quiet_hours": None,
        "snooze_until": None,
        "workflows": {},
    }
    body = {
        "channels": {"sms": False, "email": True},
        "categories": {"marketing": {"email": False, "push": True}, "security": {"sms": True}},
        "quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Europe/Paris"},
        "snooze_until": "2030-01-01T08:00:00Z",
        "workflows": {"new_comment": {"email": False}},
    }
    response = await lite.client.put(path, json=body, headers=lite.auth)
    assert response.status_code == 200, response.text
    assert response.json() == body
    assert (await lite.client.get(path, headers=lite.auth)).json() == body
    # A PUT replaces: what is left out goes back to its default.
    response = await lite.client.put(
        path, json={"quiet_hours": {"start": "00:00", "end": "23:59"}}, headers=lite.auth
    )
    assert response.status_code == 200
    assert (await lite.client.get(path, headers=lite.auth)).json() == {
        "channels": {},
        "categories": {},
        "quiet_hours": {"start": "00:00", "end": "23:59", "timezone": None},
        "snooze_until": None,
        "workflows": {},
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"channels": {"fax": False}}, "channels.fax"),
        ({"channels": {"sms": "nope"}}, "channels.sms"),
        ({"categories": {"marketing": {"pigeon": True}}}, "categories.marketing.pigeon"),
        ({"categories": {"bad name!": {"sms": True}}}, "categories.bad name!"),
        ({"quiet_hours": {"start": "24:00", "end": "07:00"}}, "quiet_hours.start"),
        ({"quiet_hours": {"start": "22:00", "end": "7:00"}}, "quiet_hours.end"),
        ({"quiet_hours": {"start": "22:60", "end": "07:00"}}, "quiet_hours.start"),
        ({"quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Moon/Base"}}, None),
        ({"quiet_hours": {"start": "22:00"}}, "quiet_hours.end"),
        ({"quiet_hours": {"start": "22:00", "end": "22:00"}}, "quiet_hours"),
        ({"surprise": {}}, "surprise"),
    ],
)
async def test_invalid_preferences_are_refused(
    lite: Harness, body: dict[str, Any], field: str | None
) -> None:
    await lite.put_recipient("u")
    path = "/v1/recipients/u/preferences"
    response = await lite.client.put(path, json=body, headers=lite.auth)
    named = fields_named(assert_error(response, 422, "validation_error"))
    want = field or "quiet_hours.timezone"
    assert any(name == want or name.startswith(f"{want}.") for name in named), named
    empty = (await lite.client.get(path, headers=lite.auth)).json()
    assert empty == {
        "channels": {},
        "categories": {},
        "quiet_hours": None,
        "snooze_until": None,
        "workflows": {},
    }


async def test_preferences_name_only_existing_categories(lite: Harness) -> None:
    await lite.put_recipient("u")
    path = "/v1/recipients/u/preferences"
    body = {"categories": {"newsletter": {"email": False}, "promo": {"sms": False}}}
    response = await lite.client.put(path, json=body, headers=lite.auth)
    error = assert_error(response, 422, "unknown_category")
    assert {d["category"] for d in error["error"]["details"]} == {"newsletter", "promo"}
    for name in ("newsletter", "promo"):
        created = await lite.client.put(f"/v1/categories/{name}", json={}, headers=lite.auth)
        assert created.status_code == 200, created.text
    response = await lite.client.put(path, json=body, headers=lite.auth)
    assert response.status_code == 200, response.text
    # Another tenant's category of that name does not count for this one.
    other = {"Authorization": f"Bearer {await lite.new_tenant('globex')}"}
    await lite.client.put("/v1/recipients/v", json={}, headers=other)
    response = await lite.client.put("/v1/recipients/v/preferences", json=body, headers=other)
    assert_error(response, 422, "unknown_category")


# --- export and erasure, against the database rows ---------------------------------------

PERSON = "erasable-person-7f3a"
BYSTANDER = "bystander-2c9d"
SECRETS = {
    "email": "quokka.person@example.org",
    "phone": "+447700900123",
    "apns": "apns-token-SECRET-91a7",
    "fcm": "fcm-token-SECRET-55be",
    "endpoint": "https://push.example.net/sub/SECRET-endpoint-3c1d",
    "p256dh": "p256dh-SECRET-0d4e",
    "auth": "auth-SECRET-77f0",
    "hook": "/hooks/SECRET-hook-path-19b2",
    "first": "Zanzibar-Firstname",
    "secret_data": "Order-SECRET-Q77",
}
EVERY_CHANNEL = {
    "channels": {
        "email": {
            "subject": "Hi {{ firstName }}",
            "html": "<p>{{ recipient.email }} {{ orderId }}</p>",
            "text": "{{ recipient.phone }}",
        },
        "sms": {"text": "Hi {{ firstName }} {{ orderId }}"},
        "push": {"title": "Hi {{ firstName }}", "body": "{{ orderId }}"},
        "webpush": {"title": "Hi", "body": "{{ firstName }}", "url": "https://x.example/o"},
        "inapp": {"title": "Hi {{ firstName }}", "body": "{{ orderId }}"},
        "webhook": {"body": {"who": "{{ recipient.id }}", "order": "{{ orderId }}"}},
    }
}


def person_body(sink: WebhookSink) -> dict[str, Any]:
    return {
        "email": SECRETS["email"],
        "phone": SECRETS["phone"],
        "locale": "en-GB",
        "timezone": "Europe/London",
        "push_tokens": [
            {"platform": "apns", "token": SECRETS["apns"]},
            {"platform": "fcm", "token": SECRETS["fcm"]},
        ],
        "webpush": [
            {
                "endpoint": SECRETS["endpoint"],
                "keys": {"p256dh": SECRETS["p256dh"], "auth": SECRETS["auth"]},
            }
        ],
        "webhook_url": f"{sink.url}{SECRETS['hook']}",
        "data": {"firstName": SECRETS["first"]},
    }


def quiet_hours_later() -> dict[str, str]:
    """A quiet window that starts in two hours, London time: not in force now."""
    local = datetime.now(ZoneInfo("Europe/London"))
    start, end = local + timedelta(hours=2), local + timedelta(hours=3)
    return {"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}


async def seed_person(app: Harness, sink: WebhookSink) -> dict[str, str]:
    """The person, a bystander, notifications of every kind to them, all sent. Returns the
    ids of the notifications: to the person alone, to both, and one scheduled for later."""
    response = await app.client.post(
        "/v1/recipients/batch",
        json={"recipients": [{"id": PERSON, **person_body(sink)}]},
        headers={**app.auth, "Idempotency-Key": "batch-1"},
    )
    assert response.status_code == 200, response.text
    await app.put_recipient(BYSTANDER, email="bystander@example.com")
    prefs = {
        "channels": {"sms": True},
        "categories": {"marketing": {"email": False}},
        # Stored to be exported and erased, but not in force now: everything goes out.
        "quiet_hours": {**quiet_hours_later(), "timezone": "Europe/London"},
    }
    response = await app.client.put(
        f"/v1/recipients/{PERSON}/preferences", json=prefs, headers=app.auth
    )
    assert response.status_code == 200, response.text
    response = await app.client.put(
        "/v1/topics/news/subscribers", json={"recipient_ids": [PERSON, BYSTANDER]}, headers=app.auth
    )
    assert response.status_code == 200, response.text
    await app.put_template("every", EVERY_CHANNEL)
    ids = {}
    for name, to, data in [
        ("alone", {"recipient_id": PERSON}, {"orderId": SECRETS["secret_data"]}),
        ("shared", {"recipient_ids": [PERSON, BYSTANDER]}, {"orderId": "public-1"}),
    ]:
        response = await app.send({"template": "every", "to": to, "data": data})
        assert response.status_code == 202, response.text
        ids[name] = response.json()["id"]
    await app.drain()
    # Sent after the drain: the scheduled one waits in the outbox, which a drain waits out.
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    response = await app.send(
        {
            "template": "every",
            "to": {"recipient_id": PERSON},
            "data": {"orderId": SECRETS["secret_data"]},
            "send_at": later,
        }
    )
    assert response.status_code == 202, response.text
    ids["later"] = response.json()["id"]
    return ids


async def all_rows_as_text(app: Harness) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    async with app.ctx.engine.connect() as conn:
        for table in metadata.sorted_tables:
            rows = (await conn.execute(select(table))).mappings().all()
            found[table.name] = [
                orjson.dumps(dict(row), default=str, option=orjson.OPT_NON_STR_KEYS).decode()
                + "|"
                + repr(tuple(row.values()))
                for row in rows
            ]
    return found


def traces(rows: dict[str, list[str]], needles: list[str]) -> list[tuple[str, str]]:
    return [
        (table, needle)
        for table, texts in rows.items()
        for needle in needles
        for line in texts
        if needle.lower() in line.lower()
    ]


async def test_erasure_leaves_no_trace_in_any_table(app: Harness, sink: WebhookSink) -> None:
    ids = await seed_person(app, sink)
    needles = [PERSON, *SECRETS.values()]
    before = await all_rows_as_text(app)
    # The seeding did put the person everywhere the test then looks.
    for table in ("recipients", "deliveries", "inbox_messages", "sandbox_messages"):
        assert traces({table: before[table]}, needles), table
    assert traces({"notifications": before["notifications"]}, [SECRETS["secret_data"]])
    assert traces({"idempotency_keys": before["idempotency_keys"]}, [PERSON])
    alone = await app.notification(ids["alone"])
    assert {d["channel"] for d in alone["deliveries"]} == set(EVERY_CHANNEL["channels"])
    assert all(d["status"] == "sent" for d in alone["deliveries"]), alone
    async with app.ctx.engine.connect() as conn:
        counted = (await conn.execute(select(deliveries.c.status))).scalars().all()

    response = await app.client.delete(f"/v1/recipients/{PERSON}", headers=app.auth)
    assert response.status_code == 204, response.text
    assert response.content == b""

    after = await all_rows_as_text(app)
    assert traces(after, needles) == []
    # The delivery history is still there for counts, without the person.
    async with app.ctx.engine.connect() as conn:
        kept = (await conn.execute(select(deliveries))).mappings().all()
        notes = {
            row["id"]: row for row in (await conn.execute(select(notifications))).mappings().all()
        }
    assert sorted(r["status"] for r in kept) == sorted(counted)
    erased = [r for r in kept if r["recipient_id"] == erasure.ERASED]
    assert len(erased) == 2 * len(EVERY_CHANNEL["channels"])
    assert all(r["address"] is None and r["content"] is None for r in erased)
    assert all(r["last_error"] is None for r in erased)
    assert notes[ids["alone"]]["recipient_ids"] == []
    assert notes[ids["alone"]]["data"] == {}
    assert notes[ids["later"]]["recipient_ids"] == []
    assert notes[ids["shared"]]["recipient_ids"] == [BYSTANDER]
    assert notes[ids["shared"]]["data"] == {"orderId": "public-1"}
    # The bystander keeps everything.
    bystander = (await app.client.get(f"/v1/recipients/{BYSTANDER}", headers=app.auth)).json()
    assert bystander["email"] == "bystander@example.com"
    shared = await app.notification(ids["shared"])
    assert {d["recipient_id"] for d in shared["deliveries"]} == {BYSTANDER, erasure.ERASED}
    # And the person is gone from the API.
    for path in (f"/v1/recipients/{PERSON}", f"/v1/recipients/{PERSON}/export"):
        assert_error(await app.client.get(path, headers=app.auth), 404, "not_found")
    again = await app.client.delete(f"/v1/recipients/{PERSON}", headers=app.auth)
    assert_error(again, 404, "not_found")


def database_bytes(path: Path) -> bytes:
    """The database file and its companions (-wal, -shm), as they are on disk."""
    files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
    return b"".join(p.read_bytes() for p in files)


async def test_erasure_overwrites_the_sqlite_file(lite: Harness, sink: WebhookSink) -> None:
    await seed_person(lite, sink)
    response = await lite.client.delete(f"/v1/recipients/{PERSON}", headers=lite.auth)
    assert response.status_code == 204
    async with lite.ctx.engine.connect() as conn:
        assert (await conn.execute(text("PRAGMA secure_delete"))).scalar() == 1
    # Erasure itself checkpoints the write-ahead log: no file of the database (the file,
    # its -wal, its -shm) holds anything erased.
    path = Path(lite.settings.database_url.removeprefix("sqlite+aiosqlite:///"))
    files = {p.name.removeprefix(path.name) for p in path.parent.iterdir()}
    assert {"", "-wal", "-shm"} <= files
    content = await asyncio.to_thread(database_bytes, path)
    assert len(content) > 0
    for needle in (SECRETS["email"], SECRETS["phone"], SECRETS["fcm"], PERSON):
        assert needle.encode() not in content, needle


async def test_erasure_cancels_what_is_still_waiting(lite: Harness) -> None:
    """Nothing is left to send or replay once the address is gone."""
    await lite.put_recipient(PERSON, phone=SECRETS["phone"])
    now = datetime.now(UTC)
    rows = [
        {
            "id": f"dlv_{status}",
            "notification_id": "ntf_x",
            "tenant_id": lite.tenant_id,
            "recipient_id": PERSON,
            "channel": "sms",
            "priority": "normal",
            "status": status,
            "reason": "http_500" if status == "dead" else None,
            "attempts": 0,
            "address": SECRETS["phone"],
            "content": {"text": "hello"},
            "created_at": now,
            "updated_at": now,
        }
        for status in ("queued", "scheduled", "sending", "dead", "sent")
    ]
    async with lite.ctx.engine.begin() as conn:
        await conn.execute(deliveries.insert(), rows)
    response = await lite.client.delete(f"/v1/recipients/{PERSON}", headers=lite.auth)
    assert response.status_code == 204
    async with lite.ctx.engine.connect() as conn:
        after = (await conn.execute(select(deliveries))).mappings().all()
    assert not {row["id"] for row in after} & {row["id"] for row in rows}
    assert sorted((row["status"], row["reason"]) for row in after) == [
        ("failed", "http_500"),
        ("sent", None),
        ("suppressed", "cancelled"),
        ("suppressed", "cancelled"),
        ("suppressed", "cancelled"),
    ]
    for row in after:
        assert row["recipient_id"] == erasure.ERASED
        assert row["address"] is None


async def test_export_holds_everything_stored(app: Harness, sink: WebhookSink) -> None:
    ids = await seed_person(app, sink)
    response = await app.client.get(f"/v1/recipients/{PERSON}/export", headers=app.auth)
    assert response.status_code == 200, response.text
    export = response.json()
    assert set(export) == {
        "recipient",
        "preferences",
        "inbox_messages",
        "deliveries",
        "sandbox_messages",
        "topics",
        "digests",
        "workflow_runs",
        "truncated",
    }
    assert export["topics"] == ["news"]
    assert export["digests"] == []
    assert export["workflow_runs"] == []
    assert export["truncated"] is False
    recipient = export["recipient"]
    for name, value in person_body(sink).items():
        assert recipient[name] == value, name
    assert export["preferences"]["categories"] == {"marketing": {"email": False}}
    assert export["preferences"]["quiet_hours"]["timezone"] == "Europe/London"

    sent = export["deliveries"]
    assert {d["notification_id"] for d in sent} == {ids["alone"], ids["shared"]}
    assert len(sent) == 2 * len(EVERY_CHANNEL["channels"])
    assert set(sent[0]) == {
        "id",
        "notification_id",
        "channel",
        "provider",
        "status",
        "reason",
        "attempts",
        "created_at",
        "sent_at",
        "address",
        "content",
    }
    by_channel = {d["channel"]: d for d in sent if d["notification_id"] == ids["alone"]}
    assert by_channel["email"]["address"] == SECRETS["email"]
    assert by_channel["sms"]["content"]["text"] == f"Hi {SECRETS['first']} {SECRETS['secret_data']}"
    assert by_channel["push"]["address"] == person_body(sink)["push_tokens"]
    assert all(d["status"] == "sent" for d in sent)

    [*inbox] = export["inbox_messages"]
    assert len(inbox) == 2
    assert {m["content"]["title"] for m in inbox} == {f"Hi {SECRETS['first']}"}
    assert all(m["status"] == "unread" for m in inbox)

    captured = export["sandbox_messages"]
    assert {m["channel"] for m in captured} == {"email", "sms", "push", "webpush"}
    assert len(captured) == 8
    assert SECRETS["email"] in {m["to"] for m in captured if m["channel"] == "email"}
    # Nothing of the bystander.
    assert BYSTANDER not in response.text
    assert "bystander@example.com" not in response.text


async def test_export_says_when_it_is_cut(
    lite: Harness, sink: WebhookSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed_person(lite, sink)
    monkeypatch.setattr(erasure, "EXPORT_LIMIT", 3)
    response = await lite.client.get(f"/v1/recipients/{PERSON}/export", headers=lite.auth)
    export = response.json()
    assert export["truncated"] is True
    assert len(export["deliveries"]) == 3
    created = [d["created_at"] for d in export["deliveries"]]
    assert created == sorted(created, reverse=True)


async def test_export_of_a_recipient_without_history(lite: Harness) -> None:
    await lite.put_recipient("quiet", email="quiet@example.com")
    export = (await lite.client.get("/v1/recipients/quiet/export", headers=lite.auth)).json()
    assert export["recipient"]["email"] == "quiet@example.com"
    assert export["preferences"] == {
        "channels": {},
        "categories": {},
        "quiet_hours": None,
        "snooze_until": None,
        "workflows": {},
    }
    assert export["inbox_messages"] == export["deliveries"] == export["sandbox_messages"] == []
    assert export["truncated"] is False


async def test_a_browsers_push_subscription_is_stored_as_it_comes(lite: Harness) -> None:
    subscription = {
        "endpoint": "https://push.example.net/send/abc",
        "expirationTime": None,
        "keys": {"p256dh": "BPk", "auth": "x7"},
    }
    expiring = {**subscription, "endpoint": "https://push.example.net/send/d", "expirationTime": 1}
    await lite.put_recipient("u-web", webpush=[subscription, expiring])
    found = (await lite.client.get("/v1/recipients/u-web", headers=lite.auth)).json()
    # Kept when the browser gave one.
    assert found["webpush"] == [
        {"endpoint": subscription["endpoint"], "keys": subscription["keys"]},
        expiring,
    ]
