"""Text taken from outside (a provider's answer, an exception's message) made storable.

A provider or a webhook receiver decides what its answer holds: a message id of any length,
an error body with NUL or control characters. Stored as it is, one such answer can fail the
status batch it shares with other tenants' deliveries. Everything taken from outside passes
through :func:`bounded` first.
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls; and lone surrogates.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def bounded(value: str | None, limit: int) -> str | None:
    """``value`` without control characters or lone surrogates, cut to ``limit``."""
    if value is None:
        return None
    clean = _UNSAFE.sub("\ufffd", value)
    if len(clean) > limit:
        clean = clean[: limit - 1] + "\u2026"
    return clean
