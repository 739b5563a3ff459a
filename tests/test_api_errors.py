"""Bad input gets a 4xx with the JSON error body, never a 500, and loses nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from clarion.api.refusals import refusal_error
from clarion.domain.refusal import Reason, Refused
from clarion.store import notifications as notification_store
from clarion.store import tenants as tenant_store
from clarion.store.notifications import Accepted, NewNotification
from harness import Harness


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    assert "Traceback" not in response.text
    return body


async def _prepared(harness: Harness) -> Harness:
    await harness.put_recipient("u", phone="+14155550100")
    await harness.put_template("t", {"channels": {"sms": {"text": "hi {{ name }}"}}})
    return harness


@pytest.fixture
async def ready(lite: Harness) -> Harness:
    return await _prepared(lite)


@pytest.fixture
async def ready_both(app: Harness) -> Harness:
    """As ``ready``, on each store (the intake's statements differ between them)."""
    return await _prepared(app)


async def test_malformed_json(ready: Harness) -> None:
    response = await ready.client.post(
        "/v1/notifications",
        content=b'{"template": "t", "to": ',
        headers={**ready.auth, "content-type": "application/json"},
    )
    assert_error(response, 400, "invalid_json")


@pytest.mark.parametrize(
    "body",
    [
        {"template": 5, "to": {"recipient_id": "u"}},
        {"template": "t", "to": "u"},
        {"template": "t", "to": {}},
        {"template": "t", "to": {"recipient_id": "u", "topic": "x"}},
        {"template": "t", "to": {"recipient_id": "u"}, "priority": "urgent"},
        {"template": "t", "to": {"recipient_id": "u"}, "channels": ["fax"]},
        {"template": "t", "to": {"recipient_id": "u"}, "send_at": "tomorrow"},
        {"template": "t", "to": {"recipient_id": "u"}, "send_at": "2026-11-21T08:00:00"},
        {"template": "t", "to": {"recipient_id": "u"}, "data": [1, 2]},
        {"template": "t", "to": {"recipient_id": "u"}, "surprise": True},
        {"to": {"recipient_id": "u"}},
        [],
        "text",
    ],
)
async def test_wrong_types_are_422(ready: Harness, body: Any) -> None:
    body = assert_error(await ready.send(body), 422, "validation_error")
    assert body["error"]["details"]


async def test_unknown_template_and_recipient(ready_both: Harness) -> None:
    ready = ready_both
    response = await ready.send({"template": "nope", "to": {"recipient_id": "u"}})
    assert_error(response, 422, "unknown_template")
    response = await ready.send({"template": "t", "to": {"recipient_ids": ["u", "ghost"]}})
    body = assert_error(response, 422, "unknown_recipient")
    assert body["error"]["details"] == [{"recipient_id": "ghost"}]


async def test_oversized_body_is_413(ready: Harness) -> None:
    big = {"template": "t", "to": {"recipient_id": "u"}, "data": {"x": "a" * (513 * 1024)}}
    assert_error(await ready.send(big), 413, "payload_too_large")


async def test_oversized_batch_is_422(ready: Harness) -> None:
    items = [{"template": "t", "to": {"recipient_id": "u"}}] * 1001
    response = await ready.client.post(
        "/v1/notifications/batch", json={"notifications": items}, headers=ready.auth
    )
    assert_error(response, 422, "batch_too_large")
    response = await ready.client.post(
        "/v1/recipients/batch", json={"recipients": [{"id": "x"}] * 1001}, headers=ready.auth
    )
    assert_error(response, 422, "batch_too_large")


async def test_batch_items_are_judged_one_by_one(ready_both: Harness) -> None:
    ready = ready_both
    items = [
        {"template": "t", "to": {"recipient_id": "u"}, "data": {"name": "a"}},
        {"template": "t", "to": {"recipient_id": "ghost"}},
        {"template": 7},
        {"template": "nope", "to": {"recipient_id": "u"}},
    ]
    response = await ready.client.post(
        "/v1/notifications/batch", json={"notifications": items}, headers=ready.auth
    )
    assert response.status_code == 202
    results = response.json()["results"]
    assert results[0]["id"].startswith("ntf_")
    assert [r["error"]["code"] for r in results[1:]] == [
        "unknown_recipient",
        "validation_error",
        "unknown_template",
    ]
    await ready.drain()
    note = await ready.notification(results[0]["id"])
    assert note["deliveries"][0]["status"] == "sent"


async def test_missing_and_invalid_key(ready: Harness) -> None:
    body = {"template": "t", "to": {"recipient_id": "u"}}
    response = await ready.client.post("/v1/notifications", json=body)
    assert_error(response, 401, "unauthorized")
    response = await ready.client.post(
        "/v1/notifications", json=body, headers={"Authorization": "Bearer ck_nope"}
    )
    assert_error(response, 401, "unauthorized")
    response = await ready.client.post(
        "/v1/notifications", json=body, headers={"Authorization": "Basic dTpw"}
    )
    assert_error(response, 401, "unauthorized")


async def test_scope_is_checked(ready: Harness) -> None:
    key = await ready.new_tenant("reader-co", ["read"])
    response = await ready.client.post(
        "/v1/notifications",
        json={"template": "t", "to": {"recipient_id": "u"}},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert_error(response, 403, "insufficient_scope")


async def test_other_tenants_objects_are_404(ready: Harness) -> None:
    response = await ready.send(
        {"template": "t", "to": {"recipient_id": "u"}, "data": {"name": "x"}}
    )
    nid = response.json()["id"]
    other = {"Authorization": f"Bearer {await ready.new_tenant('other-co')}"}
    assert_error(
        await ready.client.get(f"/v1/notifications/{nid}", headers=other), 404, "not_found"
    )
    assert_error(await ready.client.get("/v1/recipients/u", headers=other), 404, "not_found")
    assert_error(await ready.client.get("/v1/templates/t", headers=other), 404, "not_found")
    # Nor can the other tenant send with this tenant's template or recipient.
    response = await ready.client.post(
        "/v1/notifications", json={"template": "t", "to": {"recipient_id": "u"}}, headers=other
    )
    assert_error(response, 422, "unknown_template")


async def test_idempotency_replay_and_conflict(ready_both: Harness) -> None:
    ready = ready_both
    body = {"template": "t", "to": {"recipient_id": "u"}, "data": {"name": "a"}}
    first = await ready.send({**body, "idempotency_key": "k1"})
    again = await ready.send({**body, "idempotency_key": "k1"})
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    header = await ready.send(body, headers={**ready.auth, "Idempotency-Key": "k1"})
    assert header.json()["id"] == first.json()["id"]
    changed = await ready.send({**body, "data": {"name": "b"}, "idempotency_key": "k1"})
    assert_error(changed, 409, "idempotency_conflict")
    await ready.drain()
    note = await ready.notification(first.json()["id"])
    assert len(note["deliveries"]) == 1  # one notification, sent once


async def test_idempotency_within_one_batch_and_for_batches(ready_both: Harness) -> None:
    ready = ready_both
    item = {"template": "t", "to": {"recipient_id": "u"}, "idempotency_key": "same"}
    payload = {"notifications": [item, item, {**item, "data": {"name": "z"}}]}
    headers = {**ready.auth, "Idempotency-Key": "batch-1"}
    response = await ready.client.post("/v1/notifications/batch", json=payload, headers=headers)
    results = response.json()["results"]
    assert results[0]["id"] == results[1]["id"]
    assert results[2]["error"]["code"] == "idempotency_conflict"
    repeat = await ready.client.post("/v1/notifications/batch", json=payload, headers=headers)
    assert repeat.json() == response.json()
    payload["notifications"] = payload["notifications"][:1]
    conflict = await ready.client.post("/v1/notifications/batch", json=payload, headers=headers)
    assert_error(conflict, 409, "idempotency_conflict")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"phone": "0612345678"}, "phone"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"locale": "not a locale"}, "locale"),
        ({"webhook_url": "ftp://example.com"}, "webhook_url"),
        ({"push_tokens": [{"platform": "blackberry", "token": "x"}]}, "push_tokens"),
        ({"data": "nope"}, "data"),
    ],
)
async def test_recipient_validation(ready: Harness, fields: dict[str, Any], field: str) -> None:
    response = await ready.client.put("/v1/recipients/v", json=fields, headers=ready.auth)
    body = assert_error(response, 422, "validation_error")
    assert any(d["field"].startswith(field) for d in body["error"]["details"])
    assert_error(await ready.client.get("/v1/recipients/v", headers=ready.auth), 404, "not_found")


