"""Work concentrates in one process per role while that process keeps up.

Every worker process can take every stream's work. Spread evenly over several processes at
a moderate rate, each takes a few messages at a time, and every batch pays the same round
trips whatever its size: the broker's read and ack, the planner's statements, the status
writer's update. Measured on two cores (docs/performance.md), two worker processes sharing
single requests spent nearly twice the CPU per notification of one.

So for each role (the planner, each channel's senders, the status-event dispatcher) one
process *leads*: it holds a lease in the broker and reads as usual, blocking until work
arrives. The others *stand by*: they read without blocking, and after a read that found
little they pause before the next (longer while they find nothing, up to ``MAX_PAUSE``), so
what arrives goes to the leader, in batches as large as it lets accumulate. A leader that
falls behind leaves messages in the stream; a stand-by's read then finds a good share of
what it asked for and it reads again at once: under a backlog every process works, as
before. A leader that stops gives up its lease; one that dies loses it after ``LEASE``
seconds; meanwhile the stand-bys keep taking the work, only later.

A broker of one process (the embedded one) always lets it lead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from clarion.broker import Broker

log = logging.getLogger(__name__)

LEASE = 5.0
RENEW_EVERY = LEASE / 3
# A stand-by's pause after a read that found little, doubled while reads find nothing.
PAUSE = 0.05
MAX_PAUSE = 0.4
# A read that finds at least this share of what it asked for means the leader is behind.
BEHIND = 0.25


class Lead:
    """The lead of one role, as seen by one consumer: whether it leads, and the stand-by's
    pause before its next read."""

    def __init__(self, broker: Broker, role: str, holder: str) -> None:
        self._broker = broker
        self.role = role
        self._holder = holder
        self.leading = False
        self._checked = -1e9
        self._pause = 0.0

    async def turn(self, timeout: float, stop: asyncio.Event | None = None) -> float:
        """Before a read: keep or seek the lead when due, and wait out a stand-by's pause.
        Returns how long the read may block: ``timeout`` when leading, 0 standing by."""
        now = time.monotonic()
        if now - self._checked >= RENEW_EVERY:
            self._checked = now
            try:
                self.leading = await self._broker.lead(self.role, self._holder, LEASE)
            except Exception as exc:
                # The broker out of reach: the read meets it too, and is retried as ever.
                log.debug("lead %s: %r", self.role, exc)
                self.leading = True
        if self.leading:
            self._pause = 0.0
            return timeout
        if self._pause > 0:
            if stop is None:
                await asyncio.sleep(self._pause)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._pause)
        return 0.0

    def took(self, taken: int, asked: int) -> None:
        """After a read: how many messages it gave of how many were asked for."""
        if self.leading:
            return
        if taken >= max(1.0, asked * BEHIND):
            self._pause = 0.0
        elif taken:
            self._pause = PAUSE
        else:
            self._pause = min(MAX_PAUSE, max(PAUSE, self._pause * 2))

    async def step_down(self) -> None:
        """Give up the lead (a clean stop), so another process takes it at once."""
        if not self.leading:
            return
        self.leading = False
        try:
            await self._broker.step_down(self.role, self._holder)
        except Exception as exc:  # it lapses after LEASE seconds instead
            log.debug("stepping down from %s: %r", self.role, exc)
