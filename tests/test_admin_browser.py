"""The admin console in a real browser (headless Chromium through Playwright), end to end:
sign in, write a template while its preview follows the typing, send a test, find it in
the message log with its timeline, read the email in the sandbox viewer, break a provider
and replay the dead letter, all from the console. Hostile data shows as text, and no
request leaves 127.0.0.1. Screenshots go to ``artifacts/browser/admin-*.png``.

Needs the system's Chromium, like ``test_inbox_browser.py``."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, BrowserContext, Page, Route, expect

from clarion.pipeline.recurring import Recurring
from clarion.store import dead_letters, message_log
from clarion.store.db import utcnow
from clarion.store.tables import deliveries, delivery_events
from harness import Harness, stored_deliveries
from inbox_kit import serving
from test_inbox_browser import browser, shot

__all__ = ["browser"]

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


class Outside:
    """Every request the page makes; any to a host other than 127.0.0.1 is refused."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.refused: list[str] = []

    async def route(self, route: Route) -> None:
        url = route.request.url
        self.seen.append(url)
        host = urlsplit(url).hostname
        if url.startswith(("data:", "about:", "blob:")) or host == "127.0.0.1":
            await route.continue_()
        else:
            self.refused.append(url)
            await route.abort()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[tuple[BrowserContext, Outside]]:
    context = await browser.new_context(viewport={"width": 1440, "height": 900})
    outside = Outside()
    await context.route("**/*", outside.route)
    try:
        yield context, outside
    finally:
        await context.close()


async def _watch(page: Page, errors: list[str], requests: list[str]) -> None:
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: requests.append(request.url))


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def _deliveries(app: Harness, **params: Any) -> list[dict[str, Any]]:
    response = await app.client.get("/v1/deliveries", params=params, headers=app.auth)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def _sign_in(page: Page, base: str, key: str) -> None:
    await page.goto(f"{base}/admin/")
    await page.get_by_label("API key").fill("clk_not_a_key")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_contain_text("not valid")
    await shot(page, "admin-1-login")
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Message log")).to_be_visible()
    stored = await page.evaluate("[sessionStorage.length, localStorage.length, document.cookie]")
    assert stored == [1, 0, ""]


async def _write_template(page: Page) -> None:
    await page.get_by_role("link", name="Templates").click()
    await page.get_by_label("New template name").fill("welcome")
    await page.get_by_role("button", name="New template").click()
    await expect(page.get_by_role("heading", name="Template welcome")).to_be_visible()
    await page.locator("textarea[name=sample]").fill('{"firstName": "Alex", "orderId": "A1"}')
    subject = page.locator(".preview-pane .subject")
    await page.locator("input[name='email.subject']").fill("Hello {{ firstName }}")
    await expect(subject).to_have_text("Hello Alex")
    await page.locator("input[name='email.subject']").press_sequentially(", order {{ orderId }}")
    await expect(subject).to_have_text("Hello Alex, order A1")
    await page.locator("textarea[name='email.html']").fill(
        '<h1 style="color:#4f46e5">Welcome, {{ firstName }}</h1><p>Order {{ orderId }}.</p>'
    )
    frame = page.frame_locator(".preview-pane iframe")
    await expect(frame.locator("h1")).to_have_text("Welcome, Alex")
    await page.locator("textarea[name='email.text']").fill("Welcome, {{ firstName }}")
    # A missing variable is reported, not rendered.
    await page.locator("input[name='email.subject']").fill("Hi {{ nobody }}")
    await expect(page.locator(".preview-pane")).to_contain_text("missing_variable")
    await page.locator("input[name='email.subject']").fill("Hello {{ firstName }}")
    await expect(subject).to_have_text("Hello Alex")
    # Hostile template text shows as text in the SMS preview.
    await page.locator("[data-channel=sms]").click()
    await page.get_by_label("Send on sms").check()
    await page.locator("textarea[name='sms.text']").fill(XSS + " {{ orderId }}")
    await expect(page.locator(".preview-pane .bubble")).to_have_text(XSS + " A1")
    await shot(page, "admin-2-template-editor")
    await page.get_by_role("button", name="Save version").click()
    await expect(page.locator(".status-line")).to_have_text("Saved as version 1")
    await expect(page.locator(".versions li")).to_have_count(1)
    # A French subject: the fr locale's preview uses it; saved as version 2, then rolled back.
    await page.locator("[data-channel=email]").click()
    await page.get_by_label("New locale").fill("fr")
    await page.get_by_role("button", name="+ locale").click()
    await page.locator("input[name='email.subject']").fill("Bonjour {{ firstName }}")
    await expect(subject).to_have_text("Bonjour Alex")
    await expect(page.locator(".preview-meta")).to_have_text("email · locale fr")
    await page.locator("[data-locale='']").click()
    await expect(subject).to_have_text("Hello Alex")
    await page.get_by_role("button", name="Save version").click()
    await expect(page.locator(".status-line")).to_have_text("Saved as version 2")
    await expect(page.locator(".versions li")).to_have_count(2)
    await page.locator("[data-version='1']").get_by_role("button", name="Roll back").click()
    await expect(page.locator(".status-line")).to_have_text("Version 1 is active again")
    await expect(page.locator("[data-version='1']")).to_contain_text("active")
    await expect(page.locator("[data-locale=fr]")).to_have_count(0)


