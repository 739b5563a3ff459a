"""Unsubscribe links: a signed token naming a tenant, a recipient and a category.

``v1.<payload>.<mac>``, both parts base64url without padding; the payload is the JSON list
``[tenant_id, recipient_id, category]`` and the MAC is HMAC-SHA256 of the payload's text,
truncated to 128 bits to keep the link short. The token is the only credential of the
unsubscribe endpoint, so it never expires: a link in an old email must keep working.

The key is derived from the tenant's webhook secret (HMAC of a fixed label, so the secret
itself signs nothing but webhooks). It is per tenant, already in the database, and needs no
deployment setting; the verifier learns which tenant's key to use from the payload, and
trusts nothing in it until the MAC checks out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

_VERSION = "v1"
_LABEL = b"clarion/unsubscribe/v1"
_MAC_BYTES = 16
MAX_TOKEN = 2000
# A tenant's webhook secret, the key's source; None for no such tenant.
SecretOf = Callable[[str], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """What a valid token allows: turning off ``category`` for one recipient."""

    tenant_id: str
    recipient_id: str
    category: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def derive_key(webhook_secret: str) -> bytes:
    return hmac.new(webhook_secret.encode(), _LABEL, hashlib.sha256).digest()


def make_token(key: bytes, target: Unsubscribe) -> str:
    payload = _b64(orjson.dumps([target.tenant_id, target.recipient_id, target.category]))
    return f"{_VERSION}.{payload}.{_b64(_mac(key, payload))}"


def _mac(key: bytes, payload: str) -> bytes:
    return hmac.new(key, payload.encode(), hashlib.sha256).digest()[:_MAC_BYTES]


def read_claim(token: str) -> tuple[Unsubscribe, str, bytes] | None:
    """The token's unverified claim, its payload text and MAC; None if malformed."""
    parts = token.split(".")
    if len(token) > MAX_TOKEN or len(parts) != 3 or parts[0] != _VERSION:
        return None
    try:
        fields = orjson.loads(_unb64(parts[1]))
        mac = _unb64(parts[2])
    except (binascii.Error, ValueError):
        return None
    if not (isinstance(fields, list) and len(fields) == 3):
        return None
    if not all(isinstance(field, str) and field for field in fields):
        return None
    return Unsubscribe(*fields), parts[1], mac


async def verify_token(secret_of: SecretOf, token: str) -> Unsubscribe | None:
    """The token's target if it is well formed and signed with its tenant's key."""
    claim = read_claim(token)
    if claim is None:
        return None
    target, payload, mac = claim
    secret = await secret_of(target.tenant_id)
    if secret is None:
        return None
    expected = _mac(derive_key(secret), payload)
    return target if hmac.compare_digest(expected, mac) else None


class UnsubscribeLinks:
    """Makes the unsubscribe URLs of outgoing email; tenant keys are cached."""

    def __init__(self, secret_of: SecretOf, public_url: str) -> None:
        self._secret_of = secret_of
        if not public_url.isascii():
            raise ValueError("the public URL must be ASCII (punycode and percent-encoding)")
        self._base = public_url.rstrip("/")
        self._keys: dict[str, bytes] = {}

    async def url(self, tenant_id: str, recipient_id: str, category: str) -> str:
        key = self._keys.get(tenant_id)
        if key is None:
            secret = await self._secret_of(tenant_id)
            if secret is None:
                raise LookupError(f"no tenant {tenant_id!r}")
            key = self._keys[tenant_id] = derive_key(secret)
        token = make_token(key, Unsubscribe(tenant_id, recipient_id, category))
        return f"{self._base}/v1/unsubscribe/{token}"
