"""``CONNECT`` tunnels through an outbound proxy (:mod:`clarion.domain.proxies`): what is
asked, what the proxy's answer means, and a tunnel opened for Clarion's HTTP/1.1 client.

Every request through a proxy, ``http`` or ``https``, goes through a tunnel: the proxy is
asked to ``CONNECT`` to what :meth:`AddressGuard.tunnel_targets
<clarion.security.netguard.AddressGuard.tunnel_targets>` returned (the destination's
checked address), with ``Proxy-Authorization`` if the proxy's URL carried credentials;
once it answers 2xx, the connection is the destination's, and an ``https`` destination's
TLS runs inside it, verified against the URL's host name. No request is sent to a proxy in
absolute form: the proxy would resolve the name itself, and the address it connects to
would not be the one checked.

What a proxy's refusal means (:func:`refusal`), following :mod:`clarion.net.answers`:

    407                       TransientError proxy_auth_required: the proxy wants other
                              credentials; they are the operator's, fixed within the retry
                              schedule (as a certificate is)
    408, 429, 5xx             TransientError proxy_error: the proxy cannot reach the
                              destination now (502, 504) or is busy; Retry-After honoured
    any other status          PermanentError proxy_refused: the proxy will not go there
                              (403 by its policy, 400, 405)

A proxy that cannot be reached, closes the connection, or answers something that is not
HTTP is a connection failure like any other (``connection_error``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TypeVar

from clarion.domain.proxies import Proxy
from clarion.errors import PermanentError, ProviderError, TransientError
from clarion.net.answers import RETRY_STATUSES, parse_retry_after

MAX_HEAD = 16 * 1024  # bytes of a proxy's answer to CONNECT read before giving up on it

P = TypeVar("P", bound=asyncio.BaseProtocol)


class ProxyFailed(ConnectionError):
    """The proxy could not be reached, or its answer was not HTTP."""


def connect_request(proxy: Proxy, authority: str) -> bytes:
    """The ``CONNECT`` request for ``authority`` (``host:port``, checked before)."""
    lines = [f"CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n"]
    if proxy.authorization is not None:
        lines.append(f"proxy-authorization: {proxy.authorization}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("ascii")


def check_answer(head: bytes, extra: bytes, proxy: Proxy, authority: str) -> None:
    """Raise what the proxy's answer to ``CONNECT`` means unless it opened the tunnel:
    ``head`` is the answer up to its blank line, ``extra`` what came after it."""
    status_line, _, rest = head.partition(b"\r\n")
    version, _, tail = status_line.partition(b" ")
    code, _, phrase = tail.partition(b" ")
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ProxyFailed(f"the proxy {proxy.shown} answered CONNECT with something not HTTP")
    status = int(code)
    if 200 <= status < 300:
        if extra:
            # Nothing may come before Clarion speaks (TLS, or its request).
            raise ProxyFailed(f"the proxy {proxy.shown} sent data before the tunnel was used")
        return
    headers = dict(_header(line) for line in rest.split(b"\r\n") if b":" in line)
    said = phrase.decode("latin-1")[:100].strip()
    raise refusal(status, said, headers.get("retry-after"), proxy, authority)


def _header(line: bytes) -> tuple[str, str]:
    name, _, value = line.partition(b":")
    return name.decode("latin-1").strip().lower(), value.decode("latin-1").strip()


def refusal(
    status: int, phrase: str, retry_after: str | None, proxy: Proxy, authority: str
) -> ProviderError:
    """The error a proxy's non-2xx answer to ``CONNECT`` means (the module's table)."""
    said = f"the proxy {proxy.shown} answered CONNECT {authority} with {status} {phrase}".strip()
    if status == 407:
        detail = "the proxy's credentials (the user and password in its URL) are missing or wrong"
        return TransientError(f"{said}: {detail}", reason="proxy_auth_required")
    if status in RETRY_STATUSES or status >= 500:
        wait = parse_retry_after(retry_after)
        return TransientError(said, reason="proxy_error", retry_after=wait)
    return PermanentError(said, reason="proxy_refused")


class _Answer(asyncio.Protocol):
    """Reads the proxy's answer to ``CONNECT``, up to its blank line; reading pauses there,
    until the connection is handed to the protocol that uses the tunnel."""

    def __init__(self) -> None:
        self.head: asyncio.Future[tuple[bytes, bytes]] = asyncio.get_running_loop().create_future()
        self._data = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.head.done():
            return
        self._data += data
        end = self._data.find(b"\r\n\r\n")
        if end >= 0:
            if self._transport is not None:
                self._transport.pause_reading()
            self.head.set_result((bytes(self._data[:end]), bytes(self._data[end + 4 :])))
        elif len(self._data) > MAX_HEAD:
            self.head.set_exception(ProxyFailed("the proxy's answer to CONNECT is too long"))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            cause = f": {exc}" if exc else ""
            self.head.set_exception(
                ProxyFailed(f"the proxy closed the connection before answering CONNECT{cause}")
            )


async def open_tunnel(
    proxy: Proxy,
    addresses: list[str],
    authority: str,
    protocol: Callable[[], P],
    *,
    tls: ssl.SSLContext | None,
    server_hostname: str,
) -> tuple[asyncio.Transport, P]:
    """A connection to ``authority`` through ``proxy`` (at the first of ``addresses`` that
    accepts one), carrying ``protocol()``, with TLS to ``server_hostname`` inside the
    tunnel when ``tls`` is given. Raises :class:`ProxyFailed` (an ``OSError``) for a proxy
    that cannot be reached or does not speak HTTP, and :func:`refusal`'s errors."""
    loop = asyncio.get_running_loop()
    transport, answer = await _reach(loop, proxy, addresses)
    try:
        transport.write(connect_request(proxy, authority))
        head, extra = await answer.head
        check_answer(head, extra, proxy, authority)
        used = protocol()
        if tls is not None:
            # start_tls takes the raw connection over and resumes reading.
            secured = await loop.start_tls(transport, used, tls, server_hostname=server_hostname)
            if secured is None:
                raise ProxyFailed("the tunnel closed during the TLS handshake")
            transport = secured
            used.connection_made(transport)
        else:
            transport.set_protocol(used)
            used.connection_made(transport)
            transport.resume_reading()
    except BaseException:
        transport.abort()
        raise
    return transport, used


async def _reach(
    loop: asyncio.AbstractEventLoop, proxy: Proxy, addresses: list[str]
) -> tuple[asyncio.Transport, _Answer]:
    last: OSError | None = None
    for address in addresses:
        try:
            transport, answer = await loop.create_connection(_Answer, address, proxy.port)
        except OSError as exc:
            last = exc
            continue
        return transport, answer
    raise ProxyFailed(f"cannot connect to the proxy {proxy.shown}: {last}")
