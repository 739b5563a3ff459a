"""What the admin console needs from the server, without a browser: its files and the
offline API docs (served locally, with a strict Content-Security-Policy), the draft
preview ``POST /v1/templates/preview`` and the dashboard's ``GET /v1/stats`` (bounded,
index-served, per tenant) on both backends."""

from __future__ import annotations

import re
import socket
from importlib.resources import files
from typing import Any

import pytest

from clarion.store import stats
from clarion.store.db import utcnow
from harness import Harness
from plan_kit import SORT_NODE, assert_reads_dead_events, plan_of
from webhook_sink import Received, WebhookSink

EMAIL = {
    "channels": {
        "email": {"subject": "Hi {{ name }}", "html": "<p>{{ name }}</p>", "text": "{{ name }}"}
    }
}


# -- the console's files and /docs ---------------------------------------------------------


async def test_the_console_page_is_served_with_a_strict_policy(lite: Harness) -> None:
    response = await lite.client.get("/admin")
    assert response.status_code == 308
    assert response.headers["location"] == "/admin/"
    page = await lite.client.get("/admin/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "default-src 'none'" in csp
    assert "unsafe-eval" not in csp
    assert "script-src 'self' 'unsafe-inline'" not in csp
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-frame-options"] == "DENY"
    assert "/admin/app.js" in page.text
    assert not re.search(r"https?://", page.text)


async def test_every_module_the_console_imports_is_served(lite: Harness) -> None:
    folder = files("clarion.web").joinpath("admin")
    sources = {
        entry.name: entry.read_text() for entry in folder.iterdir() if entry.name.endswith(".js")
    }
    wanted = {"app.css", "app.js"}
    for source in sources.values():
        wanted.update(re.findall(r'from "/admin/([a-z-]+\.js)"', source))
        # Nothing is fetched from another origin (example.com appears in placeholders).
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg|[a-z.]*example\.com)", source)
        # Data goes into the page as text: nothing parses markup or runs a string as code.
        for parser in (
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "DOMParser",
            "createContextualFragment",
            "new Function",
            "eval(",
        ):
            assert parser not in source, parser
        assert "localStorage" not in source
        assert "document.cookie" not in source
    assert wanted <= set(sources) | {"app.css"}
    for name in sorted(wanted):
        response = await lite.client.get(f"/admin/{name}")
        assert response.status_code == 200, name
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        assert response.headers["content-type"].startswith(kind), name


@pytest.mark.parametrize(
    "path",
    ["/admin/nope.js", "/admin/index.html", "/admin/..%2F__init__.py", "/admin/APP.JS"],
)
async def test_unknown_console_files_are_404(lite: Harness, path: str) -> None:
    response = await lite.client.get(path)
    assert response.status_code == 404, path
    assert response.json()["error"]["code"] == "not_found"


async def test_the_api_docs_are_served_from_this_process(lite: Harness) -> None:
    page = await lite.client.get("/docs")
    assert page.status_code == 200
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources
    assert all(s.startswith("/docs/assets/") for s in sources)
    for source in sources:
        asset = await lite.client.get(source)
        assert asset.status_code == 200, source
    init = await lite.client.get("/docs/assets/docs.js")
    assert "validatorUrl: null" in init.text
    assert (await lite.client.get("/docs/assets/index.html")).status_code == 404
    assert (await lite.client.get("/redoc")).status_code == 404


# -- POST /v1/templates/preview ----------------------------------------------------------


