"""Web Push: RFC 8030 delivery, VAPID authentication (RFC 8292), aes128gcm payloads (RFC 8291).

A delivery's address is the list of the recipient's browser subscriptions
(``{"endpoint", "keys": {"p256dh", "auth"}}``). Each gets its own encrypted copy of the
content (as JSON), POSTed to its endpoint with a VAPID token for the endpoint's origin; the
subscriptions are pushed concurrently. The delivery counts as sent when at least one push
service accepted it; subscriptions a service reports gone (404/410) are handed back as dead
addresses (their endpoints) so they are removed from the recipient.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import http_ece
import jwt
import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion.domain.delivery import Delivery
from clarion.errors import PermanentError, ProviderError, TransientError
from clarion.net.answers import Meaning, Meanings, classify
from clarion.providers.base import Provider, ProviderEnv, ProviderSpec, SendResult
from clarion.providers.configs import WebpushConfig
from clarion.providers.http import ApiClient

TIMEOUT = 15.0
DEFAULT_TTL = 86_400
URGENCY = {"critical": "high", "high": "high", "normal": "normal", "low": "low"}
# One aes128gcm record of 4096 bytes: an 86-byte header (salt, record size, sender key),
# the padding delimiter and the 16-byte tag leave this much for the content.
MAX_PLAINTEXT = 4096 - 86 - 1 - 16
# RFC 8292 caps a token's life at 24 hours; a fresh one is signed when less than an hour
# of the cached one is left.
TOKEN_LIFETIME = 12 * 3600
TOKEN_MARGIN = 3600
TOKEN_CACHE_SIZE = 256


def b64url_decode(text: str) -> bytes:
    """Base64url (or standard base64), padding optional."""
    text = text.strip().replace("+", "-").replace("/", "_").rstrip("=")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_vapid_key(text: str) -> ec.EllipticCurvePrivateKey:
    """A VAPID private key: base64url of the raw 32-byte scalar (what most generators print),
    PEM, or base64 DER. Raises ValueError saying what is wrong."""
    try:
        if "-----BEGIN" in text:
            key: Any = serialization.load_pem_private_key(text.strip().encode(), password=None)
        else:
            raw = b64url_decode(text)
            if len(raw) == 32:
                key = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
            else:
                key = serialization.load_der_private_key(raw, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm, binascii.Error) as exc:
        raise ValueError(
            "vapid_private_key is not a P-256 private key "
            "(expected base64url of the raw 32-byte key, or PEM)"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError("vapid_private_key must be an EC key on the P-256 curve")
    return key


def origin_of(endpoint: str) -> str:
    """The endpoint's origin (RFC 6454), the audience of its VAPID token."""
    parts = urlsplit(endpoint)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    default = {"https": 443, "http": 80}.get(scheme)
    return f"{scheme}://{host}" if port in (None, default) else f"{scheme}://{host}:{port}"


@dataclass(frozen=True, slots=True)
class Subscription:
    endpoint: str
    p256dh: bytes
    auth: bytes


def parse_subscription(value: Any, allow_http: bool) -> Subscription:
    """Check one stored subscription; PermanentError(invalid_address) when it cannot work."""
    try:
        endpoint = value["endpoint"]
        keys = value["keys"]
        p256dh = b64url_decode(keys["p256dh"])
        auth = b64url_decode(keys["auth"])
        # Refuses anything that is not a point on the curve.
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)
        scheme = urlsplit(endpoint).scheme
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PermanentError("not a valid web push subscription", reason="invalid_address") from exc
    if len(auth) != 16:
        raise PermanentError(
            "the subscription's auth secret is not 16 bytes", reason="invalid_address"
        )
    if scheme != "https" and not (allow_http and scheme == "http"):
        raise PermanentError("a push endpoint must be an https URL", reason="invalid_address")
    return Subscription(endpoint, p256dh, auth)


def encrypt(plaintext: bytes, subscription: Subscription) -> bytes:
    """RFC 8291: aes128gcm with a fresh sender key pair, keyed by the subscription's keys."""
    sender = ec.generate_private_key(ec.SECP256R1())
    try:
        body: bytes = http_ece.encrypt(
            plaintext,
            private_key=sender,
            dh=subscription.p256dh,
            auth_secret=subscription.auth,
            version="aes128gcm",
        )
    except http_ece.ECEException as exc:
        raise PermanentError(f"cannot encrypt: {exc.message}", reason="invalid_address") from exc
    return body


@dataclass(frozen=True, slots=True)
class PushAnswer:
    """What one subscription's push service answered."""

    endpoint: str
    location: str | None = None
    gone: bool = False
    error: ProviderError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.gone


# What RFC 8030's statuses say beyond HTTP's (net/answers.py classifies the rest): the
# subscription is gone, or the message too large for the service.
MEANINGS: Meanings = {
    (404, ""): Meaning("unregistered", gone=True),
    (410, ""): Meaning("unregistered", gone=True),
    (413, ""): Meaning("payload_too_large"),
}


def push_answer(endpoint: str, status: int, text: str, retry_after: str | None) -> PushAnswer:
    """One push service's answer, by RFC 8030's meaning of its status."""
    if status in (200, 201, 202):
        return PushAnswer(endpoint)
    detail = f"push service HTTP {status}: {text[:200]}"
    error = classify(status, detail, retry_after=retry_after, meanings=MEANINGS, address=endpoint)
    if isinstance(error, PermanentError) and error.dead_address is not None:
        return PushAnswer(endpoint, gone=True)
    # A success other than those RFC 8030 names is not taken for one.
    return PushAnswer(endpoint, error=error or PermanentError(detail, reason="provider_rejected"))


