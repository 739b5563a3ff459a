"""The FCM provider: Firebase Cloud Messaging's HTTP v1 API.

Each token is one ``POST /v1/projects/{project}/messages:send``, authorised by an OAuth2
access token that the service account obtains by signing a JWT (RS256) and exchanging it at
the key file's ``token_uri``. The access token is cached until five minutes before it
expires and refreshed by one caller at a time; a 401 drops it and the send is tried once
more with a new one (the token may have been revoked early).

Errors follow the FCM v1 error codes: UNREGISTERED (or an invalid registration token) means
the token is gone; SENDER_ID_MISMATCH, THIRD_PARTY_AUTH_ERROR and 403 are bad credentials;
QUOTA_EXCEEDED, UNAVAILABLE and INTERNAL are worth retrying, after ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import jwt
import orjson

from clarion.domain.delivery import Delivery
from clarion.errors import PermanentError, ProviderError, TransientError
from clarion.net.answers import Meaning, Meanings, classify
from clarion.providers.base import Provider, ProviderEnv, ProviderSpec, SendResult
from clarion.providers.bearer import Clock, KeptToken
from clarion.providers.configs import FcmConfig
from clarion.providers.http import ApiClient
from clarion.providers.push import send_tokens, tokens_for

DEFAULT_BASE_URL = "https://fcm.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 3600
# An access token is replaced this long before it expires, so none expires in flight.
REFRESH_MARGIN = 300.0
HIGH_PRIORITIES = frozenset({"critical", "high"})


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """The fields of a Google service account key file that a send needs."""

    project_id: str
    client_email: str
    private_key: str
    private_key_id: str | None
    token_uri: str

    @classmethod
    def parse(cls, value: dict[str, Any] | str) -> ServiceAccount:
        """From the key file as an object or its JSON text; PermanentError if unusable."""
        try:
            data = orjson.loads(value) if isinstance(value, str) else value
        except orjson.JSONDecodeError as exc:
            raise PermanentError(
                "the service account is not valid JSON", reason="bad_credentials"
            ) from exc
        if not isinstance(data, dict):
            raise PermanentError("the service account is not an object", reason="bad_credentials")
        fields = ("project_id", "client_email", "private_key", "token_uri")
        missing = [name for name in fields if not isinstance(data.get(name), str)]
        if missing:
            raise PermanentError(
                f"the service account lacks {', '.join(missing)}", reason="bad_credentials"
            )
        return cls(
            project_id=data["project_id"],
            client_email=data["client_email"],
            private_key=data["private_key"],
            private_key_id=data.get("private_key_id"),
            token_uri=data["token_uri"],
        )


class AccessTokens:
    """OAuth2 access tokens of one service account, cached until shortly before expiry."""

    def __init__(
        self,
        account: ServiceAccount,
        token_url: str,
        http: ApiClient,
        clock: Clock = time.time,
    ) -> None:
        self._account = account
        self._token_url = token_url
        self._http = http
        self._kept = KeptToken(clock)
        self._lock = asyncio.Lock()

    async def get(self) -> str:
        """A valid access token, fetched only if the cached one is missing or near expiry."""
        token = self._kept.fresh()
        if token is not None:
            return token
        async with self._lock:
            # Another caller may have refreshed while this one waited for the lock.
            token = self._kept.fresh()
            if token is None:
                token, expires_in = await self._fetch()
                self._kept.keep(token, self._kept.clock() + expires_in - REFRESH_MARGIN)
            return token

    def drop(self, token: str) -> None:
        """Forget a token the service refused (see :meth:`KeptToken.drop`)."""
        self._kept.drop(token)

    def _assertion(self) -> str:
        now = int(self._kept.clock())
        claims = {
            "iss": self._account.client_email,
            "scope": SCOPE,
            "aud": self._account.token_uri,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        }
        headers = {"kid": self._account.private_key_id} if self._account.private_key_id else None
        try:
            return jwt.encode(claims, self._account.private_key, algorithm="RS256", headers=headers)
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise PermanentError(
                f"the service account's private key is unusable: {exc}", reason="bad_credentials"
            ) from exc

    async def _fetch(self) -> tuple[str, float]:
        form = {"grant_type": GRANT_TYPE, "assertion": self._assertion()}
        headers = {"content-type": "application/x-www-form-urlencoded"}
        try:
            reply = await self._http.post(
                self._token_url, urlencode(form).encode(), headers, what="token endpoint"
            )
        except TransientError as exc:
            raise TransientError(f"token endpoint: {exc.message}", reason=exc.reason) from exc
        raw, status, retry_after = reply.body, reply.status, reply.headers.get("retry-after")
        body = _json(raw)
        if status == 200 and isinstance(body.get("access_token"), str):
            expires_in = body.get("expires_in")
            if not isinstance(expires_in, int | float):
                expires_in = ASSERTION_LIFETIME
            return body["access_token"], float(expires_in)
        detail = f"token endpoint HTTP {status}: {raw[:200].decode(errors='replace')}"
        # A token endpoint's refusal is the account's; so is a success without a token.
        error = classify(status, detail, retry_after=retry_after, rejected="bad_credentials")
        raise error or PermanentError(detail, reason="bad_credentials")


class FcmProvider(Provider):
    """Sends push messages to the ``fcm`` tokens of a delivery."""

    kind = "fcm"

    def __init__(self, spec: ProviderSpec, env: ProviderEnv, *, timeout: float = 10.0) -> None:
        config = FcmConfig.model_validate(spec.config)
        self._timeout = timeout
        self._guard = env.guard(config.proxy)
        self._http = ApiClient(
            user_agent="Clarion-FCM/1", guard=self._guard, timeout=timeout, max_connections=256
        )
        self._token_url = ""
        base = str(config.base_url) if config.base_url else DEFAULT_BASE_URL
        self._base = base.rstrip("/")
        self._auth: tuple[ServiceAccount, AccessTokens] | PermanentError
        try:
            account = ServiceAccount.parse(config.service_account)
        except PermanentError as exc:
            # A broken key fails each send (permanently), not the process that loads it.
            self._auth = exc
        else:
            token_url = str(config.token_url) if config.token_url else account.token_uri
            self._token_url = token_url
            self._auth = (account, AccessTokens(account, token_url, self._http))

    async def send(self, message: Delivery) -> SendResult:
        if isinstance(self._auth, PermanentError):
            raise self._auth
        account, tokens = self._auth
        url = f"{self._base}/v1/projects/{account.project_id}/messages:send"
        # Both endpoints come from the tenant's configuration: neither may be internal.
        await self._guard.check(url)
        await self._guard.check(self._token_url)
        return await send_tokens(
            tokens_for(message, "fcm"),
            lambda token: self._send_one(url, tokens, message, token),
            self._timeout,
        )

    async def _send_one(
        self, url: str, tokens: AccessTokens, message: Delivery, token: str
    ) -> str | None:
        payload = orjson.dumps(fcm_body(message, token))
        access = await tokens.get()
        status, body, retry_after = await self._post(url, access, payload)
        if status == 401:
            # Revoked or expired early: one more try with a new token.
            tokens.drop(access)
            status, body, retry_after = await self._post(url, await tokens.get(), payload)
        if 200 <= status < 300:
            name = body.get("name")
            return name if isinstance(name, str) else None
        raise fcm_error(status, body, retry_after, token)

    async def _post(
        self, url: str, access: str, payload: bytes
    ) -> tuple[int, dict[str, Any], str | None]:
        headers = {"authorization": f"Bearer {access}", "content-type": "application/json"}
        reply = await self._http.post(url, payload, headers)
        return reply.status, _json(reply.body), reply.headers.get("retry-after")

    async def aclose(self) -> None:
        await self._http.aclose()


def fcm_body(message: Delivery, token: str) -> dict[str, Any]:
    """The ``messages:send`` request body for one token."""
    content = message.content
    body: dict[str, Any] = {"token": token}
    notification = {key: content[key] for key in ("title", "body") if content.get(key)}
    if notification:
        body["notification"] = notification
    data = content.get("data")
    if isinstance(data, dict) and data:
        # FCM takes only string values in `data`.
        body["data"] = {
            str(key): value if isinstance(value, str) else orjson.dumps(value).decode()
            for key, value in data.items()
        }
    high = message.priority in HIGH_PRIORITIES
    android: dict[str, Any] = {"priority": "high" if high else "normal"}
    # Apple refuses priority 10 for a message without an alert.
    apns_headers = {"apns-priority": "10" if high and notification else "5"}
    collapse_id = content.get("collapse_id")
    if isinstance(collapse_id, str) and collapse_id:
        android["collapse_key"] = collapse_id
        apns_headers["apns-collapse-id"] = collapse_id
    if message.expires_at is not None:
        android["ttl"] = f"{max(0, int(message.expires_at - time.time()))}s"
        apns_headers["apns-expiration"] = str(int(message.expires_at))
    body["android"] = android
    body["apns"] = {"headers": apns_headers}
    return {"message": body}


# An INVALID_ARGUMENT about the token itself (FCM has no code of its own for it).
BAD_TOKEN = "INVALID_ARGUMENT:token"
# What FCM's error codes say beyond the status (net/answers.py classifies the rest).
_RETRY = Meaning(transient=True)
_UNREGISTERED = Meaning("unregistered", gone=True)
MEANINGS: Meanings = {
    (None, "QUOTA_EXCEEDED"): _RETRY,
    (None, "UNAVAILABLE"): _RETRY,
    (None, "INTERNAL"): _RETRY,
    (None, "UNREGISTERED"): _UNREGISTERED,
    (404, ""): _UNREGISTERED,
    (None, "SENDER_ID_MISMATCH"): Meaning("bad_credentials"),
    (None, "THIRD_PARTY_AUTH_ERROR"): Meaning("bad_credentials"),
    (None, BAD_TOKEN): Meaning("invalid_address", gone=True),
}


def fcm_error(
    status: int, body: dict[str, Any], retry_after: str | None, token: str
) -> ProviderError:
    """The error for an FCM v1 response that is not a success."""
    error = body.get("error")
    if not isinstance(error, dict):
        error = {}
    details = [item for item in error.get("details") or [] if isinstance(item, dict)]
    code = next(
        (item["errorCode"] for item in details if isinstance(item.get("errorCode"), str)),
        error.get("status") or f"HTTP_{status}",
    )
    detail = f"FCM {status} {code}: {str(error.get('message', ''))[:200]}"
    if code == "INVALID_ARGUMENT" and _about_token(error, details):
        code = BAD_TOKEN
    found = classify(
        status,
        detail,
        retry_after=retry_after,
        code=code,
        meanings=MEANINGS,
        address=token,
    )
    return found or PermanentError(detail, reason="provider_rejected")


def _about_token(error: dict[str, Any], details: list[dict[str, Any]]) -> bool:
    for item in details:
        for violation in item.get("fieldViolations") or []:
            if isinstance(violation, dict) and violation.get("field") == "message.token":
                return True
    return "registration token" in str(error.get("message", "")).lower()


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