async def test_recipient_batch_reports_each_item(ready: Harness) -> None:
    response = await ready.client.post(
        "/v1/recipients/batch",
        json={"recipients": [{"id": "ok1", "email": "a@b.co"}, {"id": "bad", "phone": "12"}, {}]},
        headers=ready.auth,
    )
    assert response.status_code == 200
    results = response.json()["results"]
    assert results[0] == {"id": "ok1", "status": "ok"}
    assert results[1]["error"]["code"] == "validation_error"
    assert results[2]["error"]["code"] == "validation_error"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"channels": {"sms": {"text": "{% if %}"}}}, "template_error"),
        ({"channels": {"sms": {"text": "ok"}}, "category": "nope"}, "unknown_category"),
        ({"channels": {"carrier_pigeon": {"text": "x"}}}, "validation_error"),
        ({"channels": {}}, "validation_error"),
        (
            {"channels": {"sms": {"text": "x"}}, "locales": {"fr": {"email": {"subject": "y"}}}},
            "validation_error",
        ),
    ],
)
async def test_template_errors(ready: Harness, body: dict[str, Any], code: str) -> None:
    response = await ready.client.put("/v1/templates/bad", json=body, headers=ready.auth)
    assert_error(response, 422, code)


async def test_template_syntax_error_names_the_line(ready: Harness) -> None:
    body = {"channels": {"email": {"subject": "s", "html": "<p>\n{{ name }\n</p>"}}}
    response = await ready.client.put("/v1/templates/bad", json=body, headers=ready.auth)
    error = assert_error(response, 422, "template_error")["error"]
    assert error["details"][0]["line"] == 2
    assert "line 2" in error["message"]


