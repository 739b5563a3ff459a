"""The SendGrid provider: v3 ``POST /v3/mail/send``.

The composed email goes out as SendGrid's JSON (text/plain before text/html, as SendGrid
requires), with the tracing and unsubscribe headers in ``headers`` and the delivery id in
``custom_args`` so SendGrid's event webhooks carry it back. A ``202`` is an acceptance; the
``X-Message-Id`` header is SendGrid's id of the message. Errors come as
``{"errors": [{"message", "field"}]}``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from clarion.domain.delivery import Delivery
from clarion.net.answers import raise_for_status
from clarion.providers.base import Provider, ProviderEnv, ProviderSpec, SendResult
from clarion.providers.configs import SendgridConfig
from clarion.providers.http import DEFAULT_TIMEOUT, ApiClient, Reply
from clarion.providers.mime import Email, EmailComposer

DEFAULT_BASE = "https://api.sendgrid.com"
PATH = "/v3/mail/send"


def payload(email: Email) -> dict[str, Any]:
    sender: dict[str, str] = {"email": email.sender.address}
    if email.sender.name:
        sender["name"] = email.sender.name
    content = [
        {"type": kind, "value": value}
        for kind, value in (("text/plain", email.text), ("text/html", email.html))
        if value
    ]
    return {
        "personalizations": [{"to": [{"email": email.to}]}],
        "from": sender,
        "subject": email.subject,
        # SendGrid refuses an empty value; a message with no body still needs one part.
        "content": content or [{"type": "text/plain", "value": " "}],
        "headers": email.headers,
        "custom_args": {"clarion_delivery_id": email.delivery_id},
    }


def error_message(reply: Reply) -> str:
    """SendGrid's own words: ``field: message`` for each error it lists."""
    try:
        errors = orjson.loads(reply.body).get("errors") or []
        parts = [
            f"{e['field']}: {e['message']}" if e.get("field") else str(e.get("message"))
            for e in errors
        ]
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        parts = []
    return "; ".join(parts) or reply.text[:300]


def retry_after(reply: Reply) -> str | None:
    """``Retry-After`` if given, else the seconds until ``X-RateLimit-Reset`` (unix time)."""
    if "retry-after" in reply.headers:
        return reply.headers["retry-after"]
    reset = reply.headers.get("x-ratelimit-reset")
    try:
        return str(max(0.0, float(reset) - time.time())) if reset else None
    except ValueError:
        return None


class SendgridProvider(Provider):
    """Sends email through SendGrid."""

    kind = "sendgrid"

    def __init__(
        self, spec: ProviderSpec, env: ProviderEnv, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        config = SendgridConfig.model_validate(spec.config)
        self._url = str(config.base_url or DEFAULT_BASE).rstrip("/") + PATH
        self._headers = {
            "Authorization": f"Bearer {config.api_key}",
            "Content-Type": "application/json",
        }
        self._composer = EmailComposer.of(config.from_, env)
        self._http = ApiClient(
            timeout=timeout,
            user_agent="Clarion/sendgrid",
            guard=env.guard(config.proxy),
        )

    async def send(self, message: Delivery) -> SendResult:
        email = await self._composer.compose(message)
        reply = await self._http.post(self._url, orjson.dumps(payload(email)), self._headers)
        if not 200 <= reply.status < 300:
            raise_for_status(reply.status, error_message(reply), retry_after(reply))
        return SendResult(provider_message_id=reply.headers.get("x-message-id"))

    async def aclose(self) -> None:
        await self._http.aclose()
