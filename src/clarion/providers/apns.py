"""The APNs provider: Apple Push Notification service over HTTP/2, with token auth.

One HTTP/2 connection carries every concurrent send as its own stream, as Apple asks
(opening a connection per notification is treated as a denial-of-service attempt). Each
request is authorised by a provider token, an ES256 JWT signed with the team's ``.p8`` key:
Apple refuses one older than an hour and one renewed more often than every 20 minutes, so
the same token is used for 50 minutes, then replaced; an ``ExpiredProviderToken`` answer
replaces it early and the send is tried once more.

Answers: 200 sent (``apns-id`` is the message id); 410 ``Unregistered`` and 400
``BadDeviceToken`` mean the token is gone; 403 is bad credentials; 429 and 5xx are worth
retrying; 413 and any other 400 are permanent.
"""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion.domain.delivery import Delivery
from clarion.errors import PermanentError, ProviderError
from clarion.net.answers import Meaning, Meanings, classify, transport_error
from clarion.net.backend import guarded_transport
from clarion.providers.base import Provider, ProviderEnv, ProviderSpec, SendResult
from clarion.providers.bearer import Clock, KeptToken
from clarion.providers.configs import ApnsConfig
from clarion.providers.push import send_tokens, tokens_for

BASE_URLS = {
    "production": "https://api.push.apple.com",
    "sandbox": "https://api.sandbox.push.apple.com",
}
TOKEN_LIFETIME = 50 * 60.0
HIGH_PRIORITIES = frozenset({"critical", "high"})
INTERRUPTION_LEVELS = frozenset({"passive", "active", "time-sensitive", "critical"})
# apns-id = uuid5(this, delivery id + token): a repeat of the same send carries the same id.
APNS_ID_NAMESPACE = uuid.UUID("3f0c0a55-5a4e-4d0e-9a43-2f1f6c1f0b7e")
# What APNs's reasons say beyond the status (net/answers.py classifies the rest): tokens
# that are gone, and an expiry right after renewal, a clock out of step, which can pass.
MEANINGS: Meanings = {
    (410, "Unregistered"): Meaning("unregistered", gone=True),
    (410, "ExpiredToken"): Meaning("unregistered", gone=True),
    (400, "BadDeviceToken"): Meaning("invalid_address", gone=True),
    (None, "ExpiredProviderToken"): Meaning(transient=True),
}


class ProviderToken:
    """The team's ES256 provider token, signed once and reused for ``TOKEN_LIFETIME``."""

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        key_id: str,
        team_id: str,
        clock: Clock = time.time,
    ) -> None:
        self._key = key
        self._key_id = key_id
        self._team_id = team_id
        self._kept = KeptToken(clock)

    def current(self) -> str:
        """The token to send now (signed anew only when the last one is 50 minutes old)."""
        token = self._kept.fresh()
        if token is None:
            now = self._kept.clock()
            claims = {"iss": self._team_id, "iat": int(now)}
            headers = {"alg": "ES256", "kid": self._key_id}
            token = jwt.encode(claims, self._key, algorithm="ES256", headers=headers)
            self._kept.keep(token, now + TOKEN_LIFETIME)
        return token

    def expire(self, token: str) -> None:
        """Apple called ``token`` expired (see :meth:`KeptToken.drop`)."""
        self._kept.drop(token)


