"""Amazon SES bounce and complaint notifications, delivered by SNS to Clarion's feedback URL.

SES publishes a ``Bounce`` or ``Complaint`` notification (an identity's feedback
notifications, ``notificationType``; or a configuration set's event destination,
``eventType``) to an SNS topic, and SNS POSTs it, signed, to
``/v1/providers/{name}/feedback?tenant=...``. The signature is checked by
:mod:`clarion.providers.sns`; the topic must be one of the provider's
``feedback_topic_arns`` (a valid signature only says that SNS sent it, and any AWS
account can subscribe an endpoint to its own topic). A ``SubscriptionConfirmation``
from such a topic is confirmed at once.

A ``Permanent`` bounce is a hard bounce; ``Transient`` and ``Undetermined`` ones are soft.
A notification names the delivery when it carries Clarion's ``X-Clarion-Delivery-Id``
header (the identity's notifications with original headers included) or its
``clarion_delivery_id`` tag (event publishing).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import ValidationError

from clarion.domain.dsn import DELIVERY_HEADER
from clarion.domain.feedback import Feedback, FeedbackKind, feedback
from clarion.errors import TransientError
from clarion.providers.base import FeedbackEnv, ReportRefused
from clarion.providers.configs import SesConfig
from clarion.providers.sns import NOTIFICATION, SUBSCRIPTION

# SES sends a message to at most 50 recipients.
MAX_RECIPIENTS = 100


async def read_feedback(
    config: Mapping[str, Any], body: bytes, headers: Mapping[str, str], env: FeedbackEnv
) -> list[Feedback]:
    """The addresses an SNS-delivered SES notification reports; [] for a subscription's
    confirmation (confirmed) and for other notifications."""
    try:
        topics = SesConfig.model_validate(dict(config)).feedback_topic_arns
    except ValidationError as exc:
        raise TransientError(
            "the provider's configuration is unavailable", reason="secret_key_mismatch"
        ) from exc
    if not topics:
        raise ReportRefused("the provider takes no SNS topic's notifications (feedback_topic_arns)")
    message = await env.sns.verify(body)
    if message["TopicArn"] not in topics:
        raise ReportRefused("the SNS topic is not one of the provider's feedback_topic_arns")
    if message["Type"] == SUBSCRIPTION:
        await env.sns.confirm(message)
        return []
    if message["Type"] != NOTIFICATION:
        return []
    return notification_feedback(message["Message"])


def notification_feedback(text: str) -> list[Feedback]:
    """The addresses an SES notification (the SNS message's ``Message``) reports."""
    try:
        data: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(data, dict):
        return []
    kind = data.get("notificationType") or data.get("eventType")
    delivery_id = _delivery_id(data.get("mail"))
    if kind == "Bounce":
        return _bounce(_object(data.get("bounce")), delivery_id)
    if kind == "Complaint":
        return _complaint(_object(data.get("complaint")), delivery_id)
    return []


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _listed(value: Any) -> list[dict[str, Any]]:
    items = value if isinstance(value, list) else []
    return [item for item in items[:MAX_RECIPIENTS] if isinstance(item, dict)]


def _bounce(bounce: dict[str, Any], delivery_id: str | None) -> list[Feedback]:
    hard = bounce.get("bounceType") == "Permanent"
    kind = FeedbackKind.HARD_BOUNCE if hard else FeedbackKind.SOFT_BOUNCE
    found = []
    for recipient in _listed(bounce.get("bouncedRecipients")):
        words = [str(bounce.get("bounceType")), str(bounce.get("bounceSubType"))]
        words += [str(recipient[k]) for k in ("status", "diagnosticCode") if recipient.get(k)]
        found.append(feedback(recipient.get("emailAddress"), kind, " ".join(words), delivery_id))
    return [item for item in found if item is not None]


def _complaint(complaint: dict[str, Any], delivery_id: str | None) -> list[Feedback]:
    detail = complaint.get("complaintFeedbackType") or complaint.get("complaintSubType")
    found = [
        feedback(r.get("emailAddress"), FeedbackKind.COMPLAINT, detail, delivery_id)
        for r in _listed(complaint.get("complainedRecipients"))
    ]
    return [item for item in found if item is not None]


def _delivery_id(mail: Any) -> str | None:
    """Clarion's delivery id, from the original headers or the message's tags."""
    if not isinstance(mail, dict):
        return None
    for header in _listed(mail.get("headers")):
        if str(header.get("name", "")).lower() == DELIVERY_HEADER.lower():
            value = header.get("value")
            return value if isinstance(value, str) else None
    tags = mail.get("tags")
    values = tags.get("clarion_delivery_id") if isinstance(tags, dict) else None
    if isinstance(values, list) and values and isinstance(values[0], str):
        return values[0]
    return None