async def _send_test(page: Page, rid: str) -> str:
    await page.locator("input[name=test_recipient]").fill(rid)
    await page.get_by_role("button", name="Send test").click()
    accepted = page.locator(".test-result a")
    await accepted.wait_for()
    nid = await accepted.text_content()
    assert nid
    assert nid.startswith("ntf_")
    return nid


async def test_the_console_end_to_end(
    lite: Harness, context: tuple[BrowserContext, Outside]
) -> None:
    browser_context, outside = context
    await lite.put_recipient(
        "alex", email="alex@example.com", phone="+14155550100", data={"nickname": XSS}
    )
    async with serving(lite) as base:
        page = await browser_context.new_page()
        errors: list[str] = []
        requests: list[str] = []
        await _watch(page, errors, requests)
        await _sign_in(page, base, lite.key)
        await _write_template(page)
        nid = await _send_test(page, "alex")

        async def sent() -> bool:
            found = await _deliveries(lite, notification_id=nid)
            return [d["status"] for d in found] == ["sent", "sent"]

        await lite.until(sent)
        [delivery] = await _deliveries(lite, notification_id=nid, channel="email")

        # The message log: the notification, its delivery, the timeline.
        await page.get_by_role("link", name="Message log").click()
        row = page.locator(f"tr[data-id='{nid}']")
        await expect(row).to_contain_text("completed")
        await expect(row).to_contain_text("welcome")
        await page.get_by_label("Template").fill("welcome")
        await page.get_by_role("button", name="Apply").click()
        await expect(page.locator("tbody tr")).to_have_count(1)
        await shot(page, "admin-3-message-log")
        await page.get_by_role("link", name=nid).click()
        await page.get_by_role("link", name=delivery["id"]).first.click()
        timeline = page.locator(".timeline")
        await expect(timeline.locator("[data-type=queued]")).to_be_visible()
        await expect(timeline.locator("[data-type=sent]")).to_contain_text("sandbox")
        await shot(page, "admin-4-timeline")

        # The sandbox viewer: the email, in a sandboxed frame with no script.
        await page.get_by_role("link", name="Sandbox").click()
        await page.get_by_role("tab", name="email").click()
        item = page.locator(".mail-item").first
        await expect(item).to_contain_text("Hello Alex")
        frame = page.locator(".mail-view iframe")
        assert await frame.get_attribute("sandbox") == ""
        await expect(page.frame_locator(".mail-view iframe").locator("h1")).to_have_text(
            "Welcome, Alex"
        )
        await shot(page, "admin-5-sandbox-email")
        await page.get_by_role("tab", name="sms").click()
        await expect(page.locator(".mail-view .bubble")).to_have_text(XSS + " A1")

        # Hostile recipient data shows as text.
        await page.get_by_role("link", name="Recipients").click()
        await page.get_by_label("Recipient id").fill("alex")
        await page.get_by_role("button", name="Open").click()
        await expect(page.locator("pre.json")).to_contain_text(json.dumps(XSS))
        await expect(page.locator(".card.wide tbody tr")).to_have_count(2)
        await expect(page.locator(".card", has_text="Preferences")).to_contain_text("No opt-outs")
        await expect(page.locator(".card", has_text="In-app inbox")).to_contain_text("empty")
        await shot(page, "admin-6-recipient")

        # A provider that fails: an SMTP server nobody listens on.
        await page.get_by_role("link", name="Providers").click()
        await page.get_by_label("Name", exact=True).fill("smtp-broken")
        await page.locator("input[name='config.host']").fill("127.0.0.1")
        await page.locator("input[name='config.port']").fill(str(_closed_port()))
        await page.locator("input[name='config.password']").fill("hunter2-secret")
        await page.locator("input[name='config.from']").fill("shop@example.com")
        await page.locator("input[name='config.tls']").fill("none")
        await page.get_by_role("button", name="Add provider").click()
        provider_row = page.locator("tr[data-name='smtp-broken']")
        await expect(provider_row).to_contain_text("write-only")
        assert "hunter2" not in (await page.content())
        await page.get_by_label("Test recipient").fill("alex")
        await provider_row.get_by_role("button", name="Test").click()
        await expect(page.locator(".messages")).to_contain_text("smtp-broken: failed, transient")
        await expect(page.locator(".messages")).to_contain_text("ConnectionRefused")
        await shot(page, "admin-7-providers")

        await page.get_by_role("link", name="Templates").click()
        await page.get_by_role("link", name="welcome").click()
        failing = await _send_test(page, "alex")

        async def dead() -> bool:
            found = await _deliveries(lite, notification_id=failing, channel="email")
            return [d["status"] for d in found] == ["dead"]

        await lite.until(dead)
        [dead_email] = await _deliveries(lite, notification_id=failing, channel="email")

        # Fix it from the console (delete the broken provider: the deployment's default,
        # the sandbox, takes the channel over), then replay the dead letter.
        await page.get_by_role("link", name="Providers").click()
        await provider_row.get_by_role("button", name="Disable").click()
        await expect(provider_row).to_contain_text("disabled")
        page.once("dialog", lambda dialog: dialog.accept())
        await provider_row.get_by_role("button", name="Delete").click()
        await expect(page.locator(".messages")).to_contain_text("smtp-broken deleted")
        await expect(provider_row).to_have_count(0)
        await page.get_by_role("link", name="Dead letters").click()
        dead_row = page.locator(f"tr[data-id='{dead_email['id']}']")
        await expect(dead_row).to_contain_text("smtp-broken")
        await shot(page, "admin-8-dead-letters")
        await dead_row.locator("input[name=pick]").check()
        await page.get_by_role("button", name="Replay selected").click()
        await expect(page.locator(".messages")).to_contain_text("Replayed 1 of 1")

        async def replayed() -> bool:
            found = await _deliveries(lite, notification_id=failing, channel="email")
            return [d["status"] for d in found] == ["sent"]

        await lite.until(replayed)
        await page.goto(f"{base}/admin/#/log/delivery/{dead_email['id']}")
        await expect(page.locator(".timeline [data-type=replayed]")).to_be_visible()
        await expect(page.locator(".timeline [data-type=sent]")).to_be_visible()
        await shot(page, "admin-9-replayed")

        await page.get_by_role("link", name="Dashboard").click()
        await expect(page.locator(".channel-card[data-channel=email]")).to_be_visible()
        await shot(page, "admin-10-dashboard")

        assert await page.evaluate("window.__xss") is None
        assert errors == []
        assert outside.refused == []
        assert requests
        assert all(urlsplit(url).hostname == "127.0.0.1" for url in requests)
        await page.close()


