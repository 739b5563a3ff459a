"""Digests in the pipeline: the planner holds, each window's carrier run closes it.

The planner offers a :class:`Holding` each delivery that could go into a digest (its
category has one, its template has digest content for the channel, it is not critical and
not a digest itself); ``decide`` or a cap's ``overflow: digest`` holds it (the delivery
is stored ``suppressed`` with reason ``digest``), and before the batch's deliveries are
stored the planner calls :func:`hold` once for all held ones: a window it opens gets its
carrier, a run of the built-in workflow ``~digest`` that waits until the window closes.
The run engine (pipeline/runs.py) wakes the carrier like any run, and :func:`close` closes
its window into a digest notification, which the planner then plans like any other
(preferences, quiet hours and snooze apply), rendered from the template's digest content.
"""

from __future__ import annotations

import logging
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
from clarion.store import digest_closing as closer
from clarion.store import digests as store

log = logging.getLogger(__name__)


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


async def close(
    ctx: Context, closing: list[closer.Closing], now: datetime, rows_of: closer.Settle
) -> dict[str, closer.Outcome]:
    """Close the windows of these carriers that are due, storing the carriers' rows
    ``rows_of`` makes of the outcomes in the same transaction (store/digest_closing.py),
    then publish the digests' plan messages (the relay publishes them from the outbox if
    that fails). The outcome of each carrier still held under its lease."""
    outcomes, made = await closer.close_carried(
        ctx.engine,
        closing,
        now,
        ctx.settings.outbox_grace,
        rows_of,
        trace=tracing.digest,
    )
    if made:
        log.info("closed %d digest windows", len(made))
        try:
            payloads = [plan_payload(c.notification_id, c.tenant_id, c.trace) for c in made]
            await ctx.broker.publish(PLAN_STREAM, payloads)
        except Exception as exc:  # the relay publishes them from the outbox instead
            log.warning("publishing %d digests failed: %r", len(made), exc)
        ctx.made_progress()
    return outcomes
