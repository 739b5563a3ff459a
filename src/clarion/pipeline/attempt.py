"""One attempt at a delivery: the policy around the provider call, as steps.

    address suppressed? ─yes─▶ suppressed (bounced, complained): no provider called
      │
    expired? ─yes─▶ failed (expired)
      │
    send chain: first provider whose breaker is closed, paced on its rate limit, claimed
      │         (pipeline/claims.py; not claimed: not sent), within a timeout
      │         (resilience/sendchain.py)
      ├─ sent ─────────────▶ sent, with the service's message id
      ├─ failed ───────────▶ retry policy: a retry on the delayed set, failed, or dead
      └─ not attempted ───▶ a critical delivery with a fallback channel: that channel
                             instead; else wait on the delayed set, no attempt spent

The channel worker's loop knows none of this: it takes a delivery, runs :meth:`Attempts.run`,
stores the outcome and acks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from clarion.broker import Delayed
from clarion.domain.delivery import Delivery, Stored
from clarion.domain.ids import delivery_id
from clarion.domain.models import DeliveryStatus
from clarion.domain.status import StatusChange
from clarion.pipeline.context import Context
from clarion.pipeline.messages import publish_deliveries
from clarion.resilience.backends import send_timeout
from clarion.resilience.retry import RetryPolicy
from clarion.resilience.sendchain import (
    Deferred,
    Failed,
    Gate,
    NoHealthyProvider,
    NotClaimed,
    SendChain,
    Sent,
)
from clarion.store import deliveries as delivery_store
from clarion.store.db import utcnow

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Attempt:
    """What one try leads to: the delivery's new state, the retry to schedule (if any), and
    addresses the service said are gone (to remove from the recipient)."""

    change: StatusChange
    retry: Delayed | None = None
    dead: Any = None
    # The kind of the provider called (metrics), if one was.
    kind: str = ""


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def _unattempted(
    delivery: Delivery,
    status: str,
    trace: str | None,
    *,
    reason: str,
    scheduled_for: datetime | None = None,
    last_error: str | None = None,
) -> StatusChange:
    """A change made without calling a provider: no attempt is spent."""
    return StatusChange(
        delivery.id,
        delivery.tenant,
        status,
        attempts=delivery.attempt - 1,
        reason=reason,
        last_error=last_error,
        scheduled_for=scheduled_for,
        delivery=delivery,
        trace=trace,
    )


def fallback_of(delivery: Delivery, fallback: dict[str, Any]) -> Delivery:
    """The delivery a critical one switches to on its fallback channel (its first attempt;
    it stays in the trace of the delivery it stands in for)."""
    return Delivery(
        id=delivery_id(delivery.notification, delivery.recipient, fallback["channel"]),
        tenant=delivery.tenant,
        notification=delivery.notification,
        recipient=delivery.recipient,
        channel=fallback["channel"],
        priority=delivery.priority,
        to=fallback["address"],
        content=fallback["content"],
        attempt=1,
        expires_at=delivery.expires_at,
        category=delivery.category,
        critical=delivery.critical,
        trace=delivery.trace,
    )


class Attempts:
    """The steps of one channel's attempts; one instance per channel worker."""

    def __init__(self, ctx: Context, channel: str) -> None:
        self._ctx = ctx
        self._policy = RetryPolicy(
            ctx.settings.max_attempts, ctx.settings.retry_delays_for(channel)
        )
        self._chain = SendChain(
            ctx.resilience.breakers,
            ctx.resilience.limiter,
            ctx.providers,
            timeout=send_timeout(ctx.settings),
            max_pace_wait=min(5.0, ctx.settings.broker_lease / 3),
        )

    async def run(
        self,
        delivery: Delivery,
        gate: Gate | None = None,
        trace: str | None = None,
        *,
        suppressed: str | None = None,
    ) -> Attempt | None:
        """One try of ``delivery``; None when ``gate``, asked right before the provider
        call, refused it (nothing to store). ``trace``: the attempt's traceparent (tracing
        on), carried by the change to the status write's span. ``suppressed``: the reason
        its address is on its tenant's suppression list (the worker looked it up with its
        take), if it is: then it is not sent, and no attempt is spent."""
        if suppressed is not None:
            change = _unattempted(
                delivery,
                DeliveryStatus.SUPPRESSED,
                trace,
                reason=suppressed,
                last_error=f"the address is on the suppression list ({suppressed})",
            )
            return Attempt(change)
        now = utcnow()
        if delivery.expires_at is not None and now.timestamp() >= delivery.expires_at:
            change = _unattempted(delivery, DeliveryStatus.FAILED, trace, reason="expired")
            return Attempt(change)
        providers = self._ctx.providers
        if not providers.is_fresh(delivery.tenant):  # the worker loads them per take
            await providers.prepare([delivery.tenant])
        candidates = providers.chain(delivery.tenant, delivery.channel)
        outcome = await self._chain.send(delivery, candidates, gate)
        if isinstance(outcome, NotClaimed):
            return None
        if isinstance(outcome, Sent):
            change = StatusChange(
                delivery.id,
                delivery.tenant,
                DeliveryStatus.SENT,
                attempts=delivery.attempt,
                provider_message_id=outcome.result.provider_message_id,
                sent_at=utcnow(),
                provider=outcome.provider,
                attempt=delivery.attempt,
                latency_ms=_ms(outcome.latency),
                delivery=delivery,
                trace=trace,
            )
            return Attempt(change, dead=outcome.result.dead_addresses, kind=outcome.kind)
        if isinstance(outcome, Failed):
            change, retry = self._policy.on_failure(
                delivery,
                outcome.error,
                now,
                provider=outcome.provider or None,
                latency_ms=_ms(outcome.latency),
                trace=trace,
            )
            dead = getattr(outcome.error, "dead_address", None)
            return Attempt(change, retry, dead, outcome.kind)
        return await self._not_attempted(delivery, outcome, now, trace)

    def failed(self, delivery: Delivery, exc: BaseException, trace: str | None = None) -> Attempt:
        """A step raised (a bug, or a payload no step can handle): counted as an attempt,
        so that after the last one it is a dead letter with the reason, never taken again
        forever."""
        change, retry = self._policy.on_failure(delivery, exc, utcnow(), trace=trace)
        return Attempt(change, retry)

    async def _not_attempted(
        self, delivery: Delivery, outcome: Deferred, now: datetime, trace: str | None
    ) -> Attempt:
        if isinstance(outcome, NoHealthyProvider) and delivery.fallback:
            switched = await self._fall_back(delivery, delivery.fallback, trace)
            if switched is not None:
                return Attempt(switched)
        # Not attempted (every provider's breaker open, or its rate limit full): wait without
        # spending an attempt. The due time keeps the sweeper from publishing it meanwhile.
        due = now + timedelta(seconds=outcome.retry_in)
        change = _unattempted(
            delivery, DeliveryStatus.QUEUED, trace, reason=outcome.reason, scheduled_for=due
        )
        return Attempt(change, Delayed(delivery.stream, delivery, due.timestamp()))

    async def _fall_back(
        self, delivery: Delivery, fallback: dict[str, Any], trace: str | None
    ) -> StatusChange | None:
        """A critical delivery whose channel has no healthy provider goes out on its
        template's fallback channel: a delivery of its own (deterministic id, so at most
        one), and this one is failed with reason ``no_healthy_provider``. None: the
        fallback could not be created; the delivery waits instead."""
        switched = fallback_of(delivery, fallback)
        try:
            created = await delivery_store.insert_one(self._ctx.engine, Stored(switched), utcnow())
            if created:
                await publish_deliveries(self._ctx.broker, [switched])
        except Exception as exc:
            log.warning("delivery %s: creating the fallback failed: %r", delivery.id, exc)
            return None
        return _unattempted(
            delivery,
            DeliveryStatus.FAILED,
            trace,
            reason="no_healthy_provider",
            last_error=f"no healthy {delivery.channel} provider: sent by "
            f"{fallback['channel']} instead ({switched.id})",
        )
