"""WhatsApp through Meta's Cloud API: ``POST /{version}/{phone_number_id}/messages``.

A send is one JSON request with the access token as a bearer token: a template message
(the part's ``template``), or a text message when the part has none
(:mod:`clarion.domain.whatsapp`). It carries the delivery's id as
``biz_opaque_callback_data``, which Meta hands back in the message's status webhooks; the
answer's ``messages[0].id`` (``wamid....``) is the provider message id.

Meta reports a message's status (``sent``, ``delivered``, ``read``, ``failed`` with
``errors[]``) to the app's webhook, signed in ``X-Hub-Signature-256`` (``sha256=`` and the
hex HMAC-SHA256 of the raw body, keyed by the app secret): :func:`read_reports`. The
webhook URL is verified once by a GET handshake (``hub.mode=subscribe``,
``hub.verify_token``, ``hub.challenge``): :func:`verify_subscription`.

Errors are ``{"error": {"message", "type", "code", "error_data": {"details"}, ...}}``; the
code says more than the HTTP status (:data:`MEANINGS`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import orjson
from pydantic import ValidationError

from clarion.domain.delivery import Delivery
from clarion.domain.models import DeliveryStatus
from clarion.domain.whatsapp import PartError, meta_message
from clarion.errors import PermanentError, ProviderError, TransientError
from clarion.net.answers import Meaning, Meanings, classify
from clarion.providers.base import (
    READ,
    Provider,
    ProviderEnv,
    ProviderSpec,
    Report,
    ReportRefused,
    SendResult,
)
from clarion.providers.configs import WhatsappCloudConfig
from clarion.providers.http import ApiClient

API_URL = "https://graph.facebook.com"
TIMEOUT = 15.0
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
# What a webhook may name as a delivery (Clarion's own ids, bounded).
DELIVERY_ID = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
# A webhook's statuses read at most (Meta batches up to a thousand changes).
MAX_STATUSES = 1000
# A handshake's challenge, as echoed back (Meta sends digits).
CHALLENGE = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")

_RATE = Meaning("rate_limited", transient=True)
_SERVICE = Meaning("service_error", transient=True)
_ACCOUNT = Meaning("account_problem")
_TEMPLATE = Meaning("template_rejected")
_CREDENTIALS = Meaning("bad_credentials")
_NUMBER = Meaning("invalid_address")
# Meta's error codes (developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes).
MEANINGS: Meanings = {
    # Outside the 24-hour customer-service window: only a template message may go.
    (None, "131047"): Meaning("outside_window"),
    # Undeliverable: not a WhatsApp user, an old app, terms not accepted; not allowed as a
    # test number; the sender itself.
    (None, "131026"): _NUMBER,
    (None, "131030"): _NUMBER,
    (None, "131021"): _NUMBER,
    # The person stopped this business's marketing messages.
    (None, "131050"): Meaning("opted_out"),
    # Throughput, pair rate (too many to one number), spam rate, API rate limits.
    **{(None, code): _RATE for code in ("130429", "131056", "131048", "80007", "4", "613")},
    # Meta's own trouble.
    **{(None, code): _SERVICE for code in ("1", "2", "131000", "131016", "133004")},
    # The access token: invalid or expired, or without the permission.
    **{(None, code): _CREDENTIALS for code in ("0", "3", "10", "190", "200")},
    # The account: locked, payment, the number not registered, blocked for policy.
    **{(None, code): _ACCOUNT for code in ("131031", "131042", "133010", "368")},
    # The template: parameters that do not fit, no such template (in that language),
    # paused or disabled, text too long or badly formatted.
    **{
        (None, code): _TEMPLATE
        for code in ("132000", "132001", "132005", "132007", "132012", "132015", "132016")
    },
}


def messages_url(base: str, config: WhatsappCloudConfig) -> str:
    return f"{base.rstrip('/')}/{config.api_version}/{config.phone_number_id}/messages"


def webhook_url(public_url: str, provider: str, tenant_id: str) -> str:
    """Where Meta is to send the status webhooks of a tenant's provider (set up once in the
    Meta app's WhatsApp configuration)."""
    return f"{public_url.rstrip('/')}/v1/providers/{provider}/callbacks?tenant={tenant_id}"


