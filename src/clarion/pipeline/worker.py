"""Channel workers: take deliveries from a channel's lanes and hand them to providers.

The loop knows no policy: take deliveries (fair shares between tenants: consumer.py), run
one attempt on each (expiry, the send chain, retries, fallback and waiting are its steps:
attempt.py; the attempt is claimed right before the provider call: claims.py), store the
outcome, ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection
from typing import Any

from clarion.broker import Message
from clarion.domain.contact import suppression_key
from clarion.domain.delivery import Delivery, MalformedDelivery, decode_delivery, endpoint_of
from clarion.domain.models import (
    BULK_LANES,
    LANES,
    Channel,
    DeliveryStatus,
    retry_stream,
    send_stream,
)
from clarion.domain.status import StatusChange
from clarion.observability import logs, metrics, tracing
from clarion.pipeline.attempt import Attempts
from clarion.pipeline.claims import Claims, ClaimUnavailable
from clarion.pipeline.consumer import FairConsumer, tenant_of
from clarion.pipeline.context import Context
from clarion.pipeline.status_events import StatusEvents
from clarion.pipeline.urgency import URGENT
from clarion.store import addresses as address_store
from clarion.store import deliveries as delivery_store
from clarion.store import suppressions as suppression_store
from clarion.store.batching import Batcher, is_outage
from clarion.store.db import writes_at_once

log = logging.getLogger(__name__)


class StatusWriter:
    """Stores status changes in batches, shared by the channel workers of a process, and
    publishes the batch's status events (one call) once it is committed."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._events = StatusEvents(ctx)
        self._batcher: Batcher[StatusChange, None] = Batcher(
            self._flush,
            max_items=2000,
            concurrency=writes_at_once(ctx.engine),
            name="status-writer",
        )

    def start(self) -> None:
        self._batcher.start()

    async def _flush(self, changes: list[StatusChange]) -> list[None]:
        with tracing.writing(changes):
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


_FAILED = frozenset({DeliveryStatus.FAILED, DeliveryStatus.DEAD})
# An endpoint is in trouble, and held to its share of the slots (CLARION_WORKER_ENDPOINT_SHARE),
# after a send to it failed or was retried, after a provider call to it took longer than
# SLOW_CALL seconds, and while a send to it has been under way longer than STUCK_SEND
# (claim and outcome's write included: on a busy store they take a while of their own).
SLOW_CALL = 1.0
STUCK_SEND = 5.0


def _endpoint(message: Message) -> str | None:
    return endpoint_of(message.payload)


