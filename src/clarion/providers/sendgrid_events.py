"""SendGrid's signed event webhook: bounces, drops and spam reports.

SendGrid POSTs a JSON array of events to ``/v1/providers/{name}/feedback?tenant=...`` and
signs each batch with ECDSA (P-256, SHA-256): ``X-Twilio-Email-Event-Webhook-Signature``
is base64 of the DER signature over ``X-Twilio-Email-Event-Webhook-Timestamp`` followed by
the raw body, checked against the provider's ``webhook_public_key``. A batch signed too
long ago (``CLARION_FEEDBACK_MAX_AGE``) is refused, so a captured batch cannot be played
again later.

What each event means (every event carries the message's ``custom_args``, among them
Clarion's ``clarion_delivery_id``):

- ``bounce``: ``type`` ``bounce`` is a hard bounce; ``blocked`` (the receiving server
  refused this message, not the address) is a soft one;
- ``spamreport``: a complaint;
- ``dropped``: SendGrid did not send, because of its own lists: ``Bounced Address`` and
  ``Invalid`` are hard bounces, ``Spam Reporting Address`` a complaint; any other reason
  (an unsubscribe at SendGrid, the message's content or size) is recorded only.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from clarion.domain.feedback import Feedback, FeedbackKind, feedback
from clarion.errors import TransientError
from clarion.providers.base import FeedbackEnv, ReportRefused
from clarion.providers.configs import SendgridConfig
from clarion.providers.credentials import p256_public_key

SIGNATURE = "x-twilio-email-event-webhook-signature"
TIMESTAMP = "x-twilio-email-event-webhook-timestamp"
CLOCK_SKEW = 300.0
DELIVERY_ARG = "clarion_delivery_id"
_DROPPED = {
    "bounced address": FeedbackKind.HARD_BOUNCE,
    "invalid": FeedbackKind.HARD_BOUNCE,
    "spam reporting address": FeedbackKind.COMPLAINT,
}


def signed_body(timestamp: str, body: bytes) -> bytes:
    """What SendGrid signs: the timestamp header's value, then the body as received."""
    return timestamp.encode() + body


async def read_feedback(
    config: Mapping[str, Any], body: bytes, headers: Mapping[str, str], env: FeedbackEnv
) -> list[Feedback]:
    """The addresses a signed batch of SendGrid events reports."""
    try:
        key_text = SendgridConfig.model_validate(dict(config)).webhook_public_key
    except ValidationError as exc:
        raise TransientError(
            "the provider's configuration is unavailable", reason="secret_key_mismatch"
        ) from exc
    if key_text is None:
        raise ReportRefused("the provider has no webhook_public_key to verify events with")
    verify(p256_public_key(key_text), body, headers, env.max_age, time.time())
    try:
        events: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ReportRefused("the events are not JSON") from exc
    if not isinstance(events, list):
        raise ReportRefused("the events are not a JSON array")
    found = (event_feedback(event) for event in events if isinstance(event, dict))
    return [item for item in found if item is not None]


def verify(
    key: ec.EllipticCurvePublicKey,
    body: bytes,
    headers: Mapping[str, str],
    max_age: float,
    now: float,
) -> None:
    """:class:`ReportRefused` unless the batch is signed by ``key`` within ``max_age``
    seconds of ``now``."""
    signature, stamp = headers.get(SIGNATURE), headers.get(TIMESTAMP)
    if not signature or not stamp:
        raise ReportRefused("the event webhook's signature or timestamp is missing")
    try:
        signed = int(stamp)
    except ValueError as exc:
        raise ReportRefused("the event webhook's timestamp is not a number") from exc
    if now - signed > max_age or signed - now > CLOCK_SKEW:
        raise ReportRefused("the event webhook's timestamp is out of the accepted window")
    try:
        key.verify(
            base64.b64decode(signature, validate=True),
            signed_body(stamp, body),
            ec.ECDSA(hashes.SHA256()),
        )
    except (InvalidSignature, binascii.Error, ValueError) as exc:
        raise ReportRefused("the event webhook's signature is wrong") from exc


def event_feedback(event: dict[str, Any]) -> Feedback | None:
    """What one event says about its address; None for an event that says nothing of it
    (delivered, opened, ...)."""
    name = event.get("event")
    if name == "bounce":
        blocked = event.get("type") == "blocked"
        kind = FeedbackKind.SOFT_BOUNCE if blocked else FeedbackKind.HARD_BOUNCE
    elif name == "spamreport":
        kind = FeedbackKind.COMPLAINT
    elif name == "dropped":
        kind = _DROPPED.get(str(event.get("reason", "")).lower(), FeedbackKind.SOFT_BOUNCE)
    else:
        return None
    words = [str(event[k]) for k in ("event", "type", "status", "reason") if event.get(k)]
    return feedback(event.get("email"), kind, " ".join(words), event.get(DELIVERY_ARG))
