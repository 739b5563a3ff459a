"""Open and click tracking of email (docs/tracking.md): off by default, turned on per
category; links of the HTML through a signed redirect, an open image; opens and clicks on
the delivery's timeline, in the message log, in status webhooks and in workflow
conditions. Forged, altered and hostile tokens record nothing and redirect nowhere."""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest

from clarion.domain.tracking import rewrite, trackable
from clarion.observability import metrics
from clarion.security import tracking as signing
from clarion.store import message_log as log
from clarion.store import tenants as tenant_store
from harness import Harness, make_settings, running
from standins.smtp import SmtpStandIn
from test_message_log import _PARTITION_INDEX, _plan
from test_provider_smtp import configure_smtp, relay
from test_workflow_runs import put_workflow, until_status
from webhook_sink import WebhookSink

__all__ = ["relay"]  # the SMTP relay fixture

PUBLIC = "http://127.0.0.1:8080"
HTML = (
    "<html><body><p>Hello {{ name }}</p>"
    '<a href="https://shop.example/o/{{ order }}?a=1&amp;b=2" class="btn">Your order</a> '
    '<a href="http://shop.example/help">Help</a> '
    '<a href="mailto:help@shop.example">Mail us</a> <a href="tel:+14155550100">Call</a> '
    '<a href="#top">Top</a> <a href="javascript:alert(1)">Script</a> '
    '<a href="/relative">Relative</a> '
    f'<a href="{PUBLIC}/v1/unsubscribe/v1.x.y">Unsubscribe</a> '
    '<a href="https://shop.example/private" data-clarion-track="off">Private</a>'
    '<!-- <a href="https://shop.example/comment"> -->'
    "</body></html>"
)
TEMPLATE = {
    "category": "news",
    "channels": {"email": {"subject": "Order {{ order }}", "html": HTML}},
}
TRACKED_TARGETS = ["https://shop.example/o/7?a=1&b=2", "http://shop.example/help"]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "a":
            self.hrefs.append(found.get("href") or "")
        elif tag == "img":
            self.images.append(found.get("src") or "")


def links_of(html: str) -> _Links:
    parser = _Links()
    parser.feed(html)
    parser.close()
    return parser


async def put_category(h: Harness, name: str, tracking: dict[str, Any] | None) -> dict[str, Any]:
    body = {} if tracking is None else {"tracking": tracking}
    response = await h.client.put(f"/v1/categories/{name}", json=body, headers=h.auth)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def tracked_send(h: Harness, rid: str = "u1", order: str = "7") -> dict[str, Any]:
    """Send the template to ``rid``; its one email delivery, as the notification shows it."""
    sent = await h.send(
        {"template": "order", "to": {"recipient_id": rid}, "data": {"order": order}}
    )
    assert sent.status_code == 202, sent.text
    await h.drain()
    [delivery] = (await h.notification(sent.json()["id"]))["deliveries"]
    return dict(delivery)


async def captured_html(h: Harness, delivery_id: str) -> str:
    answer = await h.client.get("/v1/sandbox/messages?channel=email", headers=h.auth)
    [html] = [
        m["content"]["html"] for m in answer.json()["data"] if m["delivery_id"] == delivery_id
    ]
    return str(html)


async def detail(h: Harness, delivery_id: str) -> dict[str, Any]:
    response = await h.client.get(f"/v1/deliveries/{delivery_id}", headers=h.auth)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def tracked_events(found: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in found["events"] if e["type"] in ("opened", "clicked")]


async def listed(h: Harness, event: str) -> list[str]:
    response = await h.client.get(f"/v1/deliveries?event={event}", headers=h.auth)
    assert response.status_code == 200, response.text
    return [d["id"] for d in response.json()["data"]]


def path_of(url: str, base: str = PUBLIC) -> str:
    assert url.startswith(base + "/t/"), url
    return url.removeprefix(base)


async def open_shop(app: Harness) -> Harness:
    """A category tracking opens and clicks, the template in it, a recipient."""
    await put_category(app, "news", {"opens": True, "clicks": True})
    await app.put_template("order", TEMPLATE)
    await app.put_recipient("u1", email="u1@example.com", data={"name": "Alex"})
    return app


@pytest.fixture
async def shop(app: Harness) -> Harness:
    return await open_shop(app)


# -- end to end, on both stores ----------------------------------------------------------------


