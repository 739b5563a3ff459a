"""WhatsApp through Twilio: the Messages API of Twilio SMS (:mod:`clarion.providers.twilio`)
with ``whatsapp:`` addresses.

A send is one form-encoded ``POST /2010-04-01/Accounts/{sid}/Messages.json`` with HTTP basic
auth, ``To=whatsapp:+E164`` and ``From=whatsapp:+E164`` (or a ``MessagingServiceSid``).
A template message names a Content API template, ``ContentSid`` with its
``ContentVariables`` (JSON); a part without one sends its text as ``Body``
(:func:`clarion.domain.whatsapp.twilio_template`). Status callbacks are Twilio's, signed
with ``X-Twilio-Signature`` as for SMS; WhatsApp adds ``read``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from clarion.domain.delivery import Delivery
from clarion.domain.models import DeliveryStatus
from clarion.domain.whatsapp import PartError, twilio_template
from clarion.errors import PermanentError
from clarion.net.answers import Meaning, Meanings
from clarion.providers.base import (
    READ,
    Report,
)
from clarion.providers.configs import TwilioWhatsappConfig
from clarion.providers.twilio import (
    E164,
    MEANINGS,
    MESSAGING_SERVICE,
    TwilioMessages,
    verify,
)

PREFIX = "whatsapp:"
_TEMPLATE = Meaning("template_rejected")
# Twilio's WhatsApp error codes (twilio.com/docs/api/errors), besides those of SMS.
WHATSAPP_MEANINGS: Meanings = {
    **MEANINGS,
    # Outside the 24-hour window: only a template message may go.
    (None, "63016"): Meaning("outside_window"),
    # Not a WhatsApp number, or one that cannot receive this.
    (None, "63003"): Meaning("invalid_address"),
    (None, "63024"): Meaning("invalid_address"),
    # The sender: no WhatsApp channel for the From address, the business account disabled.
    (None, "63007"): Meaning("account_problem"),
    (None, "63112"): Meaning("account_problem"),
    # Too many messages: the channel's rate, the account's daily limit.
    (None, "63018"): Meaning("rate_limited", transient=True),
    (None, "63038"): Meaning("rate_limited", transient=True),
    # The Content template: its SID, its variables, not approved for WhatsApp, no such
    # template in the language, parameters that do not fit.
    **{(None, code): _TEMPLATE for code in ("21655", "21656", "63005", "63027", "63028", "63030")},
}


def read_report(
    config: Mapping[str, Any],
    url: str,
    params: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
) -> Report | None:
    """A Twilio WhatsApp status callback, verified by its ``X-Twilio-Signature``:
    ``delivered``, ``read``, or ``failed``/``undelivered`` (the reason its ``ErrorCode``
    gives, else ``provider_rejected``); any other status changes nothing."""
    verify(TwilioWhatsappConfig, config, url, params, headers)
    fields = dict(params)
    status = fields.get("MessageStatus", "")
    sid = fields.get("MessageSid") or None
    if status == "delivered":
        return Report(DeliveryStatus.DELIVERED, message_id=sid)
    if status == "read":
        return Report(READ, message_id=sid)
    if status in ("failed", "undelivered"):
        code = fields.get("ErrorCode", "")
        error = f"Twilio reported {status}" + (f" (error {code})" if code else "")
        meaning = WHATSAPP_MEANINGS.get((None, code)) if code else None
        reason = meaning.reason if meaning is not None and not meaning.transient else None
        return Report(
            DeliveryStatus.FAILED, reason=reason or "provider_rejected", error=error, message_id=sid
        )
    return None


class TwilioWhatsappProvider(TwilioMessages):
    """Sends WhatsApp messages from a tenant's Twilio WhatsApp sender."""

    kind = "twilio_whatsapp"
    CONFIG = TwilioWhatsappConfig
    MEANINGS = WHATSAPP_MEANINGS

    def form(self, message: Delivery) -> dict[str, str]:
        """The Messages API request for one delivery."""
        to = message.to
        if not isinstance(to, str) or not to:
            raise PermanentError("the recipient has no WhatsApp number", reason="no_address")
        if not E164.match(to):
            raise PermanentError("the number is not in E.164 form", reason="invalid_address")
        sender = self._config.from_
        if MESSAGING_SERVICE.match(sender):
            form = {"To": PREFIX + to, "MessagingServiceSid": sender}
        else:
            form = {"To": PREFIX + to, "From": PREFIX + sender}
        form.update(_content(message.content))
        form["StatusCallback"] = self.callback(message)
        return form


def _content(part: Mapping[str, Any]) -> dict[str, str]:
    """``ContentSid`` and ``ContentVariables`` for a part with a Content template, else its
    text as ``Body``."""
    try:
        template = twilio_template(part)
    except PartError as exc:
        raise PermanentError(str(exc), reason="render_error") from exc
    if template is not None:
        sid, variables = template
        content = {"ContentSid": sid}
        if variables:
            content["ContentVariables"] = orjson.dumps(variables).decode()
        return content
    text = part.get("text")
    if not isinstance(text, str) or not text.strip():
        raise PermanentError(
            "the WhatsApp part has no content_sid (a Twilio Content template) and no text",
            reason="render_error",
        )
    return {"Body": text}