def signature(app_secret: str, body: bytes) -> str:
    """``X-Hub-Signature-256``'s value: ``sha256=`` and the hex HMAC-SHA256 of the raw
    body, keyed by the app secret."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def _config(config: Mapping[str, Any]) -> WhatsappCloudConfig:
    try:
        return WhatsappCloudConfig.model_validate(dict(config))
    except ValidationError as exc:
        # The stored credentials cannot be read (e.g. sealed with another secret key).
        raise TransientError(
            "the provider's credentials are unavailable", reason="secret_key_mismatch"
        ) from exc


def verify_subscription(config: Mapping[str, Any], query: Mapping[str, str]) -> str:
    """Meta's verification of the webhook URL: ``hub.mode=subscribe`` with the provider's
    ``verify_token`` is answered with ``hub.challenge``; anything else is refused."""
    expected = _config(config).verify_token
    given = query.get("hub.verify_token") or ""
    challenge = query.get("hub.challenge") or ""
    if expected is None or query.get("hub.mode") != "subscribe":
        raise ReportRefused("not a webhook verification this provider answers")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ReportRefused("the verify token is wrong")
    if not CHALLENGE.match(challenge):
        raise ReportRefused("the challenge is missing or not one Meta sends")
    return challenge


def read_reports(
    config: Mapping[str, Any], body: bytes, headers: Mapping[str, str]
) -> Sequence[Report]:
    """The status reports of a Meta webhook, verified by its ``X-Hub-Signature-256``: a
    ``delivered``, ``read`` or ``failed`` report for each status that names its delivery
    (``biz_opaque_callback_data``); ``sent`` and other notifications (incoming messages,
    template reviews) change nothing."""
    app_secret = _config(config).app_secret
    given = headers.get("x-hub-signature-256") or ""
    if app_secret is None:
        raise ReportRefused("the provider has no app_secret to verify webhooks with")
    if not hmac.compare_digest(signature(app_secret, body).encode(), given.encode()):
        raise ReportRefused("the request signature is missing or wrong")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ReportRefused("the request is not a WhatsApp webhook") from exc
    reports = []
    for status in _statuses(data):
        report = _report(status)
        if report is not None:
            reports.append(report)
    return reports


def _statuses(data: Any) -> Iterator[Mapping[str, Any]]:
    """``entry[].changes[].value.statuses[]``, malformed parts left out, at most
    :data:`MAX_STATUSES`."""
    count = 0
    entries = data.get("entry") if isinstance(data, dict) else None
    for entry in entries if isinstance(entries, list) else ():
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for change in changes if isinstance(changes, list) else ():
            value = change.get("value") if isinstance(change, dict) else None
            statuses = value.get("statuses") if isinstance(value, dict) else None
            for status in statuses if isinstance(statuses, list) else ():
                if isinstance(status, dict) and count < MAX_STATUSES:
                    count += 1
                    yield status


def _report(status: Mapping[str, Any]) -> Report | None:
    delivery = status.get("biz_opaque_callback_data")
    message_id = status.get("id")
    if not isinstance(delivery, str) or not DELIVERY_ID.match(delivery):
        return None
    message_id = message_id[:255] if isinstance(message_id, str) and message_id else None
    state = status.get("status")
    if state == "delivered":
        return Report(DeliveryStatus.DELIVERED, delivery_id=delivery, message_id=message_id)
    if state == "read":
        return Report(READ, delivery_id=delivery, message_id=message_id)
    if state != "failed":
        return None
    code, title = _first_error(status.get("errors"))
    error = "WhatsApp reported failed" + (f" (error {code}: {title})" if code else "")
    meaning = MEANINGS.get((None, code)) if code else None
    # A failure reported later is final whatever its cause: the message is not retried.
    reason = meaning.reason if meaning is not None and not meaning.transient else None
    return Report(
        DeliveryStatus.FAILED,
        reason=reason or "provider_rejected",
        error=error,
        delivery_id=delivery,
        message_id=message_id,
    )


def _first_error(errors: Any) -> tuple[str, str]:
    first = errors[0] if isinstance(errors, list) and errors else None
    if not isinstance(first, dict):
        return "", ""
    code = first.get("code")
    code = str(code) if isinstance(code, int) and not isinstance(code, bool) else ""
    data = first.get("error_data")
    details = data.get("details") if isinstance(data, dict) else None
    words = details or first.get("message") or first.get("title") or ""
    return code, str(words)[:300]


def whatsapp_error(status: int, body: bytes, retry_after: str | None) -> ProviderError | None:
    """The error of a Cloud API answer (None for a success)."""
    code, text = _error_of(body)
    detail = f"WhatsApp HTTP {status}" + (f" error {code}" if code else "") + f": {text}"
    return classify(status, detail, retry_after=retry_after, code=code, meanings=MEANINGS)


def _error_of(body: bytes) -> tuple[str, str]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "", body[:200].decode(errors="replace")
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return "", str(data)[:200]
    code = error.get("code")
    code = str(code) if isinstance(code, int) and not isinstance(code, bool) else ""
    data = error.get("error_data")
    details = data.get("details") if isinstance(data, dict) else None
    message = str(error.get("message", ""))
    text = f"{message} ({details})" if details and details != message else message
    return code, text[:300]


class WhatsappCloudProvider(Provider):
    """Sends WhatsApp messages from a tenant's business phone number (its
    ``phone_number_id``) through the Cloud API."""

    kind = "whatsapp_cloud"

    def __init__(self, spec: ProviderSpec, env: ProviderEnv) -> None:
        self._spec = spec
        self._config = WhatsappCloudConfig.model_validate(spec.config)
        base = str(self._config.base_url) if self._config.base_url else API_URL
        self._url = messages_url(base, self._config)
        self._headers = {
            "authorization": f"Bearer {self._config.access_token}",
            "accept": "application/json",
            "content-type": "application/json",
        }
        self._http = ApiClient(
            user_agent="Clarion/1",
            guard=env.guard(self._config.proxy),
            timeout=float(env.extra.get("timeout", TIMEOUT)),
        )

    def message(self, delivery: Delivery) -> dict[str, Any]:
        """The Cloud API request for one delivery."""
        to = delivery.to
        if not isinstance(to, str) or not to:
            raise PermanentError("the recipient has no WhatsApp number", reason="no_address")
        if not E164.match(to):
            raise PermanentError("the number is not in E.164 form", reason="invalid_address")
        try:
            message = meta_message(to, delivery.content)
        except PartError as exc:
            raise PermanentError(str(exc), reason="render_error") from exc
        return {**message, "biz_opaque_callback_data": delivery.id}

    async def send(self, message: Delivery) -> SendResult:
        body = orjson.dumps(self.message(message))
        reply = await self._http.post(self._url, body, self._headers, what="WhatsApp")
        error = whatsapp_error(reply.status, reply.body, reply.headers.get("retry-after"))
        if error is not None:
            raise error
        return SendResult(provider_message_id=_message_id(reply.body))

    async def aclose(self) -> None:
        await self._http.aclose()


def _message_id(body: bytes) -> str | None:
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    messages = data.get("messages") if isinstance(data, dict) else None
    first = messages[0] if isinstance(messages, list) and messages else None
    found = first.get("id") if isinstance(first, dict) else None
    return found if isinstance(found, str) else None