async def _draft(app: Harness, body: dict[str, Any], key: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else app.auth
    return await app.client.post("/v1/templates/preview", json=body, headers=headers)


async def test_a_draft_renders_without_being_stored(lite: Harness) -> None:
    template = {
        **EMAIL,
        "channels": {**EMAIL["channels"], "sms": {"text": "{{ name }} <b>"}},
        "locales": {"fr": {"email": {"subject": "Salut {{ name }}"}}},
    }
    response = await _draft(lite, {"template": template, "data": {"name": "<Al>"}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["locale"] is None
    assert body["channels"]["email"]["subject"] == "Hi <Al>"
    assert body["channels"]["email"]["html"] == "<p>&lt;Al&gt;</p>"
    assert body["channels"]["sms"]["text"] == "<Al> <b>"
    french = await _draft(
        lite, {"template": template, "data": {"name": "Al"}, "locale": "fr-CA", "channel": "email"}
    )
    assert french.status_code == 200, french.text
    assert french.json() == {
        "locale": "fr",
        "channels": {"email": {"subject": "Salut Al", "html": "<p>Al</p>", "text": "Al"}},
    }
    listed = await lite.client.get("/v1/templates", headers=lite.auth)
    assert listed.json()["data"] == []


async def test_a_draft_uses_the_recipients_data(lite: Harness) -> None:
    await lite.put_recipient("u-1", email="u@example.com", locale="fr", data={"name": "Zoé"})
    response = await _draft(lite, {"template": EMAIL, "recipient_id": "u-1"})
    assert response.status_code == 200, response.text
    assert response.json()["channels"]["email"]["subject"] == "Hi Zoé"
    other = await lite.new_tenant("other")
    response = await _draft(lite, {"template": EMAIL, "recipient_id": "u-1"}, key=other)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"template": EMAIL}, "missing_variable"),
        (
            {"template": {"channels": {"sms": {"text": "{{ x.__class__.__mro__ }}"}}}},
            "template_error",
        ),
        ({"template": {"channels": {"sms": {"text": "{% if %}"}}}}, "template_error"),
        ({"template": {**EMAIL, "category": "nope"}}, "unknown_category"),
        ({"template": EMAIL, "data": {"name": "a"}, "channel": "sms"}, "unknown_channel"),
        ({"template": EMAIL, "data": {"name": "a"}, "version": 1}, "validation_error"),
        ({"template": {"channels": {}}}, "validation_error"),
        ({"template": {"channels": {"pigeon": {}}}}, "validation_error"),
        ({"data": {}}, "validation_error"),
        ({"template": EMAIL, "extra": 1}, "validation_error"),
        (
            {"template": {**EMAIL, "locales": {"fr": {"sms": {"text": "x"}}}}, "data": {"name": 1}},
            "validation_error",
        ),
    ],
)
async def test_bad_drafts_are_422(lite: Harness, body: dict[str, Any], code: str) -> None:
    response = await _draft(lite, body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code


async def test_a_draft_preview_needs_the_read_scope(lite: Harness) -> None:
    sender = await lite.new_tenant("senders", ["send"])
    body = {"template": EMAIL, "data": {"name": "a"}}
    assert (await _draft(lite, body, key=sender)).status_code == 403
    response = await lite.client.post("/v1/templates/preview", json=body)
    assert response.status_code == 401


# -- GET /v1/stats -----------------------------------------------------------------------


async def _stats(app: Harness, key: str | None = None, **params: Any) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else app.auth
    return await app.client.get("/v1/stats", params=params, headers=headers)


def _sum(body: dict[str, Any], channel: str, kind: str) -> int:
    return sum(m[kind] for m in body["per_minute"] if m["channel"] == channel)


async def test_stats_count_the_last_hour_per_channel(app: Harness, sink: WebhookSink) -> None:
    def respond(request: Received) -> int:
        return 500 if request.path.endswith("/bad") else 200

    sink.respond = respond
    await app.put_template("mail", EMAIL)
    await app.put_template("hook", {"channels": {"webhook": {"body": {"n": "{{ name }}"}}}})
    await app.put_recipient("u-1", email="u1@example.com")
    await app.put_recipient("good", webhook_url=f"{sink.url}/good")
    await app.put_recipient("bad", webhook_url=f"{sink.url}/bad")
    for rid in ("u-1", "u-1", "u-1"):
        sent = await app.send(
            {"template": "mail", "to": {"recipient_id": rid}, "data": {"name": "a"}}
        )
        assert sent.status_code == 202, sent.text
    hooked = await app.send(
        {"template": "hook", "to": {"recipient_ids": ["good", "bad"]}, "data": {"name": "a"}}
    )
    assert hooked.status_code == 202, hooked.text
    await app.drain()

    response = await _stats(app)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (_sum(body, "email", "accepted"), _sum(body, "email", "sent")) == (3, 3)
    assert _sum(body, "email", "failed") == 0
    assert [_sum(body, "webhook", k) for k in ("accepted", "sent", "failed")] == [2, 1, 1]
    assert body["latency_ms"]["email"]["samples"] == 3
    assert 0 <= body["latency_ms"]["email"]["p50"] <= body["latency_ms"]["email"]["p99"]
    assert body["dead_letters"] == 1
    assert body["dead_letters_capped"] is False
    assert body["truncated"] is False
    assert body["since"] < body["until"]
    assert {b["provider"] for b in body["breakers"]} >= {"sandbox"}
    minutes = [m["minute"] for m in body["per_minute"]]
    assert all(m.endswith(":00Z") for m in minutes)

    other = await app.new_tenant("other")
    theirs = (await _stats(app, key=other)).json()
    assert theirs["per_minute"] == []
    assert theirs["dead_letters"] == 0
    assert theirs["latency_ms"] == {}
    assert theirs["breakers"] == []


@pytest.mark.parametrize("minutes", ["0", "61", "-1", "x", "1e3"])
async def test_stats_windows_are_bounded(lite: Harness, minutes: str) -> None:
    response = await _stats(lite, minutes=minutes)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"


async def test_stats_need_a_key_with_read(lite: Harness) -> None:
    assert (await lite.client.get("/v1/stats")).status_code == 401
    sender = await lite.new_tenant("senders", ["send"])
    assert (await _stats(lite, key=sender)).status_code == 403
    assert (await _stats(lite, minutes=1)).status_code == 200


def test_percentiles_are_nearest_rank() -> None:
    window = stats.Window(since=utcnow(), until=utcnow())
    window.latencies["email"] = [float(n) for n in range(100, 0, -1)]
    assert stats.latency(window) == {"email": {"p50": 50.0, "p99": 99.0, "samples": 100}}
    window.latencies["sms"] = [7.0]
    assert stats.latency(window)["sms"] == {"p50": 7.0, "p99": 7.0, "samples": 1}


async def test_stats_read_index_ranges(app: Harness) -> None:
    plan = await plan_of(app, stats.window_query("ten_x", utcnow()))
    # On PostgreSQL each day partition is read by its copy of the index (named after its
    # columns) and the partitions' rows merged in order.
    assert re.search(r"ix_deliveries_tenant_created|_tenant_id_created_at_id_idx", plan), plan
    assert "Seq Scan" not in plan, plan
    assert "TEMP B-TREE" not in plan, plan
    assert not SORT_NODE.search(plan), plan
    # No index of deliveries holds the status: dead letters are found by their `dead`
    # events, and the count stops at the cap.
    plan = await plan_of(app, stats.dead_query("ten_x"))
    assert_reads_dead_events(plan)
    assert "TEMP B-TREE" not in plan, plan
    assert not SORT_NODE.search(plan), plan


# -- POST /v1/providers/{name}/test ------------------------------------------------------


async def _put_provider(app: Harness, name: str, body: dict[str, Any]) -> None:
    response = await app.client.put(f"/v1/providers/{name}", json=body, headers=app.auth)
    assert response.status_code == 200, response.text


async def _test(app: Harness, name: str, body: Any, key: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else app.auth
    return await app.client.post(f"/v1/providers/{name}/test", json=body, headers=headers)


async def test_a_provider_test_sends_one_message(lite: Harness) -> None:
    await _put_provider(lite, "capture", {"channel": "email", "kind": "sandbox", "config": {}})
    await lite.put_recipient("u-1", email="u1@example.com")
    response = await _test(lite, "capture", {"recipient_id": "u-1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ok"] is True
    assert (body["provider"], body["channel"]) == ("capture", "email")
    assert body["provider_message_id"]
    captured = await lite.client.get("/v1/sandbox/messages", headers=lite.auth)
    [message] = captured.json()["data"]
    assert message["to"] == "u1@example.com"
    assert message["content"]["subject"] == "Clarion test"
    # No delivery, no notification: nothing in the message log.
    listed = await lite.client.get("/v1/deliveries", headers=lite.auth)
    assert listed.json()["data"] == []


async def test_a_provider_that_cannot_send_says_why(lite: Harness) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = {"host": "127.0.0.1", "port": port, "from": "a@example.com", "tls": "none"}
    await _put_provider(lite, "broken", {"channel": "email", "kind": "smtp", "config": config})
    await lite.put_recipient("u-1", email="u1@example.com")
    response = await _test(lite, "broken", {"recipient_id": "u-1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ok"] is False
    assert body["transient"] is True
    assert "Connect" in body["error"]
    health = await lite.client.get("/v1/health/providers", headers=lite.auth)
    assert health.json()["data"] == []


async def test_provider_tests_refuse_what_they_cannot_do(lite: Harness) -> None:
    await _put_provider(lite, "texts", {"channel": "sms", "kind": "sandbox", "config": {}})
    await lite.put_recipient("u-1", email="u1@example.com")
    no_phone = await _test(lite, "texts", {"recipient_id": "u-1"})
    assert no_phone.status_code == 422
    assert no_phone.json()["error"]["code"] == "no_address"
    for name, body, status in [
        ("nobody", {"recipient_id": "u-1"}, 404),
        ("texts", {"recipient_id": "u-404"}, 404),
        ("sandbox", {"recipient_id": "u-1"}, 404),
        ("texts", {}, 422),
        ("texts", {"recipient_id": "u-1", "to": "x"}, 422),
        ("bad name!", {"recipient_id": "u-1"}, 422),
    ]:
        response = await _test(lite, name, body)
        assert response.status_code == status, (name, body, response.text)
        assert "error" in response.json()
    other = await lite.new_tenant("other")
    assert (await _test(lite, "texts", {"recipient_id": "u-1"}, key=other)).status_code == 404
    reader = await lite.new_tenant("readers", ["read"])
    assert (await _test(lite, "texts", {"recipient_id": "u-1"}, key=reader)).status_code == 403
