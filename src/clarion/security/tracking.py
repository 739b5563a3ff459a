"""Open and click tracking links: a signed token naming a tenant's delivery, and for a
click the link's target.

A token of security/tokens.py, as an unsubscribe link's: the payload is the JSON list
``["o", tenant_id, delivery_id]`` (an open) or ``["c", tenant_id, delivery_id, url]`` (a
click). A click's target comes only from a token whose MAC checks out, so the
redirect is never an open one; a token does not expire (a link in an old email must keep
working).

The key is derived from the tenant's webhook secret with a label of its own (not the
unsubscribe key, nor the secret itself): per tenant, already in the database, no deployment
setting. The verifier learns which tenant's key to use from the payload, and trusts nothing
in it until the MAC checks out; what it then records is scoped by that tenant, so a tenant's
key can never name another tenant's delivery.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from clarion.domain.tracking import trackable
from clarion.security import tokens

_LABEL = b"clarion/tracking/v1"
OPEN, CLICK = "o", "c"
KINDS = {OPEN: "opened", CLICK: "clicked"}
# The longest token made (a target of domain/tracking.py's MAX_URL fits) and read.
MAX_TOKEN = 4096
# A tenant's tracking key, None for no such tenant.
KeyOf = Callable[[str], Awaitable[bytes | None]]


@dataclass(frozen=True, slots=True)
class Hit:
    """What a valid token records: ``kind`` (``o`` or ``c``) of the tenant's delivery, and
    for a click the target URL."""

    kind: str
    tenant_id: str
    delivery_id: str
    url: str | None = None

    @property
    def event(self) -> str:
        return KINDS[self.kind]


def derive_key(webhook_secret: str) -> bytes:
    return tokens.derive_key(webhook_secret, _LABEL)


def make_token(key: bytes, hit: Hit) -> str:
    fields = [hit.kind, hit.tenant_id, hit.delivery_id]
    if hit.kind == CLICK:
        fields.append(hit.url or "")
    return tokens.seal(key, fields)


def _hit(fields: object) -> Hit | None:
    if not (isinstance(fields, list) and all(isinstance(f, str) and f for f in fields)):
        return None
    if len(fields) == 3 and fields[0] == OPEN:
        return Hit(OPEN, fields[1], fields[2])
    if len(fields) == 4 and fields[0] == CLICK and trackable(fields[3]) == fields[3]:
        return Hit(CLICK, fields[1], fields[2], fields[3])
    return None


def read_claim(token: str) -> tuple[Hit, str, bytes] | None:
    """The token's unverified claim, its payload text and MAC; None if malformed (a click
    whose target is not an http(s) URL included)."""
    opened = tokens.unseal(token, MAX_TOKEN)
    if opened is None:
        return None
    fields, payload, mac = opened
    hit = _hit(fields)
    return None if hit is None else (hit, payload, mac)


async def verify_token(key_of: KeyOf, token: str) -> Hit | None:
    """The token's hit if it is well formed and signed with its tenant's key."""
    claim = read_claim(token)
    if claim is None:
        return None
    hit, payload, mac = claim
    key = await key_of(hit.tenant_id)
    if key is None:
        return None
    return hit if tokens.signed(key, payload, mac) else None


class TrackingLinks:
    """The tracking URLs of one tenant's email: ``{base}/t/c/{token}`` for a link,
    ``{base}/t/o/{token}`` for the open image."""

    def __init__(self, base: str, key: bytes, tenant_id: str) -> None:
        if not base.isascii():
            raise ValueError("the tracking URL must be ASCII (punycode and percent-encoding)")
        self.base = base.rstrip("/")
        self._key = key
        self._tenant = tenant_id

    def click(self, delivery_id: str, url: str) -> str | None:
        """The redirect to ``url`` (an http(s) URL, see domain/tracking.py ``trackable``);
        None when its token would be too long."""
        token = make_token(self._key, Hit(CLICK, self._tenant, delivery_id, url))
        return f"{self.base}/t/c/{token}" if len(token) <= MAX_TOKEN else None

    def pixel(self, delivery_id: str) -> str:
        return f"{self.base}/t/o/{make_token(self._key, Hit(OPEN, self._tenant, delivery_id))}"
