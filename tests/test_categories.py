"""Categories: built-ins, tenant-defined ones, their policies, and who may name them."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from clarion.domain.models import ALL_CHANNELS
from clarion.pipeline.runtime import Roles
from clarion.store import categories
from clarion.store import tenants as tenant_store
from harness import Harness, make_settings, running

BUILT_INS = ["marketing", "security", "transactional"]


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body


async def put(app: Harness, name: str, body: dict[str, Any]) -> httpx.Response:
    return await app.client.put(f"/v1/categories/{name}", json=body, headers=app.auth)


async def test_built_ins_always_exist(lite: Harness) -> None:
    listed = (await lite.client.get("/v1/categories", headers=lite.auth)).json()
    assert [c["name"] for c in listed["data"]] == BUILT_INS
    assert listed["next_cursor"] is None
    by_name = {c["name"]: c for c in listed["data"]}
    assert by_name["security"]["critical"] is True
    assert by_name["marketing"]["critical"] is False
    assert all(c["built_in"] for c in listed["data"])
    one = (await lite.client.get("/v1/categories/security", headers=lite.auth)).json()
    assert one == by_name["security"]
    assert one["default_channels"] is None
    assert one["digest"] is None


async def test_put_get_and_replace(lite: Harness) -> None:
    body = {
        "critical": False,
        "default_channels": ["email", "push", "email"],
        "digest": {"window": "1h"},
        "max_per_hour": 10,
    }
    response = await put(lite, "newsletter", body)
    assert response.status_code == 200, response.text
    stored = response.json()
    assert stored["name"] == "newsletter"
    assert stored["default_channels"] == ["email", "push"]
    assert stored["digest"] == {"window": "1h", "key": None}
    assert stored["max_per_hour"] == 10
    assert stored["built_in"] is False
    assert stored["created_at"].endswith("Z")
    got = (await lite.client.get("/v1/categories/newsletter", headers=lite.auth)).json()
    assert got == stored
    # A PUT replaces the whole policy.
    replaced = (await put(lite, "newsletter", {"critical": True})).json()
    assert replaced["critical"] is True
    assert replaced["default_channels"] is None
    assert replaced["max_per_hour"] is None
    assert replaced["created_at"] == stored["created_at"]


async def test_caps_overflow_and_snooze_policy_round_trip(lite: Harness) -> None:
    body = {
        "digest": {"window": "15m", "key": "project.id"},
        "max_per_hour": 5,
        "max_per_day": 20,
        "overflow": "digest",
        "during_snooze": "drop",
    }
    stored = (await put(lite, "updates", body)).json()
    assert {k: stored[k] for k in body} == body
    got = (await lite.client.get("/v1/categories/updates", headers=lite.auth)).json()
    assert got == stored
    plain = (await put(lite, "updates", {})).json()
    assert (plain["overflow"], plain["during_snooze"], plain["max_per_day"]) == (
        "drop",
        "defer",
        None,
    )


async def test_a_built_in_can_take_a_policy(lite: Harness) -> None:
    response = await put(lite, "marketing", {"max_per_hour": 2, "digest": {"window": "7d"}})
    assert response.status_code == 200, response.text
    got = (await lite.client.get("/v1/categories/marketing", headers=lite.auth)).json()
    assert got["max_per_hour"] == 2
    assert got["built_in"] is True
    listed = (await lite.client.get("/v1/categories", headers=lite.auth)).json()["data"]
    assert [c["name"] for c in listed] == BUILT_INS
    assert {c["name"]: c["max_per_hour"] for c in listed}["marketing"] == 2


async def test_security_stays_critical(lite: Harness) -> None:
    for body in ({}, {"critical": False}, {"critical": False, "max_per_hour": 5}):
        response = await put(lite, "security", body)
        error = assert_error(response, 422, "validation_error")
        assert error["error"]["details"][0]["field"] == "critical"
    response = await put(lite, "security", {"critical": True, "max_per_hour": 5})
    assert response.status_code == 200, response.text
    got = (await lite.client.get("/v1/categories/security", headers=lite.auth)).json()
    assert got["critical"] is True
    assert got["max_per_hour"] == 5


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"critical": "sometimes"}, "critical"),
        ({"default_channels": ["fax"]}, "default_channels.0"),
        ({"default_channels": []}, "default_channels"),
        ({"digest": {"window": "30s"}}, "digest.window"),
        ({"digest": {"window": "8d"}}, "digest.window"),
        ({"digest": {"window": "1x"}}, "digest.window"),
        ({"digest": {"window": "0m"}}, "digest.window"),
        ({"digest": {}}, "digest.window"),
        ({"max_per_hour": 0}, "max_per_hour"),
        ({"max_per_hour": 1.5}, "max_per_hour"),
        ({"max_per_day": 0}, "max_per_day"),
        ({"max_per_day": "ten"}, "max_per_day"),
        ({"overflow": "explode"}, "overflow"),
        ({"overflow": "digest"}, ""),
        ({"during_snooze": "later"}, "during_snooze"),
        ({"digest": {"window": "1h", "key": "a..b"}}, "digest.key"),
        ({"digest": {"window": "1h", "key": ""}}, "digest.key"),
        ({"digest": {"window": "1h", "key": "x" * 201}}, "digest.key"),
        ({"surprise": 1}, "surprise"),
    ],
)
async def test_invalid_bodies_are_refused(lite: Harness, body: dict[str, Any], field: str) -> None:
    error = assert_error(await put(lite, "promo", body), 422, "validation_error")
    assert field in {d["field"] for d in error["error"]["details"]}, error
    assert_error(await lite.client.get("/v1/categories/promo", headers=lite.auth), 404, "not_found")


@pytest.mark.parametrize("window", ["1m", "60s", "90m", "24h", "7d", "168h"])
async def test_digest_windows_within_bounds(lite: Harness, window: str) -> None:
    response = await put(lite, "promo", {"digest": {"window": window}})
    assert response.status_code == 200, response.text


async def test_bad_names(lite: Harness) -> None:
    for name in ("has space", "x" * 101, "semi;colon"):
        response = await put(lite, name, {})
        assert_error(response, 422, "validation_error")
    response = await lite.client.get("/v1/categories?cursor=a%20b", headers=lite.auth)
    assert_error(response, 422, "validation_error")
    response = await lite.client.get("/v1/categories?limit=0", headers=lite.auth)
    assert_error(response, 422, "validation_error")
    response = await lite.client.get("/v1/categories?limit=501", headers=lite.auth)
    assert_error(response, 422, "validation_error")


async def test_list_is_paginated_by_cursor(lite: Harness) -> None:
    for name in ("alerts", "digest", "newsletter", "zeta"):
        assert (await put(lite, name, {})).status_code == 200
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await lite.client.get("/v1/categories", params=params, headers=lite.auth)).json()
        seen.extend(c["name"] for c in page["data"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted([*BUILT_INS, "alerts", "digest", "newsletter", "zeta"])
    assert pages == 4


async def test_unknown_and_other_tenants_categories(lite: Harness) -> None:
    assert_error(await lite.client.get("/v1/categories/nope", headers=lite.auth), 404, "not_found")
    assert (await put(lite, "private", {"max_per_hour": 3})).status_code == 200
    other = {"Authorization": f"Bearer {await lite.new_tenant('globex')}"}
    response = await lite.client.get("/v1/categories/private", headers=other)
    assert_error(response, 404, "not_found")
    listed = (await lite.client.get("/v1/categories", headers=other)).json()["data"]
    assert [c["name"] for c in listed] == BUILT_INS
    # The other tenant's marketing is untouched by this tenant's policy.
    await put(lite, "marketing", {"max_per_hour": 1})
    theirs = (await lite.client.get("/v1/categories/marketing", headers=other)).json()
    assert theirs["max_per_hour"] is None


async def test_wrong_scope_is_a_403(lite: Harness) -> None:
    reader = await tenant_store.create_key(lite.ctx.engine, lite.tenant_id, ["read"])
    sender = await tenant_store.create_key(lite.ctx.engine, lite.tenant_id, ["send"])
    as_reader = {"Authorization": f"Bearer {reader}"}
    as_sender = {"Authorization": f"Bearer {sender}"}
    response = await lite.client.put("/v1/categories/x", json={}, headers=as_reader)
    assert_error(response, 403, "insufficient_scope")
    for path in ("/v1/categories", "/v1/categories/marketing"):
        assert_error(await lite.client.get(path, headers=as_sender), 403, "insufficient_scope")
        assert (await lite.client.get(path, headers=as_reader)).status_code == 200
    assert_error(await lite.client.get("/v1/categories"), 401, "unauthorized")


async def test_templates_name_existing_categories_only(lite: Harness) -> None:
    template = {"category": "billing", "channels": {"sms": {"text": "hi"}}}
    response = await lite.client.put("/v1/templates/t", json=template, headers=lite.auth)
    assert_error(response, 422, "unknown_category")
    assert (await put(lite, "billing", {})).status_code == 200
    response = await lite.client.put("/v1/templates/t", json=template, headers=lite.auth)
    assert response.status_code == 200, response.text
    for built_in in BUILT_INS:
        body = {"category": built_in, "channels": {"sms": {"text": "hi"}}}
        response = await lite.client.put("/v1/templates/t", json=body, headers=lite.auth)
        assert response.status_code == 200, response.text


async def test_store_seams_on_every_backend(app: Harness) -> None:
    """The functions the planner calls, against both databases."""
    engine = app.ctx.engine
    other = await tenant_store.create_tenant(engine, "globex")
    await categories.put(engine, app.tenant_id, "billing", {"max_per_hour": 4})
    await categories.put(engine, app.tenant_id, "marketing", {"digest": {"window": "1h"}})
    await categories.put(engine, other.id, "security", {"critical": True, "max_per_hour": 9})

    loaded = await categories.load_for(engine, [app.tenant_id, other.id, "ten_empty"])
    async with engine.connect() as conn:
        assert await categories.known(conn, app.tenant_id, ["billing", "nope", "security"]) == {
            "billing",
            "security",
        }
    assert set(loaded) == {app.tenant_id, other.id, "ten_empty"}
    assert sorted(loaded[app.tenant_id]) == sorted([*BUILT_INS, "billing"])
    assert loaded[app.tenant_id]["billing"]["max_per_hour"] == 4
    assert loaded[app.tenant_id]["marketing"]["digest"] == {"window": "1h", "key": None}
    assert loaded[app.tenant_id]["security"]["critical"] is True
    assert loaded[other.id]["security"]["max_per_hour"] == 9
    assert loaded[other.id]["marketing"]["digest"] is None
    assert sorted(loaded["ten_empty"]) == BUILT_INS
    assert await categories.known(engine, other.id, ["billing"]) == set()
    assert await categories.get(engine, other.id, "billing") is None
    got = await categories.get(engine, app.tenant_id, "billing")
    assert got is not None
    assert got["critical"] is False
    names = [c["name"] for c in await categories.list_(engine, app.tenant_id, after="b", limit=2)]
    assert names == ["billing", "marketing"]
    # The built-in table itself is never changed by what is loaded or stored.
    assert categories.BUILT_IN_CATEGORIES["marketing"]["digest"] is None
    assert categories.BUILT_IN_CATEGORIES["security"]["critical"] is True


TEMPLATE = {"category": "updates", "channels": {"email": {"subject": "Hi", "text": "{{ n }}"}}}


async def _send_and_plan(app: Harness, sender: Harness, n: int) -> tuple[str, str | None]:
    body = {"template": "news", "to": {"recipient_id": "u1"}, "data": {"n": n}}
    response = await sender.send(body)
    assert response.status_code == 202, response.text
    await app.drain()
    [delivery] = (await app.notification(response.json()["id"]))["deliveries"]
    return delivery["status"], delivery["reason"]


async def test_a_change_applies_to_what_is_accepted_after_it(app: Harness) -> None:
    """A category written where this process's cache is not told (another process's API):
    the next send is planned under the new policy, with no wait."""
    assert (await put(app, "updates", {})).status_code == 200
    await app.put_template("news", TEMPLATE)
    await app.put_recipient("u1", email="u1@example.com")
    # Planned once: the tenant's categories are now cached by the planner.
    assert await _send_and_plan(app, app, 0) == ("sent", None)
    await categories.put(app.ctx.engine, app.tenant_id, "updates", {"max_per_day": 1})
    assert await _send_and_plan(app, app, 1) == ("sent", None)
    assert await _send_and_plan(app, app, 2) == ("suppressed", "rate_limited")
    # Made critical with the same cap: never capped any more.
    body = {"critical": True, "max_per_day": 1}
    await categories.put(app.ctx.engine, app.tenant_id, "updates", body)
    assert await _send_and_plan(app, app, 3) == ("sent", None)


async def test_a_change_through_one_api_process_reaches_the_planner_of_another(
    migrated_postgres_url: str, redis_url: str
) -> None:
    """PostgreSQL and Redis: the API in one process, the planner and workers in another."""
    workers = Roles(planner=True, channels=ALL_CHANNELS, scheduler=True)
    async with (
        running(make_settings(migrated_postgres_url, redis_url), workers) as app,
        running(make_settings(migrated_postgres_url, redis_url), Roles(api=True)) as api,
    ):
        assert (await put(api, "updates", {})).status_code == 200
        await api.put_template("news", TEMPLATE)
        await api.put_recipient("u1", email="u1@example.com")
        assert await _send_and_plan(app, api, 0) == ("sent", None)
        assert (await put(api, "updates", {"max_per_day": 1})).status_code == 200
        assert await _send_and_plan(app, api, 1) == ("sent", None)
        assert await _send_and_plan(app, api, 2) == ("suppressed", "rate_limited")
