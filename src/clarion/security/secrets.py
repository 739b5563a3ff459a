"""Secrets at rest: AES-256-GCM under a key from the environment.

A sealed value reads ``v1:<kid>:<base64(nonce | ciphertext)>``. ``kid`` names the key that
sealed it (a short hash of the key), so after a rotation values sealed with an older key
(``CLARION_PREVIOUS_SECRET_KEYS``) still open, and ``clarion keys rotate-secret`` can find
and re-seal them. The associated data binds a value to the row it belongs to: a ciphertext
copied to another tenant's or another provider's row does not open there.

Key resolution (:func:`resolve_keyring`) is the same in every process: ``CLARION_SECRET_KEY``
when set; else, on SQLite, a key made on first start and kept next to the database file;
else no key, and storing a secret is refused with ``secret_key_missing``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from clarion.config import Settings
from clarion.errors import ClarionError, Unavailable

log = logging.getLogger(__name__)

VERSION = "v1"
KEY_BYTES = 32
NONCE_BYTES = 12
MASK = "***"


class SecretError(ClarionError):
    """A sealed value that cannot be opened: unknown key, tampered with, or moved."""


class SecretKeyMissing(Unavailable):
    """Storing a secret in a deployment that has no secret key: a deployment error."""

    code = "secret_key_missing"

    def __init__(self) -> None:
        super().__init__(
            "this deployment has no secret key to encrypt provider credentials with: "
            "set CLARION_SECRET_KEY (`clarion secret generate` prints one)"
        )


def parse_key(text: str, what: str = "CLARION_SECRET_KEY") -> bytes:
    """A key given as base64 of 32 bytes; ``ValueError`` naming ``what`` otherwise."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{what} is not valid base64") from exc
    if len(key) != KEY_BYTES:
        raise ValueError(f"{what} must be base64 of {KEY_BYTES} bytes, not {len(key)}")
    return key


def key_id(key: bytes) -> str:
    """A short public name for a key: it identifies the key without revealing it."""
    return hashlib.sha256(b"clarion-key-id\x00" + key).hexdigest()[:12]


def associated_data(*parts: str) -> bytes:
    """Associated data for a value that belongs to the row named by ``parts``."""
    return orjson.dumps(list(parts))


def provider_aad(tenant_id: str, name: str) -> bytes:
    return associated_data("provider", tenant_id, name)


@dataclass(frozen=True)
class Keyring:
    """The current key (seals and opens) and the previous ones (open only)."""

    current: bytes | None
    previous: tuple[bytes, ...] = ()

    def __repr__(self) -> str:
        kids = [key_id(k) for k in self.previous]
        return f"Keyring(current={self.current_id!r}, previous={kids!r})"

    @property
    def current_id(self) -> str | None:
        return key_id(self.current) if self.current is not None else None

    def _by_id(self, kid: str) -> bytes | None:
        for key in (self.current, *self.previous):
            if key is not None and key_id(key) == kid:
                return key
        return None

    def encrypt(self, plaintext: bytes, aad: bytes) -> str:
        if self.current is None:
            raise SecretKeyMissing()
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.current).encrypt(nonce, plaintext, aad)
        blob = base64.b64encode(nonce + sealed).decode()
        return f"{VERSION}:{self.current_id}:{blob}"

    def decrypt(self, token: str, aad: bytes) -> bytes:
        version, kid, blob = sealed_parts(token)
        if version != VERSION:
            raise SecretError(f"unknown secret format {version!r}")
        key = self._by_id(kid)
        if key is None:
            raise SecretError(f"sealed with key {kid}, which this deployment does not have")
        try:
            raw = base64.b64decode(blob, validate=True)
            return AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad)
        except (binascii.Error, ValueError, InvalidTag) as exc:
            raise SecretError("the sealed value was altered or belongs elsewhere") from exc

    def seal_json(self, value: Any, aad: bytes) -> str:
        return self.encrypt(orjson.dumps(value), aad)

    def open_json(self, token: str, aad: bytes) -> Any:
        return orjson.loads(self.decrypt(token, aad))

    def is_current(self, token: str) -> bool:
        """Whether ``token`` is sealed with the current key."""
        return self.current is not None and sealed_parts(token)[1] == self.current_id


def sealed_parts(token: str) -> tuple[str, str, str]:
    parts = token.split(":", 2)
    if len(parts) != 3:
        raise SecretError("not a sealed value")
    return parts[0], parts[1], parts[2]


class RedactedConfig(dict[str, Any]):
    """A provider's configuration with its secrets, whose repr shows them as ``***``, so
    logging a config or a spec never writes a credential."""

    def __init__(self, values: Mapping[str, Any], secret: Iterable[str]) -> None:
        super().__init__(values)
        self.secret_fields = frozenset(secret)

    def __repr__(self) -> str:
        shown = {k: (MASK if k in self.secret_fields else v) for k, v in self.items()}
        return repr(shown)

    __str__ = __repr__


def _read_key_file(path: Path) -> bytes:
    key = parse_key(path.read_text(), what=str(path))
    if path.stat().st_mode & 0o077:
        log.warning("the secret key file %s is readable by others; chmod 600 it", path)
    return key


def _create_key_file(path: Path) -> None:
    """Write a new key to ``path`` unless it exists; atomic, so concurrent first starts of
    several processes agree on one key."""
    temp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(base64.b64encode(os.urandom(KEY_BYTES)).decode() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temp, path)
        log.info("made a secret key for provider credentials in %s", path)
    except FileExistsError:
        pass
    finally:
        temp.unlink(missing_ok=True)


def embedded_key(database: Path | None) -> bytes | None:
    """The key kept next to an SQLite database's file, made on first use; None for an
    in-memory database (whose secrets die with it anyway)."""
    if database is None:
        return None
    path = database.with_name(database.name + ".secret")
    if not path.exists():
        _create_key_file(path)
    return _read_key_file(path)


def _previous(settings: Settings) -> tuple[bytes, ...]:
    text = settings.previous_secret_keys or ""
    parts = [p for p in (s.strip() for s in text.split(",")) if p]
    return tuple(parse_key(p, "CLARION_PREVIOUS_SECRET_KEYS") for p in parts)


def resolve_keyring(settings: Settings, database: Path | None) -> Keyring:
    """The keys of this deployment; ``database`` is the SQLite database's file (None: in
    memory, or not SQLite), from :func:`clarion.store.db.sqlite_file`. ``ValueError`` for a
    malformed key: a deployment error worth stopping for."""
    previous = _previous(settings)
    if settings.secret_key:
        return Keyring(parse_key(settings.secret_key), previous)
    if settings.is_sqlite:
        key = embedded_key(database)
        if key is None:
            key = os.urandom(KEY_BYTES)
        return Keyring(key, previous)
    log.warning(
        "CLARION_SECRET_KEY is not set: providers with credentials cannot be stored "
        "(`clarion secret generate` prints a key)"
    )
    return Keyring(None, previous)
