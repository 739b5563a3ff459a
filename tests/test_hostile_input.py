"""Input no store can hold is refused at the edge with a 4xx, on both stores: never a 500,
never a 503 "storage unavailable" from a database that is fine."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from clarion.api.inputs import MAX_DEPTH, InputRefused, parse_json
from harness import Harness
from test_api_errors import assert_error

JSON = {"content-type": "application/json"}


@pytest.fixture
async def ready(app: Harness) -> Harness:
    await app.put_recipient("u", phone="+14155550100", email="alex@example.com")
    await app.put_template("t", {"channels": {"sms": {"text": "hi"}}})
    return app


def notification(**extra: Any) -> dict[str, Any]:
    return {"template": "t", "to": {"recipient_id": "u"}, **extra}


async def post_raw(app: Harness, path: str, raw: str, method: str = "POST") -> Any:
    return await app.client.request(
        method, path, content=raw.encode(), headers={**app.auth, **JSON}
    )


@pytest.mark.parametrize(
    "data",
    [
        '{"n": 123456789012345678901234567890}',
        '{"n": 9223372036854775808}',
        '{"n": -9223372036854775809}',
        '{"n": 1e999}',
        '{"s": "\\ud800"}',
        '{"s": "a\\udfffb"}',
        '{"s": "a\\u0000b"}',
        '{"a\\u0000": 1}',
        "[" * 300 + "]" * 300,
        '{"d": ' + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "}",
    ],
    ids=[
        "int-over-64-bits",
        "int-2^63",
        "int-below-min",
        "float-infinity",
        "lone-high-surrogate",
        "lone-low-surrogate",
        "nul-in-value",
        "nul-in-key",
        "nested-300",
        "nested-past-limit",
    ],
)
async def test_unstorable_json_is_400(ready: Harness, data: str) -> None:
    raw = '{"template": "t", "to": {"recipient_id": "u"}, "data": ' + data + "}"
    assert_error(await post_raw(ready, "/v1/notifications", raw), 400, "invalid_input")
    batch = '{"notifications": [' + raw + "]}"
    assert_error(await post_raw(ready, "/v1/notifications/batch", batch), 400, "invalid_input")
    recipient = '{"data": {"x": ' + data + "}}"
    assert_error(
        await post_raw(ready, "/v1/recipients/r1", recipient, method="PUT"), 400, "invalid_input"
    )


async def test_storable_edges_are_accepted(ready: Harness) -> None:
    data = {
        "max": 2**63 - 1,
        "min": -(2**63),
        "deep": [[[["ok"]]]],
        "emoji": "\U0001f680 ok",
        "controls": "tab\tnewline\n",
    }
    response = await ready.send(notification(data=data))
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/recipients/a%00b"),
        ("PUT", "/v1/recipients/a%00b"),
        ("DELETE", "/v1/recipients/a%00b"),
        ("GET", "/v1/recipients/a%00b/preferences"),
        ("GET", "/v1/notifications/ntf_%00"),
        ("GET", "/v1/templates/t%00"),
        ("PUT", "/v1/categories/c%00"),
        ("GET", "/v1/sandbox/messages?recipient_id=a%00b"),
        ("GET", "/v1/templates?cursor=%00"),
        ("GET", "/v1/dead-letters?provider=%00"),
        ("GET", "/v1/recipients/%ED%A0%80"),
    ],
)
async def test_nul_in_path_or_query_is_400(ready: Harness, method: str, path: str) -> None:
    response = await ready.client.request(method, path, json={}, headers=ready.auth)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["code"] in ("invalid_input", "not_found")


async def test_nul_in_idempotency_key_and_email(ready: Harness) -> None:
    raw = '{"template": "t", "to": {"recipient_id": "u"}, "idempotency_key": "k\\u0000"}'
    assert_error(await post_raw(ready, "/v1/notifications", raw), 400, "invalid_input")
    raw = '{"email": "a\\u0000@example.com"}'
    assert_error(
        await post_raw(ready, "/v1/recipients/r2", raw, method="PUT"), 400, "invalid_input"
    )


@pytest.mark.parametrize(
    "query",
    ["version=9223372036854775808", "version=2147483648", "version=99999999999999999999999"],
)
async def test_huge_integers_in_queries_are_422(ready: Harness, query: str) -> None:
    response = await ready.client.get(f"/v1/templates/t?{query}", headers=ready.auth)
    assert_error(response, 422, "validation_error")
    response = await ready.client.get(
        "/v1/templates/t/versions?cursor=9223372036854775808", headers=ready.auth
    )
    assert 400 <= response.status_code < 500, response.text


@pytest.mark.parametrize(
    "moment",
    [
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-14:00",
        "9999-06-01T00:00:00Z",
        "1900-01-01T00:00:00Z",
        "2026-11-21T08:00:00",
    ],
)
async def test_timestamps_out_of_range_are_422(ready: Harness, moment: str) -> None:
    for field in ("send_at", "expires_at"):
        response = await ready.send(notification(**{field: moment}))
        assert_error(response, 422, "validation_error")
    response = await ready.client.post(
        "/v1/dead-letters/replay", json={"before": moment}, headers=ready.auth
    )
    assert_error(response, 422, "validation_error")
    response = await ready.client.get(
        "/v1/dead-letters", params={"before": moment}, headers=ready.auth
    )
    assert 400 <= response.status_code < 500, response.text


async def test_offsets_are_kept_on_every_store(ready: Harness) -> None:
    """A send three hours ahead, written with an offset, waits; an expiry an hour ahead
    does not expire it at once."""
    zone = timedelta(hours=-5)
    local = datetime.now(UTC).astimezone(timezone(zone))
    later = (local + timedelta(hours=3)).isoformat()
    response = await ready.send(notification(send_at=later))
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "scheduled"
    scheduled = response.json()["id"]
    expiring = await ready.send(notification(expires_at=(local + timedelta(hours=1)).isoformat()))
    assert expiring.status_code == 202, expiring.text

    async def delivered() -> bool:
        found = await ready.notification(expiring.json()["id"])
        return [d["status"] for d in found["deliveries"]] == ["sent"]

    await ready.until(delivered)
    body = await ready.notification(scheduled)
    assert body["status"] == "scheduled", body
    assert all(d["status"] != "sent" for d in body["deliveries"]), body


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"email": "al(ex)@example.com"}, "email"),
        ({"email": "alex@example"}, "email"),
        ({"email": "\u00e9lise@example.com"}, "email"),
        ({"email": "a" * 250 + "@example.com"}, "email"),
        ({"phone": "+1415555010"}, "phone"),
        ({"phone": "+33612"}, "phone"),
        ({"phone": "+999123456"}, "phone"),
        ({"phone": "14155550100"}, "phone"),
    ],
)
async def test_addresses_sending_would_refuse_are_422(
    ready: Harness, fields: dict[str, Any], field: str
) -> None:
    response = await ready.client.put("/v1/recipients/r3", json=fields, headers=ready.auth)
    body = assert_error(response, 422, "validation_error")
    assert body["error"]["details"][0]["field"] == field


async def test_addresses_are_kept_in_normal_form(ready: Harness) -> None:
    await ready.put_recipient("r4", email="Alex@EXAMPLE.com", phone="+1 415 555 0100")
    response = await ready.client.get("/v1/recipients/r4", headers=ready.auth)
    assert response.json()["email"] == "Alex@example.com"
    assert response.json()["phone"] == "+14155550100"


def test_parse_json_rules() -> None:
    assert parse_json(b'{"a": [1, -2, 3.5, "x", null, true]}') == {
        "a": [1, -2, 3.5, "x", None, True]
    }
    for bad in (b"NaN", b'{"a": Infinity}', b"1" * 30, b'"\\u0000"'):
        with pytest.raises(InputRefused):
            parse_json(bad)
    with pytest.raises(json.JSONDecodeError):
        parse_json(b"{")


@pytest.mark.parametrize(
    ("body", "value"),
    [
        (b"[9223372036854775807]", [2**63 - 1]),
        (b"[-9223372036854775808]", [-(2**63)]),
        (b'["1234567890123456789012"]', ["1234567890123456789012"]),
        (b"[1e308, -0.0, 123456789012345678]", [1e308, -0.0, 123456789012345678]),
        ('["caf\u00e9 \U0001f600"]'.encode(), ["caf\u00e9 \U0001f600"]),
        (b'{"a": 1, "a": 2}', {"a": 2}),
    ],
)
def test_parse_json_edges_within_the_rules(body: bytes, value: Any) -> None:
    assert parse_json(body) == value


@pytest.mark.parametrize(
    "body",
    [
        b"[9223372036854775808]",
        b"[-9223372036854775809]",
        b"[18446744073709551616]",
        b"[1e400]",
        b'{"a": "x\\u0000"}',
        b'{"a\\u0000": 1}',
        b'["\\ud800"]',
        b"[" * 40 + b"]" * 40,
        b"\xef\xbb\xbf[1e999]",
    ],
)
def test_parse_json_refusals(body: bytes) -> None:
    with pytest.raises(InputRefused):
        parse_json(body)
