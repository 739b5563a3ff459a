"""Caps on live inbox connections, per API process: one recipient's token cannot hold more
than ``per_recipient`` connections, nor one tenant more than ``per_tenant``, so that no
recipient or tenant can use up the file descriptors and memory the process shares with
every other tenant.

A connection takes a :class:`Slot` before it is accepted (the check and the count are one
step: the event loop runs one coroutine at a time) and gives it back when it ends.
"""

from __future__ import annotations

from collections import Counter

from clarion.realtime.base import Key

RECIPIENT = "recipient"
TENANT = "tenant"


class LimitReached(Exception):
    """A new live connection would pass a cap: ``scope`` is ``recipient`` or ``tenant``."""

    def __init__(self, scope: str, limit: int) -> None:
        super().__init__(f"at most {limit} live connections per {scope} on this server")
        self.scope = scope
        self.limit = limit


class Slot:
    """One admitted connection's place; :meth:`release` gives it back (once, however often
    it is called)."""

    __slots__ = ("_held", "_owner", "key")

    def __init__(self, owner: LiveSlots, key: Key) -> None:
        self._owner = owner
        self.key = key
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._owner._give_back(self.key)


class LiveSlots:
    """The live connections of one process, counted per recipient and per tenant; a limit
    of 0 is no limit."""

    def __init__(self, per_recipient: int, per_tenant: int) -> None:
        self.per_recipient = per_recipient
        self.per_tenant = per_tenant
        self._recipients: Counter[Key] = Counter()
        self._tenants: Counter[str] = Counter()
        # Connections refused, by the cap that refused them.
        self.refused: Counter[str] = Counter()

    def take(self, tenant_id: str, recipient_id: str) -> Slot:
        """A slot for a new connection of the recipient; ``LimitReached`` when a cap is
        reached."""
        key = (tenant_id, recipient_id)
        if 0 < self.per_recipient <= self._recipients[key]:
            self.refused[RECIPIENT] += 1
            raise LimitReached(RECIPIENT, self.per_recipient)
        if 0 < self.per_tenant <= self._tenants[tenant_id]:
            self.refused[TENANT] += 1
            raise LimitReached(TENANT, self.per_tenant)
        self._recipients[key] += 1
        self._tenants[tenant_id] += 1
        return Slot(self, key)

    def _give_back(self, key: Key) -> None:
        self._recipients[key] -= 1
        if self._recipients[key] <= 0:
            del self._recipients[key]
        self._tenants[key[0]] -= 1
        if self._tenants[key[0]] <= 0:
            del self._tenants[key[0]]

    def held(self) -> int:
        return sum(self._tenants.values())

    def tenants(self) -> dict[str, int]:
        """Connections held here, per tenant."""
        return dict(self._tenants)

    def busiest(self) -> tuple[int, int]:
        """The most connections one tenant holds here, and one recipient."""
        return max(self._tenants.values(), default=0), max(self._recipients.values(), default=0)