async def test_tracked_email_through_smtp_and_its_click_and_open(
    shop: Harness, relay: SmtpStandIn
) -> None:
    app = shop
    await configure_smtp(app, relay)
    delivery = await tracked_send(app)
    assert (delivery["status"], delivery["provider"]) == ("sent", "smtp-main")

    [got] = relay.received
    parts = {p.get_content_type(): str(p.get_content()) for p in got.message.iter_parts()}
    html = parts["text/html"]
    found = links_of(html)
    rewritten = [h for h in found.hrefs if h.startswith(f"{PUBLIC}/t/c/")]
    assert len(rewritten) == 2
    # Everything but the http(s) links is as the template wrote it.
    assert [h for h in found.hrefs if h not in rewritten] == [
        "mailto:help@shop.example",
        "tel:+14155550100",
        "#top",
        "javascript:alert(1)",
        "/relative",
        f"{PUBLIC}/v1/unsubscribe/v1.x.y",
        "https://shop.example/private",
    ]
    assert '<!-- <a href="https://shop.example/comment"> -->' in html
    assert 'class="btn"' in html
    # The open image, before </body>.
    [pixel] = found.images
    assert pixel.startswith(f"{PUBLIC}/t/o/")
    assert html.rstrip().endswith("</body></html>")
    assert html.index(pixel) < html.index("</body>")
    # The text part (made from the HTML) keeps the original targets.
    assert "https://shop.example/o/7?a=1&b=2" in parts["text/plain"]
    assert "/t/c/" not in parts["text/plain"]

    # No event yet; the message log's filter finds nothing.
    assert tracked_events(await detail(app, delivery["id"])) == []
    assert await listed(app, "clicked") == []

    # A click: a 302 to the original target, one `clicked` event.
    for link, target in zip(rewritten, TRACKED_TARGETS, strict=True):
        response = await app.client.get(path_of(link))
        assert response.status_code == 302, response.text
        assert response.headers["location"] == target
        assert "no-store" in response.headers["cache-control"]
    shown = await detail(app, delivery["id"])
    clicks = tracked_events(shown)
    assert [(e["type"], e["url"]) for e in clicks] == [
        ("clicked", TRACKED_TARGETS[0]),
        ("clicked", TRACKED_TARGETS[1]),
    ]
    assert await listed(app, "clicked") == [delivery["id"]]
    assert await listed(app, "opened") == []

    # An open: the image, and an `opened` event.
    image = await app.client.get(path_of(pixel))
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/gif"
    assert image.content.startswith(b"GIF89a")
    assert "no-store" in image.headers["cache-control"]
    assert await listed(app, "opened") == [delivery["id"]]
    shown = await detail(app, delivery["id"])
    assert [e["type"] for e in tracked_events(shown)] == ["clicked", "clicked", "opened"]
    summary = shown["tracking"]
    assert (summary["opens"], summary["clicks"], summary["opened"]) == (1, 2, True)
    # A click came first: it is the first sign of the email being opened.
    assert summary["first_opened_at"] == summary["first_clicked_at"] == clicks[0]["at"]


async def test_tracking_is_off_by_default(app: Harness) -> None:
    category = await put_category(app, "news", None)
    assert category["tracking"] == {"opens": False, "clicks": False}
    built_in = await app.client.get("/v1/categories/marketing", headers=app.auth)
    assert built_in.json()["tracking"] == {"opens": False, "clicks": False}
    await app.put_template("order", TEMPLATE)
    await app.put_recipient("u1", email="u1@example.com", data={"name": "Alex"})
    delivery = await tracked_send(app)
    html = await captured_html(app, delivery["id"])
    preview = await app.client.post(
        "/v1/templates/order/preview",
        json={"recipient_id": "u1", "data": {"order": "7"}},
        headers=app.auth,
    )
    assert html == preview.json()["channels"]["email"]["html"]
    assert "/t/" not in html
    assert (await detail(app, delivery["id"]))["tracking"]["opened"] is False


async def test_only_what_the_category_asks_for(app: Harness) -> None:
    await put_category(app, "news", {"opens": True})
    await app.put_template("order", TEMPLATE)
    await app.put_recipient("u1", email="u1@example.com", data={"name": "Alex"})
    html = await captured_html(app, (await tracked_send(app))["id"])
    found = links_of(html)
    assert not any("/t/c/" in h for h in found.hrefs)
    assert len(found.images) == 1
    await put_category(app, "news", {"clicks": True})
    html = await captured_html(app, (await tracked_send(app, order="8"))["id"])
    found = links_of(html)
    assert sum("/t/c/" in h for h in found.hrefs) == 2
    assert found.images == []


