"""What the HTTP API providers share: a client for a service's API (Clarion's own HTTP/1.1
client, :mod:`clarion.net`, with a bounded timeout and reply). What an answer means is
:mod:`clarion.net.answers`, the one classification of every provider.

A reply's body is read up to :data:`MAX_REPLY` bytes; what is stored from it is bounded
again by the status writer.
"""

from __future__ import annotations

from collections.abc import Mapping

from clarion.net import HttpClient, Reply
from clarion.net.answers import refuse_redirect
from clarion.security.netguard import AddressGuard

__all__ = ["DEFAULT_TIMEOUT", "MAX_REPLY", "ApiClient", "Reply"]

DEFAULT_TIMEOUT = 30.0
MAX_REPLY = 256 * 1024


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
