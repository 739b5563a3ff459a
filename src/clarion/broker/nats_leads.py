"""Leads (``Broker.lead``) in a JetStream key-value bucket, one key per role.

The key holds its holder's name. The holder renews by writing it again with a
compare-and-set on the revision it last saw, so every renewal makes a new revision. A
contender remembers the revision it saw and when (on its own monotonic clock); a revision
that has not changed for ``ttl`` seconds belongs to a holder that stopped renewing, and the
contender takes the lead with a compare-and-set on that revision (of two contenders, one
wins). No two machines' clocks are compared. A holder that steps down deletes the key (on
its revision), for the next contender to create at once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue


class Leads:
    def __init__(self, client: Callable[[], Awaitable[Client]], bucket: str, replicas: int) -> None:
        self._client = client
        self._bucket = bucket
        self._replicas = replicas
        self._kv: KeyValue | None = None
        # Per role: the revision last seen held by another, and when it was first seen.
        self._seen: dict[str, tuple[int, float]] = {}

    async def _store(self) -> KeyValue:
        if self._kv is None:
            js = (await self._client()).jetstream()
            self._kv = await js.create_key_value(
                bucket=self._bucket, history=1, replicas=self._replicas
            )
        return self._kv

    async def lead(self, role: str, holder: str, ttl: float) -> bool:
        kv = await self._store()
        try:
            entry = await kv.get(role)
        except KeyNotFoundError:  # never held, or stepped down from
            return await self._write(kv, role, holder, None)
        if entry.value == holder.encode():
            return await self._write(kv, role, holder, entry.revision)
        now = time.monotonic()
        revision = entry.revision or 0
        seen = self._seen.get(role)
        if seen is None or seen[0] != revision:
            self._seen[role] = (revision, now)
            return False
        if now - seen[1] < ttl:
            return False
        return await self._write(kv, role, holder, revision)

    async def _write(self, kv: KeyValue, role: str, holder: str, last: int | None) -> bool:
        """Write ``holder`` as the role's holder if the key is still at ``last`` (None: if
        there is no holder); True when it was."""
        try:
            if last is None:
                await kv.create(role, holder.encode())
            else:
                await kv.update(role, holder.encode(), last=last)
        except KeyWrongLastSequenceError:
            return False
        self._seen.pop(role, None)
        return True

    async def step_down(self, role: str, holder: str) -> None:
        kv = await self._store()
        try:
            entry = await kv.get(role)
        except KeyNotFoundError:
            return
        if entry.value != holder.encode():
            return
        try:
            await kv.delete(role, last=entry.revision)
        except KeyWrongLastSequenceError:  # renewed or taken meanwhile: not ours to end
            return
