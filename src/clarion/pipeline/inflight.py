"""Messages held while they are worked on: their leases renewed, and on stop finished to a
deadline or handed back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from clarion.broker import Broker, Message

log = logging.getLogger(__name__)


async def finish_or_hand_back(
    inflight: dict[asyncio.Task[Any], Message], broker: Broker, deadline: float
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


@contextlib.asynccontextmanager
async def holding(
    broker: Broker, messages: Sequence[Message], consumer: str, lease: float
) -> AsyncIterator[None]:
    """Renew the leases of ``messages`` every third of a lease while the block runs, so
    that work which takes longer than a lease (a large batch on a busy machine) is not
    taken back and done a second time by another consumer.

    The renewer stops on a flag, not on its cancellation alone: a cancellation can be lost.
    On Python 3.11, ``asyncio.wait_for`` (redis-py sends every command through it when a
    socket timeout is set) returns the inner result and drops a cancellation that arrives
    as the command completes; the renewer then went on renewing for good, and the block's
    end, which awaited it, never came: the planner stopped, holding its plan message with
    its lease kept fresh, and nothing was logged. Each renewal is also bounded by a lease
    (one that takes longer has failed: the lease ran out meanwhile), and leaving the block
    waits for the renewer at most that long."""
    done = asyncio.Event()

    async def renew() -> None:
        while True:
            await asyncio.sleep(lease / 3)
            if done.is_set():
                return
            try:
                async with asyncio.timeout(lease):
                    await broker.extend(messages, consumer)
            except Exception as exc:  # they may come back after their lease instead
                log.warning("renewing %d leases failed: %r", len(messages), exc)

    renewer = asyncio.create_task(renew())
    try:
        yield
    finally:
        done.set()
        renewer.cancel()
        _, pending = await asyncio.wait([renewer], timeout=lease)
        if pending:
            log.warning("renewing %d leases did not stop when asked", len(messages))
