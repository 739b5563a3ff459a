"""The webhook provider: POSTs the rendered JSON body to the recipient's URL.

Signed with the tenant's secret (``Clarion-Signature``), carrying the delivery id as
``Idempotency-Key`` so a receiver can drop a repeat. Connections are pooled per host.

This is the highest-volume HTTP path, so it uses aiohttp's client: on the reference machine
it carried about 6,500 requests a second at 256 concurrent requests where httpx carried
under 500 (see docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import orjson

from clarion.errors import PermanentError, TransientError
from clarion.providers.base import OutboundMessage, Provider, SendResult
from clarion.providers.http import parse_retry_after, read_bounded, refuse_redirect
from clarion.security.netguard import AddressGuard
from clarion.security.signing import sign

SecretLookup = Callable[[str], Awaitable[str]]


def classify_status(code: int, text: str, retry_after: str | None) -> None:
    """Raise for a response that is not a success, by the usual HTTP meaning of its code."""
    if 200 <= code < 300:
        return
    detail = f"HTTP {code}: {text[:200]}"
    if code in (408, 425, 429) or code >= 500:
        raise TransientError(
            detail, reason=f"http_{code}", retry_after=parse_retry_after(retry_after)
        )
    raise PermanentError(detail, reason="provider_rejected")


class WebhookProvider(Provider):
    kind = "webhook"

    def __init__(
        self,
        secret_for_tenant: SecretLookup,
        *,
        allow_private: bool = False,
        timeout: float = 10.0,
        max_connections: int = 256,
    ) -> None:
        self._secret_for_tenant = secret_for_tenant
        self._guard = AddressGuard(allow_private)
        self._timeout = timeout
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, resolver=self._guard.resolver()
            ),
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            headers={"user-agent": "Clarion-Webhooks/1"},
            auto_decompress=False,
        )

    async def send(self, message: OutboundMessage) -> SendResult:
        url = message.to
        if not isinstance(url, str):
            raise PermanentError("the recipient has no webhook URL", reason="no_address")
        if self._session is None:
            raise RuntimeError("WebhookProvider.send before start")
        await self._guard.check(url)
        # The template's `body` is what is posted; the rest of the content is metadata.
        body = orjson.dumps(message.content.get("body", message.content))
        secret = await self._secret_for_tenant(message.tenant_id)
        headers = {
            "content-type": "application/json",
            "idempotency-key": message.delivery_id,
            "clarion-signature": sign(secret, body),
            "clarion-delivery-id": message.delivery_id,
            "clarion-notification-id": message.notification_id,
            "clarion-attempt": str(message.attempt),
        }
        try:
            async with self._session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                refuse_redirect(response.status, response.headers)
                text = (await read_bounded(response, 4096)).decode(errors="replace")
                classify_status(response.status, text, response.headers.get("retry-after"))
                return SendResult(provider_message_id=response.headers.get("x-request-id"))
        except TimeoutError as exc:
            raise TransientError(f"timed out after {self._timeout}s", reason="timeout") from exc
        except aiohttp.ClientError as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}", reason="connection_error") from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