async def test_unknown_route_and_method(ready: Harness) -> None:
    assert_error(await ready.client.get("/v1/nothing", headers=ready.auth), 404, "not_found")
    response = await ready.client.patch("/v1/notifications", headers=ready.auth)
    assert_error(response, 405, "method_not_allowed")
    assert_error(
        await ready.client.get("/v1/notifications/ntf_x", headers=ready.auth), 404, "not_found"
    )


async def test_topic_send_to_a_malformed_topic_name(ready: Harness) -> None:
    for topic in ("", "no spaces", "x" * 201, 7):
        response = await ready.send({"template": "t", "to": {"topic": topic}})
        assert response.status_code == 422, topic


async def test_health_and_openapi(ready: Harness) -> None:
    assert (await ready.client.get("/healthz")).json() == {"status": "ok"}
    assert (await ready.client.get("/readyz")).json()["status"] == "ready"
    spec = (await ready.client.get("/openapi.json")).json()
    assert "/v1/notifications/batch" in spec["paths"]


def test_every_refusal_has_its_answer() -> None:
    """The store's and the pipeline's refusals each map to one HTTP error, whose code is
    the refusal's."""
    for reason in Reason:
        error = refusal_error(Refused(reason, "no", [{"k": 1}]))
        assert (error.code, error.message, error.details) == (reason.value, "no", [{"k": 1}])
    assert refusal_error(Refused(Reason.UNKNOWN_TEMPLATE, "no")).status == 422
    assert refusal_error(Refused(Reason.TOO_MANY_SCHEDULES, "no")).status == 409


