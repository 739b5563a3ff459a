"""Refuse outbound requests to loopback, private and other internal addresses (SSRF)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from urllib.parse import urlsplit

from clarion.errors import PermanentError, TransientError

_CACHE_TTL = 60.0


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class AddressGuard:
    """Resolves a URL's host (cached briefly) and refuses it unless every address is public."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._verdicts: dict[str, tuple[float, str | None]] = {}

    async def check(self, url: str) -> None:
        """Raise :class:`PermanentError` when ``url`` may not be called."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PermanentError(f"not an http(s) URL: {url!r}", reason="invalid_address")
        await self.check_host(parts.hostname, parts.port)

    async def check_host(self, host: str, port: int | None = None) -> None:
        """Raise :class:`PermanentError` when ``host`` may not be connected to."""
        if self.allow_private:
            return
        now = time.monotonic()
        cached = self._verdicts.get(host)
        if cached is None or cached[0] < now:
            cached = (now + _CACHE_TTL, await self._verdict(host, port))
            self._verdicts[host] = cached
        if cached[1] is not None:
            raise PermanentError(cached[1], reason="address_refused")

    async def _verdict(self, host: str, port: int | None) -> str | None:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port or 443, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            # Not cached: a name that does not resolve now may resolve in a minute.
            raise TransientError(f"cannot resolve {host!r}: {exc}", reason="dns_error") from exc
        for info in infos:
            address = str(info[4][0])
            if not is_public(address):
                return (
                    f"{host!r} resolves to a non-public address ({address}); "
                    "set CLARION_ALLOW_PRIVATE_WEBHOOKS=true to allow it (webhooks and "
                    "providers' endpoints)"
                )
        return None
