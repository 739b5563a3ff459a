"""Workflow definitions: versions, listing, rollback, delete, and every refusal of a step."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from harness import Harness

SMS = {"channels": {"sms": {"text": "Hi {{ x }}"}, "inapp": {"title": "Hi", "body": "x"}}}


def step(id: str, type: str = "channel", **fields: Any) -> dict[str, Any]:
    if type == "channel" and "channels" not in fields:
        fields.setdefault("channel", "sms")
    if type == "channel":
        fields.setdefault("template", "t")
    return {"id": id, "type": type, **fields}


def flow(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "Flow", "steps": list(steps), **extra}


async def put(h: Harness, key: str, body: Any) -> httpx.Response:
    return await h.client.put(f"/v1/workflows/{key}", json=body, headers=h.auth)


async def get(h: Harness, path: str, **params: Any) -> httpx.Response:
    return await h.client.get(path, params=params, headers=h.auth)


def refused(response: httpx.Response, code: str = "invalid_workflow") -> list[dict[str, Any]]:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert "Traceback" not in response.text
    details: list[dict[str, Any]] = error.get("details") or []
    return details


@pytest.fixture
async def wf(app: Harness) -> Harness:
    await app.put_template("t", SMS)
    return app


# -- versions, listing, rollback, delete ---------------------------------------------------


async def test_versions_rollback_and_delete(wf: Harness) -> None:
    first = await put(wf, "w", flow(step("a")))
    assert (first.status_code, first.json()) == (201, {"key": "w", "version": 1})
    second = await put(wf, "w", flow(step("a"), step("b", "delay", duration="15m"), name="Two"))
    assert (second.status_code, second.json()) == (200, {"key": "w", "version": 2})

    active = (await get(wf, "/v1/workflows/w")).json()
    assert active["version"] == 2
    assert active["name"] == "Two"
    assert [s["id"] for s in active["steps"]] == ["a", "b"]
    assert (await get(wf, "/v1/workflows/w", version=1)).json()["name"] == "Flow"
    assert (await get(wf, "/v1/workflows/w", version=9)).status_code == 404
    assert (await get(wf, "/v1/workflows/nope")).status_code == 404

    back = await wf.client.post("/v1/workflows/w/rollback", json={"version": 1}, headers=wf.auth)
    assert back.status_code == 200, back.text
    assert back.json()["version"] == 1
    assert (await get(wf, "/v1/workflows/w")).json()["version"] == 1
    # The versions, newest first, the active one marked; paged by version.
    listed = (await get(wf, "/v1/workflows/w/versions", limit=1)).json()
    [newest] = listed["data"]
    assert (newest["version"], newest["active"], newest["name"], newest["steps"]) == (
        2, False, "Two", 2,
    )  # fmt: skip
    rest = (await get(wf, "/v1/workflows/w/versions", cursor=listed["next_cursor"])).json()
    assert [(v["version"], v["active"]) for v in rest["data"]] == [(1, True)]
    assert rest["next_cursor"] is None
    assert (await get(wf, "/v1/workflows/nope/versions")).status_code == 404
    for bad in ({"cursor": "x"}, {"cursor": "9223372036854775808"}, {"limit": 0}):
        refused(await get(wf, "/v1/workflows/w/versions", **bad), "validation_error")
    missing = await wf.client.post("/v1/workflows/w/rollback", json={"version": 7}, headers=wf.auth)
    assert missing.status_code == 404
    nobody = await wf.client.post("/v1/workflows/x/rollback", json={"version": 1}, headers=wf.auth)
    assert nobody.status_code == 404

    assert (await wf.client.delete("/v1/workflows/w", headers=wf.auth)).status_code == 204
    assert (await get(wf, "/v1/workflows/w")).status_code == 404
    assert (await wf.client.delete("/v1/workflows/w", headers=wf.auth)).status_code == 404
    again = await put(wf, "w", flow(step("a")))
    assert (again.status_code, again.json()["version"]) == (201, 1)


async def test_list_pages_by_key_within_the_tenant(wf: Harness) -> None:
    keys = ["delta", "alpha", "echo", "charlie", "bravo"]
    for key in keys:
        assert (await put(wf, key, flow(step("a")))).status_code == 201
    other = {"Authorization": f"Bearer {await wf.new_tenant('other-co')}"}
    await wf.client.put("/v1/templates/t", json=SMS, headers=other)
    await wf.client.put("/v1/workflows/zulu", json=flow(step("a")), headers=other)

    pages = [(await get(wf, "/v1/workflows", limit=2)).json()]
    while pages[-1]["next_cursor"]:
        cursor = pages[-1]["next_cursor"]
        pages.append((await get(wf, "/v1/workflows", limit=2, cursor=cursor)).json())
    assert [len(p["data"]) for p in pages] == [2, 2, 1]
    seen = [row for p in pages for row in p["data"]]
    assert [w["key"] for w in seen] == sorted(keys)
    assert set(seen[0]) == {
        "key",
        "name",
        "category",
        "active_version",
        "latest_version",
        "updated_at",
    }
    assert (await get(wf, "/v1/workflows/zulu")).status_code == 404


async def test_scopes(wf: Harness) -> None:
    reader = {"Authorization": f"Bearer {await wf.new_tenant('r-co', ['read'])}"}
    response = await wf.client.put("/v1/workflows/w", json=flow(step("a")), headers=reader)
    assert response.status_code == 403
    assert (await wf.client.get("/v1/workflows", headers=reader)).status_code == 200
    assert (await wf.client.get("/v1/workflows")).status_code == 401


async def test_the_published_example_is_accepted(wf: Harness) -> None:
    steps = [
        step("feed", channel="inapp"),
        step("wait", "delay", duration="15m"),
        step("mail", **{"if": "not steps.feed.read"}),
        step("alert", channels=["push", "sms"], mode="first_success", **{"if": "data.urgent"}),
        step("night", "delay", until="21:30"),
        step("later", "delay", until="data.when"),
        step("pile", "digest", window="1h", key="data.thread"),
        step("cap", "throttle", limit=3, window="1d"),
        step("stop", "exit", **{"if": "steps.mail.status == 'sent'"}),
    ]
    body = flow(*steps, category="transactional")
    response = await put(wf, "comment", body)
    assert response.status_code == 201, response.text
    stored = (await get(wf, "/v1/workflows/comment")).json()
    assert stored["steps"][2]["if"] == "not steps.feed.read"
    assert stored["category"] == "transactional"


# -- refusals ---------------------------------------------------------------------------------

BAD = {
    "bad id": ([step("Bad-Id")], 0, "id"),
    "long id": ([step("a" * 41)], 0, "id"),
    "duplicate id": ([step("a"), step("a")], 1, "id"),
    "unknown type": ([step("a", "sleep")], 0, "type"),
    "unknown template": ([step("a", template="nope")], 0, "template"),
    "both channel and channels": (
        [step("a", channel="sms", channels=["sms"], mode="all")],
        0,
        "channel",
    ),
    "neither channel": ([{"id": "a", "type": "channel", "template": "t"}], 0, "channel"),
    "unknown channel": ([step("a", channel="fax")], 0, "channel"),
    "repeated channels": (
        [
            {
                "id": "a",
                "type": "channel",
                "channels": ["sms", "sms"],
                "mode": "all",
                "template": "t",
            }
        ],
        0,
        "channels",
    ),
    "too many channels": (
        [
            {
                "id": "a",
                "type": "channel",
                "mode": "all",
                "template": "t",
                "channels": ["sms", "email", "push", "webpush", "inapp", "webhook"],
            }
        ],
        0,
        "channels",
    ),
    "bad mode": (
        [{"id": "a", "type": "channel", "channels": ["sms"], "mode": "any", "template": "t"}],
        0,
        "mode",
    ),
    "delay without duration": ([step("a"), step("b", "delay")], 1, "duration"),
    "delay with both": ([step("b", "delay", duration="1m", until="10:00")], 0, "duration"),
    "delay too long": ([step("b", "delay", duration="31d")], 0, "duration"),
    "delay not a duration": ([step("b", "delay", duration="soon")], 0, "duration"),
    "until not an expression": ([step("b", "delay", until="data.(")], 0, "until"),
    "digest without window": ([step("d", "digest")], 0, "window"),
    "throttle limit": ([step("t", "throttle", limit=0, window="1h")], 0, "limit"),
    "throttle too high": ([step("t", "throttle", limit=10001, window="1h")], 0, "limit"),
    "field of another type": ([step("d", "delay", duration="1m", limit=3)], 0, "limit"),
    "exit without if": ([step("a"), step("x", "exit")], 1, "if"),
    "later step": ([step("a", **{"if": "steps.b.status"}), step("b")], 0, "if"),
    "unknown step": ([step("a"), step("b", **{"if": "steps.zzz.status"})], 1, "if"),
    "itself": ([step("a", **{"if": "steps.a.status"})], 0, "if"),
    "read of a non-inapp step": ([step("a"), step("b", **{"if": "steps.a.read"})], 1, "if"),
    "unknown step field": (
        [step("a", channel="inapp"), step("b", **{"if": "steps.a.secret"})],
        1,
        "if",
    ),
    "steps by item": ([step("a"), step("b", **{"if": "steps['a'].status"})], 1, "if"),
    "does not compile": ([step("a", **{"if": "data.x =="})], 0, "if"),
    "a statement": ([step("a", **{"if": "{% for x in data %}"})], 0, "if"),
    "forbidden name": ([step("a", **{"if": "config.secret"})], 0, "if"),
    "forbidden global": ([step("a", **{"if": "range(10)"})], 0, "if"),
    "dunder attribute": ([step("a", **{"if": "data.__class__"})], 0, "if"),
    "private attribute": ([step("a", **{"if": "data._hidden"})], 0, "if"),
    "digest key name": ([step("d", "digest", window="1h", key="os.environ")], 0, "key"),
}


async def test_a_bad_step_is_a_422_naming_it(wf: Harness) -> None:
    # One app for every case: each is refused on its own, and nothing is stored.
    for case, (steps, index, field) in sorted(BAD.items()):
        details = refused(await put(wf, "w", flow(*steps)))
        assert any(
            d["step"] == index and d["id"] == steps[index]["id"] and d["field"].endswith(field)
            for d in details
        ), (case, details)
    assert (await get(wf, "/v1/workflows/w")).status_code == 404


async def test_refusals_of_the_body(wf: Harness) -> None:
    refused(await put(wf, "w", flow()), "validation_error")
    refused(await put(wf, "w", flow(*[step(f"s{i}") for i in range(51)])), "validation_error")
    refused(await put(wf, "w", {"steps": [step("a")]}), "validation_error")
    refused(await put(wf, "w", flow(step("a", colour="red"))), "validation_error")
    refused(await put(wf, "w", flow(step("a"), category="nope")), "unknown_category")
    refused(await put(wf, "w", flow(step("a", **{"if": "x" * 3000}))), "validation_error")
    big = flow(step("a", **{"if": "data.x" + " or data.x" * 200_000}))
    response = await put(wf, "w", big)
    assert response.status_code in (413, 422), response.text
    assert (await get(wf, "/v1/workflows/w")).status_code == 404


async def test_fifty_steps_are_accepted(wf: Harness) -> None:
    response = await put(wf, "w", flow(*[step(f"s{i}") for i in range(50)]))
    assert response.status_code == 201, response.text
