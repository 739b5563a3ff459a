"""Schemathesis hooks for ``tests/test_schema.py`` (loaded through ``SCHEMATHESIS_HOOKS``).

``POST /v1/suppressions/dsn`` takes a raw message (``message/rfc822``), a media type
schemathesis has no serializer for: its generated bodies are bytes, sent as it sends
``application/octet-stream``.
"""

from __future__ import annotations

import schemathesis

schemathesis.serializer.alias("message/rfc822", "application/octet-stream")
