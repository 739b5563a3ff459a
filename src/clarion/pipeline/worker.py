"""Channel workers: take deliveries from a channel's lanes and hand them to providers.

The loop only takes work, calls the send chain and acks once the outcome is stored. Policy
(retries now; rate limits and breakers as layers later) decides outcomes around the call.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from clarion.broker import Message
from clarion.domain.models import LANES, DeliveryStatus, send_stream
from clarion.errors import PermanentError, TransientError
from clarion.pipeline.context import Context
from clarion.pipeline.messages import outbound
from clarion.resilience.retry import RetryPolicy
from clarion.store import deliveries as delivery_store
from clarion.store.batching import Batcher
from clarion.store.db import utcnow
from clarion.store.deliveries import StatusChange

log = logging.getLogger(__name__)


class StatusWriter:
    """Stores status changes in batches, shared by the channel workers of a process."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._batcher: Batcher[StatusChange, None] = Batcher(
            self._flush, max_items=2000, concurrency=2, name="status-writer"
        )

    def start(self) -> None:
        self._batcher.start()

    async def _flush(self, changes: list[StatusChange]) -> list[None]:
        await delivery_store.apply_changes(self._ctx.engine, changes)
        return [None] * len(changes)

    @property
    def pending(self) -> int:
        return self._batcher.pending

    async def write(self, change: StatusChange) -> None:
        await self._batcher.submit(change)

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
        self._consumer = consumer
        self._status = status
        self._acks = acks
        self.streams = [send_stream(channel, lane) for lane in LANES]
        self._policy = RetryPolicy(ctx.settings.max_attempts, ctx.settings.retry_delays)
        self._concurrency = ctx.settings.worker_concurrency
        self._inflight: dict[asyncio.Task[None], Message] = {}
        self._room = asyncio.Event()
        self._room.set()
        # Bounds a provider call that ignores its own timeout.
        self._call_timeout = ctx.settings.webhook_timeout * 2

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            room = self._concurrency - len(self._inflight)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            messages = await self._ctx.broker.consume(
                self.streams, self._consumer, min(room, 500), 0.25
            )
            if messages:
                await self._dispatch(messages)

    async def _dispatch(self, messages: list[Message]) -> None:
        again = [m.payload["id"] for m in messages if m.redelivered]
        done = await delivery_store.finished_ids(self._ctx.engine, again) if again else set()
        for message in messages:
            if message.payload["id"] in done:
                self._acks.put_nowait(message)
                continue
            task = asyncio.create_task(self._handle(message))
            self._inflight[task] = message
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        self._room.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("worker task failed: %r", task.exception())

    async def _handle(self, message: Message) -> None:
        change, retry = await self._attempt(message.payload)
        try:
            if retry is not None:
                await self._ctx.broker.publish_delayed([retry])
            await self._status.write(change)
        except Exception as exc:
            # Not acked: the message comes back after its lease and is tried again.
            log.warning("delivery %s: storing the outcome failed: %r", change.delivery_id, exc)
            return
        self._acks.put_nowait(message)
        self._ctx.made_progress()

    async def _attempt(self, payload: dict[str, Any]) -> tuple[StatusChange, Any]:
        now = utcnow()
        expires_at = payload.get("expires_at")
        if expires_at is not None and now.timestamp() >= expires_at:
            change = StatusChange(
                payload["id"],
                payload["tenant"],
                DeliveryStatus.FAILED,
                attempts=payload["attempt"] - 1,
                reason="expired",
            )
            return change, None
        try:
            provider = await self._ctx.providers.get(payload["provider"])
            async with asyncio.timeout(self._call_timeout):
                result = await provider.send(outbound(payload))
        except TimeoutError:
            timeout = TransientError(f"no answer within {self._call_timeout}s", reason="timeout")
            return self._policy.on_failure(payload, timeout, now)
        except KeyError:
            exc = PermanentError(f"no provider named {payload['provider']!r}", reason="no_provider")
            return self._policy.on_failure(payload, exc, now)
        except Exception as exc:
            return self._policy.on_failure(payload, exc, now)
        change = StatusChange(
            payload["id"],
            payload["tenant"],
            DeliveryStatus.SENT,
            attempts=payload["attempt"],
            provider_message_id=result.provider_message_id,
            sent_at=utcnow(),
        )
        return change, None

    async def stop(self, deadline: float) -> None:
        """Finish what is in flight within ``deadline`` seconds; give the rest back."""
        if self._inflight:
            _, pending = await asyncio.wait(list(self._inflight), timeout=deadline)
            unfinished = [self._inflight[t] for t in pending if t in self._inflight]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            if unfinished:
                await self._ctx.broker.release(unfinished)
