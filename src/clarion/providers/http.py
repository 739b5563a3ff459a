"""What the HTTP API providers share: a client for a service's API (Clarion's own HTTP/1.1
client, :mod:`clarion.net`, with a bounded timeout and reply), and the usual meaning of
status codes.

- 2xx: accepted.
- 408, 425, 429, 5xx: :class:`TransientError`, honouring ``Retry-After`` (seconds or an
  HTTP date). Timeouts and connection failures are transient too.
- 401, 403: :class:`PermanentError` ``bad_credentials`` (``provider_rejected`` where the
  far end is not a service Clarion holds credentials for, such as a webhook receiver).
- any other 4xx: :class:`PermanentError` ``provider_rejected`` with the service's message.
- 3xx: :class:`PermanentError` ``redirect_refused`` naming the target: no request follows a
  redirect (the target could be an internal address the guard would refuse).

A reply's body is read up to :data:`MAX_REPLY` bytes; what is stored from it is bounded
again by the status writer.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from clarion.errors import PermanentError, TransientError
from clarion.net import HttpClient, Reply
from clarion.security.netguard import AddressGuard
from clarion.store.db import utcnow

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_REPLY",
    "ApiClient",
    "Reply",
    "is_transient",
    "parse_retry_after",
    "raise_for_status",
    "refuse_redirect",
]

DEFAULT_TIMEOUT = 30.0
MAX_REPLY = 256 * 1024
_RETRY_CODES = frozenset({408, 425, 429})
_CREDENTIAL_CODES = frozenset({401, 403})


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or utcnow())).total_seconds())


def is_transient(status: int) -> bool:
    return status in _RETRY_CODES or status >= 500


def refuse_redirect(status: int, headers: Mapping[str, str], what: str = "") -> None:
    """Raise :class:`PermanentError` ``redirect_refused`` for a 3xx answer."""
    if 300 <= status < 400:
        location = headers.get("location", "")[:200]
        prefix = f"{what}: " if what else ""
        raise PermanentError(
            f"{prefix}HTTP {status} redirect to {location!r} refused (redirects are not followed)",
            reason="redirect_refused",
        )


def raise_for_status(
    status: int, message: str, retry_after: str | None = None, *, credentials: bool = True
) -> None:
    """Raise the error a non-2xx ``status`` means; ``message`` is the service's own words.
    ``credentials``: whether a 401 or 403 says the credentials Clarion sent are wrong (a
    service's API) rather than that the far end refuses the request (a webhook)."""
    if 200 <= status < 300:
        return
    detail = f"HTTP {status}: {message[:300]}"
    if is_transient(status):
        raise TransientError(
            detail, reason=f"http_{status}", retry_after=parse_retry_after(retry_after)
        )
    if credentials and status in _CREDENTIAL_CODES:
        raise PermanentError(detail, reason="bad_credentials")
    raise PermanentError(detail, reason="provider_rejected")


class ApiClient:
    """A service's API: one connection pool per provider, every request bounded by
    ``timeout``, every reply by ``max_body``, and a redirect refused."""

    def __init__(
        self,
        *,
        user_agent: str,
        guard: AddressGuard,
        timeout: float = DEFAULT_TIMEOUT,
        max_connections: int = 64,
    ) -> None:
        self._timeout = timeout
        self._http = HttpClient(guard, max_connections=max_connections, user_agent=user_agent)

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        what: str = "",
        max_body: int = MAX_REPLY,
    ) -> Reply:
        """POST; a timeout or a connection failure is a :class:`TransientError`, a URL
        whose host is not public a :class:`PermanentError` (``what`` names the endpoint
        in a refused redirect's message)."""
        reply = await self._http.request(
            "POST", url, headers, body, timeout=self._timeout, max_body=max_body
        )
        refuse_redirect(reply.status, reply.headers, what)
        return reply

    async def aclose(self) -> None:
        await self._http.aclose()
