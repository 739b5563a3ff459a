"""The drop-in inbox in a real browser (headless Chromium through Playwright): the demo page
shows the badge and the message of a notification sent through the API without a reload,
and marking it read makes the count drop. Screenshots go to ``artifacts/browser/`` (or
``$CLARION_TEST_ARTIFACTS/browser``).

Needs the system's Chromium (Debian's ``chromium``; ``.ci/run`` installs it): without it
the test is skipped locally and fails under CI."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.async_api import Browser, Page, async_playwright

from harness import Harness
from inbox_kit import inbox_ready, send, serving

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

ARTIFACTS = Path(os.environ.get("CLARION_TEST_ARTIFACTS", "artifacts")) / "browser"


def chromium() -> str:
    for candidate in (os.environ.get("CLARION_TEST_CHROMIUM"), "chromium", "chromium-browser"):
        found = candidate and shutil.which(candidate)
        if found:
            return found
    reason = "Chromium is not installed (apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    path = chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=path, headless=True, args=["--no-sandbox"]
        )
        try:
            yield launched
        finally:
            await launched.close()


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_the_demo_inbox_goes_live_in_chromium(
    lite: Harness, browser: Browser, transport: str
) -> None:
    token = await inbox_ready(lite, "demo-user")
    async with serving(lite) as base:
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        # What the page asks of the server (a fragment never leaves the browser).
        urls: list[str] = []
        page.on("request", lambda request: urls.append(request.url.partition("#")[0]))
        page.on("websocket", lambda socket: urls.append(socket.url))
        fragment = f"token={token}" + ("&transport=sse" if transport == "sse" else "")
        await page.goto(f"{base}/inbox/demo#{fragment}")
        bell = page.locator("clarion-inbox .bell")
        badge = page.locator("clarion-inbox .badge")
        await bell.wait_for()
        assert await badge.is_hidden()
        # A marker that a reload would wipe out.
        await page.evaluate("window.__sameDocument = true")
        await shot(page, f"{transport}-1-empty")

        await send(lite, "demo-user", 42)
        await badge.wait_for(state="visible", timeout=15_000)
        assert await badge.text_content() == "1"
        assert await bell.get_attribute("aria-label") == "Notifications, 1 unread"
        await bell.click()
        item = page.locator("clarion-inbox .item")
        await item.first.wait_for()
        assert "Shipped 42" in (await item.first.text_content() or "")
        assert await bell.get_attribute("aria-expanded") == "true"
        await shot(page, f"{transport}-2-arrived")

        await page.locator('clarion-inbox .item button[data-action="read"]').first.click()
        await badge.wait_for(state="hidden", timeout=15_000)
        assert await bell.get_attribute("aria-label") == "Notifications"
        await page.keyboard.press("Escape")
        assert await bell.get_attribute("aria-expanded") == "false"
        await shot(page, f"{transport}-3-read")

        # The server drops the connection; the component comes back (with a new ticket,
        # resuming after its last cursor) and what is sent meanwhile still shows.
        lite.ctx.hub.close_all("resync")
        await send(lite, "demo-user", 43)
        await badge.wait_for(state="visible", timeout=15_000)
        await bell.click()
        await page.locator("clarion-inbox .item", has_text="Shipped 43").wait_for()
        assert await page.evaluate("window.__sameDocument") is True
        assert errors == []
        # Each live connection carried a ticket of its own, never the token; the second
        # resumed after the first's last cursor.
        live = [u for u in urls if "/v1/inbox/stream" in u or "/v1/inbox/ws" in u]
        assert len(live) >= 2, urls
        tickets = [parse_qs(urlsplit(u).query)["ticket"][0] for u in live]
        assert len(set(tickets)) == len(tickets)
        assert "after" in parse_qs(urlsplit(live[-1]).query)
        assert not [u for u in urls if token in u]
        await page.close()
