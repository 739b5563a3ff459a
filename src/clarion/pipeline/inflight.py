"""Stopping a consumer that has sends in flight: finish them to a deadline, hand back the
rest."""

from __future__ import annotations

import asyncio
import logging

from clarion.broker import Broker, Message

log = logging.getLogger(__name__)


async def finish_or_hand_back(
    inflight: dict[asyncio.Task[None], Message], broker: Broker, deadline: float
) -> None:
    """Let the tasks finish within ``deadline`` seconds; cancel the others and release their
    messages to the broker, so another consumer takes them at once rather than after the
    lease."""
    if not inflight:
        return
    _, pending = await asyncio.wait(list(inflight), timeout=deadline)
    unfinished = [inflight[t] for t in pending if t in inflight]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    if unfinished:
        try:
            await broker.release(unfinished)
        except Exception as exc:
            # They come back after their lease instead.
            log.warning("handing back %d messages failed: %r", len(unfinished), exc)
