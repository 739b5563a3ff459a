"""A local stand-in for the APNs provider API, served over HTTP/2 by hypercorn.

Cleartext HTTP/2 with prior knowledge (the client must speak HTTP/2 from the first byte; an
HTTP/1.1 request is refused). It checks what Apple checks: the provider token is an ES256
JWT whose ``kid`` is the key id, signed by that key, issued by the team, not older than an
hour; ``apns-topic`` and ``apns-push-type`` are present; the priority, id, expiration and
collapse id are well formed; the payload is JSON with an ``aps`` object and at most 4 KB.
It counts the TCP connections it served, to show that concurrent sends share one.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypercorn.asyncio import serve
from hypercorn.config import Config

TEAM_ID = "TEAM123456"
KEY_ID = "KEY1234567"
TOPIC = "com.example.app"
MAX_PAYLOAD = 4096

# failure name → (status, reason)
FAILURES = {
    "unregistered": (410, "Unregistered"),
    "bad_token": (400, "BadDeviceToken"),
    "not_for_topic": (400, "DeviceTokenNotForTopic"),
    "too_many": (429, "TooManyRequests"),
    "internal": (500, "InternalServerError"),
    "unavailable": (503, "ServiceUnavailable"),
}

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def p8_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@functools.cache
def team_key() -> ec.EllipticCurvePrivateKey:
    return p8_key()


def p8_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class Received:
    token: str
    headers: dict[str, str]
    payload: dict[str, Any]


@dataclass
class ApnsStandin:
    key: ec.EllipticCurvePrivateKey = field(default_factory=team_key)
    team_id: str = TEAM_ID
    key_id: str = KEY_ID
    topic: str = TOPIC
    # token → name of a FAILURES entry, or "hang" (no answer until the server closes).
    failures: dict[str, str] = field(default_factory=dict)
    # Answer this many next requests with 403 ExpiredProviderToken.
    expire_next: int = 0
    retry_after: str = "3"
    received: list[Received] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)
    provider_tokens: list[str] = field(default_factory=list)
    # (host, port) of each client connection: one entry per TCP connection.
    connections: set[tuple[str, int]] = field(default_factory=set)
    # (certificate file, key file): HTTP/2 over TLS (ALPN h2) instead of cleartext, at
    # `host` (a name the test makes resolve to 127.0.0.1, which the certificate names).
    tls_files: tuple[str, str] | None = None
    host: str = "127.0.0.1"
    port: int = 0
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls_files else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def config(self, **overrides: Any) -> dict[str, Any]:
        """A provider config for this server."""
        return {
            "team_id": self.team_id,
            "key_id": self.key_id,
            "private_key": p8_pem(self.key),
            "topic": self.topic,
            "base_url": self.url,
            **overrides,
        }

    async def start(self) -> None:
        # Listening before hypercorn takes the socket, so an early client waits in the backlog.
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        config = Config()
        config.bind = [f"fd://{sock.detach()}"]
        if self.tls_files is not None:
            config.certfile, config.keyfile = self.tls_files
        config.accesslog = None
        config.graceful_timeout = 0.5
        self._task = asyncio.create_task(
            serve(self._app, config, shutdown_trigger=self._closing.wait)  # type: ignore[arg-type]
        )

    async def close(self) -> None:
        self._closing.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        self.connections.add(tuple(scope["client"]))
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        try:
            headers, answer = await self._handle(scope, body)
        except Refused as refused:
            self.refused.append((refused.status, refused.reason))
            extra = {"retry-after": self.retry_after} if refused.status == 429 else {}
            await _respond(send, refused.status, extra, _reason_body(refused))
            return
        await _respond(send, 200, headers, answer)

    async def _handle(self, scope: Scope, body: bytes) -> tuple[dict[str, str], bytes]:
        if scope["http_version"] != "2":
            raise Refused(505, "HTTP2Required")
        if scope["method"] != "POST":
            raise Refused(405, "MethodNotAllowed")
        match = re.fullmatch(r"/3/device/([0-9A-Za-z._-]+)", scope["path"])
        if not match:
            raise Refused(404, "BadPath")
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self._check_auth(headers.get("authorization", ""))
        self._check_headers(headers)
        payload = _payload(body)
        token = match.group(1)
        failure = self.failures.get(token)
        if failure == "hang":
            await self._closing.wait()
        if failure in FAILURES:
            raise Refused(*FAILURES[failure])
        self.received.append(Received(token, headers, payload))
        return {"apns-id": headers.get("apns-id") or str(uuid.uuid4())}, b""

    def _check_auth(self, authorization: str) -> None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Refused(403, "MissingProviderToken")
        self.provider_tokens.append(token)
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(
                token,
                self.key.public_key(),
                algorithms=["ES256"],
                issuer=self.team_id,
                options={"require": ["iss", "iat"]},
            )
        except jwt.PyJWTError as exc:
            raise Refused(403, "InvalidProviderToken") from exc
        if header.get("kid") != self.key_id:
            raise Refused(403, "InvalidProviderToken")
        if claims["iat"] < time.time() - 3600:
            raise Refused(403, "ExpiredProviderToken")
        if self.expire_next > 0:
            self.expire_next -= 1
            raise Refused(403, "ExpiredProviderToken")

    def _check_headers(self, headers: dict[str, str]) -> None:
        if "apns-topic" not in headers:
            raise Refused(400, "MissingTopic")
        if headers["apns-topic"] != self.topic:
            raise Refused(400, "TopicDisallowed")
        push_type = headers.get("apns-push-type")
        if push_type not in ("alert", "background"):
            raise Refused(400, "InvalidPushType")
        priority = headers.get("apns-priority", "10")
        if priority not in ("5", "10") or (push_type == "background" and priority != "5"):
            raise Refused(400, "BadPriority")
        if "apns-id" in headers and not _is_uuid(headers["apns-id"]):
            raise Refused(400, "BadMessageId")
        if not headers.get("apns-expiration", "0").isdigit():
            raise Refused(400, "BadExpirationDate")
        if len(headers.get("apns-collapse-id", "").encode()) > 64:
            raise Refused(400, "BadCollapseId")


def _payload(body: bytes) -> dict[str, Any]:
    if not body:
        raise Refused(400, "PayloadEmpty")
    if len(body) > MAX_PAYLOAD:
        raise Refused(413, "PayloadTooLarge")
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise Refused(400, "BadPayload") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
        raise Refused(400, "BadPayload")
    return payload


def _is_uuid(value: str) -> bool:
    return (
        re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", value)
        is not None
    )


def _reason_body(refused: Refused) -> bytes:
    body: dict[str, Any] = {"reason": refused.reason}
    if refused.status == 410:
        body["timestamp"] = int(time.time() * 1000)
    return json.dumps(body).encode()


async def _respond(send: Send, status: int, headers: dict[str, str], body: bytes) -> None:
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    if body:
        raw.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
