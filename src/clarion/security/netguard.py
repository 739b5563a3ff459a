"""Refuse outbound requests to loopback, private and other internal addresses (SSRF).

The check is made on the address a connection is actually opened to, never on a separate
lookup: Clarion's HTTP/1.1 client (:mod:`clarion.net`) and SMTP connect to an address that
:meth:`AddressGuard.resolve` checked, and httpx (APNs) resolves names through
:class:`GuardedBackend`. A name that resolves to a public address when checked
and to an internal one a moment later (DNS rebinding) therefore gains nothing: the address
connected to is the one checked. IP literals are checked before any request.

An address is refused unless it is globally routable unicast, including in the forms that
embed an IPv4 address in IPv6: mapped (``::ffff:127.0.0.1``), compatible
(``::127.0.0.1``), NAT64 (``64:ff9b::/96`` and the local-use ``64:ff9b:1::/48``), 6to4
(``2002::/16``) and Teredo (``2001::/32``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from clarion.errors import PermanentError, TransientError

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_HINT = "set CLARION_ALLOW_PRIVATE_WEBHOOKS=true to allow it (webhooks and providers' endpoints)"


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _COMPATIBLE or ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def is_public(address: str) -> bool:
    """True for a globally routable unicast address, in any of its written forms."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL:
            return False
        v4 = _embedded_v4(ip)
        if v4 is not None:
            return v4.is_global and not v4.is_multicast
    return ip.is_global and not ip.is_multicast


def _refusal(host: str, address: str) -> PermanentError:
    shown = host if host == address else f"{host!r} resolves to {address}, which"
    return PermanentError(f"{shown} is not a public address; {_HINT}", reason="address_refused")


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


class AddressGuard:
    """Checks the addresses outbound connections go to (unless ``allow_private``)."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private

    async def check(self, url: str) -> None:
        """Raise :class:`PermanentError` for a URL that is not http(s) or names a
        non-public IP address. A host name is checked when it is connected to, by the
        client that connects."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PermanentError(f"not an http(s) URL: {url!r}", reason="invalid_address")
        if self.allow_private:
            return
        address = _literal(parts.hostname)
        if address is not None and not is_public(address):
            raise _refusal(parts.hostname, address)

    async def resolve(self, host: str, port: int) -> list[str]:
        """Every address of ``host``, after checking that each is public."""
        literal = _literal(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM
                )
            except OSError as exc:
                raise TransientError(f"cannot resolve {host!r}: {exc}", reason="dns_error") from exc
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not self.allow_private:
            for address in addresses:
                if not is_public(address):
                    raise _refusal(host, address)
        return addresses

    async def connect(self, host: str, port: int, timeout: float) -> socket.socket:
        """A socket connected to a checked address of ``host`` (tried in turn)."""
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        async with asyncio.timeout(timeout):
            for address in await self.resolve(host, port):
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, (address, port))
                except OSError as exc:
                    sock.close()
                    last = exc
                    continue
                except BaseException:
                    sock.close()
                    raise
                return sock
        raise last or OSError(f"no address for {host!r}")

    def transport(self, *, http1: bool = True, http2: bool = False) -> httpx.AsyncHTTPTransport:
        """For ``httpx.AsyncClient(transport=...)``: connections go to checked addresses."""
        transport = httpx.AsyncHTTPTransport(http1=http1, http2=http2)
        # httpx takes no network backend; its pool is rebuilt with the same settings and
        # the guarded backend (the pool is the transport's only state).
        limits = httpx.Limits()
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=http1,
            http2=http2,
            network_backend=GuardedBackend(self),
        )
        return transport


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's default network backend, connecting only to checked addresses. TLS still
    verifies the certificate against the host name (httpcore passes it separately)."""

    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        last: Exception | None = None
        for address in await self._guard.resolve(host, port):
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"no address for {host!r}")

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for outbound requests")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
