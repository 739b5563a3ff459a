"""Recipient tokens: what an end user's browser or app shows to read its own inbox.

A token is a JWT (HS256) signed with the tenant's inbox secret. It names the tenant
(``tid``), the recipient (``sub``), when it was issued (``ims``, milliseconds) and when it
expires (``exp``). Checking one needs the tenant's secret (cached by the API) and nothing
else: no database read per request. Revoked by replacing the secret (every token of the
tenant) or by a revocation issued later than the token (the recipient was erased).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import jwt

AUDIENCE = "clarion-inbox"
DEFAULT_TTL = 24 * 3600
MAX_TTL = 30 * 24 * 3600
_ALGORITHMS = ["HS256"]


class InvalidToken(Exception):
    """Not a token this deployment issued, tampered with, or expired (``expired``)."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


@dataclass(frozen=True, slots=True)
class RecipientClaims:
    tenant_id: str
    recipient_id: str
    issued_at_ms: int
    expires_at: int


def new_secret() -> str:
    return f"insec_{secrets.token_urlsafe(32)}"


def recipient_digest(secret: str, recipient_id: str) -> str:
    """How a revocation names a recipient: keyed by the tenant's inbox secret, so an erased
    person's id is kept nowhere (and a new secret makes old revocations moot anyway)."""
    mac = hmac.new(secret.encode(), recipient_id.encode(), hashlib.sha256)
    return "r_" + mac.hexdigest()[:40]


def looks_like_token(text: str) -> bool:
    """A recipient token rather than an API key (``ck_...``)."""
    return text.startswith("eyJ") and text.count(".") == 2


def mint(secret: str, tenant_id: str, recipient_id: str, now_ms: int, ttl: int) -> str:
    claims = {
        "aud": AUDIENCE,
        "tid": tenant_id,
        "sub": recipient_id,
        "ims": now_ms,
        "iat": now_ms // 1000,
        "exp": now_ms // 1000 + ttl,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def tenant_of(token: str) -> str:
    """The tenant a token claims to belong to, before its signature is checked."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise InvalidToken("not a recipient token") from exc
    tenant_id = claims.get("tid")
    if not isinstance(tenant_id, str) or not tenant_id or len(tenant_id) > 40:
        raise InvalidToken("not a recipient token")
    return tenant_id


def verify(secret: str, token: str) -> RecipientClaims:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=_ALGORITHMS,
            audience=AUDIENCE,
            options={"require": ["exp", "sub", "tid", "ims"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("the recipient token has expired", expired=True) from exc
    except jwt.PyJWTError as exc:
        raise InvalidToken("invalid recipient token") from exc
    recipient_id, tenant_id, issued = claims["sub"], claims["tid"], claims["ims"]
    if not (isinstance(recipient_id, str) and isinstance(tenant_id, str)):
        raise InvalidToken("invalid recipient token")
    if not isinstance(issued, int) or isinstance(issued, bool):
        raise InvalidToken("invalid recipient token")
    return RecipientClaims(tenant_id, recipient_id, issued, int(claims["exp"]))
