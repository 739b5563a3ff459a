"""What goes on the wire for a request: the target of a URL and the request's head, refused
when a header would split into another (CR, LF or NUL in a name or value).

A URL's path and query are sent as written, with non-ASCII characters, spaces and controls
percent-encoded; credentials in a URL (``https://user:pass@host/``) become a basic
``Authorization`` header."""

from __future__ import annotations

import re
import string
from base64 import b64encode
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import SplitResult, quote, unquote, urlsplit

from clarion.errors import PermanentError

Origin = tuple[str, str, int]  # (scheme, host, port)

_PORTS = {"http": 80, "https": 443}
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")
# Headers the client writes itself: a caller's own are dropped.
_FRAMING = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_PLAIN, _DROP, _AGENT, _IDEMPOTENCY = range(4)
_REPLAYABLE = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_METHODS = _REPLAYABLE | {"POST", "PATCH"}


@dataclass(frozen=True, slots=True)
class Target:
    """Where a URL's requests go: the origin to connect to, and the request line's middle
    and ``Host`` header, pre-encoded."""

    origin: Origin
    line: str  # " /path?query HTTP/1.1\r\nhost: name[:port]\r\n" (and authorization)
    crlfs: int  # line breaks in ``line``


def parse_target(url: str) -> Target:
    """The :class:`Target` of an http(s) URL; :class:`PermanentError` ``invalid_address``
    for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
        if parts.scheme not in _PORTS or not host:
            raise ValueError("not an http(s) URL")
        host = host.encode("idna").decode("ascii")
    except (ValueError, UnicodeError) as exc:
        message = f"not an http(s) URL: {url[:200]!r}"
        raise PermanentError(message, reason="invalid_address") from exc
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    if not path.isascii() or _BAD_TARGET.search(path):
        path = quote(path, safe=string.punctuation)
    if _BAD_TARGET.search(host):
        raise PermanentError(f"not a valid host name: {url[:200]!r}", reason="invalid_address")
    default = _PORTS[parts.scheme]
    shown = f"[{host}]" if ":" in host else host
    if port is not None and port != default:
        shown = f"{shown}:{port}"
    line = f" {path} HTTP/1.1\r\nhost: {shown}\r\n{_authorization(parts)}"
    return Target((parts.scheme, host, port or default), line, line.count("\n"))


def _authorization(parts: SplitResult) -> str:
    if parts.username is None:
        return ""
    pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return f"authorization: Basic {b64encode(pair.encode()).decode()}\r\n"


class HeadWriter:
    """Builds a request's head as one string; remembers which header names it has checked."""

    def __init__(self, user_agent: str) -> None:
        self._agent = f"user-agent: {user_agent}\r\n"
        _check_block(self._agent, 1)  # one CRLF: its own
        self._names: dict[str, int] = {}

    def head(
        self, method: str, target: Target, headers: Mapping[str, str], length: int
    ) -> tuple[bytes, bool]:
        """The encoded head, and whether the request may be sent again on a new connection
        after its first one failed before any answer (Go's net/http rule: an idempotent
        method, or an ``Idempotency-Key``)."""
        replayable = method in _REPLAYABLE
        if method not in _METHODS and not _TOKEN.fullmatch(method):
            raise PermanentError(f"invalid HTTP method {method[:20]!r}", reason="invalid_request")
        lines = [method, target.line, f"content-length: {length}\r\n"]
        agent = True
        for name, value in headers.items():
            kind = self._names.get(name)
            if kind is None:
                kind = self._learn(name)
            if kind == _DROP:
                continue
            if kind == _AGENT:
                agent = False
            elif kind == _IDEMPOTENCY:
                replayable = True
            lines.append(f"{name}: {value}\r\n")
        if agent:
            lines.append(self._agent)
        lines.append("\r\n")
        block = "".join(lines)
        # The URL's and the client's own parts are checked already, and every other line
        # ends in one CRLF (the method's in the target's): any other CR, LF or NUL comes
        # from a header.
        _check_block(block, len(lines) - 2 + target.crlfs)
        return block.encode(), replayable

    def _learn(self, name: str) -> int:
        if not _TOKEN.fullmatch(name):
            raise PermanentError(f"invalid header name {name[:40]!r}", reason="invalid_request")
        lower = name.lower()
        if lower in _FRAMING:
            kind = _DROP
        elif lower == "user-agent":
            kind = _AGENT
        elif lower == "idempotency-key":
            kind = _IDEMPOTENCY
        else:
            kind = _PLAIN
        if len(self._names) < 256:
            self._names[name] = kind
        return kind


def _check_block(block: str, crlfs: int) -> None:
    if block.count("\n") != crlfs or block.count("\r") != crlfs or "\0" in block:
        raise PermanentError(
            "a header contains CR, LF or NUL (header injection refused)",
            reason="invalid_request",
        )
