"""Dead letters: list, filter, replay one or many; a replay sends exactly once."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import httpx
from sqlalchemy import select

from clarion.store import tenants as tenant_store
from clarion.store.tables import delivery_events
from harness import Harness
from webhook_sink import Received, WebhookSink

TEMPLATE = {"channels": {"webhook": {"body": {"hello": "{{ recipient.id }}"}}}}


class Endpoint:
    """The far end: fails until fixed, and counts the deliveries it accepted, by key."""

    def __init__(self) -> None:
        self.healthy = False
        self.accepted: collections.Counter[str] = collections.Counter()

    def __call__(self, request: Received) -> int:
        if not self.healthy:
            return 500
        self.accepted[request.headers["idempotency-key"]] += 1
        return 200


async def _dead(app: Harness, sink: WebhookSink, rids: list[str]) -> list[dict[str, Any]]:
    """Deliveries to ``rids`` that died (the sink answers 500 to every attempt)."""
    await app.put_template("hook", TEMPLATE)
    for rid in rids:
        await app.put_recipient(rid, webhook_url=f"{sink.url}/{rid}")
    response = await app.send({"template": "hook", "to": {"recipient_ids": rids}})
    assert response.status_code == 202, response.text
    await app.drain()
    deliveries: list[dict[str, Any]] = (await app.notification(response.json()["id"]))["deliveries"]
    assert {d["status"] for d in deliveries} == {"dead"}
    return deliveries


async def _list(app: Harness, **params: Any) -> httpx.Response:
    return await app.client.get("/v1/dead-letters", params=params, headers=app.auth)


async def test_list_and_filter(app: Harness, sink: WebhookSink) -> None:
    sink.respond = Endpoint()
    [dead] = await _dead(app, sink, ["u"])
    response = await _list(app)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["next_cursor"] is None
    [item] = body["data"]
    assert item["id"] == dead["id"]
    assert item["notification_id"]
    assert item["status"] == "dead"
    assert item["attempts"] == app.settings.max_attempts
    assert item["reason"] == "http_500"
    provider = item["provider"]
    for params, found in [
        ({"channel": "webhook"}, 1),
        ({"channel": "email"}, 0),
        ({"provider": provider}, 1),
        ({"provider": "someone-else"}, 0),
        ({"after": "2020-01-01T00:00:00Z"}, 1),
        ({"before": "2020-01-01T00:00:00Z"}, 0),
    ]:
        listed = await _list(app, **params)
        assert listed.status_code == 200, listed.text
        assert len(listed.json()["data"]) == found, params


async def test_pages_are_newest_first(app: Harness, sink: WebhookSink) -> None:
    sink.respond = Endpoint()
    dead = await _dead(app, sink, ["a", "b", "c"])
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await _list(app, **params)).json()
        seen.extend(page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(d["id"] for d in seen) == sorted(d["id"] for d in dead)
    stamps = [d["updated_at"] for d in seen]
    assert stamps == sorted(stamps, reverse=True)


async def test_bad_queries_are_refused(app: Harness) -> None:
    for params in (
        {"cursor": "not-a-cursor"},
        {"channel": "pigeon"},
        {"limit": 0},
        {"limit": 501},
        {"after": "yesterday"},
        {"before": "2026-01-01T00:00:00"},
    ):
        response = await _list(app, **params)
        assert response.status_code == 422, params
        assert response.json()["error"]["code"] == "validation_error"


async def test_replay_sends_exactly_once(app: Harness, sink: WebhookSink) -> None:
    endpoint = Endpoint()
    sink.respond = endpoint
    [dead] = await _dead(app, sink, ["u"])
    endpoint.healthy = True
    response = await app.client.post(f"/v1/dead-letters/{dead['id']}/replay", headers=app.auth)
    assert response.status_code == 202, response.text
    replayed = response.json()
    assert (replayed["id"], replayed["status"], replayed["attempts"]) == (dead["id"], "queued", 0)
    assert replayed["reason"] is None
    assert replayed["last_error"] is None
    await app.drain()
    [after] = (await app.notification(replayed["notification_id"]))["deliveries"]
    assert (after["id"], after["status"], after["attempts"]) == (dead["id"], "sent", 1)
    assert endpoint.accepted == {dead["id"]: 1}
    assert (await _list(app)).json()["data"] == []
    # The history stays, with the replay in it.
    query = select(delivery_events.c.status).where(delivery_events.c.delivery_id == dead["id"])
    async with app.ctx.engine.connect() as conn:
        history = [row.status for row in await conn.execute(query.order_by(delivery_events.c.id))]
    assert history[-2:] == ["dead", "replayed"]  # a plain `sent` is the row's own state
    timeline = (await app.client.get(f"/v1/deliveries/{dead['id']}", headers=app.auth)).json()
    assert [e["type"] for e in timeline["events"]][-4:] == ["dead", "replayed", "attempt", "sent"]
    again = await app.client.post(f"/v1/dead-letters/{dead['id']}/replay", headers=app.auth)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "not_dead"


async def test_replay_of_unknown_or_foreign_delivery_is_404(
    app: Harness, sink: WebhookSink
) -> None:
    sink.respond = Endpoint()
    [dead] = await _dead(app, sink, ["u"])
    unknown = await app.client.post("/v1/dead-letters/dlv_nothing/replay", headers=app.auth)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"
    other_key = await app.new_tenant("other")
    other = {"Authorization": f"Bearer {other_key}"}
    foreign = await app.client.post(f"/v1/dead-letters/{dead['id']}/replay", headers=other)
    assert foreign.status_code == 404
    assert (await app.client.get("/v1/dead-letters", headers=other)).json()["data"] == []
    bulk = await app.client.post("/v1/dead-letters/replay", json={}, headers=other)
    assert bulk.json() == {"replayed": 0, "more": False}
    assert (await _list(app)).json()["data"][0]["status"] == "dead"


async def test_bulk_replay(app: Harness, sink: WebhookSink) -> None:
    endpoint = Endpoint()
    sink.respond = endpoint
    dead = await _dead(app, sink, ["a", "b", "c"])
    endpoint.healthy = True
    nothing = await app.client.post(
        "/v1/dead-letters/replay", json={"channel": "email"}, headers=app.auth
    )
    assert nothing.json() == {"replayed": 0, "more": False}
    some = await app.client.post(
        "/v1/dead-letters/replay", json={"channel": "webhook", "limit": 2}, headers=app.auth
    )
    assert some.status_code == 202, some.text
    assert some.json() == {"replayed": 2, "more": True}
    rest = await app.client.post("/v1/dead-letters/replay", headers=app.auth)
    assert rest.json() == {"replayed": 1, "more": False}
    await app.drain()
    assert endpoint.accepted == {d["id"]: 1 for d in dead}
    assert (await _list(app)).json()["data"] == []


async def test_bulk_replay_honours_idempotency_keys(app: Harness, sink: WebhookSink) -> None:
    sink.respond = Endpoint()
    await _dead(app, sink, ["a", "b"])
    headers = {**app.auth, "Idempotency-Key": "replay-1"}
    body = {"before": "2099-01-01T00:00:00Z"}
    first = await app.client.post("/v1/dead-letters/replay", json=body, headers=headers)
    repeat = await app.client.post("/v1/dead-letters/replay", json=body, headers=headers)
    assert first.json() == repeat.json() == {"replayed": 2, "more": False}
    changed = await app.client.post(
        "/v1/dead-letters/replay", json={"channel": "sms"}, headers=headers
    )
    assert changed.status_code == 409
    assert changed.json()["error"]["code"] == "idempotency_conflict"


async def test_bulk_replay_validates_its_body(app: Harness) -> None:
    for body in (
        {"channel": "pigeon"},
        {"before": "2026-01-01T00:00:00"},
        {"limit": 0},
        {"limit": 10_001},
        {"unknown": 1},
        [],
    ):
        response = await app.client.post("/v1/dead-letters/replay", json=body, headers=app.auth)
        assert response.status_code == 422, body
        assert response.json()["error"]["code"] == "validation_error"


async def test_dead_letters_need_the_admin_scope(lite: Harness) -> None:
    tenant = await tenant_store.get_tenant(lite.ctx.engine, lite.tenant_id)
    assert tenant is not None
    key = await tenant_store.create_key(lite.ctx.engine, tenant.id, ["send", "read", "manage"])
    headers = {"Authorization": f"Bearer {key}"}
    for method, path in (
        ("GET", "/v1/dead-letters"),
        ("POST", "/v1/dead-letters/replay"),
        ("POST", "/v1/dead-letters/dlv_x/replay"),
    ):
        response = await lite.client.request(method, path, headers=headers)
        assert response.status_code == 403, path
        assert response.json()["error"]["code"] == "insufficient_scope"


async def test_concurrent_bulk_replays_claim_each_delivery_once(
    app: Harness, sink: WebhookSink
) -> None:
    endpoint = Endpoint()
    sink.respond = endpoint
    dead = await _dead(app, sink, ["a", "b", "c", "d"])
    endpoint.healthy = True
    responses = await asyncio.gather(
        *(app.client.post("/v1/dead-letters/replay", headers=app.auth) for _ in range(4))
    )
    assert sum(r.json()["replayed"] for r in responses) == len(dead)
    await app.drain()
    assert endpoint.accepted == {d["id"]: 1 for d in dead}
