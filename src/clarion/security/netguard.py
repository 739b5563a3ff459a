"""Refuse outbound requests to loopback, private and other internal addresses (SSRF).

The check is made on the address a connection is actually opened to, never on a separate
lookup: Clarion's HTTP/1.1 client (:mod:`clarion.net`) and SMTP connect to an address that
:meth:`AddressGuard.resolve` checked, and httpx (APNs) resolves names through
:class:`clarion.net.backend.GuardedBackend`. A name that resolves to a public address when
checked and to an internal one a moment later (DNS rebinding) therefore gains nothing: the
address connected to is the one checked. IP literals are checked before any request.

Through an outbound proxy (:mod:`clarion.domain.proxies`) the destination is still what is
checked: :meth:`AddressGuard.tunnel_targets` resolves and checks it, and the proxy is asked
to ``CONNECT`` to the checked address itself, so the proxy's own lookup cannot send the
request elsewhere. The deployment's proxy may be on any address (it is the operator's
choice); a proxy a tenant names in a provider's configuration is checked like any other
address a tenant gives.

An address is refused unless it is globally routable unicast, including in the forms that
embed an IPv4 address in IPv6: mapped (``::ffff:127.0.0.1``), compatible
(``::127.0.0.1``), NAT64 (``64:ff9b::/96`` and the local-use ``64:ff9b:1::/48``), 6to4
(``2002::/16``) and Teredo (``2001::/32``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from clarion.domain.proxies import DIRECT, Proxies, Proxy
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


async def _lookup(host: str, port: int, what: str = "") -> list[str]:
    """Every address of ``host`` (an IP literal is its own), unchecked."""
    literal = _literal(host)
    if literal is not None:
        return [literal]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise TransientError(f"cannot resolve {what}{host!r}: {exc}", reason="dns_error") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def authority(host: str, port: int) -> str:
    """``host:port`` as a request target names it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class AddressGuard:
    """Checks the addresses outbound connections go to (unless ``allow_private``), and
    knows the proxies HTTP requests go through (``proxies``; none by default)."""

    def __init__(self, allow_private: bool, proxies: Proxies = DIRECT) -> None:
        self.allow_private = allow_private
        self.proxies = proxies

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
        addresses = await _lookup(host, port)
        if not self.allow_private:
            for address in addresses:
                if not is_public(address):
                    raise _refusal(host, address)
        return addresses

    def proxy_for(self, scheme: str, host: str, port: int) -> Proxy | None:
        """The proxy a request to ``scheme://host:port`` goes through; None: direct."""
        return self.proxies.select(scheme, host, port)

    async def proxy_addresses(self, proxy: Proxy) -> list[str]:
        """The addresses of a proxy: the deployment's as they resolve, a tenant's checked."""
        if self.proxies.trusted:
            return await _lookup(proxy.host, proxy.port, "the proxy ")
        return await self.resolve(proxy.host, proxy.port)

    async def tunnel_targets(self, host: str, port: int) -> list[str]:
        """What to ask a proxy to ``CONNECT`` to, in turn, for a request to ``host:port``:
        each of its checked addresses, so that the proxy connects to what was checked; the
        name itself when private addresses are allowed (nothing to check: the proxy
        resolves it, as it must where Clarion's own DNS knows no outside names)."""
        if self.allow_private:
            return [authority(host, port)]
        return [authority(address, port) for address in await self.resolve(host, port)]

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
