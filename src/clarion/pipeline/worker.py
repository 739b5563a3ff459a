"""Channel workers: take deliveries from a channel's lanes and hand them to providers.

The loop only takes work, calls the send chain and acks once the outcome is stored. Policy
lives around the call: the send chain (circuit breakers with failover, provider rate limits,
the call's timeout) and the retry policy (backoff, dead letters).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from clarion.broker import Delayed, Message
from clarion.domain.delivery import Delivery, MalformedDelivery
from clarion.domain.ids import delivery_id
from clarion.domain.models import LANES, DeliveryStatus, send_stream
from clarion.pipeline.consumer import FairConsumer, tenant_of
from clarion.pipeline.context import Context
from clarion.pipeline.messages import outbound, publish_deliveries
from clarion.pipeline.status_events import StatusEvents
from clarion.resilience.backends import send_timeout
from clarion.resilience.retry import RetryPolicy
from clarion.resilience.sendchain import Failed, NoHealthyProvider, SendChain, Sent
from clarion.store import addresses as address_store
from clarion.store import deliveries as delivery_store
from clarion.store.batching import Batcher, is_outage
from clarion.store.db import utcnow
from clarion.store.deliveries import DeliveryRef, StatusChange

log = logging.getLogger(__name__)


def fallback_row(delivery: Delivery, fallback: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The stored row of the delivery a critical one switches to on its fallback channel."""
    expires_at = delivery.expires_at
    return {
        "id": delivery_id(delivery.notification, delivery.recipient, fallback["channel"]),
        "notification_id": delivery.notification,
        "tenant_id": delivery.tenant,
        "recipient_id": delivery.recipient,
        "channel": fallback["channel"],
        "provider": None,
        "priority": delivery.priority,
        "status": DeliveryStatus.QUEUED,
        "reason": None,
        "attempts": 0,
        "last_error": None,
        "address": fallback["address"],
        "content": fallback["content"],
        "provider_message_id": None,
        "category": delivery.category,
        "critical": delivery.critical,
        "fallback": None,
        "scheduled_for": None,
        "expires_at": datetime.fromtimestamp(expires_at, UTC) if expires_at else None,
        "created_at": now,
        "updated_at": now,
        "sent_at": None,
    }


