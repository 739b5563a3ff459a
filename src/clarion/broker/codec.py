"""A broker message on the wire: JSON bytes, decoded to a dictionary (a consumer turns it
into its own type). Every backend encodes on publish and decodes on consume."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import orjson

# A message: a JSON object, or a msgspec struct that encodes to one (a delivery is encoded
# straight from its struct, with no dictionary made in between).
Payload = Mapping[str, Any] | msgspec.Struct

_encode_struct = msgspec.json.Encoder().encode


def encode(payload: Payload) -> bytes:
    if isinstance(payload, msgspec.Struct):
        return _encode_struct(payload)
    return orjson.dumps(payload)


def decode(data: bytes | str) -> dict[str, Any]:
    value = orjson.loads(data)
    if not isinstance(value, dict):
        raise ValueError("a broker message must be a JSON object")
    return value
