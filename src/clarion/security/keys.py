"""API keys: shown once, stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class NewKey:
    id: str
    secret: str  # the whole key, as given to the client
    prefix: str  # the part that may be shown later to tell keys apart
    key_hash: str


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_key() -> NewKey:
    prefix = secrets.token_hex(4)
    secret = f"ck_{prefix}_{secrets.token_urlsafe(32)}"
    return NewKey(id=f"key_{prefix}", secret=secret, prefix=prefix, key_hash=hash_key(secret))


def generate_webhook_secret() -> str:
    return f"whsec_{secrets.token_urlsafe(32)}"