def load_key(pem: str) -> ec.EllipticCurvePrivateKey:
    """The ``.p8`` key, or PermanentError(bad_credentials) if it is not a P-256 key."""
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise PermanentError(
            "the APNs key is not a readable .p8 key", reason="bad_credentials"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise PermanentError("the APNs key is not a P-256 key", reason="bad_credentials")
    return key


class ApnsProvider(Provider):
    """Sends push messages to the ``apns`` tokens of a delivery."""

    kind = "apns"

    def __init__(self, spec: ProviderSpec, env: ProviderEnv, *, timeout: float = 10.0) -> None:
        config = ApnsConfig.model_validate(spec.config)
        self._topic = config.topic
        self._timeout = timeout
        base = str(config.base_url) if config.base_url else BASE_URLS[config.environment]
        self._base = base.rstrip("/")
        self._guard = env.guard(config.proxy)
        self._client: httpx.AsyncClient | None = None
        self._auth: ProviderToken | PermanentError
        try:
            key = load_key(config.private_key)
        except PermanentError as exc:
            # A broken key fails each send (permanently), not the process that loads it.
            self._auth = exc
        else:
            self._auth = ProviderToken(key, config.key_id, config.team_id)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            # HTTP/2 only: over https Apple negotiates it; over http:// (a local test server)
            # it is spoken with prior knowledge. Either way requests share one connection.
            self._client = httpx.AsyncClient(
                http1=False,
                http2=True,
                timeout=httpx.Timeout(self._timeout),
                headers={"user-agent": "Clarion-APNs/1"},
                transport=guarded_transport(self._guard, http1=False, http2=True),
            )
        return self._client

    async def send(self, message: Delivery) -> SendResult:
        if isinstance(self._auth, PermanentError):
            raise self._auth
        auth = self._auth
        await self._guard.check(self._base)
        return await send_tokens(
            tokens_for(message, "apns"),
            lambda token: self._send_one(auth, message, token),
            self._timeout,
        )

    async def _send_one(self, auth: ProviderToken, message: Delivery, token: str) -> str:
        headers = apns_headers(message, token, self._topic)
        payload = orjson.dumps(apns_payload(message))
        bearer = auth.current()
        response = await self._post(token, bearer, headers, payload)
        if response.status_code == 403 and _reason(response) == "ExpiredProviderToken":
            auth.expire(bearer)
            response = await self._post(token, auth.current(), headers, payload)
        if response.status_code == 200:
            return response.headers.get("apns-id") or headers["apns-id"]
        raise apns_error(response, token)

    async def _post(
        self, token: str, bearer: str, headers: dict[str, str], payload: bytes
    ) -> httpx.Response:
        url = f"{self._base}/3/device/{quote(token, safe='')}"
        headers = {**headers, "authorization": f"bearer {bearer}"}
        try:
            return await self._http().post(url, content=payload, headers=headers)
        except httpx.TimeoutException as exc:
            raise transport_error(exc, timed_out=True) from exc
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _alert(content: dict[str, Any]) -> dict[str, str]:
    return {key: content[key] for key in ("title", "subtitle", "body") if content.get(key)}


def apns_headers(message: Delivery, token: str, topic: str) -> dict[str, str]:
    """The request headers of one notification (the provider token is added per request)."""
    alert = bool(_alert(message.content))
    # Apple refuses priority 10 for a background (no alert) notification.
    high = alert and message.priority in HIGH_PRIORITIES
    headers = {
        "apns-topic": topic,
        "apns-push-type": "alert" if alert else "background",
        "apns-priority": "10" if high else "5",
        "apns-id": str(uuid.uuid5(APNS_ID_NAMESPACE, f"{message.id}\n{token}")),
    }
    # Without an expiry Apple stores the notification and retries it for a while; 0 would
    # mean "now or never", which is wrong for a message that has no deadline.
    if message.expires_at is not None:
        headers["apns-expiration"] = str(max(1, int(message.expires_at)))
    collapse_id = message.content.get("collapse_id")
    if isinstance(collapse_id, str) and collapse_id:
        headers["apns-collapse-id"] = collapse_id
    return headers


def apns_payload(message: Delivery) -> dict[str, Any]:
    """The JSON payload: ``aps`` plus the content's ``data`` as custom keys."""
    content = message.content
    alert = _alert(content)
    aps: dict[str, Any] = {"alert": alert} if alert else {"content-available": 1}
    for key, name in (("sound", "sound"), ("badge", "badge"), ("thread_id", "thread-id")):
        if content.get(key) is not None:
            aps[name] = content[key]
    level = content.get("interruption_level")
    if level in INTERRUPTION_LEVELS:
        aps["interruption-level"] = level
    elif alert and message.priority == "critical":
        # A true "critical" alert needs an entitlement from Apple; time-sensitive does not.
        aps["interruption-level"] = "time-sensitive"
    data = content.get("data")
    custom = {k: v for k, v in data.items() if k != "aps"} if isinstance(data, dict) else {}
    return {**custom, "aps": aps}


def _reason(response: httpx.Response) -> str:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return ""
    reason = body.get("reason") if isinstance(body, dict) else None
    return reason if isinstance(reason, str) else ""


def apns_error(response: httpx.Response, token: str) -> ProviderError:
    """The error for an APNs answer that is not a success."""
    status, reason = response.status_code, _reason(response)
    detail = f"APNs {status} {reason or response.reason_phrase}"
    found = classify(
        status,
        detail,
        retry_after=response.headers.get("retry-after"),
        code=reason,
        meanings=MEANINGS,
        address=token,
        location=response.headers.get("location", ""),
    )
    return found or PermanentError(detail, reason="provider_rejected")
