"""Every HTML page refuses to be framed by another site: ``Content-Security-Policy:
frame-ancestors 'none'`` and ``X-Frame-Options: DENY``. The test walks every GET route of
the app (path parameters filled with working values where it has them) and checks each
answer that is HTML."""

from __future__ import annotations

import importlib
import pkgutil
import re

from starlette.routing import Route

import clarion.api.routes
from clarion.security.unsubscribe import UnsubscribeLinks
from clarion.store.tenants import webhook_secrets
from harness import Harness

# The HTML pages the walk must meet: if one of them stops answering HTML, the walk would
# check nothing for it, so that fails too.
KNOWN_PAGES = {"/admin/", "/docs", "/inbox/demo", "/v1/unsubscribe/{token}"}


def get_routes() -> list[Route]:
    """Every GET route of every router module of the API."""
    found = []
    for info in pkgutil.iter_modules(clarion.api.routes.__path__):
        module = importlib.import_module(f"clarion.api.routes.{info.name}")
        for route in module.router.routes:
            if isinstance(route, Route) and "GET" in (route.methods or ()):
                found.append(route)
    return found


def assert_not_frameable(path: str, headers: dict[str, str]) -> None:
    csp = headers.get("content-security-policy", "")
    ancestors = [part.strip() for part in csp.split(";") if "frame-ancestors" in part]
    assert ancestors == ["frame-ancestors 'none'"], (path, csp)
    assert headers.get("x-frame-options") == "DENY", path


async def test_every_html_page_forbids_framing(lite: Harness) -> None:
    await lite.put_recipient("u-1", email="alex@example.com")
    links = UnsubscribeLinks(webhook_secrets(lite.ctx.engine), "https://clarion.example/")
    unsubscribe = await links.url(lite.tenant_id, "u-1", "marketing")
    values = {"token": unsubscribe.rsplit("/", 1)[1]}
    html: set[str] = set()
    for route in get_routes():
        path = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values.get(m[1], "x"), route.path)
        response = await lite.client.get(path, headers={**lite.auth, "Accept": "text/html"})
        if response.headers.get("content-type", "").startswith("text/html"):
            assert_not_frameable(route.path, dict(response.headers))
            html.add(route.path)
    assert html >= KNOWN_PAGES, KNOWN_PAGES - html
    # The unsubscribe confirmation a browser gets after the button.
    path = unsubscribe.removeprefix("https://clarion.example")
    response = await lite.client.post(
        path,
        content=b"List-Unsubscribe=One-Click",
        headers={"content-type": "application/x-www-form-urlencoded", "accept": "text/html"},
    )
    assert response.headers["content-type"].startswith("text/html")
    assert_not_frameable(path, dict(response.headers))
