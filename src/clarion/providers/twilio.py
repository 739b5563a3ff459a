"""Twilio SMS: the Programmable Messaging API, with signed status callbacks.

A send is one form-encoded ``POST /2010-04-01/Accounts/{sid}/Messages.json`` with HTTP basic
auth; the message's ``sid`` (``SM...``) is the provider message id. Twilio later reports
delivery to the ``StatusCallback`` URL, which names the tenant and the delivery and is signed
by Twilio with the account's auth token (``X-Twilio-Signature``, checked by
:func:`valid_signature`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
from pydantic import ValidationError

from clarion.domain.delivery import Delivery
from clarion.domain.models import DeliveryStatus
from clarion.errors import PermanentError, ProviderError, TransientError
from clarion.net.answers import Meaning, Meanings, classify
from clarion.providers.base import (
    Provider,
    ProviderEnv,
    ProviderSpec,
    Report,
    ReportRefused,
    SendResult,
)
from clarion.providers.configs import TwilioConfig, TwilioWhatsappConfig
from clarion.providers.http import ApiClient

API_URL = "https://api.twilio.com"
TIMEOUT = 15.0
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
MESSAGING_SERVICE = re.compile(r"^MG[0-9a-fA-F]{32}$")
# Twilio error codes meaning the 'To' number cannot receive this message, ever.
INVALID_TO = frozenset({21211, 21217, 21401, 21614})
# The recipient replied STOP: Twilio refuses to message them until they opt back in.
UNSUBSCRIBED = 21610


def status_callback_url(public_url: str, provider: str, tenant_id: str, delivery_id: str) -> str:
    """Where Twilio reports a message's status: Clarion's callback route for this delivery."""
    query = urlencode({"tenant": tenant_id, "delivery": delivery_id})
    return f"{public_url.rstrip('/')}/v1/providers/{provider}/callbacks?{query}"


def signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """Twilio's request signature: base64 of HMAC-SHA1, keyed by the auth token, over the
    full URL followed by every POST parameter's name and value, sorted by name (and, for a
    repeated name, by value)."""
    data = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def valid_signature(
    auth_token: str, url: str, params: Iterable[tuple[str, str]], given: str | None
) -> bool:
    """Whether ``given`` is Twilio's signature of this request (compared in constant time).
    Twilio may have signed the URL with its default port spelled out or left out, so both
    forms are accepted."""
    if not given:
        return False
    pairs = list(params)
    found = False
    for candidate in _port_forms(url):
        expected = signature(auth_token, candidate, pairs)
        found |= hmac.compare_digest(expected.encode(), given.encode())
    return found


def read_report(
    config: Mapping[str, Any],
    url: str,
    params: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
) -> Report | None:
    """A Twilio status callback, verified by its ``X-Twilio-Signature``: ``delivered``, or
    ``failed``/``undelivered`` (``provider_rejected``); any other status changes nothing.
    :class:`TransientError` when the account's auth token cannot be read."""
    verify(TwilioConfig, config, url, params, headers)
    status = dict(params).get("MessageStatus", "")
    if status == "delivered":
        return Report(DeliveryStatus.DELIVERED)
    if status in ("failed", "undelivered"):
        code = dict(params).get("ErrorCode")
        error = f"Twilio reported {status}" + (f" (error {code})" if code else "")
        return Report(DeliveryStatus.FAILED, reason="provider_rejected", error=error)
    return None


def verify(
    model: type[TwilioConfig] | type[TwilioWhatsappConfig],
    config: Mapping[str, Any],
    url: str,
    params: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
) -> None:
    """Check a status callback's ``X-Twilio-Signature`` with the auth token of ``config``
    (a ``model``): :class:`ReportRefused` when it is wrong, :class:`TransientError` when
    the stored auth token cannot be read."""
    try:
        auth_token = model.model_validate(dict(config)).auth_token
    except ValidationError as exc:
        # The stored credentials cannot be read (e.g. sealed with another secret key).
        raise TransientError(
            "the provider's credentials are unavailable", reason="secret_key_mismatch"
        ) from exc
    if not valid_signature(auth_token, url, params, headers.get("x-twilio-signature")):
        raise ReportRefused("the request signature is missing or wrong")


def _port_forms(url: str) -> list[str]:
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    host = parts.hostname or ""
    if default is None or (parts.port is not None and parts.port != default):
        return [url]
    if ":" in host:
        host = f"[{host}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    bare = urlunsplit(parts._replace(netloc=f"{prefix}{host}"))
    with_port = urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}"))
    return list(dict.fromkeys([url, bare, with_port]))


