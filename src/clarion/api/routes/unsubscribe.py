"""``/v1/unsubscribe/{token}``: the link in every non-critical email (RFC 8058).

No API key: the signed token is the credential. ``POST`` (a mail client's one-click, body
``List-Unsubscribe=One-Click``, or the confirm button) turns email off for the token's
category in the recipient's preferences. ``GET`` only shows that button: mail clients and
scanners fetch links on their own, and a fetch must change nothing.
"""

from __future__ import annotations

import html

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, Response

from clarion.api.outputs import Unsubscribed
from clarion.api.responses import JSONResponse, html_headers
from clarion.errors import NotFound
from clarion.security.unsubscribe import Unsubscribe, verify_token
from clarion.store import recipients as recipient_store
from clarion.store.tenants import webhook_secrets

router = APIRouter(prefix="/v1/unsubscribe", tags=["unsubscribe"])
# Any malformed, forged or stale token is the same 404: it tells a prober nothing.
Token = str
CHANNEL = "email"
_HEADERS = html_headers(
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    {
        "Cache-Control": "no-store",
        # The token is in the URL: no page this one links to may learn it.
        "Referrer-Policy": "no-referrer",
        "X-Robots-Tag": "noindex",
    },
)
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font:16px system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}
button{{font:inherit;padding:.5rem 1rem}}</style></head>
<body><h1>{title}</h1><p>{text}</p>{form}</body></html>
"""


async def _target(request: Request, token: str) -> Unsubscribe:
    target = await verify_token(webhook_secrets(request.app.state.ctx.engine), token)
    if target is None:
        raise NotFound("this unsubscribe link is not valid")
    return target


def _page(title: str, text: str, form: str = "") -> HTMLResponse:
    body = _PAGE.format(title=html.escape(title), text=text, form=form)
    return HTMLResponse(body, headers=_HEADERS)


@router.get("/{token}", response_class=HTMLResponse)
async def confirm_page(request: Request, token: Token) -> Response:
    """The unsubscribe page (changes nothing)."""
    target = await _target(request, token)
    category = html.escape(target.category)
    return _page(
        "Unsubscribe",
        f"Stop receiving <strong>{category}</strong> email?",
        '<form method="post"><input type="hidden" name="List-Unsubscribe" '
        'value="One-Click"><button type="submit">Unsubscribe</button></form>',
    )


@router.post(
    "/{token}",
    response_model=Unsubscribed,
    responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}},
)
async def unsubscribe(request: Request, token: Token) -> Response:
    """Unsubscribe from the link's category (RFC 8058 one-click)."""
    target = await _target(request, token)
    engine = request.app.state.ctx.engine
    turned_off = await recipient_store.turn_off(
        engine, target.tenant_id, target.recipient_id, target.category, CHANNEL
    )
    if not turned_off:
        raise NotFound("this unsubscribe link is not valid")
    if "text/html" in request.headers.get("accept", ""):
        category = html.escape(target.category)
        return _page("Unsubscribed", f"You will no longer receive {category} email.")
    return JSONResponse(
        {"status": "unsubscribed", "category": target.category, "channel": CHANNEL},
        headers={"Cache-Control": "no-store"},
    )