def combine(outcomes: list[PushAnswer]) -> SendResult:
    """One result for the delivery: sent if any subscription took it."""
    gone = tuple(o.endpoint for o in outcomes if o.gone)
    accepted = [o for o in outcomes if o.ok]
    if accepted:
        return SendResult(provider_message_id=accepted[0].location, dead_addresses=gone)
    errors = [o.error for o in outcomes if o.error is not None]
    transient = [e for e in errors if isinstance(e, TransientError)]
    if transient:
        waits = [e.retry_after for e in transient if e.retry_after is not None]
        first = transient[0]
        raise TransientError(
            first.message, reason=first.reason, retry_after=max(waits, default=None)
        )
    if not errors:
        raise PermanentError(
            "every subscription is gone", reason="unregistered", dead_address=list(gone)
        )
    raise PermanentError(
        errors[0].message, reason=errors[0].reason, dead_address=list(gone) or None
    )


class Vapid:
    """A VAPID identity: the key pair and subject that sign tokens for push services."""

    def __init__(self, private_key: str, subject: str) -> None:
        self._key = load_vapid_key(private_key)
        self._subject = subject
        self.public_key = b64url_encode(
            self._key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        )
        self._tokens: dict[str, tuple[str, float]] = {}

    def authorization(self, endpoint: str) -> str:
        """The ``Authorization`` header for a push to ``endpoint`` (RFC 8292)."""
        return f"vapid t={self.token(origin_of(endpoint))}, k={self.public_key}"

    def token(self, audience: str) -> str:
        """A JWT for one push service, reused while it has long enough to live."""
        now = time.time()
        cached = self._tokens.get(audience)
        if cached is not None and cached[1] - now > TOKEN_MARGIN:
            return cached[0]
        expires = int(now + TOKEN_LIFETIME)
        claims = {"aud": audience, "exp": expires, "sub": self._subject}
        token = jwt.encode(claims, self._key, algorithm="ES256", headers={"typ": "JWT"})
        if len(self._tokens) >= TOKEN_CACHE_SIZE:
            self._tokens.clear()
        self._tokens[audience] = (token, expires)
        return token


class WebpushProvider(Provider):
    """Pushes to browsers' push services with the tenant's VAPID key."""

    kind = "webpush"

    def __init__(self, spec: ProviderSpec, env: ProviderEnv) -> None:
        config = WebpushConfig.model_validate(spec.config)
        self._vapid: Vapid | None = None
        self._key_error: str | None = None
        try:
            self._vapid = Vapid(config.vapid_private_key, config.vapid_subject)
        except ValueError as exc:
            # Reported on every send, so a misconfigured provider fails its deliveries with a
            # clear reason instead of breaking the worker that loads it.
            self._key_error = str(exc)
        self._allow_private = env.settings.allow_private_webhooks
        self._guard = env.guard(config.proxy)
        self._http = ApiClient(
            user_agent="Clarion/1",
            guard=self._guard,
            timeout=float(env.extra.get("timeout", TIMEOUT)),
            max_connections=256,
        )

    @property
    def public_key(self) -> str | None:
        """The VAPID public key (base64url, uncompressed point): browsers subscribe with it."""
        return self._vapid.public_key if self._vapid else None

    async def send(self, message: Delivery) -> SendResult:
        vapid = self._vapid
        if vapid is None:
            raise PermanentError(self._key_error or "no VAPID key", reason="bad_credentials")
        targets = message.to if isinstance(message.to, list) else []
        if not targets:
            raise PermanentError("the recipient has no web push subscription", reason="no_address")
        plaintext = orjson.dumps(message.content)
        if len(plaintext) > MAX_PLAINTEXT:
            raise PermanentError(
                f"the content is {len(plaintext)} bytes; web push carries {MAX_PLAINTEXT}",
                reason="payload_too_large",
            )
        headers = {
            "TTL": str(DEFAULT_TTL),
            "Urgency": URGENCY.get(message.priority, "normal"),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
        }
        results = await asyncio.gather(
            *(self._push(vapid, t, plaintext, headers) for t in targets),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return combine([r for r in results if isinstance(r, PushAnswer)])

    async def _push(
        self,
        vapid: Vapid,
        target: Any,
        plaintext: bytes,
        headers: dict[str, str],
    ) -> PushAnswer:
        endpoint = target.get("endpoint", "?") if isinstance(target, dict) else "?"
        try:
            subscription = parse_subscription(target, self._allow_private)
            await self._guard.check(subscription.endpoint)
            body = encrypt(plaintext, subscription)
            auth = vapid.authorization(subscription.endpoint)
            return await self._post(subscription, body, {**headers, "Authorization": auth})
        except ProviderError as exc:
            return PushAnswer(str(endpoint), error=exc)

    async def _post(self, sub: Subscription, body: bytes, headers: dict[str, str]) -> PushAnswer:
        reply = await self._http.post(sub.endpoint, body, headers, max_body=4096)
        outcome = push_answer(
            sub.endpoint, reply.status, reply.text, reply.headers.get("retry-after")
        )
        if outcome.ok:
            return PushAnswer(sub.endpoint, location=reply.headers.get("location"))
        return outcome

    async def aclose(self) -> None:
        await self._http.aclose()