# What Twilio's error codes say beyond the status (net/answers.py classifies the rest).
MEANINGS: Meanings = {
    **{(None, str(code)): Meaning("invalid_address") for code in INVALID_TO},
    (None, str(UNSUBSCRIBED)): Meaning("opted_out"),
}


def twilio_error(
    status: int, body: bytes, retry_after: str | None, meanings: Meanings = MEANINGS
) -> ProviderError | None:
    """The error of a Twilio answer (None for a success); ``meanings`` are the error codes
    of the channel sent on (:data:`MEANINGS` for SMS)."""
    code, text = _error_of(body)
    detail = f"Twilio HTTP {status}" + (f" error {code}" if code else "") + f": {text}"
    return classify(
        status,
        detail,
        retry_after=retry_after,
        code=str(code) if code else "",
        meanings=meanings,
    )


def _error_of(body: bytes) -> tuple[int | None, str]:
    """Twilio errors are ``{"code", "message", "more_info", "status"}``; proxies may differ."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, body[:200].decode(errors="replace")
    if not isinstance(data, dict):
        return None, str(data)[:200]
    code = data.get("code")
    return (code if isinstance(code, int) else None), str(data.get("message", ""))[:200]


class TwilioMessages(Provider):
    """A provider that creates Messages through a tenant's Twilio account (the Messages
    API, form-encoded, the account's key as Basic credentials): SMS here, WhatsApp in
    ``providers/twilio_whatsapp.py``. A kind gives its configuration's model, the form of
    one delivery, and what Twilio's error codes mean on its channel."""

    CONFIG: ClassVar[type[TwilioConfig] | type[TwilioWhatsappConfig]] = TwilioConfig
    MEANINGS: ClassVar[Meanings] = MEANINGS

    def __init__(self, spec: ProviderSpec, env: ProviderEnv) -> None:
        self._spec = spec
        self._config = self.CONFIG.model_validate(spec.config)
        self._public_url = env.settings.public_url
        base = str(self._config.base_url) if self._config.base_url else API_URL
        self._url = (
            f"{base.rstrip('/')}/2010-04-01/Accounts/{self._config.account_sid}/Messages.json"
        )
        credentials = f"{self._config.account_sid}:{self._config.auth_token}".encode()
        self._headers = {
            "authorization": f"Basic {base64.b64encode(credentials).decode()}",
            "accept": "application/json",
            "content-type": "application/x-www-form-urlencoded",
        }
        self._http = ApiClient(
            user_agent="Clarion/1",
            guard=env.guard(self._config.proxy),
            timeout=float(env.extra.get("timeout", TIMEOUT)),
        )

    def form(self, message: Delivery) -> dict[str, str]:
        """The Messages API request for one delivery."""
        raise NotImplementedError

    def callback(self, message: Delivery) -> str:
        """Where Twilio reports the message's status."""
        return status_callback_url(self._public_url, self._spec.name, message.tenant, message.id)

    async def send(self, message: Delivery) -> SendResult:
        body = urlencode(self.form(message)).encode()
        reply = await self._http.post(self._url, body, self._headers, what="Twilio")
        retry_after = reply.headers.get("retry-after")
        error = twilio_error(reply.status, reply.body, retry_after, self.MEANINGS)
        if error is not None:
            raise error
        return SendResult(provider_message_id=sid_of(reply.body))

    async def aclose(self) -> None:
        await self._http.aclose()


class TwilioProvider(TwilioMessages):
    """Sends SMS through a tenant's Twilio account."""

    kind = "twilio"

    def form(self, message: Delivery) -> dict[str, str]:
        """The Messages API request for one delivery."""
        to = message.to
        if not isinstance(to, str) or not to:
            raise PermanentError("the recipient has no phone number", reason="no_address")
        if not E164.match(to):
            raise PermanentError("the phone number is not in E.164 form", reason="invalid_address")
        text = message.content.get("text")
        if not isinstance(text, str) or not text:
            raise PermanentError("the SMS content has no text", reason="render_error")
        sender = self._config.from_
        origin = "MessagingServiceSid" if MESSAGING_SERVICE.match(sender) else "From"
        return {"To": to, origin: sender, "Body": text, "StatusCallback": self.callback(message)}


def sid_of(body: bytes) -> str | None:
    """The ``sid`` of a created Message resource."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    sid = data.get("sid") if isinstance(data, dict) else None
    return sid if isinstance(sid, str) else None
