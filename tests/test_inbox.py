"""The inbox API with recipient tokens, on both backends: tokens bound to tenant and
recipient, every route and state change, counts, pagination, snooze, hostile input."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import jwt
from sqlalchemy import update

from clarion.security import inbox_tokens
from clarion.store import inbox_changes
from clarion.store.tables import inbox_messages
from harness import Harness
from inbox_kit import bearer, counts, feed, inbox_ready, send, token_for


async def _messages(app: Harness, rid: str, n: int) -> str:
    token = await inbox_ready(app, rid)
    for i in range(n):
        await send(app, rid, i)
    await app.drain()
    return token


async def test_a_sent_message_is_in_the_inbox_with_its_content(app: Harness) -> None:
    token = await _messages(app, "u-1", 1)
    page = await feed(app, token)
    assert page["next_cursor"] is None
    [message] = page["data"]
    assert message["title"] == "Shipped 0"
    assert message["body"] == "Order 0"
    assert message["action_url"] == "/orders/0"
    assert message["data"] == {"order": "0"}
    assert message["category"] == "transactional"
    assert message["created_at"].endswith("Z")
    assert message["read_at"] is None
    assert message["seen_at"] is None
    assert message["archived_at"] is None
    assert await counts(app, token) == {"unread": 1, "unseen": 1, "total": 1}


async def test_every_state_change(app: Harness) -> None:
    token = await _messages(app, "u-1", 2)
    first, second = (await feed(app, token))["data"]
    auth = bearer(token)

    async def act(mid: str, action: str) -> dict[str, object]:
        response = await app.client.post(f"/v1/inbox/{mid}/{action}", headers=auth)
        assert response.status_code == 200, response.text
        body: dict[str, object] = response.json()
        return body

    seen = await act(first["id"], "seen")
    assert seen["seen_at"] is not None
    assert seen["read_at"] is None
    assert await counts(app, token) == {"unread": 2, "unseen": 1, "total": 2}
    read = await act(first["id"], "read")
    assert read["read_at"] is not None
    assert [m["id"] for m in (await feed(app, token, status="read"))["data"]] == [first["id"]]
    assert [m["id"] for m in (await feed(app, token, status="unread"))["data"]] == [second["id"]]
    assert (await act(first["id"], "unread"))["read_at"] is None
    assert await counts(app, token) == {"unread": 2, "unseen": 1, "total": 2}
    archived = await act(second["id"], "archive")
    assert archived["archived_at"] is not None
    assert [m["id"] for m in (await feed(app, token, status="archived"))["data"]] == [second["id"]]
    assert [m["id"] for m in (await feed(app, token))["data"]] == [first["id"]]
    assert len((await feed(app, token, status="all"))["data"]) == 2
    assert await counts(app, token) == {"unread": 1, "unseen": 0, "total": 1}
    assert (await act(second["id"], "unarchive"))["archived_at"] is None
    assert await counts(app, token) == {"unread": 2, "unseen": 1, "total": 2}


async def test_read_all_and_archive_read(app: Harness) -> None:
    token = await _messages(app, "u-1", 3)
    auth = bearer(token)
    response = await app.client.post("/v1/inbox/read-all", headers=auth)
    assert response.status_code == 200
    assert response.json() == {"updated": 3}
    assert await counts(app, token) == {"unread": 0, "unseen": 0, "total": 3}
    response = await app.client.post("/v1/inbox/archive-read", headers=auth)
    assert response.json() == {"updated": 3}
    assert await counts(app, token) == {"unread": 0, "unseen": 0, "total": 0}
    assert len((await feed(app, token, status="archived"))["data"]) == 3


async def test_pages_newest_first_without_gaps_or_repeats(app: Harness) -> None:
    token = await _messages(app, "u-1", 7)
    seen: list[str] = []
    cursor = None
    stamps: list[str] = []
    while True:
        page = await feed(app, token, limit=3, **({"cursor": cursor} if cursor else {}))
        seen += [m["id"] for m in page["data"]]
        stamps += [m["created_at"] for m in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 7 == len(set(seen))
    moments = [datetime.fromisoformat(s) for s in stamps]
    assert moments == sorted(moments, reverse=True)


async def test_another_recipients_message_is_a_404(app: Harness) -> None:
    token = await _messages(app, "u-1", 1)
    other = await inbox_ready(app, "u-2")
    [message] = (await feed(app, token))["data"]
    for action in ("read", "unread", "seen", "archive", "unarchive"):
        response = await app.client.post(
            f"/v1/inbox/{message['id']}/{action}", headers=bearer(other)
        )
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"
    response = await app.client.post(
        f"/v1/inbox/{message['id']}/snooze",
        json={"until": "2099-01-01T00:00:00Z"},
        headers=bearer(other),
    )
    assert response.status_code == 404
    assert (await feed(app, other))["data"] == []
    assert await counts(app, token) == {"unread": 1, "unseen": 1, "total": 1}


async def test_tokens_expired_tampered_or_of_another_tenant_are_401(app: Harness) -> None:
    token = await _messages(app, "u-1", 1)
    header, payload, signature = token.split(".")
    tampered = f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = jwt.encode({**claims, "sub": "u-2"}, "not-the-secret-" * 4, algorithm="HS256")
    # The other tenant's own token, its claims changed to name this tenant: the other
    # tenant's secret does not sign for this one.
    other_key = await app.new_tenant("globex")
    other = {"Authorization": f"Bearer {other_key}"}
    await app.client.put("/v1/recipients/u-1", json={}, headers=other)
    response = await app.client.post("/v1/recipients/u-1/token", headers=other)
    other_token = response.json()["token"]
    other_claims = jwt.decode(other_token, options={"verify_signature": False})
    wrong_tenant = jwt.encode(
        {**other_claims, "tid": claims["tid"]},
        "x" * 40,
        algorithm="HS256",
    )
    # The other tenant's genuine token sees only the other tenant's inbox.
    assert (await feed(app, other_token))["data"] == []
    for bad in (tampered, forged, wrong_tenant, "eyJhbGciOi.garbage.here", "nonsense"):
        response = await app.client.get("/v1/inbox", headers=bearer(bad))
        assert response.status_code == 401, (bad, response.text)
        assert response.json()["error"]["code"] in ("invalid_token", "unauthorized")


async def test_an_expired_token_is_401(lite: Harness) -> None:
    await inbox_ready(lite, "u-1")
    tenant_id = lite.tenant_id
    from clarion.store import inbox_access

    secret = await inbox_access.secret(lite.ctx.engine, tenant_id)
    assert secret is not None
    past_ms = int((time.time() - 7200) * 1000)
    expired = inbox_tokens.mint(secret, tenant_id, "u-1", past_ms, 60)
    response = await lite.client.get("/v1/inbox", headers=bearer(expired))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "token_expired"
    response = await lite.client.get("/v1/inbox/count")
    assert response.status_code == 401


async def test_keys_and_tokens_stay_on_their_own_routes(lite: Harness) -> None:
    token = await inbox_ready(lite, "u-1")
    response = await lite.client.get("/v1/inbox", headers=lite.auth)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "recipient_token_required"
    for method, path in (("GET", "/v1/recipients/u-1"), ("POST", "/v1/notifications")):
        response = await lite.client.request(method, path, headers=bearer(token), json={})
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "api_key_required"


async def test_token_needs_manage_or_send_and_an_existing_recipient(lite: Harness) -> None:
    await lite.put_recipient("u-1")
    tenant = await lite.ctx.engine.connect()
    await tenant.close()
    from clarion.store import tenants as tenant_store

    reader = await tenant_store.create_key(lite.ctx.engine, lite.tenant_id, ["read"])
    sender = await tenant_store.create_key(lite.ctx.engine, lite.tenant_id, ["send"])
    response = await lite.client.post(
        "/v1/recipients/u-1/token", headers={"Authorization": f"Bearer {reader}"}
    )
    assert response.status_code == 403
    response = await lite.client.post(
        "/v1/recipients/u-1/token",
        json={"expires_in": 3600},
        headers={"Authorization": f"Bearer {sender}"},
    )
    assert response.status_code == 200
    expires = datetime.fromisoformat(response.json()["expires_at"])
    assert abs((expires - datetime.now(UTC)).total_seconds() - 3600) < 60
    response = await lite.client.post("/v1/recipients/nobody/token", headers=lite.auth)
    assert response.status_code == 404
    for bad in (0, 59, 30 * 86400 + 1, "soon", None):
        response = await lite.client.post(
            "/v1/recipients/u-1/token", json={"expires_in": bad}, headers=lite.auth
        )
        assert response.status_code == 422, (bad, response.text)
    response = await lite.client.post("/v1/recipients/u-1/token", headers=lite.auth)
    claims = jwt.decode(response.json()["token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 86400


async def test_rotating_the_inbox_secret_revokes_every_token(lite: Harness) -> None:
    from clarion.store import inbox_access

    token = await inbox_ready(lite, "u-1")
    assert (await lite.client.get("/v1/inbox", headers=bearer(token))).status_code == 200
    rotated_at = await inbox_access.rotate(lite.ctx.engine, lite.tenant_id)
    await lite.ctx.inbox.upkeep()  # what the API's upkeep loop does every second
    assert rotated_at is not None
    response = await lite.client.get("/v1/inbox", headers=bearer(token))
    assert response.status_code == 401
    fresh = await token_for(lite, "u-1")
    assert (await lite.client.get("/v1/inbox", headers=bearer(fresh))).status_code == 200


async def test_erasure_removes_the_inbox_and_revokes_tokens(app: Harness) -> None:
    token = await _messages(app, "u-1", 2)
    response = await app.client.delete("/v1/recipients/u-1", headers=app.auth)
    assert response.status_code == 204
    response = await app.client.get("/v1/inbox", headers=bearer(token))
    assert response.status_code == 401
    await app.put_recipient("u-1")  # the same id again: a new person, a new inbox
    fresh = await token_for(app, "u-1")
    assert (await feed(app, fresh))["data"] == []
    assert (await app.client.get("/v1/inbox", headers=bearer(token))).status_code == 401


async def test_snooze_hides_until_the_time_then_brings_back(app: Harness) -> None:
    token = await _messages(app, "u-1", 2)
    first = (await feed(app, token))["data"][0]
    until = datetime.now(UTC) + timedelta(hours=1)
    response = await app.client.post(
        f"/v1/inbox/{first['id']}/snooze",
        json={"until": until.isoformat()},
        headers=bearer(token),
    )
    assert response.status_code == 200, response.text
    assert [m["id"] for m in (await feed(app, token))["data"]] != [first["id"]]
    assert await counts(app, token) == {"unread": 1, "unseen": 1, "total": 1}

    # Its time comes (moved instead of waited for); the API's upkeep brings it back.
    async with app.ctx.engine.begin() as conn:
        await conn.execute(
            update(inbox_messages)
            .where(inbox_messages.c.id == first["id"])
            .values(snoozed_until=inbox_messages.c.created_at)
        )
    await app.ctx.inbox.upkeep()
    assert first["id"] in [m["id"] for m in (await feed(app, token))["data"]]
    assert await counts(app, token) == {"unread": 2, "unseen": 2, "total": 2}


BAD_LIST_PARAMETERS: list[dict[str, object]] = [
    {"cursor": "not-a-cursor"},
    {"cursor": "%%%"},
    {"cursor": "MjAyNi0xMS0yMA"},
    {"cursor": "x" * 400},
    {"status": "deleted"},
    {"limit": 0},
    {"limit": 501},
    {"limit": "many"},
]
BAD_SNOOZES: list[object] = [
    {"until": "tomorrow"},
    {"until": "2026-11-20T10:00:00"},
    {"until": "1969-01-01T00:00:00Z"},
    {"until": "2000-01-01T00:00:00Z"},
    {"until": None},
    {},
    {"until": "2099-01-01T00:00:00Z", "extra": 1},
    [],
]


async def test_bad_list_parameters_and_snoozes_are_4xx(lite: Harness) -> None:
    token = await _messages(lite, "u-1", 1)
    for params in BAD_LIST_PARAMETERS:
        response = await lite.client.get("/v1/inbox", params=params, headers=bearer(token))
        assert 400 <= response.status_code < 500, (params, response.text)
        assert "error" in response.json()
    [message] = (await feed(lite, token))["data"]
    for body in BAD_SNOOZES:
        response = await lite.client.post(
            f"/v1/inbox/{message['id']}/snooze", json=body, headers=bearer(token)
        )
        assert response.status_code == 422, (body, response.text)
    assert await counts(lite, token) == {"unread": 1, "unseen": 1, "total": 1}


async def test_unknown_ids_and_actions_are_4xx(lite: Harness) -> None:
    token = await inbox_ready(lite, "u-1")
    auth = bearer(token)
    for path in (
        "/v1/inbox/msg_nope/read",
        "/v1/inbox/" + "x" * 41 + "/read",
        "/v1/inbox/msg_nope/explode",
        "/v1/inbox/msg_nope/snooze",
    ):
        response = await lite.client.post(
            path, headers=auth, json={"until": "2099-01-01T00:00:00Z"}
        )
        assert 400 <= response.status_code < 500, (path, response.text)


async def test_counts_stay_right_under_concurrent_read_and_archive(app: Harness) -> None:
    token = await _messages(app, "u-1", 20)
    ids = [m["id"] for m in (await feed(app, token))["data"]]
    auth = bearer(token)

    async def device(action: str) -> None:
        for mid in ids:
            response = await app.client.post(f"/v1/inbox/{mid}/{action}", headers=auth)
            assert response.status_code == 200

    await asyncio.gather(device("read"), device("archive"), device("read"))
    assert await counts(app, token) == {"unread": 0, "unseen": 0, "total": 0}
    archived = (await feed(app, token, status="archived", limit=100))["data"]
    assert len(archived) == 20
    assert all(m["read_at"] is not None for m in archived)
    await asyncio.gather(device("unarchive"), device("unread"))
    assert await counts(app, token) == {"unread": 20, "unseen": 0, "total": 20}


async def test_a_repeated_send_makes_no_second_message(lite: Harness) -> None:
    token = await _messages(lite, "u-1", 1)
    [message] = (await feed(lite, token))["data"]
    row = {
        "id": message["id"],
        "tenant_id": lite.tenant_id,
        "recipient_id": "u-1",
        "delivery_id": "dlv_" + message["id"].removeprefix("msg_"),
        "content": {"title": "again"},
        "category": None,
    }
    assert await inbox_changes.insert(lite.ctx.engine, [row]) == []
    assert len((await feed(lite, token))["data"]) == 1


async def test_inbox_routes_answer_other_origins_and_tenant_routes_do_not(
    lite: Harness,
) -> None:
    token = await inbox_ready(lite, "u-1")
    preflight = await lite.client.options(
        "/v1/inbox/count",
        headers={
            "Origin": "https://shop.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    response = await lite.client.get(
        "/v1/inbox/count", headers={**bearer(token), "Origin": "https://shop.example"}
    )
    assert response.headers["access-control-allow-origin"] == "*"
    response = await lite.client.get("/v1/recipients/u-1", headers=lite.auth)
    assert "access-control-allow-origin" not in response.headers


async def test_the_component_and_the_demo_are_served(lite: Harness) -> None:
    script = await lite.client.get("/inbox/clarion-inbox.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert 'customElements.define("clarion-inbox"' in script.text
    demo = await lite.client.get("/inbox/demo")
    assert demo.status_code == 200
    assert "/inbox/clarion-inbox.js" in demo.text
    assert "default-src 'self'" in demo.headers["content-security-policy"]
    assert (await lite.client.get("/inbox/demo.js")).status_code == 200
