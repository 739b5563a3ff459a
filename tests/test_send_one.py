"""``POST /v1/notifications`` in front of FastAPI (api/send_one.py): it answers the ordinary
requests itself, hands every other one to the route, and no client can tell the two apart —
the same status, error code and headers as the route alone, for good and hostile requests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

import clarion.api.send_one as send_one
from clarion.api.app import create_app
from clarion.api.send_one import SendOne
from clarion.store import tenants as tenant_store
from harness import Harness

GOOD = {"template": "t", "to": {"recipient_id": "u"}, "data": {"name": "Ada"}}
JSON = {"content-type": "application/json"}


@pytest.fixture
async def routes_only(lite: Harness) -> AsyncIterator[httpx.AsyncClient]:
    """The same process's API without the front handler: the route answers everything."""
    app = create_app(lite.ctx, lite.runtime.intake)
    app.user_middleware = [m for m in app.user_middleware if m.cls is not SendOne]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://clarion") as client:
        yield client


@pytest.fixture
async def ready(lite: Harness) -> Harness:
    await lite.put_recipient("u", phone="+14155550100")
    await lite.put_template("t", {"channels": {"sms": {"text": "hi {{ name }}"}}})
    return lite


def _summary(response: httpx.Response) -> tuple[int, Any, set[str]]:
    body = response.json()
    shown = body["error"]["code"] if "error" in body else body.get("status")
    names = {n for n in response.headers if n.startswith("ratelimit") or n == "retry-after"}
    return response.status_code, shown, names


async def _both(
    ready: Harness, routes: httpx.AsyncClient, **request: Any
) -> tuple[httpx.Response, httpx.Response]:
    front = await ready.client.post("/v1/notifications", **request)
    route = await routes.post("/v1/notifications", **request)
    return front, route


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        pytest.param(GOOD, {}, id="ordinary"),
        pytest.param({**GOOD, "idempotency_key": "k-body"}, {}, id="key in the body"),
        pytest.param(GOOD, {"idempotency-key": "k-header"}, id="key in a header"),
        pytest.param(GOOD, {"idempotency-key": "k" * 256}, id="header key too long"),
        pytest.param({**GOOD, "template": "nope"}, {}, id="unknown template"),
        pytest.param({**GOOD, "to": {"recipient_id": "ghost"}}, {}, id="unknown recipient"),
        pytest.param({**GOOD, "to": {"topic": "never-made"}}, {}, id="unknown topic"),
        pytest.param({**GOOD, "priority": "urgent"}, {}, id="invalid field"),
        pytest.param({**GOOD, "extra": 1}, {}, id="unknown field"),
        pytest.param([GOOD], {}, id="a list"),
        pytest.param("text", {}, id="a string"),
        pytest.param(GOOD, {"authorization": "Bearer ck_wrong"}, id="unknown key"),
        pytest.param(GOOD, {"authorization": "Basic abc"}, id="not bearer"),
        pytest.param(GOOD, {"authorization": "Bearer eyJhbGciOi.eyJzdWIi.sig"}, id="a token"),
    ],
)
async def test_the_same_answers_as_the_route(
    ready: Harness, routes_only: httpx.AsyncClient, content: Any, headers: dict[str, str]
) -> None:
    front, route = await _both(ready, routes_only, json=content, headers={**ready.auth, **headers})
    assert _summary(front) == _summary(route)
    assert front.headers["content-type"] == route.headers["content-type"]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"template": "t", "to": ', "application/json"),
        (b"", "application/json"),
        (b'{"template": "t", "to": {"recipient_id": "u"}}', "text/plain"),
        (b'{"template": "t", "to": {"recipient_id": "u"}}', None),
        (b'{"template": "t", "to": {"recipient_id": "u"}, "data": {"n": NaN}}', "application/json"),
        (
            b'{"template": "t", "to": {"recipient_id": "u"}, "data": {"n": 1' + b"0" * 19 + b"}}",
            None,
        ),
    ],
)
async def test_odd_bodies_get_the_routes_answer(
    ready: Harness, routes_only: httpx.AsyncClient, body: bytes, content_type: str | None
) -> None:
    headers = {**ready.auth, **({"content-type": content_type} if content_type else {})}
    front, route = await _both(ready, routes_only, content=body, headers=headers)
    assert _summary(front) == _summary(route)


async def test_scope_and_quota_refusals_match(
    ready: Harness, routes_only: httpx.AsyncClient
) -> None:
    reader = await tenant_store.create_key(ready.ctx.engine, ready.tenant_id, ["read"])
    front, route = await _both(
        ready, routes_only, json=GOOD, headers={"authorization": f"Bearer {reader}"}
    )
    assert _summary(front) == _summary(route) == (403, "insufficient_scope", set())
    await tenant_store.update_settings(
        ready.ctx.engine, ready.tenant_id, {"intake_rate_per_second": 0.001, "intake_burst": 1}
    )
    answers = [
        _summary(await client.post("/v1/notifications", json=GOOD, headers=ready.auth))
        for client in (ready.client, routes_only, ready.client, routes_only)
    ]
    # Each app caches the tenant's quota on its own; both charge the one bucket.
    refused = [a for a in answers if a[0] == 429]
    assert refused, answers
    for _, code, headers in refused:
        assert code == "rate_limited"
        assert {"retry-after", "ratelimit-limit"} <= headers


async def test_ordinary_requests_skip_the_route(
    ready: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    answer = send_one.accept_one

    async def counted(*args: Any) -> Any:
        calls.append(args[1])
        return await answer(*args)

    monkeypatch.setattr(send_one, "accept_one", counted)
    ok = await ready.client.post("/v1/notifications", json=GOOD, headers=ready.auth)
    assert ok.status_code == 202, ok.text
    assert calls == [ready.tenant_id]
    refused = await ready.client.post("/v1/notifications", json={"template": 1}, headers=ready.auth)
    assert refused.status_code == 422
    assert calls == [ready.tenant_id]  # handed to the route, which answered


async def test_a_replayed_key_gets_the_first_answer(ready: Harness) -> None:
    headers = {**ready.auth, "idempotency-key": "same"}
    first = await ready.client.post("/v1/notifications", json=GOOD, headers=headers)
    again = await ready.client.post("/v1/notifications", json=GOOD, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    other = await ready.client.post(
        "/v1/notifications", json={**GOOD, "data": {"name": "Bob"}}, headers=headers
    )
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_conflict"


async def test_a_batch_is_parsed_once_at_the_edge(
    ready: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    class NoSecondParse:
        @staticmethod
        def loads(_: bytes) -> Any:
            raise AssertionError("the body was parsed again after the edge")

    monkeypatch.setattr("starlette.requests.json", NoSecondParse)
    response = await ready.client.post(
        "/v1/notifications/batch", json={"notifications": [GOOD, GOOD]}, headers=ready.auth
    )
    assert response.status_code == 202, response.text
    assert [r["status"] for r in response.json()["results"]] == ["accepted", "accepted"]
