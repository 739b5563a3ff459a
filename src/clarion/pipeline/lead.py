"""The planning concentrates in one process while that process keeps up.

Every worker process runs a planner on the plan stream. Spread evenly over several
processes at a moderate rate, each takes a few notifications at a time, and every batch
pays the same round trips whatever its size: the broker's read and ack and the planner's
three statements. Measured on two cores (docs/performance.md), two worker processes
sharing single requests spent a quarter more CPU per notification than one.

So one planner *leads*: it holds a lease in the broker and reads as usual, blocking until
work arrives. The others *stand by*: they read without blocking, and after a read that
found under a quarter of what it asked for they pause ``PAUSE`` before the next, so what
arrives goes to the leader, in batches as large as its pace lets accumulate, and a
message the leader leaves waiting (its process busy with a broadcast's chunk, say) is
taken by a stand-by within ``PAUSE`` while work flows; after a quiet spell a stand-by's
pause grows to ``RESTING``, so that a deployment at rest is nearly still. A leader that
falls behind leaves messages in the stream, a stand-by's read finds a good share of what
it asked for and it reads again at once: under a backlog every planner works. A leader
that stops gives up its lease; one that dies loses it after ``LEASE`` seconds.

The leader itself *lingers*: after a read that found a few messages (some, but under a
quarter of what it asked for) it waits ``LINGER`` before the next, so that at a moderate
rate each batch carries what arrived in that time rather than the one or two messages of
the moment. A plan batch's deliveries are published together, so the channel workers'
reads, their checks against the store and the status writes downstream grow with it.
Measured at 1,000 single requests a second (docs/performance.md): 17% less CPU per
notification for 4 ms more from request to delivery. An empty read is not followed by a
linger (the next message is taken as it arrives), nor a large one (under a backlog every
read is full). High-priority notifications come on a stream of their own with a lead of
its own, read in a loop of its own, so that they never wait behind the plan stream's
batches; critical ones on a stream that every planner reads at once, with no lead and no
linger (pipeline/planner.py).

The channel workers do not take turns like this: each reads ahead of what it can start
(its tenants' fair shares, pipeline/consumer.py), so a leader would draw a backlog into
its own process where a stand-by cannot see it; a 200,000-subscriber broadcast measured
a third more worker CPU and twice the critical sends' p99 that way.

A broker of one process (the embedded one) always lets it lead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from clarion.broker import Broker
from clarion.domain.backoff import resting_pause

log = logging.getLogger(__name__)

LEASE = 5.0
RENEW_EVERY = LEASE / 3
# A stand-by's pause after a read that found little; after each further read that found
# nothing it pauses twice as long, up to RESTING: at rest a stand-by reads seldom, and
# a read that finds anything brings it back to PAUSE.
PAUSE = 0.05
RESTING = 2.0
# A read that finds at least this share of what it asked for means the leader is behind.
BEHIND = 0.25
# The leader's wait after a read that found a few.
LINGER = 0.01


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
        # Reads in a row that found nothing.
        self._empty = 0

    async def turn(self, timeout: float, stop: asyncio.Event | None = None) -> float:
        """Before a read: keep or seek the lead when due, and wait out a stand-by's pause
        or the leader's linger. Returns how long the read may block: ``timeout`` when
        leading, 0 standing by."""
        now = time.monotonic()
        if now - self._checked >= RENEW_EVERY:
            self._checked = now
            try:
                self.leading = await self._broker.lead(self.role, self._holder, LEASE)
            except Exception as exc:
                # The broker out of reach: the read meets it too, and is retried as ever.
                log.debug("lead %s: %r", self.role, exc)
                self.leading = True
        pause, self._pause = self._pause, 0.0
        if self.leading:
            pause = min(pause, LINGER)
        if pause > 0:
            if stop is None:
                await asyncio.sleep(pause)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)
        return timeout if self.leading else 0.0

    def took(self, taken: int, asked: int) -> None:
        """After a read: how many messages it gave of how many were asked for."""
        few = taken < max(1.0, asked * BEHIND)
        self._empty = 0 if taken else self._empty + 1
        if self.leading:
            self._pause = LINGER if taken and few else 0.0
        elif few:
            self._pause = resting_pause(PAUSE, self._empty, RESTING)
        else:
            self._pause = 0.0

    async def step_down(self) -> None:
        """Give up the lead (a clean stop), so another process takes it at once."""
        if not self.leading:
            return
        self.leading = False
        try:
            await self._broker.step_down(self.role, self._holder)
        except Exception as exc:  # it lapses after LEASE seconds instead
            log.debug("stepping down from %s: %r", self.role, exc)
