"""Signed link tokens, the one credential of the links in outgoing email (unsubscribe,
open and click tracking): ``v1.<payload>.<mac>``, both parts base64url without padding.
The payload is a JSON list of strings; the MAC is HMAC-SHA256 of the payload's text,
truncated to 128 bits to keep links short. Each kind of link has its own key, derived from
the tenant's webhook secret with a label of its own (the secret itself signs nothing but
webhooks). A verifier reads which tenant's key to use from the payload, and trusts nothing
in it until the MAC checks out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

import orjson

VERSION = "v1"
MAC_BYTES = 16


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def derive_key(webhook_secret: str, label: bytes) -> bytes:
    """The key of one kind of link (``label``) for the tenant of ``webhook_secret``."""
    return hmac.new(webhook_secret.encode(), label, hashlib.sha256).digest()


def _mac(key: bytes, payload: str) -> bytes:
    return hmac.new(key, payload.encode(), hashlib.sha256).digest()[:MAC_BYTES]


def seal(key: bytes, fields: list[str]) -> str:
    """A token carrying ``fields``, signed with ``key``."""
    payload = _b64(orjson.dumps(fields))
    return f"{VERSION}.{payload}.{_b64(_mac(key, payload))}"


def unseal(token: str, max_length: int) -> tuple[object, str, bytes] | None:
    """A token's unverified fields (whatever JSON they are), its payload text and its MAC;
    None if it is not a token of this form (or longer than ``max_length``)."""
    parts = token.split(".")
    if len(token) > max_length or len(parts) != 3 or parts[0] != VERSION:
        return None
    try:
        return orjson.loads(_unb64(parts[1])), parts[1], _unb64(parts[2])
    except (binascii.Error, ValueError):
        return None


def signed(key: bytes, payload: str, mac: bytes) -> bool:
    """Whether ``mac`` is ``key``'s over the payload text (in constant time)."""
    return hmac.compare_digest(_mac(key, payload), mac)
