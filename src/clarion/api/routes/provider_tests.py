"""``POST /v1/providers/{name}/test``: send one fixed test message through one configured
provider, now, to a recipient's address on its channel (an extension of the published
API). Nothing else is involved — no template, no notification, no retry, no breaker — so
the answer says whether that provider, with those settings, can send."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from clarion.api.auth import Manager
from clarion.api.outputs import ProviderTestOut
from clarion.api.responses import JSONResponse
from clarion.api.schemas import Body, RecipientId, ShortNamePath
from clarion.domain.delivery import Delivery
from clarion.domain.ids import new_id
from clarion.domain.routing import address_for
from clarion.errors import NotFound, PermanentError, TransientError, ValidationFailed
from clarion.providers.kinds import KINDS
from clarion.resilience.backends import send_timeout
from clarion.store import recipients as recipient_store

router = APIRouter(prefix="/v1/providers", tags=["providers"])

_TITLE = "Clarion test"
_BODY = "A test message from Clarion: this provider can send."
CONTENT: dict[str, dict[str, Any]] = {
    "email": {"subject": _TITLE, "text": _BODY, "html": f"<p>{_BODY}</p>"},
    "sms": {"text": _BODY},
    "push": {"title": _TITLE, "body": _BODY},
    "webpush": {"title": _TITLE, "body": _BODY},
    "inapp": {"title": _TITLE, "body": _BODY},
    "webhook": {"body": {"event": "provider.test", "message": _BODY}},
    "chat": {"text": _BODY},
    # Meta's sample template, which every WhatsApp Business account starts with (a text
    # would reach only a number that wrote in the last 24 hours); Twilio sends the text.
    "whatsapp": {"template": "hello_world", "language": "en_US", "text": _BODY},
}


class ProviderTestIn(Body):
    recipient_id: RecipientId


@router.post("/{name}/test", response_model=ProviderTestOut)
async def test_provider(caller: Manager, name: ShortNamePath, body: ProviderTestIn) -> JSONResponse:
    """Send a test message through one provider, to a recipient.

    Needs the `manage` scope. The message goes to the recipient's address on the provider's
    channel (422 `no_address` when there is none), whether the provider is enabled or not,
    without retries and without counting toward its circuit breaker. 200 with `{"ok": true,
    "provider_message_id"}` when the service took it, `{"ok": false, "error", "reason",
    "transient"}` when it did not."""
    ctx = caller.ctx
    spec = await ctx.providers.spec(caller.tenant_id, name)
    if spec is None:
        raise NotFound(f"no provider {name!r}")
    recipient = await recipient_store.get(ctx.engine, caller.tenant_id, body.recipient_id)
    if recipient is None:
        raise NotFound(f"no recipient {body.recipient_id!r}")
    address = address_for(spec.channel, recipient)
    if address is None and KINDS[spec.kind].has_destination(spec.config):
        address = []  # a chat provider's own destination
    if address is None:
        raise ValidationFailed(
            f"recipient {body.recipient_id!r} has no {spec.channel} address",
            code="no_address",
            details=[{"field": "recipient_id", "channel": spec.channel}],
        )
    message = Delivery(
        id=new_id("tst"),
        tenant=caller.tenant_id,
        notification=new_id("tst"),
        recipient=body.recipient_id,
        channel=spec.channel,
        to=address,
        content=CONTENT[spec.channel],
        priority="normal",
        attempt=1,
        category="transactional",
    )
    timeout = send_timeout(ctx.settings)
    answer: dict[str, Any] = {"provider": name, "channel": spec.channel, "ok": False}
    try:
        async with asyncio.timeout(timeout):
            provider = await ctx.providers.get(caller.tenant_id, name)
            result = await provider.send(message)
    except TimeoutError:
        answer.update(error=f"no answer within {timeout}s", reason="timeout", transient=True)
    except (TransientError, PermanentError) as exc:
        transient = isinstance(exc, TransientError)
        answer.update(error=exc.message, reason=exc.reason, transient=transient)
    except KeyError:  # deleted between the two look-ups
        raise NotFound(f"no provider {name!r}") from None
    except Exception as exc:
        # Anything else a provider raises (a refused connection, ...) is a failed send, as
        # the send chain counts it, and retried there.
        answer.update(error=f"{type(exc).__name__}: {exc}", reason="error", transient=True)
    else:
        answer.update(ok=True, provider_message_id=result.provider_message_id)
    return JSONResponse(answer)