async def test_the_api_docs_work_offline(
    lite: Harness, context: tuple[BrowserContext, Outside]
) -> None:
    browser_context, outside = context
    async with serving(lite) as base:
        page = await browser_context.new_page()
        errors: list[str] = []
        requests: list[str] = []
        await _watch(page, errors, requests)
        await page.goto(f"{base}/docs")
        await expect(page.locator(".swagger-ui .info .title")).to_contain_text("Clarion")
        await expect(page.locator(".opblock-tag-section").first).to_be_visible()
        await shot(page, "docs-1-swagger")
        assert errors == []
        assert outside.refused == []
        assert all(urlsplit(url).hostname == "127.0.0.1" for url in requests)
        await page.close()


async def test_a_log_filtered_by_status_loads_past_empty_pages(
    lite: Harness, context: tuple[BrowserContext, Outside], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Filtered by a delivery's status, a page examines a bounded stretch of deliveries and
    may be empty while the list goes on (docs/message-log.md): the log says so, not "No
    delivery matches.", and "Load more" goes on until the match shows."""
    browser_context, _ = context
    monkeypatch.setattr(message_log, "SCAN_LIMIT", 3)
    await stored_deliveries(lite, ["failed" if i == 0 else "sent" for i in range(12)])
    await _loads_past_empty_pages(
        lite,
        browser_context,
        "log?tab=deliveries&status=failed",
        "No delivery matches.",
        "dlv_0000",
    )


async def _loads_past_empty_pages(
    lite: Harness, browser_context: BrowserContext, screen: str, nothing: str, match: str
) -> None:
    """The console's ``screen`` lists 12 rows, 3 examined a page, of which only the oldest,
    ``match``, matches: the first page says so rather than ``nothing``, and "Load more"
    goes on until the match shows, then ends."""
    async with serving(lite) as base:
        page = await browser_context.new_page()
        errors: list[str] = []
        await _watch(page, errors, [])
        await _sign_in(page, base, lite.key)
        await page.goto(f"{base}/admin/#/{screen}")
        note = page.get_by_text("None among the latest examined")
        await expect(note).to_be_visible()
        await expect(page.get_by_text(nothing)).to_have_count(0)
        # 11..9 examined, then 8..6, 5..3, and 2..0 with the match.
        for _ in range(3):
            await page.get_by_role("button", name="Load more").click()
        await expect(page.locator("tbody tr")).to_have_count(1)
        await expect(page.locator("tbody")).to_contain_text(match)
        await expect(note).to_have_count(0)
        await expect(page.get_by_role("button", name="Load more")).to_have_count(0)
        assert errors == []
        await page.close()


async def test_dead_letters_filtered_by_channel_load_past_empty_pages(
    lite: Harness, context: tuple[BrowserContext, Outside], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Filtered by channel, a page of dead letters examines a bounded stretch of them and
    may be empty while the list goes on: the page says so, not "No dead letters", and
    "Load more" goes on until the match shows."""
    browser_context, _ = context
    monkeypatch.setattr(dead_letters, "SCAN_LIMIT", 3)
    ids = await stored_deliveries(lite, ["dead"] * 12)
    base = utcnow() - timedelta(seconds=30)
    async with lite.ctx.engine.begin() as conn:
        await conn.execute(
            deliveries.update().where(deliveries.c.id == ids[0]).values(channel="sms")
        )
        await conn.execute(
            delivery_events.insert(),
            [
                {
                    "delivery_id": delivery_id,
                    "tenant_id": lite.tenant_id,
                    "status": "dead",
                    "created_at": base + timedelta(seconds=i),
                }
                for i, delivery_id in enumerate(ids)
            ],
        )
    await _loads_past_empty_pages(
        lite, browser_context, "dead-letters?channel=sms", "No dead letters.", ids[0]
    )


SCREENS = [
    ("dashboard", "Dashboard"),
    ("log?tab=deliveries&status=sent", "Message log"),
    ("templates", "Templates"),
    ("templates/hostile", "Template hostile"),
    ("sandbox", "Sandbox"),
    ("dead-letters", "Dead letters"),
    ("suppressions", "Suppressions"),
    ("recipients/u-xss", "Recipient u-xss"),
    ("providers", "Providers"),
    ("settings", "Categories & webhooks"),
    ("keys", "API keys"),
    ("audit", "Audit log"),
    ("schedules", "Schedules"),
    ("topics", "Topics"),
    ("workflows", "Workflows"),
]


async def test_every_screen_shows_hostile_data_as_text(
    lite: Harness, context: tuple[BrowserContext, Outside]
) -> None:
    browser_context, outside = context
    await lite.put_template(
        "hostile",
        {
            "channels": {
                "inapp": {"title": XSS, "body": "{{ payload }}"},
                "email": {"subject": "{{ payload }}", "html": XSS, "text": "x"},
            }
        },
    )
    await lite.put_recipient(
        "u-xss", email="x@example.com", locale="fr", data={"payload": XSS, "name": XSS}
    )
    sent = await lite.send({"template": "hostile", "to": {"recipient_id": "u-xss"}})
    assert sent.status_code == 202, sent.text
    await lite.drain()
    category = await lite.client.put(
        "/v1/categories/billing", json={"max_per_hour": 5}, headers=lite.auth
    )
    assert category.status_code == 200, category.text
    suppressed = await lite.client.post(
        "/v1/suppressions",
        json={"email": "x@example.com", "reason": "bounced", "detail": XSS},
        headers=lite.auth,
    )
    assert suppressed.status_code == 201, suppressed.text
    async with serving(lite) as base:
        page = await browser_context.new_page()
        errors: list[str] = []
        requests: list[str] = []
        await _watch(page, errors, requests)
        await page.goto(f"{base}/admin/")
        await page.get_by_label("API key").fill(lite.key)
        await page.get_by_role("button", name="Sign in").click()
        for route, title in SCREENS:
            await page.goto(f"{base}/admin/#/{route}")
            await expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible()
            await page.wait_for_load_state("networkidle")
            if route == "templates/hostile":
                await expect(page.locator(".versions li")).to_have_count(1)
                await expect(page.locator(".preview-pane")).to_contain_text("payload")
            if route == "suppressions":
                await expect(page.locator(".results td.error-text")).to_have_text(XSS)
            await shot(page, "admin-screen-" + route.split("?")[0].replace("/", "-"))
        # The email's HTML is the payload, in a frame where no script runs.
        await page.goto(f"{base}/admin/#/sandbox?channel=email")
        await expect(page.locator(".mail-view .subject")).to_have_text(XSS)
        assert await page.locator(".mail-view iframe").get_attribute("sandbox") == ""
        await page.goto(f"{base}/admin/#/recipients/u-xss")
        # The in-app message (title and body the payload) in the recipient's inbox.
        await expect(page.locator(".inbox-list strong")).to_have_text(XSS)
        await expect(page.locator(".inbox-list p")).to_have_text(XSS)
        # Signing out forgets the key.
        await page.get_by_role("button", name="Sign out").click()
        await expect(page.get_by_label("API key")).to_be_visible()
        assert await page.evaluate("sessionStorage.length") == 0
        assert await page.evaluate("window.__xss") is None
        assert errors == []
        assert outside.refused == []
        assert all(urlsplit(url).hostname == "127.0.0.1" for url in requests)
        await page.close()


async def test_audit_log_schedules_and_topics(
    lite: Harness, context: tuple[BrowserContext, Outside]
) -> None:
    """The audit log (filters, a diff carrying hostile text, "Load more"), a schedule made,
    refused, fired, disabled and deleted from the console, and a topic's subscribers."""
    browser_context, outside = context
    await lite.put_recipient("u-xss", email="x@example.com", data={"payload": XSS})
    await lite.put_recipient("alex", email="alex@example.com")
    await lite.put_template("digest", {"channels": {"email": {"subject": "Digest", "text": "x"}}})
    await lite.put_template(
        "digest", {"channels": {"email": {"subject": XSS, "text": "{{ payload }}"}}}
    )
    for limit in range(1, 53):  # 52 changes of one category: more than a page of 50
        response = await lite.client.put(
            "/v1/categories/billing", json={"max_per_hour": limit}, headers=lite.auth
        )
        assert response.status_code == 200, response.text
    everything = await lite.client.get("/v1/audit", params={"limit": 500}, headers=lite.auth)
    total = len(everything.json()["data"])
    assert 52 < total < 100
    async with serving(lite) as base:
        page = await browser_context.new_page()
        errors: list[str] = []
        requests: list[str] = []
        await _watch(page, errors, requests)
        await page.goto(f"{base}/admin/")
        await page.get_by_label("API key").fill(lite.key)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("heading", name="Message log")).to_be_visible()

        # The audit log: newest first; the template's change shows the payload as text.
        await page.get_by_role("link", name="Audit log").click()
        await expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
        rows = page.locator(".results tbody tr")
        await expect(rows).to_have_count(50)
        await expect(rows.first).to_contain_text("billing")
        await expect(rows.first).to_contain_text("max_per_hour: 51 → 52")
        await page.get_by_role("button", name="Load more").click()
        await expect(rows).to_have_count(total)
        await expect(page.get_by_role("button", name="Load more")).to_have_count(0)
        await page.get_by_label("Resource").select_option("template")
        await page.get_by_role("button", name="Apply").click()
        await expect(rows).to_have_count(2)
        update = rows.first
        await expect(update).to_contain_text("update")
        await expect(update.locator("pre.diff")).to_contain_text("<script>window.__xss=2</script>")
        await expect(rows.nth(1)).to_contain_text("create")
        await shot(page, "admin-audit-log")
        await update.get_by_role("link", name="digest").click()  # its changes alone
        await expect(page.get_by_label("Name")).to_have_value("digest")
        await expect(rows).to_have_count(2)
        await page.get_by_label("Action").select_option("delete")
        await page.get_by_role("button", name="Apply").click()
        await expect(page.locator(".results")).to_contain_text("No change matches.")

        # Schedules: a bad cron and bad JSON are refused with the API's words; then one is made.
        await page.get_by_role("link", name="Schedules").click()
        await expect(page.locator(".results")).to_contain_text("No schedules")
        await page.get_by_label("Name").fill("nightly")
        await page.get_by_label("Cron").fill("61 * * * *")
        await page.get_by_label("Time zone").fill("Europe/Paris")
        notification = {"template": "digest", "to": {"recipient_id": "u-xss"}, "data": {}}
        await page.get_by_label("Notification (JSON)").fill(json.dumps(notification))
        await page.get_by_role("button", name="Create schedule").click()
        await expect(page.get_by_role("alert")).to_contain_text("validation_error")
        await expect(page.get_by_role("alert")).to_contain_text("cron")
        await page.get_by_label("Cron").fill("0 3 * * *")
        await page.get_by_label("Notification (JSON)").fill("{not json")
        await page.get_by_role("button", name="Create schedule").click()
        await expect(page.get_by_role("alert")).to_contain_text("not valid JSON")
        notification["template"] = "nope"
        await page.get_by_label("Notification (JSON)").fill(json.dumps(notification))
        await page.get_by_role("button", name="Create schedule").click()
        await expect(page.get_by_role("alert")).to_contain_text("unknown_template")
        notification.update(template="digest", data={"payload": XSS})
        await page.get_by_label("Notification (JSON)").fill(json.dumps(notification))
        await page.get_by_role("button", name="Create schedule").click()
        await expect(page.get_by_role("heading", name="Schedule nightly")).to_be_visible()
        await expect(page.locator("pre.json")).to_contain_text(json.dumps(XSS))
        await expect(page.locator(".card.wide")).to_contain_text("No runs yet.")

        # It fires: the scheduler's clock moved past its due time.
        stored = await lite.client.get("/v1/schedules/nightly", headers=lite.auth)
        due = datetime.fromisoformat(stored.json()["next_run_at"])
        lite.ctx.clock = lambda: due + timedelta(seconds=1)
        scheduler = Recurring(lite.ctx)
        while await scheduler.run_once():
            pass
        await lite.drain()
        await page.reload()
        run = page.locator(".card.wide tbody tr")
        await expect(run).to_have_count(1)
        await expect(run).to_contain_text("Europe/Paris")
        await expect(run.get_by_role("link")).to_contain_text("ntf_")
        await shot(page, "admin-schedule")
        # Edited on its page: a bad zone is refused, then a new time is saved.
        await page.get_by_label("Time zone").fill("Mars/Olympus")
        await page.get_by_role("button", name="Save schedule").click()
        await expect(page.get_by_role("alert")).to_contain_text("Mars/Olympus")
        await page.get_by_label("Time zone").fill("Europe/Paris")
        await page.get_by_label("Cron").fill("30 4 * * *")
        await page.get_by_role("button", name="Save schedule").click()
        await expect(page.locator(".facts")).to_contain_text("30 4 * * *")
        await expect(run).to_have_count(1)

        # Listed; disabled from the list; then deleted.
        await page.get_by_role("link", name="All schedules").click()
        listed = page.locator("tr[data-name=nightly]")
        await expect(listed).to_contain_text("30 4 * * *")
        await expect(listed).to_contain_text("enabled")
        await listed.get_by_role("button", name="Disable").click()
        await expect(page.locator("#main > .messages")).to_contain_text("nightly disabled")
        await expect(listed).to_contain_text("disabled")
        await shot(page, "admin-schedules")
        page.once("dialog", lambda dialog: dialog.accept())
        await listed.get_by_role("button", name="Delete").click()
        await expect(page.locator("#main > .messages")).to_contain_text("nightly deleted")
        await expect(listed).to_have_count(0)
        gone = await lite.client.get("/v1/schedules/nightly", headers=lite.auth)
        assert gone.status_code == 404

        # Topics: subscribe two (and an unknown id, reported), remove one.
        await page.get_by_role("link", name="Topics").click()
        await page.get_by_label("Topic name").fill("news")
        await page.get_by_role("button", name="Open").click()
        await expect(page.get_by_role("heading", name="Topic news")).to_be_visible()
        await expect(page.locator(".topic-size")).to_contain_text("No topic news yet")
        await page.get_by_label("Recipient ids").fill("alex, u-xss\nghost")
        await page.get_by_role("button", name="Subscribe", exact=True).click()
        await expect(page.locator(".messages")).to_contain_text("Subscribed 2 of 3")
        await expect(page.locator(".messages")).to_contain_text("ghost")
        await expect(page.locator(".topic-size")).to_contain_text("2 subscribers")
        await expect(page.locator("tr[data-id]")).to_have_count(2)
        await shot(page, "admin-topic")
        await page.locator("tr[data-id=alex]").get_by_role("button", name="Remove").click()
        await expect(page.locator(".messages")).to_contain_text("Unsubscribed 1 of 1")
        await expect(page.locator(".topic-size")).to_contain_text("1 subscriber")
        await expect(page.locator("tr[data-id]")).to_have_count(1)

        assert await page.evaluate("window.__xss") is None
        assert errors == []
        assert outside.refused == []
        assert requests
        assert all(urlsplit(url).hostname == "127.0.0.1" for url in requests)
        await page.close()


async def test_api_keys_are_made_and_revoked_from_the_console(
    lite: Harness, context: tuple[BrowserContext, Outside]
) -> None:
    """A key made in the console (its secret shown once, copied, never stored), used, then
    revoked after a confirmation; the console's own key cannot be revoked there."""
    browser_context, outside = context
    hostile = await lite.client.post(
        "/v1/keys", json={"name": XSS, "scopes": ["read"]}, headers=lite.auth
    )
    assert hostile.status_code == 201, hostile.text
    async with serving(lite) as base:
        await browser_context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
        page = await browser_context.new_page()
        errors: list[str] = []
        requests: list[str] = []
        await _watch(page, errors, requests)
        await page.goto(f"{base}/admin/")
        await page.get_by_label("API key").fill(lite.key)
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("link", name="API keys").click()
        await expect(page.get_by_role("heading", name="API keys")).to_be_visible()
        rows = page.locator("tbody tr")
        await expect(rows).to_have_count(2)
        await expect(rows.first.locator("strong")).to_have_text(XSS)
        own = rows.nth(1)
        await expect(own).to_contain_text("this console's key")
        await expect(own.get_by_role("button", name="Revoke")).to_have_count(0)

        # No scope ticked: refused before any request.
        await page.get_by_label("Key name").fill("ci deploy")
        await page.locator("input[name=scope][value=send]").uncheck()
        await page.get_by_role("button", name="Create key").click()
        await expect(page.locator(".messages")).to_contain_text("Tick at least one scope")
        await page.locator("input[name=scope][value=read]").check()
        await page.locator("input[name=scope][value=send]").check()
        await page.get_by_role("button", name="Create key").click()
        shown = page.get_by_label("New API key")
        await expect(shown).to_have_value(re.compile(r"^ck_[0-9a-f]{8}_"))
        secret = await shown.input_value()
        await expect(rows).to_have_count(3)
        made = page.locator("tbody tr", has_text="ci deploy")
        await expect(made).to_contain_text("read, send")
        await expect(made).to_contain_text(f"{secret[:11]}_…")
        await page.get_by_role("button", name="Copy").click()
        await expect(page.locator(".secret-once [role=status]")).to_have_text("Copied")
        assert await page.evaluate("navigator.clipboard.readText()") == secret
        await shot(page, "admin-keys-created")
        stored = await page.evaluate(
            "JSON.stringify([{...sessionStorage}, {...localStorage}, document.cookie])"
        )
        assert secret not in stored
        # The key works, with its scopes.
        used = await lite.client.get("/v1/templates", headers={"Authorization": f"Bearer {secret}"})
        assert used.status_code == 200, used.text
        # Done: the secret is gone from the page.
        await page.get_by_role("button", name="Done").click()
        await expect(page.locator(".secret-once")).to_have_count(0)
        assert secret not in await page.content()

        # Revoking asks first: dismissed, nothing happens; accepted, the key is refused.
        page.once("dialog", lambda dialog: dialog.dismiss())
        await made.get_by_role("button", name="Revoke").click()
        await expect(made).to_contain_text("active")
        page.once("dialog", lambda dialog: dialog.accept())
        await made.get_by_role("button", name="Revoke").click()
        await expect(page.locator(".messages")).to_contain_text("Key ci deploy revoked")
        await expect(made).to_contain_text("revoked")
        await expect(made.get_by_role("button", name="Revoke")).to_have_count(0)
        await shot(page, "admin-keys-revoked")
        refused = await lite.client.get(
            "/v1/templates", headers={"Authorization": f"Bearer {secret}"}
        )
        assert refused.status_code == 401, refused.text
        audit = await lite.client.get(
            "/v1/audit", params={"resource": "api_key"}, headers=lite.auth
        )
        assert [e["action"] for e in audit.json()["data"]][:2] == ["revoke", "create"]
        assert secret not in audit.text

        assert await page.evaluate("window.__xss") is None
        assert errors == []
        assert outside.refused == []
        assert all(urlsplit(url).hostname == "127.0.0.1" for url in requests)
        await page.close()


COMMENT = {
    "channels": {
        "inapp": {"title": "New comment", "body": "{{ who }} commented"},
        "email": {"subject": "New comment", "text": "{{ who }} commented"},
        "push": {"title": "New comment", "body": "{{ who }} commented"},
    }
}
# The expression carries markup: the diagram must show it as the characters it is.
EXIT_IF = "data.n < 3 or data.note == '<script>window.__xss=3</script>'"
NUDGE = [
    {"id": "cap", "type": "throttle", "limit": 10, "window": "1h"},
    {"id": "feed", "type": "channel", "channel": "inapp", "template": "comment"},
    {"id": "wait", "type": "delay", "duration": "1s"},
    {"id": "mail", "type": "channel", "channel": "email", "template": "comment",
     "if": "not steps.feed.read"},
    {"id": "stop", "type": "exit", "if": EXIT_IF},
    {"id": "alert", "type": "channel", "channels": ["push", "email"], "mode": "first_success",
     "template": "comment", "if": "data.urgent"},
]  # fmt: skip


async def _put_workflow(app: Harness, key: str, name: str, steps: list[dict[str, Any]]) -> None:
    response = await app.client.put(
        f"/v1/workflows/{key}", json={"name": name, "steps": steps}, headers=app.auth
    )
    assert response.status_code in (200, 201), response.text


async def _send_workflow(app: Harness, key: str, data: dict[str, Any]) -> str:
    response = await app.send({"workflow": key, "to": {"recipient_ids": ["alex"]}, "data": data})
    assert response.status_code == 202, response.text
    nid: str = response.json()["id"]
    return nid


async def test_workflows_their_diagrams_and_a_runs_path(
    lite: Harness, context: tuple[BrowserContext, Outside]
) -> None:
    """The workflows list a page at a time, a version drawn as a step diagram (another
    version picked by number), and a workflow send's run followed to its end in the
    notification's view, which refreshes itself while the run waits."""
    browser_context, outside = context
    await lite.put_template("comment", COMMENT)
    await lite.put_recipient("alex", email="alex@example.com")
    await _put_workflow(lite, "nudge", XSS, [NUDGE[1], NUDGE[3]])
    await _put_workflow(lite, "nudge", XSS, NUDGE)
    await _put_workflow(lite, "later", "Later", [{**NUDGE[2], "duration": "1h"}, NUDGE[1]])
    for n in range(51):  # more than a page of 50
        await _put_workflow(lite, f"w{n:02}", f"Filler {n}", [NUDGE[1]])
    async with serving(lite) as base:
        page = await browser_context.new_page()
        errors: list[str] = []
        requests: list[str] = []
        await _watch(page, errors, requests)
        await page.goto(f"{base}/admin/")
        await page.get_by_label("API key").fill(lite.key)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("heading", name="Message log")).to_be_visible()

        # The list: key order, 50 at a time; the hostile name shows as text.
        await page.get_by_role("link", name="Workflows").click()
        rows = page.locator(".results tbody tr")
        await expect(rows).to_have_count(50)
        await expect(rows.first).to_have_attribute("data-key", "later")
        nudge = page.locator("tr[data-key=nudge]")
        await expect(nudge.locator("td").nth(1)).to_have_text(XSS)
        await expect(nudge).to_contain_text("v2")
        await page.get_by_role("button", name="Load more").click()
        await expect(rows).to_have_count(53)
        await expect(page.get_by_role("button", name="Load more")).to_have_count(0)
        await shot(page, "admin-workflows")

        # The active version as a diagram: each step with its fields, conditions on edges.
        await nudge.get_by_role("link", name="nudge").click()
        await expect(page.get_by_role("heading", name="Workflow nudge")).to_be_visible()
        steps = page.locator(".flow-step")
        await expect(steps).to_have_count(6)
        ids = await steps.evaluate_all("(nodes) => nodes.map((n) => n.dataset.step)")
        assert ids == [step["id"] for step in NUDGE]
        await expect(page.locator(".facts")).to_contain_text(XSS)
        await expect(page.locator(".facts")).to_contain_text("active")
        edges = page.locator(".flow-if")
        await expect(edges).to_have_count(3)
        await expect(steps.nth(3).locator(".flow-if")).to_contain_text("if not steps.feed.read")
        await expect(steps.nth(4).locator(".flow-if code")).to_have_text(EXIT_IF)
        await expect(steps.nth(0).locator(".chip")).to_have_text("throttle")
        await expect(steps.nth(0).locator(".flow-fields dd")).to_have_text(
            ["10 per 1h", "the recipient"]
        )
        await expect(steps.nth(2).locator(".flow-fields dd")).to_have_text("1s")
        await expect(steps.nth(4).locator(".flow-fields dd")).to_have_text(
            "the run ends (completed)"
        )
        await expect(steps.nth(5).locator(".flow-fields dd").first).to_have_text(
            "push → email first_success"
        )
        await expect(steps.nth(1).get_by_role("link", name="comment")).to_have_attribute(
            "href", "#/templates/comment"
        )
        await shot(page, "admin-workflow-diagram")
        # Version 1, picked by number: two steps, and a link back to the active one.
        await page.get_by_label("Version", exact=True).fill("1")
        await page.get_by_role("button", name="Show").click()
        await expect(page.get_by_role("heading", name="Steps (version 1)")).to_be_visible()
        await expect(steps).to_have_count(2)
        await expect(page.get_by_role("link", name="active is v2")).to_be_visible()
        await page.get_by_label("Version", exact=True).fill("9")
        await page.get_by_role("button", name="Show").click()
        await expect(page.get_by_role("alert")).to_contain_text("has no version 9")

        # A send through it: the run waits a second, then goes on; the view follows it.
        nid = await _send_workflow(lite, "nudge", {"who": "Sam", "n": 5, "urgent": True})
        await page.goto(f"{base}/admin/#/log/notification/{nid}")
        await expect(page.locator(".facts")).to_contain_text("nudge")
        run = page.locator(".run[data-recipient=alex]")
        await expect(run).to_have_attribute("data-status", "completed", timeout=30_000)
        await expect(page.locator(".runs-head [data-status=completed]")).to_have_text("completed 1")
        await expect(page.locator(".refresh-line")).to_have_text("")
        path = run.locator(".path-step")
        reached = await path.evaluate_all(
            "(nodes) => nodes.map((n) => [n.dataset.step, n.dataset.status])"
        )
        assert reached == [
            ["cap", "passed"],
            ["feed", "sent"],
            ["wait", "completed"],
            ["mail", "sent"],
            ["stop", "skipped"],
            ["alert", "sent"],
        ]
        took = await path.nth(2).locator(".path-took").text_content()
        assert took
        match = re.fullmatch(r" \((\d+\.\d\d) s\)", took)
        assert match, took
        assert float(match[1]) >= 1.0
        await expect(path.nth(5).locator(".path-delivery")).to_have_count(2)
        await expect(path.nth(5).locator(".chip")).to_have_text(["push", "email"])
        await shot(page, "admin-workflow-run")
        # A step's delivery opens in the console's delivery view.
        await path.nth(3).locator(".path-delivery a").click()
        await expect(page.get_by_role("heading", name=re.compile(r"^Delivery dlv"))).to_be_visible()
        await expect(page.locator(".facts")).to_contain_text("email")
        await page.get_by_role("link", name="Its notification").click()
        await run.get_by_role("link", name="version 2").click()
        await expect(page.get_by_role("heading", name="Workflow nudge")).to_be_visible()

        # A run waiting an hour shows until when; cancelled, the view shows it cancelled.
        later = await _send_workflow(lite, "later", {"who": "Sam"})
        await page.get_by_role("link", name="Message log").click()
        await expect(page.locator(f"tr[data-id='{later}']")).to_contain_text("later")
        await page.get_by_role("link", name=later).click()
        await expect(run).to_have_attribute("data-status", "waiting", timeout=15_000)
        await expect(run.locator(".run-wait")).to_contain_text("waiting until")
        await expect(run.locator(".run-wait")).to_contain_text("(in 59m")
        await expect(run.locator(".path-step[data-step=wait]")).to_contain_text("delay until")
        await expect(page.locator(".refresh-line")).to_contain_text("Refreshes every 2 s")
        await shot(page, "admin-workflow-waiting")
        cancelled = await lite.client.delete(f"/v1/notifications/{later}", headers=lite.auth)
        assert cancelled.status_code == 202, cancelled.text
        await expect(run).to_have_attribute("data-status", "cancelled")
        await expect(page.locator(".refresh-line")).to_have_text("")

        assert await page.evaluate("window.__xss") is None
        assert errors == []
        assert outside.refused == []
        assert all(urlsplit(url).hostname == "127.0.0.1" for url in requests)
        await page.close()


