"""Secrets at rest: AES-256-GCM sealing, key ids, rotation, and the embedded key file."""

from __future__ import annotations

import base64
import logging
import os
import stat
from pathlib import Path

import pytest

from clarion.config import Settings
from clarion.security.secrets import (
    Keyring,
    RedactedConfig,
    SecretError,
    SecretKeyMissing,
    key_id,
    parse_key,
    provider_aad,
    resolve_keyring,
)
from clarion.store.db import sqlite_file


def new_key() -> bytes:
    return os.urandom(32)


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_round_trip_and_format() -> None:
    key = new_key()
    ring = Keyring(key)
    aad = provider_aad("ten_1", "smtp-main")
    sealed = ring.encrypt(b"hunter2", aad)
    version, kid, blob = sealed.split(":")
    assert version == "v1"
    assert kid == key_id(key) == ring.current_id
    assert b"hunter2" not in base64.b64decode(blob)
    assert ring.decrypt(sealed, aad) == b"hunter2"
    # A fresh nonce each time: the same secret never seals to the same text.
    assert ring.encrypt(b"hunter2", aad) != sealed
    assert ring.open_json(ring.seal_json({"password": "p"}, aad), aad) == {"password": "p"}


def test_key_id_is_short_stable_and_distinct() -> None:
    key = new_key()
    assert key_id(key) == key_id(bytes(key))
    assert len(key_id(key)) == 12
    assert key_id(key) != key_id(new_key())
    assert b64(key) not in repr(Keyring(key))


@pytest.mark.parametrize(
    ("tenant", "name"), [("ten_2", "smtp-main"), ("ten_1", "smtp-other"), ("ten_", "1smtp-main")]
)
def test_a_value_moved_to_another_row_does_not_open(tenant: str, name: str) -> None:
    ring = Keyring(new_key())
    sealed = ring.encrypt(b"secret", provider_aad("ten_1", "smtp-main"))
    with pytest.raises(SecretError):
        ring.decrypt(sealed, provider_aad(tenant, name))


def test_tampering_is_detected() -> None:
    ring = Keyring(new_key())
    aad = provider_aad("t", "p")
    version, kid, blob = ring.encrypt(b"secret value", aad).split(":")
    raw = bytearray(base64.b64decode(blob))
    for index in (0, 13, len(raw) - 1):  # nonce, ciphertext, tag
        altered = bytearray(raw)
        altered[index] ^= 1
        forged = f"{version}:{kid}:{base64.b64encode(bytes(altered)).decode()}"
        with pytest.raises(SecretError):
            ring.decrypt(forged, aad)
    for broken in ("garbage", f"v2:{kid}:{blob}", f"v1:{kid}:not*base64", f"v1:{kid}:"):
        with pytest.raises(SecretError):
            ring.decrypt(broken, aad)


def test_unknown_key_is_refused_and_previous_keys_still_open() -> None:
    old, new = new_key(), new_key()
    aad = provider_aad("t", "p")
    sealed_old = Keyring(old).encrypt(b"s", aad)
    with pytest.raises(SecretError, match=key_id(old)):
        Keyring(new).decrypt(sealed_old, aad)
    rotated = Keyring(new, (old,))
    assert rotated.decrypt(sealed_old, aad) == b"s"
    assert not rotated.is_current(sealed_old)
    resealed = rotated.encrypt(b"s", aad)
    assert rotated.is_current(resealed)
    assert resealed.split(":")[1] == key_id(new)


def test_no_key_cannot_seal() -> None:
    with pytest.raises(SecretKeyMissing) as caught:
        Keyring(None).encrypt(b"x", b"")
    assert caught.value.status == 503
    assert caught.value.code == "secret_key_missing"
    assert "CLARION_SECRET_KEY" in caught.value.message


@pytest.mark.parametrize("text", ["", "not base64!", b64(b"short"), b64(b"k" * 33)])
def test_malformed_keys_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="CLARION_SECRET_KEY"):
        parse_key(text)


def test_keys_come_from_settings(tmp_path: Path) -> None:
    current, old1, old2 = new_key(), new_key(), new_key()
    settings = Settings(
        database_url="postgresql+asyncpg://db/clarion",
        secret_key=b64(current),
        previous_secret_keys=f" {b64(old1)}, {b64(old2)} ,",
    )
    ring = resolve_keyring(settings, None)
    assert ring.current == current
    assert ring.previous == (old1, old2)
    with pytest.raises(ValueError, match="CLARION_PREVIOUS_SECRET_KEYS"):
        resolve_keyring(settings.model_copy(update={"previous_secret_keys": "nope"}), None)


def test_postgres_without_a_key_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="clarion.security.secrets"):
        ring = resolve_keyring(Settings(database_url="postgresql+asyncpg://db/clarion"), None)
    assert ring.current is None
    assert "CLARION_SECRET_KEY" in caplog.text


def test_embedded_key_file_is_made_once_private_and_reused(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'clarion.db'}")
    path = tmp_path / "clarion.db.secret"
    assert not path.exists()
    database = sqlite_file(settings.database_url)
    assert database == tmp_path / "clarion.db"
    first = resolve_keyring(settings, database)
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert parse_key(path.read_text()) == first.current
    assert resolve_keyring(settings, database).current == first.current
    assert [p.name for p in tmp_path.iterdir()] == ["clarion.db.secret"]  # no temp file left
    # An explicit key wins over the file.
    explicit = new_key()
    explicit_settings = settings.model_copy(update={"secret_key": b64(explicit)})
    assert resolve_keyring(explicit_settings, database).current == explicit


def test_in_memory_sqlite_gets_a_key_of_its_own() -> None:
    url = "sqlite+aiosqlite:///:memory:"
    assert sqlite_file(url) is None
    ring = resolve_keyring(Settings(database_url=url), sqlite_file(url))
    assert ring.current is not None


def test_redacted_config_never_shows_secrets() -> None:
    config = RedactedConfig({"host": "smtp.example.com", "password": "hunter2"}, {"password"})
    assert config["password"] == "hunter2"
    assert config == {"host": "smtp.example.com", "password": "hunter2"}
    for text in (repr(config), str(config), f"{config}", repr([config])):
        assert "hunter2" not in text
        assert "smtp.example.com" in text
