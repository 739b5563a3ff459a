"""A local stand-in for a browser push service (RFC 8030) and the browsers subscribed to it.

It checks what a push service checks: a VAPID ``Authorization: vapid t=<JWT>, k=<key>``
(RFC 8292) whose ES256 signature verifies with ``k``, whose ``aud`` is this service's
origin, whose ``exp`` is in the future and at most 24 hours away, and that has a ``sub``; a
``TTL`` header; ``Content-Encoding: aes128gcm``; a body of at most 4096 bytes. It then
plays the browser: it decrypts the body (RFC 8291) with the subscription's private key and
auth secret, and records the plaintext. Chosen endpoints answer 404/410/429/500 instead.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import http_ece
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

MAX_BODY = 4096
URGENCIES = {"very-low", "low", "normal", "high"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def vapid_keys() -> tuple[str, str]:
    """A fresh VAPID key pair as (private: base64url raw 32 bytes, public: base64url point)."""
    key = ec.generate_private_key(ec.SECP256R1())
    raw = key.private_numbers().private_value.to_bytes(32, "big")
    return b64url(raw), b64url(public_point(key))


@dataclass
class Browser:
    """One subscription, as a browser holds it: the keys it gave the application server."""

    endpoint: str
    private_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    auth: bytes = field(default_factory=lambda: secrets.token_bytes(16))
    # The applicationServerKey it subscribed with (base64url); None = any key.
    server_key: str | None = None

    @property
    def subscription(self) -> dict[str, Any]:
        """What ``PushSubscription.toJSON()`` gives the application."""
        return {
            "endpoint": self.endpoint,
            "keys": {"p256dh": b64url(public_point(self.private_key)), "auth": b64url(self.auth)},
        }


@dataclass
class Push:
    """A push the service accepted and the browser decrypted."""

    endpoint: str
    headers: dict[str, str]
    claims: dict[str, Any]
    plaintext: bytes

    @property
    def payload(self) -> Any:
        return json.loads(self.plaintext)


@dataclass
class PushService:
    received: list[Push] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    port: int = 0
    # endpoint → (status, Retry-After) to answer with instead of accepting.
    answers: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    _browsers: dict[str, Browser] = field(default_factory=dict)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def subscribe(self, server_key: str | None = None) -> Browser:
        """A new browser subscription on this service."""
        browser = Browser(f"{self.url}/push/{secrets.token_urlsafe(12)}", server_key=server_key)
        self._browsers[browser.endpoint] = browser
        return browser

    def answer(self, browser: Browser, status: int, retry_after: str | None = None) -> None:
        """Make pushes to ``browser`` answer ``status`` from now on."""
        self.answers[browser.endpoint] = (status, retry_after)

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_post("/push/{token}", self._push)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _push(self, request: web.Request) -> web.Response:
        endpoint = f"{self.url}{request.path}"
        browser = self._browsers.get(endpoint)
        if browser is None:
            return self._refuse(404, "no such subscription")
        claims, problem = self._check_vapid(request, browser)
        if problem is not None:
            return problem
        problem = _check_headers(request)
        if problem is not None:
            return self._refuse(*problem)
        body = await request.read()
        if len(body) > MAX_BODY:
            return self._refuse(413, "payload too large")
        scripted = self.answers.get(endpoint)
        if scripted is not None:
            status, retry_after = scripted
            headers = {"Retry-After": retry_after} if retry_after else None
            return web.Response(status=status, text="scripted", headers=headers)
        try:
            plaintext = http_ece.decrypt(
                body,
                private_key=browser.private_key,
                auth_secret=browser.auth,
                version="aes128gcm",
            )
        except http_ece.ECEException as exc:
            return self._refuse(400, f"cannot decrypt: {exc.message}")
        self.received.append(Push(endpoint, dict(request.headers), claims, plaintext))
        location = f"{self.url}/message/{secrets.token_urlsafe(8)}"
        return web.Response(
            status=201, headers={"Location": location, "TTL": request.headers["TTL"]}
        )

    def _check_vapid(
        self, request: web.Request, browser: Browser
    ) -> tuple[dict[str, Any], web.Response | None]:
        scheme, _, rest = request.headers.get("authorization", "").partition(" ")
        params = dict(part.strip().partition("=")[::2] for part in rest.split(",") if "=" in part)
        token, key = params.get("t"), params.get("k")
        if scheme.lower() != "vapid" or not token or not key:
            return {}, self._refuse(401, "missing VAPID authorization")
        if browser.server_key is not None and key != browser.server_key:
            return {}, self._refuse(403, "VAPID key differs from the subscription's")
        try:
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(key))
            claims = jwt.decode(
                token,
                public,
                algorithms=["ES256"],
                audience=self.url,
                options={"require": ["aud", "exp", "sub"]},
            )
        except (ValueError, jwt.PyJWTError) as exc:
            return {}, self._refuse(401, f"invalid VAPID token: {exc}")
        if claims["exp"] > time.time() + 24 * 3600:
            return {}, self._refuse(403, "VAPID token expires more than 24 hours ahead")
        if not str(claims["sub"]).startswith(("mailto:", "https://")):
            return {}, self._refuse(403, "VAPID sub is not a mailto: or https: URL")
        return claims, None

    def _refuse(self, status: int, why: str) -> web.Response:
        self.rejected.append(f"{status} {why}")
        return web.Response(status=status, text=why)


def _check_headers(request: web.Request) -> tuple[int, str] | None:
    ttl = request.headers.get("TTL", "")
    if not ttl.isdigit():
        return 400, "TTL header missing or not a number"
    if request.headers.get("Urgency", "normal") not in URGENCIES:
        return 400, "unknown Urgency"
    if request.headers.get("Content-Encoding") != "aes128gcm":
        return 415, "Content-Encoding must be aes128gcm"
    return None