# -- hostile tokens ----------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_altered_forged_and_hostile_tokens_record_nothing(shop: Harness) -> None:
    app = shop
    delivery = await tracked_send(app)
    dlv = delivery["id"]
    html = await captured_html(app, dlv)
    good = path_of(next(h for h in links_of(html).hrefs if "/t/c/" in h))
    version, payload, mac = good.removeprefix("/t/c/").split(".")
    tenant = app.tenant_id
    other = await tenant_store.create_tenant(app.ctx.engine, "other")
    theirs = signing.derive_key(other.webhook_secret)
    me = await tenant_store.get_tenant(app.ctx.engine, tenant)
    assert me is not None
    mine = signing.derive_key(me.webhook_secret)
    evil = b64(orjson.dumps(["c", tenant, dlv, "https://evil.example/"]))
    bad = [
        f"{version}.{evil}.{mac}",  # another target, the MAC kept
        f"{version}.{payload}.{b64(b'0' * 16)}",  # a forged MAC
        f"{version}.{payload}.{mac[:-2]}",  # a MAC cut short
        f"v2.{payload}.{mac}",
        f"{version}.{payload}",
        f"{version}.!!!.{mac}",
        "x" * 5000,  # oversized
        # Signed with another tenant's key, naming this tenant's delivery.
        signing.make_token(theirs, signing.Hit("c", tenant, dlv, "https://evil.example/")),
        # Signed with the right key, but not an http(s) target: never redirected to.
        signing.make_token(mine, signing.Hit("c", tenant, dlv, "javascript:alert(1)")),
        signing.make_token(mine, signing.Hit("c", tenant, dlv, "//evil.example/")),
    ]
    for token in bad:
        response = await app.client.get(f"/t/c/{token}")
        assert response.status_code == 400, (token, response.text)
        assert response.json()["error"]["code"] == "invalid_link"
        assert "location" not in response.headers
        image = await app.client.get(f"/t/o/{token}")
        assert (image.status_code, image.headers["content-type"]) == (200, "image/gif")
    # An open's token is not a link.
    as_link = signing.make_token(mine, signing.Hit("o", tenant, dlv))
    assert (await app.client.get(f"/t/c/{as_link}")).status_code == 400
    # A valid token of the other tenant naming this tenant's delivery: its own link, but the
    # delivery is not its own, so nothing is recorded.
    own = signing.make_token(theirs, signing.Hit("c", other.id, dlv, "https://other.example/"))
    response = await app.client.get(f"/t/c/{own}")
    assert (response.status_code, response.headers["location"]) == (302, "https://other.example/")
    opened = signing.make_token(theirs, signing.Hit("o", other.id, dlv))
    assert (await app.client.get(f"/t/o/{opened}")).status_code == 200
    assert tracked_events(await detail(app, dlv)) == []
    assert await listed(app, "clicked") == await listed(app, "opened") == []


def hits(event: str, outcome: str) -> float:
    labels = {"event": event, "outcome": outcome}
    found = metrics.METRICS.registry.get_sample_value("clarion_tracking_hits_total", labels)
    return found or 0.0


async def test_hits_per_delivery_are_capped(migrated_sqlite_url: str) -> None:
    settings = make_settings(migrated_sqlite_url, "embedded://", tracking_max_events=3)
    async with running(settings) as app:
        await put_category(app, "news", {"opens": True, "clicks": True})
        await app.put_template("order", TEMPLATE)
        await app.put_recipient("u1", email="u1@example.com", data={"name": "Alex"})
        delivery = await tracked_send(app)
        found = links_of(await captured_html(app, delivery["id"]))
        link = path_of(next(h for h in found.hrefs if "/t/c/" in h))
        before = (hits("opened", "recorded"), hits("clicked", "not_recorded"))
        for _ in range(3):
            assert (await app.client.get(path_of(found.images[0]))).status_code == 200
        # Over the cap: still answered, not recorded.
        assert (await app.client.get(link)).status_code == 302
        assert (await app.client.get(path_of(found.images[0]))).status_code == 200
        summary = (await detail(app, delivery["id"]))["tracking"]
        assert (summary["opens"], summary["clicks"]) == (3, 0)
        assert hits("opened", "recorded") - before[0] == 3
        assert hits("clicked", "not_recorded") - before[1] == 1
        assert "clarion_tracking_hits_total" in (await app.client.get("/metrics")).text


async def test_a_tracking_host_of_its_own(migrated_sqlite_url: str) -> None:
    host = "https://t.shop.example/mail"
    settings = make_settings(migrated_sqlite_url, "embedded://", tracking_url=host + "/")
    async with running(settings) as app:
        await put_category(app, "news", {"opens": True, "clicks": True})
        await app.put_template("order", TEMPLATE)
        await app.put_recipient("u1", email="u1@example.com", data={"name": "Alex"})
        found = links_of(await captured_html(app, (await tracked_send(app))["id"]))
        assert sum(h.startswith(f"{host}/t/c/v1.") for h in found.hrefs) == 2
        assert found.images[0].startswith(f"{host}/t/o/v1.")


