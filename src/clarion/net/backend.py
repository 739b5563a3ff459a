"""httpx (APNs' HTTP/2) through the address guard: a network backend that connects only to
checked addresses, or through a ``CONNECT`` tunnel of the guard's proxy to a checked
address (:mod:`clarion.net.tunnel`), and the httpx transport built on it.

httpcore opens a connection with the backend and then runs TLS over it itself, verified
against the URL's host name; through a tunnel, that TLS runs inside the tunnel.
"""

from __future__ import annotations

from typing import Any

import httpcore
import httpx

from clarion.domain.proxies import Proxy
from clarion.errors import TransientError
from clarion.net.tunnel import MAX_HEAD, ProxyFailed, check_answer, connect_request
from clarion.security.netguard import AddressGuard


def guarded_transport(
    guard: AddressGuard, *, http1: bool = True, http2: bool = False
) -> httpx.AsyncHTTPTransport:
    """For ``httpx.AsyncClient(transport=...)``: connections go to checked addresses,
    through the guard's proxy where one applies."""
    transport = httpx.AsyncHTTPTransport(http1=http1, http2=http2)
    # httpx takes no network backend; its pool is rebuilt with the same settings and
    # the guarded backend (the pool is the transport's only state).
    limits = httpx.Limits()
    transport._pool = _GuardedPool(
        guard,
        ssl_context=httpx.create_ssl_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        http1=http1,
        http2=http2,
    )
    return transport


class _GuardedPool(httpcore.AsyncConnectionPool):
    """httpcore's pool, whose connections use a guarded backend of their URL's scheme (the
    proxy of an ``https`` URL may not be that of an ``http`` one)."""

    def __init__(self, guard: AddressGuard, **options: Any) -> None:
        super().__init__(**options)
        self._backends = {scheme: GuardedBackend(guard, scheme) for scheme in ("http", "https")}

    def create_connection(self, origin: httpcore.Origin) -> httpcore.AsyncConnectionInterface:
        return httpcore.AsyncHTTPConnection(
            origin=origin,
            ssl_context=self._ssl_context,
            keepalive_expiry=self._keepalive_expiry,
            http1=self._http1,
            http2=self._http2,
            network_backend=self._backends[origin.scheme.decode("ascii")],
        )


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's default network backend, connecting only to checked addresses of the
    host, or through the guard's proxy for ``scheme`` URLs to a checked address. TLS still
    verifies the certificate against the host name (httpcore passes it separately)."""

    def __init__(self, guard: AddressGuard, scheme: str = "https") -> None:
        self._guard = guard
        self._scheme = scheme
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        proxy = self._guard.proxy_for(self._scheme, host, port)
        if proxy is not None:
            return await self._tunnel(proxy, host, port, timeout)
        last: Exception | None = None
        for address in await self._guard.resolve(host, port):
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"no address for {host!r}")

    async def _tunnel(
        self, proxy: Proxy, host: str, port: int, timeout: float | None
    ) -> httpcore.AsyncNetworkStream:
        targets = await self._guard.tunnel_targets(host, port)
        addresses = await self._guard.proxy_addresses(proxy)
        last: Exception | None = None
        for target in targets:
            try:
                return await self._through(proxy, addresses, target, timeout)
            except TransientError as exc:
                if exc.reason != "proxy_error":
                    raise
                last = exc  # the proxy cannot reach this address: perhaps the next
        raise last or httpcore.ConnectError(f"no address for {host!r}")

    async def _through(
        self, proxy: Proxy, addresses: list[str], target: str, timeout: float | None
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._reach(proxy, addresses, timeout)
        try:
            await stream.write(connect_request(proxy, target), timeout)
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = await stream.read(4096, timeout)
                if not chunk:
                    raise httpcore.ConnectError(
                        "the proxy closed the connection before answering CONNECT"
                    )
                answer += chunk
                if len(answer) > MAX_HEAD:
                    raise httpcore.ConnectError("the proxy's answer to CONNECT is too long")
            head, _, extra = answer.partition(b"\r\n\r\n")
            try:
                check_answer(head, extra, proxy, target)
            except ProxyFailed as exc:
                raise httpcore.ConnectError(str(exc)) from exc
        except BaseException:
            await stream.aclose()
            raise
        return stream

    async def _reach(
        self, proxy: Proxy, addresses: list[str], timeout: float | None
    ) -> httpcore.AsyncNetworkStream:
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, proxy.port, timeout)
            except httpcore.ConnectError as exc:
                last = exc
        raise httpcore.ConnectError(f"cannot connect to the proxy {proxy.shown}: {last}")

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for outbound requests")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
