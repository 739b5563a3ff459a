"""Recurring schedules through the API: create, read, list, replace, delete, run history,
and what is refused at the edge (on both backends)."""

from __future__ import annotations

from typing import Any

import httpx

from harness import Harness, make_settings, running

EMAIL = {"channels": {"email": {"subject": "Daily", "text": "Hello {{ recipient.id }}"}}}


def _body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "cron": "0 9 * * MON-FRI",
        "timezone": "Europe/Paris",
        "notification": {"template": "daily", "to": {"recipient_ids": ["u1", "u2"]}},
        "enabled": True,
    }
    return {**body, **overrides}


async def _setup(app: Harness) -> None:
    await app.put_template("daily", EMAIL)
    await app.put_recipient("u1", email="u1@example.com", timezone="Europe/Paris")
    await app.put_recipient("u2", email="u2@example.com")


async def _put(app: Harness, name: str, body: Any, auth: dict[str, str] | None = None) -> Any:
    return await app.client.put(f"/v1/schedules/{name}", json=body, headers=auth or app.auth)


def _refused(response: httpx.Response, status: int = 422) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"]
    assert error["message"]
    return error


async def test_schedule_crud_and_history(app: Harness) -> None:
    await _setup(app)
    created = await _put(app, "morning", _body())
    assert created.status_code == 200, created.text
    schedule = created.json()
    assert schedule["name"] == "morning"
    assert schedule["cron"] == "0 9 * * MON-FRI"
    assert schedule["notification"]["to"] == {"recipient_ids": ["u1", "u2"]}
    assert schedule["enabled"] is True
    # The next weekday 09:00 in Paris: 07:00 or 08:00 UTC, on a weekday.
    assert schedule["next_run_at"] is not None
    got = await app.client.get("/v1/schedules/morning", headers=app.auth)
    assert got.json() == schedule

    for name in ("b-evening", "a-night"):
        assert (await _put(app, name, _body(cron="0 21 * * *"))).status_code == 200
    names: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await app.client.get("/v1/schedules", params=params, headers=app.auth)).json()
        names += [item["name"] for item in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert names == ["a-night", "b-evening", "morning"]

    disabled = await _put(app, "morning", _body(enabled=False, timezone="recipient"))
    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["next_run_at"] is None
    assert disabled.json()["created_at"] == schedule["created_at"]

    runs = await app.client.get("/v1/schedules/morning/runs", headers=app.auth)
    assert runs.status_code == 200, runs.text
    assert runs.json() == {"data": [], "next_cursor": None}

    gone = await app.client.delete("/v1/schedules/morning", headers=app.auth)
    assert gone.status_code == 204
    for path in ("/v1/schedules/morning", "/v1/schedules/morning/runs"):
        _refused(await app.client.get(path, headers=app.auth), 404)
    _refused(await app.client.delete("/v1/schedules/morning", headers=app.auth), 404)


async def test_bad_schedules_are_refused_at_the_edge(app: Harness) -> None:
    await _setup(app)
    bad_bodies: list[tuple[dict[str, Any], str]] = [
        (_body(cron="61 9 * * *"), "validation_error"),
        (_body(cron="0 9 * *"), "validation_error"),
        (_body(cron="0 0 9 * * MON"), "validation_error"),  # a seconds field
        (_body(cron="0 0 31 2 *"), "validation_error"),  # never due
        (_body(cron="every day"), "validation_error"),
        (_body(cron="0 9 * * " + "1," * 60 + "2"), "validation_error"),
        (_body(timezone="Mars/Olympus"), "validation_error"),
        (_body(timezone=""), "validation_error"),
        (_body(notification={"template": "daily"}), "validation_error"),
        (_body(notification={"template": "daily", "to": {}}), "validation_error"),
        (
            _body(notification={"template": "daily", "to": {"recipient_id": "u1"}, "x": 1}),
            "validation_error",
        ),
        (
            _body(
                notification={
                    "template": "daily",
                    "to": {"recipient_id": "u1"},
                    "send_at": "2030-01-01T00:00:00Z",
                }
            ),
            "validation_error",
        ),
        (
            _body(
                notification={
                    "template": "daily",
                    "to": {"recipient_id": "u1"},
                    "idempotency_key": "k",
                }
            ),
            "validation_error",
        ),
        (
            _body(starts_at="2030-01-02T00:00:00Z", ends_at="2030-01-01T00:00:00Z"),
            "validation_error",
        ),
        (_body(extra=True), "validation_error"),
        (
            _body(notification={"template": "nope", "to": {"recipient_id": "u1"}}),
            "unknown_template",
        ),
        (
            _body(notification={"template": "daily", "to": {"recipient_ids": ["u1", "ghost"]}}),
            "unknown_recipient",
        ),
    ]
    for body, code in bad_bodies:
        error = _refused(await _put(app, "bad", body))
        assert error["code"] == code, (body, error)
    _refused(await _put(app, "x" * 201, _body()))
    _refused(await _put(app, "bad name", _body()))
    _refused(await app.client.put("/v1/schedules/bad", content=b"[1", headers=app.auth))
    for params in ({"limit": 0}, {"limit": 501}, {"cursor": ""}):
        _refused(await app.client.get("/v1/schedules", params=params, headers=app.auth))
    missing = await app.client.get("/v1/schedules/bad", headers=app.auth)
    _refused(missing, 404)


async def test_another_tenants_schedule_is_not_found(app: Harness) -> None:
    await _setup(app)
    assert (await _put(app, "mine", _body())).status_code == 200
    other = {"Authorization": f"Bearer {await app.new_tenant('other')}"}
    for method, path in (
        ("GET", "/v1/schedules/mine"),
        ("GET", "/v1/schedules/mine/runs"),
        ("DELETE", "/v1/schedules/mine"),
    ):
        _refused(await app.client.request(method, path, headers=other), 404)
    listed = await app.client.get("/v1/schedules", headers=other)
    assert listed.json() == {"data": [], "next_cursor": None}
    # Its template and recipients are not the other tenant's either.
    error = _refused(await _put(app, "mine", _body(), auth=other))
    assert error["code"] == "unknown_template"
    assert (await app.client.get("/v1/schedules/mine", headers=app.auth)).status_code == 200


async def test_scopes(app: Harness) -> None:
    await _setup(app)
    reader = {"Authorization": f"Bearer {await app.new_tenant('readers', ['read'])}"}
    error = _refused(await _put(app, "s", _body(), auth=reader), 403)
    assert error["code"] == "insufficient_scope"
    assert (await app.client.get("/v1/schedules", headers=reader)).status_code == 200
    _refused(await app.client.delete("/v1/schedules/s", headers=reader), 403)
    _refused(await app.client.get("/v1/schedules"), 401)


async def test_erasure_removes_the_recipient_from_schedules(app: Harness) -> None:
    await _setup(app)
    assert (await _put(app, "both", _body())).status_code == 200
    alone = _body(
        notification={"template": "daily", "to": {"recipient_id": "u2"}, "data": {"x": 1}}
    )
    assert (await _put(app, "alone", alone)).status_code == 200
    erased = await app.client.delete("/v1/recipients/u2", headers=app.auth)
    assert erased.status_code in (200, 204), erased.text
    both = (await app.client.get("/v1/schedules/both", headers=app.auth)).json()
    assert both["notification"]["to"] == {"recipient_ids": ["u1"]}
    _refused(await app.client.get("/v1/schedules/alone", headers=app.auth), 404)


async def test_a_tenant_holds_at_most_the_configured_number_of_schedules(
    backend: tuple[str, str],
) -> None:
    async with running(make_settings(*backend, max_schedules=2)) as app:
        await _setup(app)
        for name in ("a", "b"):
            assert (await _put(app, name, _body())).status_code == 200
        error = _refused(await _put(app, "c", _body()), 409)
        assert error["code"] == "too_many_schedules"
        assert error["details"] == [{"limit": 2}]
        # Replacing one is not creating one; deleting one frees its place.
        assert (await _put(app, "a", _body(enabled=False))).status_code == 200
        assert (await app.client.delete("/v1/schedules/b", headers=app.auth)).status_code == 204
        assert (await _put(app, "c", _body())).status_code == 200
        names = (await app.client.get("/v1/schedules", headers=app.auth)).json()["data"]
        assert [s["name"] for s in names] == ["a", "c"]
        # Each tenant has its own count.
        other = {"Authorization": f"Bearer {await app.new_tenant('other')}"}
        await app.client.put("/v1/templates/daily", json=EMAIL, headers=other)
        await app.client.put("/v1/recipients/u1", json={"email": "x@example.com"}, headers=other)
        body = _body(notification={"template": "daily", "to": {"recipient_id": "u1"}})
        assert (await _put(app, "a", body, other)).status_code == 200
