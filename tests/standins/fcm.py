"""A local stand-in for Google's OAuth2 token endpoint and the FCM HTTP v1 send API.

It checks what the real services check: the token request is a jwt-bearer grant whose
assertion is signed (RS256) by the service account's key, names the account as issuer, the
FCM scope and this endpoint as audience, and lives at most an hour; a send carries an access
token this server issued and that has not expired, for the right project, with a body of the
documented shape. Chosen tokens answer with FCM's documented errors.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"

# failure name → (HTTP status, google.rpc status, FCM errorCode, message)
FAILURES: dict[str, tuple[int, str, str, str]] = {
    "unregistered": (404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found."),
    "invalid_token": (
        400,
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        "The registration token is not a valid FCM registration token",
    ),
    "invalid_argument": (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "Message is too big"),
    "sender_mismatch": (403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch"),
    "quota": (429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "Quota exceeded."),
    "unavailable": (503, "UNAVAILABLE", "UNAVAILABLE", "The service is currently unavailable."),
    "internal": (500, "INTERNAL", "INTERNAL", "Internal error encountered."),
}


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def account_key() -> rsa.RSAPrivateKey:
    """One key for every stand-in of a test run (making an RSA key takes a while)."""
    return rsa_key()


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@dataclass
class FcmStandin:
    """Token endpoint at ``/token``, send API at ``/v1/projects/{project}/messages:send``."""

    project_id: str = "clarion-test"
    client_email: str = "clarion@clarion-test.iam.gserviceaccount.com"
    # Lifetime of the access tokens it issues.
    expires_in: int = 3600
    # token → name of a FAILURES entry, or "hang" (never answers until the server closes).
    failures: dict[str, str] = field(default_factory=dict)
    retry_after: str = "7"
    key: rsa.RSAPrivateKey = field(default_factory=account_key)
    token_requests: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    port: int = 0
    _issued: dict[str, float] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None
    _closing: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    def service_account(self, key: rsa.RSAPrivateKey | None = None) -> dict[str, Any]:
        """A key file for this server's account (signed with ``key`` to make a bad one)."""
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": "k1",
            "private_key": pem(key or self.key),
            "client_email": self.client_email,
            "client_id": "1",
            "token_uri": self.token_url,
        }

    def revoke_tokens(self) -> None:
        """Make every access token issued so far invalid (a send with one gets 401)."""
        self._issued.clear()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_post("/v1/projects/{project}/{action}", self._send)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = await request.post()
        if form.get("grant_type") != GRANT_TYPE:
            return _oauth_error("unsupported_grant_type", "Invalid grant_type")
        try:
            claims = jwt.decode(
                str(form.get("assertion", "")),
                self.key.public_key(),
                algorithms=["RS256"],
                audience=self.token_url,
                issuer=self.client_email,
                options={"require": ["iss", "aud", "iat", "exp", "scope"]},
            )
        except jwt.PyJWTError as exc:
            return _oauth_error("invalid_grant", f"Invalid JWT: {exc}")
        if claims["scope"] != SCOPE or claims["exp"] - claims["iat"] > 3600:
            return _oauth_error("invalid_scope", "Bad scope or lifetime")
        token = f"ya29.{secrets.token_urlsafe(24)}"
        self._issued[token] = time.time() + self.expires_in
        return web.json_response(
            {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"}
        )

    async def _send(self, request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme != "Bearer" or self._issued.get(token, 0.0) < time.time():
            return _rpc_error(401, "UNAUTHENTICATED", "Request had invalid credentials.")
        if request.match_info["action"] != "messages:send":
            return _rpc_error(404, "NOT_FOUND", "No such method.")
        if request.match_info["project"] != self.project_id:
            return _rpc_error(403, "PERMISSION_DENIED", "Permission denied on the project.")
        try:
            body = await request.json()
        except ValueError:
            return _rpc_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        problem = _shape_problem(body)
        if problem:
            self.rejected.append(problem)
            return _rpc_error(400, "INVALID_ARGUMENT", problem)
        message = body["message"]
        failure = self.failures.get(message["token"])
        if failure == "hang":
            await self._closing.wait()
        if failure in FAILURES:
            status, rpc, code, text = FAILURES[failure]
            headers = {"retry-after": self.retry_after} if status == 429 else None
            return _rpc_error(status, rpc, text, error_code=code, headers=headers)
        self.received.append(message)
        return web.json_response({"name": f"projects/{self.project_id}/messages/{next(self._ids)}"})


def _shape_problem(body: Any) -> str | None:
    """What is wrong with a messages:send body, as FCM would refuse it."""
    if not isinstance(body, dict) or set(body) - {"message", "validate_only"}:
        return "Unknown name at top level"
    message = body.get("message")
    if not isinstance(message, dict) or not isinstance(message.get("token"), str):
        return "message.token is required"
    allowed = {"token", "notification", "data", "android", "apns", "webpush", "fcm_options"}
    if set(message) - allowed:
        return f"Unknown name in message: {sorted(set(message) - allowed)}"
    notification = message.get("notification", {})
    if not isinstance(notification, dict) or not _strings(notification, {"title", "body"}):
        return "message.notification must hold string title/body"
    if not _strings(message.get("data", {}), None):
        return "message.data values must be strings"
    android = message.get("android", {})
    if not isinstance(android, dict) or android.get("priority", "normal") not in (
        "high",
        "normal",
    ):
        return "message.android.priority must be high or normal"
    headers = message.get("apns", {}).get("headers", {})
    if not _strings(headers, None):
        return "message.apns.headers values must be strings"
    return None


def _strings(value: Any, keys: set[str] | None) -> bool:
    if not isinstance(value, dict):
        return False
    if keys is not None and set(value) - keys:
        return False
    return all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _oauth_error(error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=400)


def _rpc_error(
    status: int,
    rpc_status: str,
    message: str,
    *,
    error_code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    error: dict[str, Any] = {"code": status, "message": message, "status": rpc_status}
    if error_code:
        error["details"] = [{"@type": FCM_ERROR, "errorCode": error_code}]
    return web.json_response({"error": error}, status=status, headers=headers)
