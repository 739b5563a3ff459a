"""Checks that a provider's key material can be used, when it is stored rather than at its
first send: an APNs ``.p8`` key, an FCM service account, a VAPID private key, a Slack or
Telegram bot token.

Each problem is a ``{"field": "config.<name>", "message"}`` detail; a message never quotes
the value.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import (
    load_der_private_key,
    load_der_public_key,
    load_pem_private_key,
    load_pem_public_key,
)

from clarion.domain.header_fields import header_value

Problems = list[dict[str, str]]


def _problem(field: str, message: str) -> Problems:
    return [{"field": f"config.{field}", "message": message}]


def _pem_key(text: str) -> Any:
    try:
        return load_pem_private_key(text.strip().encode(), password=None)
    except (ValueError, TypeError):
        return None


def _p256(key: Any) -> bool:
    return isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)


def check_apns(config: dict[str, Any]) -> Problems:
    if not _p256(_pem_key(config["private_key"])):
        return _problem(
            "private_key", "not an EC P-256 private key in PEM form (the .p8 file's content)"
        )
    return []


def check_fcm(config: dict[str, Any]) -> Problems:
    account = config["service_account"]
    if isinstance(account, str):
        try:
            account = orjson.loads(account)
        except orjson.JSONDecodeError:
            return _problem("service_account", "not JSON (the key file's content)")
    if not isinstance(account, dict):
        return _problem("service_account", "not a JSON object")
    required = ("project_id", "client_email", "private_key", "token_uri")
    missing = [k for k in required if not account.get(k)]
    if missing:
        return _problem("service_account", f"lacks {', '.join(missing)}")
    # The project id goes in the request line, the token URI is called, the client email
    # is the token's issuer: the header rules (clarion.domain.header_fields) hold for each.
    for name in ("project_id", "client_email", "token_uri"):
        try:
            header_value(str(account[name]))
        except ValueError as exc:
            return _problem("service_account", f"its {name} {exc}")
    if not isinstance(_pem_key(str(account["private_key"])), rsa.RSAPrivateKey):
        return _problem("service_account", "its private_key is not an RSA key in PEM form")
    return []


def _b64url(text: str) -> bytes | None:
    cleaned = "".join(text.split())
    try:
        return base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
    except (binascii.Error, ValueError):
        return None


def _vapid_key(text: str) -> bool:
    if "-----BEGIN" in text:
        return _p256(_pem_key(text))
    raw = _b64url(text)
    if raw is None:
        return False
    try:
        if len(raw) == 32:
            return _p256(ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1()))
        return _p256(load_der_private_key(raw, password=None))
    except (ValueError, TypeError):
        return False


def check_webpush(config: dict[str, Any]) -> Problems:
    if not _vapid_key(config["vapid_private_key"]):
        return _problem(
            "vapid_private_key",
            "not a P-256 private key (PEM, or base64url of the raw 32 bytes or of DER)",
        )
    return []


_SLACK_TOKEN = re.compile(r"^xox[a-z]-[A-Za-z0-9-]+$")
_TELEGRAM_TOKEN = re.compile(r"^[0-9]{1,20}:[A-Za-z0-9_-]{20,}$")


def check_slack(config: dict[str, Any]) -> Problems:
    if not _SLACK_TOKEN.match(config["token"]):
        return _problem("token", "not a Slack token (xoxb-...)")
    return []


def check_telegram(config: dict[str, Any]) -> Problems:
    # Sent in the request's path: anything but the token's own form could change the path.
    if not _TELEGRAM_TOKEN.match(config["bot_token"]):
        return _problem("bot_token", "not a Telegram bot token (<bot id>:<secret>)")
    return []


def p256_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """A P-256 public key written as SendGrid shows its event webhook's verification key
    (base64 of the DER SubjectPublicKeyInfo), or as PEM; ``ValueError`` otherwise."""

    stripped = text.strip()
    try:
        if stripped.startswith("-----BEGIN"):
            key = load_pem_public_key(stripped.encode())
        else:
            key = load_der_public_key(base64.b64decode(stripped, validate=True))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValueError("not a public key (base64 DER or PEM)") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("not a P-256 (prime256v1) public key")
    return key