async def test_a_category_edited_in_the_console_keeps_every_setting(
    lite: Harness, context: tuple[BrowserContext, Outside]
) -> None:
    """Edit shows each setting of the category in the form, and saving an edit changes what
    was changed and nothing else: caps per day, what goes over a cap, snoozes and the
    digest's key are not reset to their defaults."""
    browser_context, _ = context
    settings = {
        "digest": {"window": "1h", "key": "project"},
        "max_per_hour": 5,
        "max_per_day": 20,
        "overflow": "digest",
        "during_snooze": "drop",
        "tracking": {"opens": True, "clicks": False},
    }
    made = await lite.client.put("/v1/categories/billing", json=settings, headers=lite.auth)
    assert made.status_code == 200, made.text
    async with serving(lite) as base:
        page = await browser_context.new_page()
        errors: list[str] = []
        await _watch(page, errors, [])
        await _sign_in(page, base, lite.key)
        await page.get_by_role("link", name="Categories & webhooks").click()
        row = page.locator("tr[data-name=billing]")
        await expect(row).to_contain_text("1h per project")
        await expect(row).to_contain_text("5/hour, 20/day, then digest")
        await row.get_by_role("button", name="Edit").click()
        await expect(page.get_by_label("At most per day")).to_have_value("20")
        await expect(page.get_by_label("Over a cap")).to_have_value("digest")
        await expect(page.get_by_label("While snoozed")).to_have_value("drop")
        await expect(page.get_by_label("Digest key")).to_have_value("project")
        # A form the API refuses (over a cap into a digest, with no digest) is shown
        # refused, and changes nothing.
        await page.get_by_label("Digest window").fill("")
        await page.get_by_role("button", name="Save category").click()
        await expect(page.locator(".notice")).to_contain_text("digest")
        await expect(row).to_contain_text("5/hour, 20/day, then digest")
        await page.get_by_label("Digest window").fill("1h")
        await page.get_by_label("At most per hour").fill("7")
        await page.get_by_role("button", name="Save category").click()
        await expect(row).to_contain_text("7/hour, 20/day, then digest")
        assert errors == []
    stored = (await lite.client.get("/v1/categories/billing", headers=lite.auth)).json()
    assert {name: stored[name] for name in settings} == {**settings, "max_per_hour": 7}
