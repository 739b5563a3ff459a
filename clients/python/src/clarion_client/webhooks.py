"""Checking that a webhook request comes from Clarion.

Clarion signs each status event it POSTs with the webhook's secret:
``Clarion-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from clarion_client.errors import SignatureVerificationError

SIGNATURE_HEADER = "Clarion-Signature"
DEFAULT_TOLERANCE = 300.0


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The header value Clarion sends for ``body`` (useful in your own tests)."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    macs: list[str] = []
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError:
                timestamp = None
        elif name == "v1" and value:
            macs.append(value)
    if timestamp is None or not macs:
        raise SignatureVerificationError("the signature header is malformed")
    return timestamp, macs


def verify_signature(
    body: bytes | str,
    header: str | None,
    secret: str,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> None:
    """Raise :class:`SignatureVerificationError` unless ``header`` (the request's
    ``Clarion-Signature``) signs the raw ``body`` with ``secret`` and is at most
    ``tolerance`` seconds old (or early). Pass the body exactly as received."""
    if not header:
        raise SignatureVerificationError(f"no {SIGNATURE_HEADER} header")
    raw = body.encode() if isinstance(body, str) else body
    timestamp, macs = _parse(header)
    moment = time.time() if now is None else now
    if abs(moment - timestamp) > tolerance:
        raise SignatureVerificationError("the signature is too old (or from the future)")
    expected = sign(secret, raw, timestamp).split("v1=", 1)[1]
    if not any(hmac.compare_digest(expected, mac) for mac in macs):
        raise SignatureVerificationError("the signature does not match the body")


def parse_event(
    body: bytes | str,
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, Any]:
    """Verify a webhook request and return its JSON event. ``headers`` may be any mapping
    (looked up case-insensitively)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    verify_signature(body, lowered.get(SIGNATURE_HEADER.lower()), secret, tolerance=tolerance)
    event: dict[str, Any] = json.loads(body)
    return event
