"""Outbound proxies: which proxy, if any, a request to an origin goes through.

The deployment's proxies come from the standard variables (``HTTPS_PROXY``, ``HTTP_PROXY``,
``NO_PROXY``), read once into the settings (:mod:`clarion.config`); a provider may name its
own in its configuration (``proxy``: a URL, or ``"none"`` to go direct). Only these rules
live here: parsing and matching, no I/O (the tunnel itself is :mod:`clarion.net.tunnel`).

- A proxy URL is ``http://[user:password@]host[:port]`` (the scheme may be left out; the
  port defaults to 80). Its credentials become ``Proxy-Authorization: Basic``. Only
  plain-HTTP proxies: every request goes through a ``CONNECT`` tunnel, and an ``https``
  destination's TLS runs inside it.
- ``NO_PROXY`` is a list separated by commas or spaces: ``*`` (no proxy at all), a name
  (``example.com``, ``.example.com`` and ``*.example.com`` all match the name and every
  name under it), an IP address or a CIDR network (matching a URL that names an address
  in it, not names that resolve into it), each optionally with ``:port``.

Errors are ``ValueError`` with a message that never repeats a proxy's password.
"""

from __future__ import annotations

import ipaddress
import re
from base64 import b64encode
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# What a provider's ``proxy`` may say to go direct (besides nothing at all).
DIRECT_WORDS = frozenset({"", "none"})
_NAME = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")
_PORTED = re.compile(r"^(?P<host>[^:\[\]]+|\[[^\]]+\]):(?P<port>\d{1,5})$")
_CONTROL = re.compile(r"[\x00-\x20\x7f-\x9f]")
_CREDENTIALS = re.compile(r"//[^/@]*@")


def masked(url: str) -> str:
    """``url`` as it may be shown: credentials replaced by ``***``, at most 200 characters."""
    return _CREDENTIALS.sub("//***@", url)[:200]


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy: where it listens, and the ``Proxy-Authorization`` value if its URL
    carried credentials."""

    host: str  # IDNA, lower case; an IPv6 address without brackets
    port: int
    authorization: str | None = field(default=None, repr=False)

    @property
    def shown(self) -> str:
        """``http://host:port``, without credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse_proxy(url: str) -> Proxy:
    """The :class:`Proxy` of a proxy URL; ``ValueError`` saying what is wrong with it."""
    text = url.strip()
    shown = masked(text)
    if _CONTROL.search(text):
        raise ValueError(f"{shown!r} is not a proxy URL: it holds a space or control character")
    if "://" not in text:
        text = f"http://{text}"
    try:
        parts = urlsplit(text)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise ValueError(f"{shown!r} is not a proxy URL ({exc})") from exc
    if parts.scheme.lower() != "http":
        raise ValueError(
            f"{shown!r}: only http:// proxies are supported (an https destination's TLS "
            "runs inside the proxy's CONNECT tunnel)"
        )
    if not host:
        raise ValueError(f"{shown!r} is not a proxy URL: it names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{shown!r}: a proxy URL has no path, query or fragment")
    return Proxy(_host(host, shown), port or 80, _authorization(parts.username, parts.password))


def _host(host: str, shown: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        name = host.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise ValueError(f"{shown!r} is not a proxy URL: {host!r} is no host name") from exc
    if not _NAME.fullmatch(name):
        raise ValueError(f"{shown!r} is not a proxy URL: {host!r} is no host name")
    return name


def _authorization(user: str | None, password: str | None) -> str | None:
    if user is None:
        return None
    pair = f"{unquote(user)}:{unquote(password or '')}"
    return f"Basic {b64encode(pair.encode()).decode()}"


@dataclass(frozen=True, slots=True)
class Bypass:
    """The destinations ``NO_PROXY`` sends direct."""

    everything: bool = False
    names: tuple[tuple[str, int | None], ...] = ()
    networks: tuple[tuple[IpNetwork, int | None], ...] = ()

    def matches(self, host: str, port: int) -> bool:
        """Whether a request to ``host`` (as its URL names it: IDNA, an IPv6 address
        without brackets) on ``port`` goes direct."""
        if self.everything:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            host = host.lower().rstrip(".")
            return any(
                (host == name or host.endswith(f".{name}")) and wanted in (None, port)
                for name, wanted in self.names
            )
        return any(address in net and wanted in (None, port) for net, wanted in self.networks)


def parse_no_proxy(text: str) -> Bypass:
    """The :class:`Bypass` of a ``NO_PROXY`` value; ``ValueError`` naming an entry that is
    none of its forms."""
    names: list[tuple[str, int | None]] = []
    networks: list[tuple[IpNetwork, int | None]] = []
    for entry in filter(None, re.split(r"[,\s]+", text)):
        if entry == "*":
            return Bypass(everything=True)
        where, port = _split_port(entry)
        bracketed = where.startswith("[") or where.endswith("]")
        if bracketed:
            if not (where.startswith("[") and where.endswith("]")):
                raise ValueError(f"NO_PROXY: {entry!r} is not an IPv6 address")
            where = where[1:-1]
        try:
            networks.append((ipaddress.ip_network(where, strict=False), port))
            continue
        except ValueError:
            if bracketed or ":" in where:
                raise ValueError(f"NO_PROXY: {entry!r} is not an IPv6 address") from None
        name = where.lower().removeprefix("*.").lstrip(".").rstrip(".")
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"NO_PROXY: {entry!r} is not a name, address or network") from exc
        if not _NAME.fullmatch(name):
            raise ValueError(f"NO_PROXY: {entry!r} is not a name, address or network")
        names.append((name, port))
    return Bypass(names=tuple(names), networks=tuple(networks))


def _split_port(entry: str) -> tuple[str, int | None]:
    found = _PORTED.fullmatch(entry)
    if found is None:
        return entry, None
    port = int(found.group("port"))
    if not 0 < port < 65536:
        raise ValueError(f"NO_PROXY: {entry!r} names no valid port")
    return found.group("host"), port


@dataclass(frozen=True, slots=True)
class Proxies:
    """The proxies a client's requests go through: one for ``http`` URLs, one for
    ``https`` URLs (None: direct), except to the destinations of ``bypass``."""

    http: Proxy | None = None
    https: Proxy | None = None
    bypass: Bypass = field(default_factory=Bypass)
    # The deployment's own proxies: their addresses are the operator's to choose (they may
    # be private or loopback). A tenant's proxy is checked like any address it gives.
    trusted: bool = True

    def select(self, scheme: str, host: str, port: int) -> Proxy | None:
        """The proxy of a request to ``scheme://host:port``; None to go direct."""
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or self.bypass.matches(host, port):
            return None
        return proxy


DIRECT = Proxies()


def environment_proxies(https_proxy: str, http_proxy: str, no_proxy: str) -> Proxies:
    """The deployment's proxies from the values of ``HTTPS_PROXY``, ``HTTP_PROXY`` and
    ``NO_PROXY`` (empty: none)."""
    https = parse_proxy(https_proxy) if https_proxy.strip() else None
    http = parse_proxy(http_proxy) if http_proxy.strip() else None
    return Proxies(http=http, https=https, bypass=parse_no_proxy(no_proxy))


def provider_proxies(value: str) -> Proxies:
    """The proxies of a provider that names its own (``proxy`` in its configuration): that
    one for every request, whatever ``NO_PROXY`` says; ``"none"`` or ``""`` for none."""
    if value.strip().lower() in DIRECT_WORDS:
        return Proxies(trusted=False)
    proxy = parse_proxy(value)
    return Proxies(http=proxy, https=proxy, trusted=False)
