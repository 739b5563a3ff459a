"""Unsubscribe links: a signed token naming a tenant, a recipient and a category.

A token of security/tokens.py whose payload is the JSON list ``[tenant_id, recipient_id,
category]``. The token is the only credential of the
unsubscribe endpoint, so it never expires: a link in an old email must keep working.

The key is derived from the tenant's webhook secret (HMAC of a fixed label, so the secret
itself signs nothing but webhooks). It is per tenant, already in the database, and needs no
deployment setting; the verifier learns which tenant's key to use from the payload, and
trusts nothing in it until the MAC checks out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from clarion.security import tokens

_LABEL = b"clarion/unsubscribe/v1"
MAX_TOKEN = 2000
# A tenant's webhook secret, the key's source; None for no such tenant.
SecretOf = Callable[[str], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """What a valid token allows: turning off ``category`` for one recipient."""

    tenant_id: str
    recipient_id: str
    category: str


def derive_key(webhook_secret: str) -> bytes:
    return tokens.derive_key(webhook_secret, _LABEL)


def make_token(key: bytes, target: Unsubscribe) -> str:
    return tokens.seal(key, [target.tenant_id, target.recipient_id, target.category])


def read_claim(token: str) -> tuple[Unsubscribe, str, bytes] | None:
    """The token's unverified claim, its payload text and MAC; None if malformed."""
    opened = tokens.unseal(token, MAX_TOKEN)
    if opened is None:
        return None
    fields, payload, mac = opened
    if not (isinstance(fields, list) and len(fields) == 3):
        return None
    if not all(isinstance(field, str) and field for field in fields):
        return None
    return Unsubscribe(*fields), payload, mac


async def verify_token(secret_of: SecretOf, token: str) -> Unsubscribe | None:
    """The token's target if it is well formed and signed with its tenant's key."""
    claim = read_claim(token)
    if claim is None:
        return None
    target, payload, mac = claim
    secret = await secret_of(target.tenant_id)
    if secret is None:
        return None
    return target if tokens.signed(derive_key(secret), payload, mac) else None


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
