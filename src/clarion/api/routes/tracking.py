"""``/t/o/{token}`` and ``/t/c/{token}``: email open images and tracked links
(docs/tracking.md).

No API key: the signed token is the credential (security/tracking.py), as for unsubscribe
links. A link's target comes only from a token whose signature checks out, so the redirect
is never an open one; a bad token is a 400 and records nothing. The image is answered
whatever the token (a mail client shows no error), and a hit is recorded only for a valid
one. A hit costs one insert (store/tracking.py), capped per delivery; the status webhook
event is read and published only when a webhook of the tenant wants it. Neither answer may
be cached, so that every open and click reaches the server.
"""

from __future__ import annotations

import base64
import logging

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from clarion.errors import BadRequest
from clarion.observability import metrics
from clarion.pipeline.context import Context
from clarion.pipeline.status_events import StatusEvents
from clarion.security.tracking import CLICK, OPEN, Hit, KeyOf, derive_key, verify_token
from clarion.store import tracking as store

log = logging.getLogger(__name__)
router = APIRouter(prefix="/t", tags=["tracking"])

# The smallest transparent GIF: 1x1, one transparent colour.
GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
_HEADERS = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
    # The token is in the URL: the page a link leads to must not learn it.
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
}


def _keys(ctx: Context) -> KeyOf:
    async def key_of(tenant_id: str) -> bytes | None:
        try:
            return derive_key(await ctx.webhook_secret(tenant_id))
        except KeyError:
            return None

    return key_of


async def _record(ctx: Context, hit: Hit) -> None:
    """Record a valid hit and publish its event; a failure is logged (the recipient still
    gets the image, or the link's target)."""
    try:
        limit = ctx.settings.tracking_max_events
        found = await store.record(
            ctx.engine, hit.tenant_id, hit.delivery_id, hit.event, hit.url, limit
        )
    except Exception as exc:
        log.warning("delivery %s: an %s was not recorded: %r", hit.delivery_id, hit.event, exc)
        return
    metrics.tracked(hit.event, "recorded" if found is not None else "not_recorded")
    if found is not None:
        await StatusEvents(ctx).emit_tracked(
            hit.tenant_id, hit.delivery_id, hit.event, found, hit.url
        )


@router.get(
    "/c/{token}",
    response_class=RedirectResponse,
    status_code=302,
    responses={302: {"description": "To the link's target (`Location`)"}},
)
async def click(request: Request, token: str) -> Response:
    """Follow a tracked link.

    Records a `clicked` event on the delivery (no more than the deployment's cap per
    delivery) and redirects to the target the token was signed with. A token that is
    malformed, too long or not signed by its tenant's key is a 400 `invalid_link`."""
    ctx: Context = request.app.state.ctx
    hit = await verify_token(_keys(ctx), token)
    if hit is None or hit.kind != CLICK or hit.url is None:
        metrics.tracked("clicked", "invalid")
        raise BadRequest("this link is not valid", code="invalid_link")
    await _record(ctx, hit)
    return RedirectResponse(hit.url, status_code=302, headers=_HEADERS)


@router.get(
    "/o/{token}",
    response_class=Response,
    responses={200: {"content": {"image/gif": {}}, "description": "A 1x1 transparent GIF"}},
)
async def open_image(request: Request, token: str) -> Response:
    """An email's open image.

    Always a 1x1 transparent GIF; records an `opened` event on the delivery when the token
    is valid (no more than the deployment's cap per delivery)."""
    ctx: Context = request.app.state.ctx
    try:
        hit = await verify_token(_keys(ctx), token)
    except Exception as exc:  # an image is answered, whatever happens
        log.warning("an open image's token could not be checked: %r", exc)
        hit = None
    if hit is None or hit.kind != OPEN:
        metrics.tracked("opened", "invalid")
    else:
        await _record(ctx, hit)
    return Response(GIF, media_type="image/gif", headers=_HEADERS)
