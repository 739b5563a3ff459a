"""Claims: an attempt is taken in the store right before its provider call.

A worker may hold many deliveries taken from its lanes; what decides whether one is sent is
its claim, made once the breaker and the rate limit have let the call through (the send
chain's gate). The claim moves the delivery to ``sending`` with the attempt counted and a
lease (store/deliveries.py ``claim``): a copy of the same attempt (handed out again by the
broker, or published again by the sweeper), a delivery finished meanwhile, or one whose
notification was cancelled, is not claimed, and not sent. So a cancellation stops
everything but the calls already claimed, and ``attempts`` counts the calls made.

The handlers' claims that arrive while the previous batch is being written go to the store
together: one statement per batch, never one per delivery.
"""

from __future__ import annotations

from clarion.domain.delivery import Delivery
from clarion.pipeline.context import Context
from clarion.resilience.backends import send_timeout
from clarion.resilience.sendchain import Gate
from clarion.store import deliveries as delivery_store
from clarion.store.batching import Batcher
from clarion.store.db import writes_at_once

Claim = tuple[str, int]  # (delivery id, attempt)


class ClaimUnavailable(Exception):
    """The store could not be asked: the attempt is neither made nor given up (its message,
    not acked, comes back after its lease)."""


class Claims:
    """One per channel worker."""

    def __init__(self, ctx: Context, name: str) -> None:
        self._ctx = ctx
        # The call is bounded by the send timeout; the rest leaves time to store the
        # outcome. A lease that runs out says the worker died in the attempt.
        self.lease = send_timeout(ctx.settings) + ctx.settings.broker_lease
        self._batcher: Batcher[Claim, bool] = Batcher(
            self._flush,
            max_items=1000,
            concurrency=writes_at_once(ctx.engine),
            name=f"claims {name}",
        )
        # Attempts claimed whose handling has not ended: what a stop hands back.
        self._held: dict[str, int] = {}

    def start(self) -> None:
        self._batcher.start()

    def gate(self, delivery: Delivery) -> Gate:
        """The send chain's last step before calling the provider for ``delivery``."""

        async def claimed() -> bool:
            return await self.claim(delivery)

        return claimed

    async def claim(self, delivery: Delivery) -> bool:
        """Whether ``delivery``'s attempt is this worker's to make now."""
        try:
            return await self._batcher.submit((delivery.id, delivery.attempt))
        except Exception as exc:
            raise ClaimUnavailable(f"claiming {delivery.id} failed: {exc!r}") from exc

    async def _flush(self, items: list[Claim]) -> list[bool]:
        # Two copies of one delivery in a batch: the first is asked for, the others are not
        # claimed (one statement claims a row once).
        first: dict[str, int] = {}
        for delivery_id, attempt in items:
            first.setdefault(delivery_id, attempt)
        claimed = await delivery_store.claim(
            self._ctx.engine, list(first.items()), self.lease, self._ctx.pg
        )
        results = []
        for delivery_id, attempt in items:
            mine = delivery_id in claimed and first[delivery_id] == attempt
            if mine:
                claimed.discard(delivery_id)
                self._held[delivery_id] = attempt
            results.append(mine)
        return results

    def finished(self, delivery_id: str) -> None:
        """The handling of ``delivery_id`` ended (its outcome stored, or given up on)."""
        self._held.pop(delivery_id, None)

    async def hand_back(self) -> None:
        """End the leases of the attempts whose handling was cut short by a stop: their
        messages go back to the broker unanswered, and whoever takes one again claims the
        same attempt at once instead of waiting for the lease to run out."""
        held, self._held = list(self._held.items()), {}
        if held:
            await delivery_store.release_claims(self._ctx.engine, held)

    async def close(self) -> None:
        await self._batcher.close()