class StatusWriter:
    """Stores status changes in batches, shared by the channel workers of a process, and
    publishes the batch's status events (one call) once it is committed."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._events = StatusEvents(ctx)
        self._batcher: Batcher[StatusChange, None] = Batcher(
            self._flush, max_items=2000, concurrency=2, name="status-writer"
        )

    def start(self) -> None:
        self._batcher.start()

    async def _flush(self, changes: list[StatusChange]) -> list[None]:
        events = await self._events.of_changes(changes)
        await delivery_store.apply_changes(self._ctx.engine, changes, self._ctx.pg)
        await self._events.publish(events)
        return [None] * len(changes)

    @property
    def pending(self) -> int:
        return self._batcher.pending

    async def write(self, change: StatusChange) -> None:
        await self._batcher.submit(change.bound())

    async def close(self) -> None:
        await self._batcher.close()


class ChannelWorker:
    def __init__(
        self,
        ctx: Context,
        channel: str,
        consumer: str,
        status: StatusWriter,
        acks: Batcher[Message, None],
    ) -> None:
        self._ctx = ctx
        self.channel = channel
        self._status = status
        self._acks = acks
        self.streams = [send_stream(channel, lane) for lane in LANES]
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
        self._consumer = FairConsumer(
            ctx.broker,
            self.streams,
            consumer,
            self._handle,
            concurrency=ctx.settings.worker_concurrency,
            tenant_share=ctx.settings.worker_tenant_share,
            lease=ctx.settings.broker_lease,
            name=f"worker {channel}",
            screen=self._screen,
        )

    @property
    def inflight(self) -> int:
        """Deliveries taken and not finished."""
        return self._consumer.held

    async def run(self, stop: asyncio.Event) -> None:
        await self._consumer.run(stop)

    async def _screen(self, messages: list[Message]) -> list[Message]:
        """Load the providers of the messages' tenants (once per take, not per send). A
        message handed out again may have been sent already (its consumer died after
        storing the outcome, before the ack): those are acked, not sent twice."""
        with contextlib.suppress(Exception):  # else loaded per delivery, failing alone
            await self._ctx.providers.prepare({tenant_of(m) for m in messages})
        again = [str(m.payload.get("id")) for m in messages if m.redelivered]
        if not again:
            return messages
        done = await delivery_store.finished_ids(self._ctx.engine, again)
        fresh = []
        for message in messages:
            if message.redelivered and message.payload.get("id") in done:
                self._acks.put_nowait(message)
            else:
                fresh.append(message)
        return fresh

    async def _handle(self, message: Message) -> None:
        try:
            delivery = Delivery.from_payload(message.payload)
        except MalformedDelivery as exc:
            # Nothing to store an outcome against: taken again it would fail again.
            log.error("%s: message %s dropped: %s", self.channel, message.id, exc)
            self._acks.put_nowait(message)
            return
        try:
            change, retry, dead = await self._attempt(delivery)
        except Exception as exc:
            # A bug or a payload no step can handle: counted as an attempt, so that after
            # the last one it is a dead letter with the reason, never taken again forever.
            change, retry = self._policy.on_failure(delivery, exc, utcnow())
            dead = None
        change.ref = DeliveryRef(
            delivery.notification, delivery.recipient, self.channel, delivery.provider
        )
        try:
            if retry is not None:
                await self._ctx.broker.publish_delayed([retry])
            await self._status.write(change)
        except Exception as exc:
            if is_outage(exc) or not await self._store_unstorable(change, exc):
                # Not acked: the message comes back after its lease and is tried again.
                log.warning("delivery %s: storing the outcome failed: %r", change.delivery_id, exc)
                return
        self._acks.put_nowait(message)
        self._ctx.made_progress()
        if dead:
            await self._forget(delivery, dead)

    async def _store_unstorable(self, change: StatusChange, exc: Exception) -> bool:
        """An outcome the store refuses on its own (not an outage) would come back and be
        sent again forever: the delivery goes to the dead letters instead, with the reason.
        False when even that cannot be stored."""
        log.error("delivery %s: its outcome cannot be stored: %r", change.delivery_id, exc)
        dead = StatusChange(
            change.delivery_id,
            change.tenant_id,
            DeliveryStatus.DEAD,
            attempts=change.attempts,
            reason="unstorable_outcome",
            last_error=f"the outcome ({change.status}) could not be stored: {type(exc).__name__}",
            provider=change.provider,
            ref=change.ref,
        )
        try:
            await self._status.write(dead)
        except Exception as again:
            log.error("delivery %s: storing it as dead failed: %r", change.delivery_id, again)
            return False
        return True

    async def _forget(self, delivery: Delivery, dead: Any) -> None:
        """Remove tokens or subscriptions the service said are gone, so no later
        notification tries them again."""
        try:
            removed = await address_store.remove_dead(
                self._ctx.engine, delivery.tenant, delivery.recipient, self.channel, dead
            )
        except Exception as exc:
            log.warning("delivery %s: removing dead addresses failed: %r", delivery.id, exc)
            return
        if removed:
            log.info(
                "recipient %s: removed %d dead %s address(es)",
                delivery.recipient,
                removed,
                self.channel,
            )

    async def _attempt(self, delivery: Delivery) -> tuple[StatusChange, Delayed | None, Any]:
        """One try: the status it leads to, the retry to schedule, and dead addresses."""
        now = utcnow()
        if delivery.expires_at is not None and now.timestamp() >= delivery.expires_at:
            change = StatusChange(
                delivery.id,
                delivery.tenant,
                DeliveryStatus.FAILED,
                attempts=delivery.attempt - 1,
                reason="expired",
            )
            return change, None, None
        providers = self._ctx.providers
        if not providers.is_fresh(delivery.tenant):  # loaded per take by _screen
            await providers.prepare([delivery.tenant])
        candidates = providers.chain(delivery.tenant, delivery.channel)
        outcome = await self._chain.send(outbound(delivery), candidates)
        if isinstance(outcome, Sent):
            change = StatusChange(
                delivery.id,
                delivery.tenant,
                DeliveryStatus.SENT,
                attempts=delivery.attempt,
                provider_message_id=outcome.result.provider_message_id,
                sent_at=utcnow(),
                provider=outcome.provider,
            )
            return change, None, outcome.result.dead_addresses
        if isinstance(outcome, Failed):
            change, retry = self._policy.on_failure(delivery, outcome.error, now)
            change.provider = outcome.provider or None
            return change, retry, getattr(outcome.error, "dead_address", None)
        if isinstance(outcome, NoHealthyProvider) and delivery.fallback:
            switched = await self._fall_back(delivery, delivery.fallback)
            if switched is not None:
                return switched, None, None
        # Not attempted (every provider's breaker open, or its rate limit full): wait without
        # spending an attempt. The due time keeps the sweeper from publishing it meanwhile.
        due = now + timedelta(seconds=outcome.retry_in)
        change = StatusChange(
            delivery.id,
            delivery.tenant,
            DeliveryStatus.QUEUED,
            attempts=delivery.attempt - 1,
            reason=outcome.reason,
            scheduled_for=due,
        )
        return change, Delayed(delivery.stream, delivery.to_payload(), due.timestamp()), None

    async def _fall_back(self, delivery: Delivery, fallback: dict[str, Any]) -> StatusChange | None:
        """A critical delivery whose channel has no healthy provider goes out on its
        template's fallback channel: a delivery of its own (deterministic id, so at most
        one), and this one is failed with reason ``no_healthy_provider``. None: the
        fallback could not be created; the delivery waits instead."""
        now = utcnow()
        row = fallback_row(delivery, fallback, now)
        try:
            created = await delivery_store.insert_one(self._ctx.engine, row)
            if created:
                await publish_deliveries(self._ctx.broker, [Delivery.from_row(row)])
        except Exception as exc:
            log.warning("delivery %s: creating the fallback failed: %r", delivery.id, exc)
            return None
        return StatusChange(
            delivery.id,
            delivery.tenant,
            DeliveryStatus.FAILED,
            attempts=delivery.attempt - 1,
            reason="no_healthy_provider",
            last_error=f"no healthy {delivery.channel} provider: sent by "
            f"{fallback['channel']} instead ({row['id']})",
        )

    async def stop(self, deadline: float) -> None:
        """Finish what is in flight within ``deadline`` seconds; give the rest back."""
        await self._consumer.stop(deadline)