async def test_one_commit_judges_each_item_by_its_own_tenant(ready_both: Harness) -> None:
    """One group commit of several tenants' items: each item's references are its own
    tenant's (PostgreSQL checks them in the insert itself, SQLite before it), each refusal
    says what was unknown, and an item repeating the idempotency key of one refused for
    what it names is judged on its own."""
    ready = ready_both
    other_key = await ready.new_tenant("other-co")
    other = {"Authorization": f"Bearer {other_key}"}
    response = await ready.client.put("/v1/recipients/w", json={}, headers=other)
    assert response.status_code == 200, response.text
    response = await ready.client.put(
        "/v1/topics/news/subscribers", json={"recipient_ids": ["w"]}, headers=other
    )
    assert response.status_code == 200, response.text
    tenant = await tenant_store.get_tenant_by_name(ready.ctx.engine, "other-co")
    assert tenant is not None
    other_id = tenant.id

    def item(tenant: str, template: str = "t", **extra: Any) -> NewNotification:
        fields: dict[str, Any] = {"recipient_ids": ["u"], "idempotency_key": None}
        fields.update(extra)
        return NewNotification(
            tenant_id=tenant,
            template=template,
            data={"name": "a"},
            priority="normal",
            channels=None,
            send_at=None,
            expires_at=None,
            request_hash=fields.pop("request_hash", "h"),
            **fields,
        )

    items = [
        item(ready.tenant_id),  # 0: stored
        item(other_id),  # 1: the other tenant has no template "t"
        item(ready.tenant_id, recipient_ids=["u", "ghost", "w", "ghost2"]),  # 2
        item(ready.tenant_id, recipient_ids=[], topic="news"),  # 3: the other's topic
        item(ready.tenant_id, template="", workflow="nope"),  # 4
        item(ready.tenant_id, template="nope", idempotency_key="k"),  # 5: refused ...
        item(ready.tenant_id, idempotency_key="k", request_hash="h2"),  # 6: ... so stored
        item(ready.tenant_id, idempotency_key="k", request_hash="h2"),  # 7: 6 replayed
    ]
    outcomes = await notification_store.accept(
        ready.ctx.engine, items, outbox_grace=5.0, pg=ready.ctx.pg
    )
    assert isinstance(outcomes[0], Accepted)
    assert outcomes[0].created
    refusals = {i: o for i, o in enumerate(outcomes) if isinstance(o, Refused)}
    assert {i: o.reason for i, o in refusals.items()} == {
        1: Reason.UNKNOWN_TEMPLATE,
        2: Reason.UNKNOWN_RECIPIENT,
        3: Reason.UNKNOWN_TOPIC,
        4: Reason.UNKNOWN_WORKFLOW,
        5: Reason.UNKNOWN_TEMPLATE,
    }
    assert refusals[2].message == "no recipient with id 'ghost' (and 2 more)"
    assert refusals[2].details == [
        {"recipient_id": "ghost"},
        {"recipient_id": "w"},
        {"recipient_id": "ghost2"},
    ]
    stored, repeat = outcomes[6], outcomes[7]
    assert isinstance(stored, Accepted)
    assert stored.created
    assert stored.id == items[6].id
    assert isinstance(repeat, Accepted)
    assert not repeat.created
    assert repeat.id == items[6].id
    # A later request with the key: replayed from the store, or refused for its other body.
    again = await notification_store.accept(
        ready.ctx.engine,
        [
            item(ready.tenant_id, idempotency_key="k", request_hash="h2"),
            item(ready.tenant_id, template="nope", idempotency_key="k", request_hash="h3"),
        ],
        outbox_grace=5.0,
        pg=ready.ctx.pg,
    )
    assert isinstance(again[0], Accepted)
    assert again[0].id == items[6].id
    assert isinstance(again[1], Refused)
    assert again[1].reason == Reason.UNKNOWN_TEMPLATE
    await ready.drain()
    assert (await ready.notification(items[0].id))["deliveries"][0]["status"] == "sent"
    assert (await ready.notification(items[6].id))["deliveries"][0]["status"] == "sent"
