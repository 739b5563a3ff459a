"""The webhook provider: POSTs the rendered JSON body to the recipient's URL.

Signed with the tenant's secret (``Clarion-Signature``), carrying the delivery id as
``Idempotency-Key`` so a receiver can drop a repeat (and so the client may send it again
on a new connection when a kept-alive one was closed under it); with tracing on, the
``provider.send`` span's W3C ``traceparent``. This is the
highest-volume HTTP path: it goes through Clarion's own HTTP/1.1 client
(:mod:`clarion.net`), which costs a fraction of aiohttp's CPU per request (see
docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import orjson

from clarion.domain.delivery import Delivery
from clarion.domain.proxies import DIRECT, Proxies
from clarion.errors import PermanentError
from clarion.net import HttpClient, Reply
from clarion.net.answers import raise_for_status, refuse_redirect
from clarion.observability import tracing
from clarion.providers.base import Provider, SendResult
from clarion.security.netguard import AddressGuard
from clarion.security.signing import sign

SecretLookup = Callable[[str], Awaitable[str]]
USER_AGENT = "Clarion-Webhooks/1"
MAX_ANSWER = 4096  # bytes of a receiver's answer read (its text goes into the error)


async def post_signed(
    http: HttpClient,
    url: str,
    secret: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout: float,
) -> Reply:
    """POST a JSON ``body`` to a receiver, signed with ``secret`` (``Clarion-Signature``),
    with ``headers`` besides; the one way a delivery and a status event reach a webhook.
    Raises what an answer other than a 2xx means (net/answers.py; the receiver is not a
    service Clarion holds credentials for, so its 401 or 403 is a refusal like any other)."""
    sent = {"content-type": "application/json", "clarion-signature": sign(secret, body)}
    sent.update(headers)
    reply = await http.request("POST", url, sent, body, timeout=timeout, max_body=MAX_ANSWER)
    refuse_redirect(reply.status, reply.headers)
    raise_for_status(reply.status, reply.text, reply.headers.get("retry-after"), credentials=False)
    return reply


class WebhookProvider(Provider):
    kind = "webhook"

    def __init__(
        self,
        secret_for_tenant: SecretLookup,
        *,
        allow_private: bool = False,
        timeout: float = 10.0,
        max_connections: int = 256,
        proxies: Proxies = DIRECT,
    ) -> None:
        self._secret_for_tenant = secret_for_tenant
        self._guard = AddressGuard(allow_private, proxies)
        self._timeout = timeout
        self._max_connections = max_connections
        self._http: HttpClient | None = None

    async def start(self) -> None:
        self._http = HttpClient(
            self._guard, max_connections=self._max_connections, user_agent=USER_AGENT
        )

    async def send(self, message: Delivery) -> SendResult:
        url = message.to
        if not isinstance(url, str):
            raise PermanentError("the recipient has no webhook URL", reason="no_address")
        if self._http is None:
            raise RuntimeError("WebhookProvider.send before start")
        # The template's `body` is what is posted; the rest of the content is metadata.
        body = orjson.dumps(message.content.get("body", message.content))
        secret = await self._secret_for_tenant(message.tenant)
        headers = {
            "idempotency-key": message.id,
            "clarion-delivery-id": message.id,
            "clarion-notification-id": message.notification,
            "clarion-attempt": str(message.attempt),
        }
        tracing.outbound(headers)  # the provider.send span's traceparent (tracing on only)
        reply = await post_signed(self._http, url, secret, body, headers, timeout=self._timeout)
        return SendResult(provider_message_id=reply.headers.get("x-request-id"))

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