class ChannelWorker:
    def __init__(
        self,
        ctx: Context,
        channel: str,
        consumer: str,
        status: StatusWriter,
        acks: Batcher[Message, None],
        lanes: Collection[str] = LANES,
    ) -> None:
        self._ctx = ctx
        self.channel = channel
        self._status = status
        self._acks = acks
        # The lanes this process takes (``clarion worker --lanes``), in LANES order; the
        # retry lane with any bulk lane (domain/models.py ``BULK_LANES``).
        ranks = [rank for rank, lane in enumerate(LANES) if lane in lanes]
        retries = retry_stream(channel) if BULK_LANES & set(lanes) else None
        self.streams = [send_stream(channel, LANES[rank]) for rank in ranks]
        self._attempts = Attempts(ctx, channel)
        self._claims = Claims(ctx, channel)
        # Email deliveries of the takes whose address is on their tenant's suppression
        # list: delivery id → the suppression's reason (looked up once per take).
        self._suppressed: dict[str, str] = {}
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
            retry_stream=retries,
            retry_share=ctx.settings.worker_retry_share,
            endpoint=_endpoint,
            endpoint_share=ctx.settings.worker_endpoint_share,
            endpoint_slow_after=STUCK_SEND,
            urgency=ctx.urgency if ctx.settings.broadcast_give_way else None,
            ranks=ranks,
        )

    @property
    def inflight(self) -> int:
        """Deliveries taken and not finished."""
        return self._consumer.held

    async def run(self, stop: asyncio.Event) -> None:
        self._claims.start()
        await self._consumer.run(stop)

    async def _screen(self, messages: list[Message]) -> list[Message]:
        with tracing.taking(self.channel, messages):
            fresh = await self._unfinished(messages)
            if self.channel == Channel.EMAIL and fresh:
                await self._find_suppressed(fresh)
            return fresh

    async def _unfinished(self, messages: list[Message]) -> list[Message]:
        """Load the providers of the messages' tenants (once per take, not per send), and
        set aside, acked, what must not be sent: a delivery whose notification was
        cancelled, one handed out again that was sent already (its consumer died after
        storing the outcome, before the ack), or a copy of an attempt made already. One read
        per take, for all its messages; the claim before each call is the guarantee."""
        with contextlib.suppress(Exception):  # else loaded per delivery, failing alone
            await self._ctx.providers.prepare({tenant_of(m) for m in messages})
        done = await delivery_store.spent_ids(
            self._ctx.engine, [_attempt_of(m) for m in messages], self._ctx.pg
        )
        if not done:
            return messages
        fresh = []
        for message in messages:
            if message.payload.get("id") in done:
                self._acks.post(message)
            else:
                fresh.append(message)
        return fresh

    async def _find_suppressed(self, messages: list[Message]) -> None:
        """Note which of a take's emails go to an address on its tenant's suppression list
        (one read for the whole take): they are not sent (attempt.py)."""
        keys: dict[str, tuple[str, str]] = {}
        for message in messages:
            to, ident = message.payload.get("to"), message.payload.get("id")
            if isinstance(to, str) and isinstance(ident, str):
                keys[ident] = (tenant_of(message), suppression_key(to))
        found = await suppression_store.matching(
            self._ctx.engine, list(keys.values()), self._ctx.pg
        )
        for ident, key in keys.items():
            reason = found.get(key)
            if reason is not None:
                self._suppressed[ident] = reason

    async def _handle(self, message: Message) -> bool:
        """Handle one delivery; False when its attempt failed (its endpoint is in trouble:
        the consumer then holds it to its share, pipeline/consumer.py)."""
        try:
            delivery = decode_delivery(message.payload)
        except MalformedDelivery as exc:
            # Nothing to store an outcome against: taken again it would fail again.
            log.error("%s: message %s dropped: %s", self.channel, message.id, exc)
            self._acks.post(message)
            return True
        if delivery.priority in URGENT:
            # A critical or high-priority send: the broadcasts give way meanwhile.
            with self._ctx.urgency.holding((delivery.tenant,)):
                went_well = await self._attempt(message, delivery)
        else:
            went_well = await self._attempt(message, delivery)
        # Not reached when a stop cuts the attempt short: its claim is then handed back.
        self._claims.finished(delivery.id)
        self._suppressed.pop(delivery.id, None)
        return went_well

    async def _attempt(self, message: Message, delivery: Delivery) -> bool:
        ids = logs.bound(
            tenant_id=delivery.tenant,
            notification_id=delivery.notification,
            delivery_id=delivery.id,
        )
        with ids, tracing.attempt(delivery) as trace:
            try:
                attempt = await self._attempts.run(
                    delivery,
                    self._claims.gate(delivery),
                    trace,
                    suppressed=self._suppressed.get(delivery.id),
                )
            except ClaimUnavailable as exc:
                # Not acked: the message comes back after its lease and is tried again.
                log.warning("delivery %s: %s", delivery.id, exc)
                return True
            except Exception as exc:
                attempt = self._attempts.failed(delivery, exc, trace)
        if attempt is None:
            # Not claimed: cancelled, finished, or this attempt is another copy's.
            self._acks.post(message)
            self._ctx.made_progress()
            return True
        change, retry, dead = attempt.change, attempt.retry, attempt.dead
        try:
            if retry is not None:
                await self._ctx.broker.publish_delayed([retry])
            await self._status.write(change)
        except Exception as exc:
            if is_outage(exc) or not await self._store_unstorable(change, exc):
                # Not acked: the message comes back after its lease and is tried again.
                log.warning("delivery %s: storing the outcome failed: %r", change.delivery_id, exc)
                return True
        self._acks.post(message)
        self._ctx.made_progress()
        # A retry spends an attempt; waiting for a provider (breaker, rate limit) does not.
        retried = retry is not None and change.attempts == delivery.attempt
        reason = change.reason or change.retry_reason
        metrics.attempt(self.channel, delivery, attempt.kind, change.status, reason, retried)
        if change.status == DeliveryStatus.SUPPRESSED:
            metrics.suppressed_send(self.channel, change.reason)
        if dead:
            await self._forget(delivery, dead)
        # Retried, deferred (the breaker, a rate limit), failed or dead: the endpoint did
        # not take it; or it took it slowly.
        slow = change.latency_ms is not None and change.latency_ms > SLOW_CALL * 1000
        return retry is None and change.status not in _FAILED and not slow

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
            delivery=change.delivery,
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

    async def stop(self, deadline: float) -> None:
        """Finish what is in flight within ``deadline`` seconds; give the rest back."""
        await self._consumer.stop(deadline)
        try:
            await self._claims.hand_back()
        except Exception as exc:
            # Their leases run out instead; the sweeper publishes them again then.
            log.warning("%s: handing back claims failed: %r", self.channel, exc)
        await self._claims.close()


def _attempt_of(message: Message) -> tuple[str, int]:
    """The (delivery id, attempt) a message asks for (a malformed one: attempt 0, screened
    as nothing, and dropped by its handler)."""
    attempt = message.payload.get("attempt")
    return str(message.payload.get("id")), attempt if type(attempt) is int else 0