@pytest.mark.parametrize("url", ["ftp://t.example", "https://t.exämple", "https://t.example/?a=1"])
def test_the_tracking_url_is_checked(migrated_sqlite_url: str, url: str) -> None:
    with pytest.raises(ValueError, match="tracking_url"):
        make_settings(migrated_sqlite_url, "embedded://", tracking_url=url)


async def test_the_category_setting_is_checked(lite: Harness) -> None:
    for tracking in ({"opens": "maybe"}, {"clicks": True, "links": True}, ["opens"]):
        response = await lite.client.put(
            "/v1/categories/news", json={"tracking": tracking}, headers=lite.auth
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "validation_error"
    listed_ = await lite.client.get("/v1/deliveries?event=sent", headers=lite.auth)
    assert listed_.status_code == 422


# -- status webhooks and workflows -------------------------------------------------------------


@pytest.fixture
async def keyed(backend: tuple[str, str]) -> AsyncIterator[Harness]:
    """Every role on each backend, with a secret key to seal webhook secrets with."""
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    async with running(make_settings(*backend, secret_key=key)) as harness:
        yield harness


async def test_status_webhooks_receive_opens_and_clicks(keyed: Harness, sink: WebhookSink) -> None:
    app = await open_shop(keyed)
    hook = {"url": f"{sink.url}/events", "events": ["delivery.clicked", "delivery.opened"]}
    response = await app.client.put("/v1/webhooks/main", json=hook, headers=app.auth)
    assert response.status_code == 200, response.text
    delivery = await tracked_send(app)
    found = links_of(await captured_html(app, delivery["id"]))
    link = path_of(next(h for h in found.hrefs if "/t/c/" in h))
    for _ in range(2):
        assert (await app.client.get(link)).status_code == 302
    assert (await app.client.get(path_of(found.images[0]))).status_code == 200
    await app.drain()
    events = [json.loads(r.body) for r in sink.received if r.path == "/events"]
    assert [e["type"] for e in events] == [
        "delivery.clicked",
        "delivery.clicked",
        "delivery.opened",
    ]
    assert [e["data"]["first"] for e in events] == [True, False, True]
    assert {e["data"]["delivery_id"] for e in events} == {delivery["id"]}
    assert events[0]["data"]["url"] == TRACKED_TARGETS[0]
    assert events[0]["data"]["status"] == "sent"
    assert "url" not in events[2]["data"]


async def test_a_workflow_condition_on_an_open(app: Harness) -> None:
    await put_category(app, "news", {"opens": True})
    await app.put_template(
        "order",
        {
            "category": "news",
            "channels": {
                "email": {"subject": "Order", "html": "<p>Order {{ order }}</p>"},
                "sms": {"text": "Did you see your order {{ order }}?"},
            },
        },
    )
    for rid in ("r1", "r2"):
        await app.put_recipient(rid, email=f"{rid}@example.com", phone="+14155550100")
    # Only an email step shows `opened`.
    refused = await app.client.put(
        "/v1/workflows/bad",
        json={
            "name": "bad",
            "steps": [
                {"id": "sms", "type": "channel", "channel": "sms", "template": "order"},
                {"id": "again", "type": "channel", "channel": "sms", "template": "order",
                 "if": "not steps.sms.opened"},
            ],
        },
        headers=app.auth,
    )  # fmt: skip
    assert refused.status_code == 422
    assert "only a channel step that sends email" in refused.text
    await put_workflow(
        app,
        "nudge",
        {"id": "mail", "type": "channel", "channel": "email", "template": "order"},
        {"id": "wait", "type": "delay", "duration": "2s"},
        {"id": "sms", "type": "channel", "channel": "sms", "template": "order",
         "if": "not steps.mail.opened"},
    )  # fmt: skip
    sent = await app.send(
        {"workflow": "nudge", "to": {"recipient_ids": ["r1", "r2"]}, "data": {"order": "7"}}
    )
    assert sent.status_code == 202, sent.text
    nid = sent.json()["id"]
    await until_status(app, nid, "r1", "waiting")
    emails: dict[str, str] = {}

    async def captured() -> bool:
        answer = await app.client.get("/v1/sandbox/messages?channel=email", headers=app.auth)
        emails.update({m["recipient_id"]: m["content"]["html"] for m in answer.json()["data"]})
        return "r1" in emails

    await app.until(captured)
    [pixel] = links_of(emails["r1"]).images
    assert (await app.client.get(path_of(pixel))).status_code == 200
    for rid in ("r1", "r2"):
        await until_status(app, nid, rid, "completed")
    await app.drain()
    note = await app.notification(nid)
    channels = {
        rid: sorted(d["channel"] for d in note["deliveries"] if d["recipient_id"] == rid)
        for rid in ("r1", "r2")
    }
    assert channels == {"r1": ["email"], "r2": ["email", "sms"]}
    # The workflow test can assume it too.
    tried = await app.client.post(
        "/v1/workflows/nudge/test",
        json={"recipient_id": "r1", "data": {"order": "7"}, "assume": {"steps.mail.opened": True}},
        headers=app.auth,
    )
    assert tried.status_code == 200, tried.text
    assert [s["status"] for s in tried.json()["steps"]][-1] == "skipped"


# -- the HTML rewrite itself -------------------------------------------------------------------


def test_rewrite_changes_only_real_links() -> None:
    source = (
        "<p>Hi <a  href='https://x.example/a?b=1&amp;c=2' title='say \"hi\"'>go</a>\n"
        '<!-- <a href="https://comment.example"> -->'
        "<script>var s = '<a href=\"https://script.example\">';</script>"
        '<style>a[href="https://style.example"]{}</style>'
        "<img alt='<a href=\"https://attr.example\">'>"
        '<A HREF=" https://y.example/\n">y</A><a name=x>no href</a>'
        "<a href=https://u.example/é>not ascii</a></p>"
    )
    out = rewrite(source, lambda href: f"T({trackable(href)})" if trackable(href) else None, None)
    found = links_of(out)
    assert found.hrefs == [
        "T(https://x.example/a?b=1&c=2)",
        "T(https://y.example/)",
        "",
        "https://u.example/é",
    ]
    for untouched in ("comment", "script", "style", "attr"):
        assert f"https://{untouched}.example" in out
    assert 'title="say &quot;hi&quot;"' in out
    # Without </body>, the image goes at the end.
    assert rewrite("<p>x</p>", None, "https://t/o/1").startswith('<p>x</p><img src="https://t/o/1"')


@pytest.mark.parametrize(
    "href",
    [
        "javascript:alert(1)",
        " JavaScript:alert(1)",
        "data:text/html,x",
        "mailto:a@b.example",
        "//evil.example/",
        "/relative",
        "#top",
        "https://",
        "https://a.example/" + "x" * 2048,
        "https://a.example/\x00x",
        "https://a.example/a b",
        "https://[::1",
    ],
)
def test_what_is_never_tracked(href: str) -> None:
    assert trackable(href) is None


async def test_the_event_filter_walks_the_time_index_and_probes_events(app: Harness) -> None:
    """A bounded walk of the tenant's time index (store/message_log.py ``walks``), each
    delivery's events probed by key."""
    where = log.DeliveryFilter(event="opened")
    query = log.deliveries_query("ten_x", where, None, 51)
    assert f"LIMIT {log.SCAN_LIMIT + 1}" in str(
        query.compile(compile_kwargs={"literal_binds": True})
    )
    plan = await _plan(app, query)
    index = "ix_deliveries_tenant_created"
    assert index in plan or _PARTITION_INDEX[index] in plan, plan
    assert "Seq Scan" not in plan, plan
    assert not re.search(r"\bSCAN delivery_events\b", plan), plan
    if app.ctx.engine.dialect.name != "postgresql":
        # SQLite sorts only what it keeps of the walk, then the page.
        assert plan.count("USE TEMP B-TREE FOR ORDER BY") == 2, plan


async def test_the_documented_examples_work(lite: Harness) -> None:
    """docs/tracking.md's category body and workflow, taken from the page itself."""
    page = (Path(__file__).parents[1] / "docs" / "tracking.md").read_text(encoding="utf-8")
    headers = {**lite.auth, "content-type": "application/json"}
    [category] = re.findall(r"-d '(\{.*?\})'\n", page, re.DOTALL)
    stored = await lite.client.put("/v1/categories/newsletter", content=category, headers=headers)
    assert stored.json()["tracking"] == {"opens": True, "clicks": True}
    [workflow] = re.findall(r"```json\n(\{\"name\".*?)```", page, re.DOTALL)
    await lite.put_template(
        "order",
        {"channels": {"email": {"subject": "s", "text": "t"}, "sms": {"text": "t"}}},
    )
    answer = await lite.client.put("/v1/workflows/reminder", content=workflow, headers=headers)
    assert answer.status_code in (200, 201), answer.text
