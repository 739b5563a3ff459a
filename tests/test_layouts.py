"""Email layouts and the tenant's brand: stored, checked like templates, and used by every
render (sends, previews, workflow tests); a layout in use cannot be deleted."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx

from harness import Harness
from standins.smtp import SmtpStandIn
from test_provider_smtp import configure_smtp, relay
from test_templates import assert_error

__all__ = ["relay"]  # the SMTP relay fixture

LAYOUT = {
    "html": '<div class="brand">{{ brand.name }}</div><main>{{ content }}</main>'
    "<footer>{{ brand.address }}</footer>",
    "text": "{{ brand.name }}\n{{ content }}\n-- {{ brand.address }}",
    "locales": {
        "de": {"text": "{{ brand.name }} (DE)\n{{ content }}\n-- Impressum: {{ brand.address }}"}
    },
}
BRAND = {
    "name": "Acme & <Co>",
    "logo_url": "https://cdn.acme.example/logo.png",
    "colors": {"primary": "#0a66c2"},
    "address": "1 Main St",
    "support_email": "help@acme.example",
}
ORDER = {
    "channels": {
        "email": {
            "subject": "Order {{ orderId }}",
            "html": "<p>Hello {{ firstName }}</p>",
            "text": "Hello {{ firstName }}",
            "layout": "brand",
        },
        "sms": {"text": "{{ brand.name }}: order {{ orderId }}"},
    }
}


async def put_layout(h: Harness, name: str, body: Any, auth: Any = None) -> httpx.Response:
    return await h.client.put(f"/v1/layouts/{name}", json=body, headers=auth or h.auth)


async def put_brand(h: Harness, body: Any) -> httpx.Response:
    return await h.client.put("/v1/brand", json=body, headers=h.auth)


async def stored(h: Harness, path: str, body: Any) -> dict[str, Any]:
    response = await h.client.put(path, json=body, headers=h.auth)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def preview(h: Harness, name: str, body: dict[str, Any]) -> httpx.Response:
    return await h.client.post(f"/v1/templates/{name}/preview", json=body, headers=h.auth)


async def sent_content(h: Harness, template: str, rid: str, data: dict[str, Any]) -> Any:
    """Send ``template`` to ``rid``; each channel's delivered content (the sandbox's)."""
    response = await h.send({"template": template, "to": {"recipient_id": rid}, "data": data})
    assert response.status_code == 202, response.text
    await h.drain()
    note = await h.notification(response.json()["id"])
    ids = {d["id"]: d for d in note["deliveries"]}
    captured = await h.client.get("/v1/sandbox/messages", headers=h.auth)
    found = {m["channel"]: m["content"] for m in captured.json()["data"] if m["delivery_id"] in ids}
    return found, list(ids.values())


# -- sends -------------------------------------------------------------------------------------


async def test_a_layout_wraps_the_html_and_text_of_a_send(app: Harness) -> None:
    assert (await put_brand(app, BRAND)).json() == BRAND
    assert await stored(app, "/v1/layouts/brand", LAYOUT) == {"name": "brand", "version": 1}
    await app.put_template("order", ORDER)
    await app.put_recipient("u1", email="u1@example.com", phone="+14155550100")
    await app.put_recipient("u2", email="u2@example.com", locale="de-AT")

    data = {"firstName": "<b>Zoë</b>", "orderId": "7"}
    content, deliveries = await sent_content(app, "order", "u1", data)
    assert all(d["status"] == "sent" for d in deliveries), deliveries
    email = content["email"]
    # The layout's own variables are escaped; the content, escaped once by its template, is
    # inserted as it rendered.
    assert email["html"] == (
        '<div class="brand">Acme &amp; &lt;Co&gt;</div>'
        "<main><p>Hello &lt;b&gt;Zoë&lt;/b&gt;</p></main><footer>1 Main St</footer>"
    )
    assert email["text"] == "Acme & <Co>\nHello <b>Zoë</b>\n-- 1 Main St"
    assert email["subject"] == "Order 7"
    assert "layout" not in email
    # `brand` reaches every channel's templates.
    assert content["sms"]["text"] == "Acme & <Co>: order 7"

    # The recipient's locale chooses the layout's variant (de-AT → de); the HTML has none.
    content, _ = await sent_content(app, "order", "u2", {"firstName": "Jo", "orderId": "8"})
    assert content["email"]["text"] == "Acme & <Co> (DE)\nHello Jo\n-- Impressum: 1 Main St"
    assert content["email"]["html"].startswith('<div class="brand">Acme &amp; &lt;Co&gt;</div>')


async def test_the_default_applies_unless_a_template_opts_out(app: Harness) -> None:
    await put_brand(app, BRAND)
    body = {**LAYOUT, "default": True}
    await stored(app, "/v1/layouts/house", body)
    listed = (await app.client.get("/v1/layouts", headers=app.auth)).json()["data"]
    assert [(row["name"], row["default"]) for row in listed] == [("house", True)]
    plain = {"subject": "Hi", "html": "<p>Hi {{ firstName }}</p>"}
    await app.put_template("uses-default", {"channels": {"email": plain}})
    await app.put_template("no-layout", {"channels": {"email": {**plain, "layout": False}}})
    await app.put_recipient("u1", email="u1@example.com")

    content, _ = await sent_content(app, "uses-default", "u1", {"firstName": "Al"})
    assert content["email"]["html"].startswith('<div class="brand">')
    assert "<main><p>Hi Al</p></main>" in content["email"]["html"]
    # Without a text part of its own, the text is the HTML's, then laid out.
    assert content["email"]["text"] == "Acme & <Co>\nHi Al\n-- 1 Main St"

    content, _ = await sent_content(app, "no-layout", "u1", {"firstName": "Al"})
    assert content["email"] == {"subject": "Hi", "html": "<p>Hi Al</p>", "text": "Hi Al"}

    # No longer the default: the template naming none is sent bare.
    await stored(app, "/v1/layouts/house", {**LAYOUT, "default": False})
    content, _ = await sent_content(app, "uses-default", "u1", {"firstName": "Al"})
    assert content["email"]["html"] == "<p>Hi Al</p>"


async def test_a_changed_layout_or_brand_applies_to_the_next_send(lite: Harness) -> None:
    await put_brand(lite, BRAND)
    await stored(lite, "/v1/layouts/brand", LAYOUT)
    await lite.put_template("order", ORDER)
    await lite.put_recipient("u1", email="u1@example.com")
    first, _ = await sent_content(lite, "order", "u1", {"firstName": "A", "orderId": "1"})
    assert first["email"]["html"].startswith('<div class="brand">Acme')

    await stored(lite, "/v1/layouts/brand", {**LAYOUT, "html": "<section>{{ content }}</section>"})
    await put_brand(lite, {**BRAND, "name": "Acme 2"})
    second, _ = await sent_content(lite, "order", "u1", {"firstName": "B", "orderId": "1"})
    assert second["email"]["html"] == "<section><p>Hello B</p></section>"
    assert second["email"]["text"].startswith("Acme 2\n")
    versions = (await lite.client.get("/v1/layouts/brand/versions", headers=lite.auth)).json()
    assert [(v["version"], v["active"]) for v in versions["data"]] == [(2, True), (1, False)]

    rolled = await lite.client.post(
        "/v1/layouts/brand/rollback", json={"version": 1}, headers=lite.auth
    )
    assert rolled.status_code == 200, rolled.text
    third, _ = await sent_content(lite, "order", "u1", {"firstName": "C", "orderId": "1"})
    assert third["email"]["html"].startswith('<div class="brand">Acme 2</div>')


async def test_a_layout_variable_missing_fails_the_render(lite: Harness) -> None:
    await stored(lite, "/v1/layouts/brand", LAYOUT)  # uses brand.*, and there is no brand
    await lite.put_template("order", ORDER)
    await lite.put_recipient("u1", email="u1@example.com")
    _, deliveries = await sent_content(lite, "order", "u1", {"firstName": "A", "orderId": "1"})
    [email] = [d for d in deliveries if d["channel"] == "email"]
    assert (email["status"], email["reason"]) == ("failed", "render_error")
    assert "brand" in email["last_error"]


# -- previews and tests ----------------------------------------------------------------------


async def test_previews_render_with_the_layout_and_brand(app: Harness) -> None:
    await put_brand(app, BRAND)
    await stored(app, "/v1/layouts/brand", LAYOUT)
    await app.put_template("order", ORDER)

    answer = await preview(app, "order", {"data": {"firstName": "Al", "orderId": "7"}})
    assert answer.status_code == 200, answer.text
    email = answer.json()["channels"]["email"]
    assert email["html"].endswith("<main><p>Hello Al</p></main><footer>1 Main St</footer>")
    assert email["text"] == "Acme & <Co>\nHello Al\n-- 1 Main St"
    answer = await preview(
        app, "order", {"data": {"firstName": "Al", "orderId": "7"}, "locale": "de"}
    )
    assert answer.json()["channels"]["email"]["text"].startswith("Acme & <Co> (DE)\n")

    draft = {"template": ORDER, "data": {"firstName": "Al", "orderId": "7"}, "channel": "email"}
    answer = await app.client.post("/v1/templates/preview", json=draft, headers=app.auth)
    assert answer.status_code == 200, answer.text
    assert answer.json()["channels"]["email"]["html"].startswith('<div class="brand">')

    workflow = {
        "name": "Order",
        "steps": [{"id": "mail", "type": "channel", "channel": "email", "template": "order"}],
    }
    response = await app.client.put("/v1/workflows/order", json=workflow, headers=app.auth)
    assert response.status_code in (200, 201), response.text
    tested = await app.client.post(
        "/v1/workflows/order/test",
        json={"recipient": {"email": "a@example.com"}, "data": {"firstName": "Al", "orderId": "7"}},
        headers=app.auth,
    )
    assert tested.status_code == 200, tested.text
    [step] = tested.json()["steps"]
    assert step["content"]["email"]["html"].startswith('<div class="brand">Acme &amp;')


# -- checks when stored ----------------------------------------------------------------------


async def test_a_layout_without_the_slot_or_with_a_fault_is_refused(lite: Harness) -> None:
    cases = [
        ({**LAYOUT, "html": "<div>{{ brand.name }}</div>"}, "html"),
        ({**LAYOUT, "text": "no slot here"}, "text"),
        ({**LAYOUT, "locales": {"fr": {"html": "<p>{{ contents }}</p>"}}}, "locales.fr.html"),
        ({**LAYOUT, "html": "<div>{{ content }</div>"}, "html"),
        ({**LAYOUT, "html": "{{ content }}{% include 'x' %}"}, "html"),
    ]
    for body, part in cases:
        refused = assert_error(await put_layout(lite, "bad", body), 422, "template_error")
        assert refused["error"]["details"][0]["field"] == part, refused
    slot = assert_error(await put_layout(lite, "bad", cases[0][0]), 422, "template_error")
    assert "{{ content }}" in slot["error"]["message"]
    for body in ({"html": "{{ content }}"}, {**LAYOUT, "colour": 1}, {**LAYOUT, "html": ""}):
        assert_error(await put_layout(lite, "bad", body), 422, "validation_error")
    assert_error(await lite.client.get("/v1/layouts/bad", headers=lite.auth), 404, "not_found")


async def test_sandbox_escapes_are_refused_in_layouts(lite: Harness) -> None:
    hostile = [
        "{{ content.__class__.__mro__ }}",
        "{{ content }}{{ ''.__class__ }}",
        "{{ content }}{{ brand['__class__'] }}",
        "{{ content }}{{ cycler }}",
        "{{ content }}{% macro m() %}{{ m() }}{% endmacro %}",
        "{{ content }}{{ content|attr('__class__') }}",
    ]
    for source in hostile:
        for part in ("html", "text"):
            response = await put_layout(lite, "evil", {**LAYOUT, part: source})
            assert_error(response, 422, "template_error")
    # What the sandbox bounds at render time fails the render, never the process.
    await stored(lite, "/v1/layouts/big", {**LAYOUT, "html": "{{ content }}{{ 'x' * 10**9 }}"})
    await lite.put_template(
        "t", {"channels": {"email": {"subject": "s", "html": "<p>x</p>", "layout": "big"}}}
    )
    await put_brand(lite, BRAND)
    answer = await preview(lite, "t", {})
    assert_error(answer, 422, "render_error")


async def test_an_oversized_layout_is_refused(lite: Harness) -> None:
    huge = "{{ content }}" + "x" * (600 * 1024)
    response = await put_layout(lite, "huge", {**LAYOUT, "html": huge})
    assert_error(response, 413, "payload_too_large")


async def test_the_brand_is_checked(lite: Harness) -> None:
    assert (await lite.client.get("/v1/brand", headers=lite.auth)).json() == {}
    refusals = [
        {"logo_url": "javascript:alert(1)"},
        {"colors": {"primary": "red; background: url(x)"}},
        {"colors": {"bad key": "#fff"}},
        {"bad-key": 1},
        {"__class__": 1},
        {"note": "x" * (17 * 1024)},
        {"name": "x" * 201},
    ]
    for body in refusals:
        assert_error(await put_brand(lite, body), 422, "validation_error")
    assert (await put_brand(lite, BRAND)).status_code == 200
    assert (await lite.client.get("/v1/brand", headers=lite.auth)).json() == BRAND
    removed = await lite.client.delete("/v1/brand", headers=lite.auth)
    assert removed.status_code == 204
    assert (await lite.client.get("/v1/brand", headers=lite.auth)).json() == {}


async def test_a_template_naming_an_unknown_layout_is_refused(lite: Harness) -> None:
    refused = await lite.client.put("/v1/templates/t", json=ORDER, headers=lite.auth)
    assert_error(refused, 422, "unknown_layout")
    for layout in (True, 3, "bad name", {"x": 1}):
        body = {"channels": {"email": {"subject": "s", "text": "t", "layout": layout}}}
        response = await lite.client.put("/v1/templates/t", json=body, headers=lite.auth)
        assert_error(response, 422, "validation_error")
    await stored(lite, "/v1/layouts/brand", LAYOUT)
    per_locale = {**ORDER, "locales": {"de": {"email": {"layout": False}}}}
    response = await lite.client.put("/v1/templates/t", json=per_locale, headers=lite.auth)
    assert_error(response, 422, "validation_error")
    await lite.put_template("t", ORDER)
    shown = (await lite.client.get("/v1/templates/t", headers=lite.auth)).json()
    assert shown["channels"]["email"]["layout"] == "brand"


# -- deleting, and tenants apart ---------------------------------------------------------------


async def test_a_layout_in_use_is_not_deleted(app: Harness) -> None:
    await stored(app, "/v1/layouts/brand", LAYOUT)
    await stored(app, "/v1/layouts/house", {**LAYOUT, "default": True})
    await app.put_template("order", ORDER)

    busy = await app.client.delete("/v1/layouts/brand", headers=app.auth)
    body = assert_error(busy, 409, "layout_in_use")
    assert body["error"]["details"] == [{"template": "order"}]
    default = assert_error(
        await app.client.delete("/v1/layouts/house", headers=app.auth), 409, "layout_in_use"
    )
    assert default["error"]["details"] == [{"default": True}]

    # The template's active version names another layout now: the first may go.
    await app.put_template(
        "order", {"channels": {"email": {**ORDER["channels"]["email"], "layout": "house"}}}
    )
    gone = await app.client.delete("/v1/layouts/brand", headers=app.auth)
    assert gone.status_code == 204, gone.text
    assert_error(await app.client.delete("/v1/layouts/brand", headers=app.auth), 404, "not_found")
    # An older version naming it cannot be made active again.
    rollback = await app.client.post(
        "/v1/templates/order/rollback", json={"version": 1}, headers=app.auth
    )
    assert_error(rollback, 422, "unknown_layout")


async def test_another_tenants_layouts_and_brand_are_out_of_reach(app: Harness) -> None:
    await put_brand(app, BRAND)
    await stored(app, "/v1/layouts/brand", {**LAYOUT, "default": True})
    other = {"Authorization": f"Bearer {await app.new_tenant('other-co')}"}

    assert_error(await app.client.get("/v1/layouts/brand", headers=other), 404, "not_found")
    listed = await app.client.get("/v1/layouts", headers=other)
    assert listed.json() == {"data": [], "next_cursor": None}
    assert (await app.client.get("/v1/brand", headers=other)).json() == {}
    refused = await app.client.put("/v1/templates/order", json=ORDER, headers=other)
    assert_error(refused, 422, "unknown_layout")
    deleted = await app.client.delete("/v1/layouts/brand", headers=other)
    assert_error(deleted, 404, "not_found")

    # The other tenant's own layout of the same name, and neither default nor brand leaks.
    response = await put_layout(
        app, "brand", {"html": "<i>{{ content }}</i>", "text": "{{ content }}"}, other
    )
    assert response.status_code == 200, response.text
    plain = {"subject": "s", "html": "<p>{{ brand is defined }}</p>"}
    await app.client.put("/v1/templates/plain", json={"channels": {"email": plain}}, headers=other)
    await app.client.put("/v1/recipients/o1", json={"email": "o1@example.com"}, headers=other)
    sent = await app.client.post(
        "/v1/notifications",
        json={"template": "plain", "to": {"recipient_id": "o1"}},
        headers=other,
    )
    assert sent.status_code == 202, sent.text
    await app.drain()
    captured = (await app.client.get("/v1/sandbox/messages", headers=other)).json()["data"]
    assert [m["content"]["html"] for m in captured] == ["<p>False</p>"]


# -- end to end through SMTP -----------------------------------------------------------------


async def test_the_delivered_email_is_laid_out(lite: Harness, relay: SmtpStandIn) -> None:
    await configure_smtp(lite, relay)
    await put_brand(lite, BRAND)
    await stored(lite, "/v1/layouts/brand", {**LAYOUT, "default": True})
    email = {"subject": "Order {{ orderId }}", "html": "<p>Hello {{ firstName }}</p>"}
    await lite.put_template("order", {"channels": {"email": email}})
    await lite.put_recipient("u1", email="alex@example.com", data={"firstName": "Alex"})

    sent = await lite.send(
        {"template": "order", "to": {"recipient_id": "u1"}, "data": {"orderId": "9"}}
    )
    assert sent.status_code == 202, sent.text
    await lite.drain()
    [delivery] = (await lite.notification(sent.json()["id"]))["deliveries"]
    assert (delivery["status"], delivery["provider"]) == ("sent", "smtp-main")

    [got] = relay.received
    msg = got.message
    assert msg["Subject"] == "Order 9"
    parts = {p.get_content_type(): str(p.get_content()) for p in msg.iter_parts()}
    assert parts["text/html"].strip() == (
        '<div class="brand">Acme &amp; &lt;Co&gt;</div><main><p>Hello Alex</p></main>'
        "<footer>1 Main St</footer>"
    )
    assert (
        parts["text/plain"].replace("\r\n", "\n").strip() == "Acme & <Co>\nHello Alex\n-- 1 Main St"
    )


async def test_the_documented_examples_work(lite: Harness) -> None:
    """docs/layouts.md's brand, layout and template, taken from the page itself."""
    page = (Path(__file__).parents[1] / "docs" / "layouts.md").read_text(encoding="utf-8")
    bodies = re.findall(r"-d '(\{.*?\})'\n", page, re.DOTALL)
    brand, layout, asked = (json.loads(body) for body in bodies)
    assert (await put_brand(lite, brand)).status_code == 200
    await stored(lite, "/v1/layouts/house", layout)
    [template] = re.findall(r"```json\n(\{\"channels\".*?)```", page, re.DOTALL)
    await lite.put_template("order_shipped", json.loads(template))
    answer = await preview(lite, "order_shipped", asked)
    assert answer.status_code == 200, answer.text
    email = answer.json()["channels"]["email"]
    assert '<img src="https://cdn.acme.example/logo.png" alt="Acme">' in email["html"]
    assert "<p>Hello Alex, order A1 is on its way.</p>" in email["html"]
    assert email["text"].endswith("Acme, Acme Inc., 1 Main St, Springfield (Impressum)")
