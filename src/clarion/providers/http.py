"""What the HTTP API providers share: a pooled client with a bounded timeout, and the usual
meaning of status codes.

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
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp
from multidict import CIMultiDictProxy

from clarion.errors import PermanentError, TransientError
from clarion.security.netguard import AddressGuard
from clarion.store.db import utcnow

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


async def read_bounded(response: aiohttp.ClientResponse, limit: int = MAX_REPLY) -> bytes:
    """The body, or its first ``limit`` bytes (the rest is dropped with the connection)."""
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) >= limit:
            break
    return bytes(body[:limit])


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


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class HttpClient:
    """One connection pool per provider; every request bounded by ``timeout``."""

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_connections: int = 64,
        name: str,
        guard: AddressGuard | None = None,
    ) -> None:
        self._guard = guard
        self._timeout = timeout
        self._max_connections = max_connections
        self._user_agent = f"Clarion/{name}"
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections,
                    resolver=self._guard.resolver() if self._guard else None,
                ),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                headers={"user-agent": self._user_agent},
            )
        return self._session

    async def start(self) -> None:
        self._open()

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Reply:
        """POST, converting timeouts and connection failures to :class:`TransientError`.
        With a guard, a URL whose host is not public is refused first."""
        if self._guard is not None:
            await self._guard.check(url)
        session = self._open()
        try:
            async with session.post(
                url, data=body, headers=dict(headers), allow_redirects=False
            ) as response:
                refuse_redirect(response.status, response.headers)
                return Reply(response.status, response.headers, await read_bounded(response))
        except TimeoutError as exc:
            raise TransientError(f"timed out after {self._timeout}s", reason="timeout") from exc
        except aiohttp.ClientError as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}", reason="connection_error") from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
