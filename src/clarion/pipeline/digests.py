"""Digests in the pipeline: the planner holds, the scheduler closes.

The planner offers a :class:`Holding` each delivery that could go into a digest (its
category has one, its template has digest content for the channel, it is not critical and
not a digest itself); ``decide`` or a cap's ``overflow: digest`` holds it (the delivery
is stored ``suppressed`` with reason ``digest``), and before the batch's deliveries are
stored the planner calls :func:`hold` once for all held ones. :class:`DigestCloser` runs
in the scheduler role: it closes due windows into digest notifications, which the planner
then plans like any other (preferences, quiet hours and snooze apply), rendered from the
template's digest content.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import msgspec

from clarion.domain.delivery import Delivery, Stored
from clarion.domain.digests import digest_key
from clarion.domain.models import PLAN_STREAM, DeliveryStatus, Priority
from clarion.domain.preferences import HELD_FOR_DIGEST, CategoryPolicy
from clarion.domain.rendering import CompiledVersion
from clarion.observability import tracing
from clarion.pipeline.context import Context
from clarion.pipeline.messages import plan_payload
from clarion.store import digests as store
from clarion.store.db import utcnow

log = logging.getLogger(__name__)

_CLOSE_BATCH = 100
# Closed windows are pruned at most this often (seconds), when there is nothing to close.
_PRUNE_EVERY = 60.0


class Holding:
    """One planner batch's deliveries that may be held for a digest, and those held."""

    def __init__(self) -> None:
        self._candidates: dict[str, store.Held] = {}

    @staticmethod
    def digestible(
        note: Mapping[str, Any], version: CompiledVersion, policy: CategoryPolicy
    ) -> frozenset[str]:
        """The channels of a notification that its category's digest may hold."""
        if (
            policy.digest_window is None
            or policy.critical
            or note["priority"] == Priority.CRITICAL
            or note.get("digest_of") is not None
        ):
            return frozenset()
        return frozenset(version.digests)

    def offer(self, delivery: Delivery, note: Mapping[str, Any], policy: CategoryPolicy) -> None:
        """A delivery that may be held (``digestible`` named its channel)."""
        assert policy.digest_window is not None
        self._candidates[delivery.id] = store.Held(
            tenant_id=delivery.tenant,
            recipient_id=delivery.recipient,
            channel=delivery.channel,
            category=policy.name,
            key=digest_key(note["data"], policy.digest_key),
            window=policy.digest_window,
            delivery_id=delivery.id,
            notification_id=delivery.notification,
        )

    def can_hold(self, item: Stored) -> bool:
        return item.delivery.id in self._candidates

    @staticmethod
    def hold(item: Stored) -> Stored:
        """The delivery held: its message is the digest's, so it carries no content."""
        delivery = item.delivery
        if delivery.content is not None or delivery.fallback is not None:
            delivery = msgspec.structs.replace(delivery, content=None, fallback=None)
        return Stored(delivery, DeliveryStatus.SUPPRESSED, HELD_FOR_DIGEST)

    def held(self, items: Iterable[Stored]) -> list[store.Held]:
        """What of ``items`` (those about to be stored) is held."""
        return [
            self._candidates[item.delivery.id]
            for item in items
            if item.reason == HELD_FOR_DIGEST and item.delivery.id in self._candidates
        ]


async def hold(ctx: Context, items: list[store.Held], now: datetime) -> None:
    """Store the held items in their windows (one bulk write for the batch). Called before
    the deliveries are stored: a crash in between replays the plan, which holds nothing
    twice."""
    await store.hold(ctx.engine, items, now)


class DigestCloser:
    """Closes digest windows whose time has come (the scheduler role; several may run)."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._pruned = -_PRUNE_EVERY

    async def run_once(self, now: datetime | None = None) -> int:
        """Close the windows due at ``now`` (the clock's time unless given); how many
        digests it made."""
        now = now or utcnow()
        engine = self._ctx.engine
        closed = await store.close_due(
            engine,
            now,
            _CLOSE_BATCH,
            outbox_grace=self._ctx.settings.outbox_grace,
            trace=tracing.digest,
            pg=self._ctx.pg,
        )
        if closed:
            log.info("closed %d digest windows", len(closed))
            try:
                payloads = [plan_payload(c.notification_id, c.tenant_id, c.trace) for c in closed]
                await self._ctx.broker.publish(PLAN_STREAM, payloads)
            except Exception as exc:  # the relay publishes them from the outbox instead
                log.warning("publishing %d digests failed: %r", len(closed), exc)
            self._ctx.made_progress()
        elif time.monotonic() - self._pruned >= _PRUNE_EVERY:
            self._pruned = time.monotonic()
            await store.prune(engine, now)
        return len(closed)
