"""Urgent work under way, and the broadcast work that gives way to it.

A broadcast's chunks (pipeline/planner.py) are the largest pieces of work a process does:
thousands of deliveries built, stored in one transaction and published; and its
deliveries fill every slot of the channel workers. While they run, a critical or
high-priority send waits its turn for the event loop, for a pooled connection and for a
core behind them. So the stages on an urgent send's path say when one is under way
(:meth:`Urgency.holding`: its planning, its attempt), and meanwhile:

* a chunk, before its reads and before its store, waits (:meth:`Urgency.give_way`) until
  none is, or until a bounded pause has passed: a steady stream of urgent sends slows a
  broadcast's planning, it never stops it;
* the channel workers start few handlers from the lanes below the urgent ones
  (pipeline/consumer.py ``yield_limit``).

With Redis, the processes tell each other: each one's urgent work under way is an entry
of a shared sorted set (its name, scored by when the entry lapses, so that a process that
died is forgotten), and a process with broadcast work in hand looks at the set every
``LOOK_EVERY`` seconds: an urgent send's planning in one process and its attempt in
another both find the whole deployment's broadcast work giving way.

Giving way is bounded in time as well as per wait: over any stretch of time, a process gives
way for at most ``SHARE`` of it, plus a burst of ``BUDGET / (1 - SHARE)`` seconds. The
budget is spent by time with urgent work under way and refilled by time at rest; once it
is spent, the process goes on as if nothing urgent were under way until half of it is back.
Urgent sends are a tenant's own choice: a tenant that keeps critical sends flowing takes
its fair share of the urgent lanes, but holds back every other tenant's broadcasts and
lower lanes for at most that share of the time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from clarion.domain.models import Priority
from clarion.observability import metrics

log = logging.getLogger(__name__)

URGENT: frozenset[str] = frozenset({Priority.CRITICAL, Priority.HIGH})
# The lanes (domain/models.py LANES) of urgent work: critical and high.
URGENT_LANES = 2
# The longest one give-way waits (seconds): more than an urgent send's stay in a process on
# a busy machine, little beside a chunk's own time.
PAUSE = 0.25
# The shared set of processes with urgent work under way; an entry lapses after LEASE
# seconds unless renewed (every LEASE / 4 while the work goes on).
KEY = "clarion:urgent"
LEASE = 2.0
# How often a process with broadcast work in hand looks at the others' urgent work, and
# for how long after its last broadcast work it goes on looking (seconds).
LOOK_EVERY = 0.05
LOOK_FOR = 1.0
# The share of time a process gives way at most, and the budget (seconds) of giving way
# that time at rest refills at SHARE a second and time under way spends at 1 - SHARE.
SHARE = 0.5
BUDGET = 2.0


class Urgency:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._local = 0
        self._remote = False
        self._clear = asyncio.Event()
        self._clear.set()
        self._clock = clock
        self._when_clear: list[Callable[[], None]] = []
        # The budget of giving way (``SHARE``): seconds left, when it was last accounted,
        # and whether it is spent (then nothing is under way until half of it is back).
        self._budget = BUDGET
        self._accounted = clock()
        self._spent = False
        self._turn: asyncio.TimerHandle | None = None  # when it is spent, or half back
        # Sharing (``share``): the client, this process's entry, what the set says of it.
        self._shared: Any = None
        self._name = ""
        self._announced = False
        self._changed = asyncio.Event()
        self._busy_at = -LOOK_FOR
        self._busy = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Looks at the shared set; chunks giving way now, and the seconds they have
        # spent so in all.
        self.looks = 0
        self.looked = asyncio.Event()  # set after each look
        self.giving_way = 0
        self.waited = 0.0

    @property
    def under_way(self) -> int:
        """Urgent work under way: here, plus one if another process has some; none while
        the budget of giving way is spent."""
        if self._local + self._remote == 0:
            return 0
        self._account()
        return 0 if self._spent else self._local + self._remote

    @property
    def spent(self) -> bool:
        """The budget of giving way is spent: urgent work is under way, nothing gives way."""
        self._account()
        return self._spent

    def _account(self) -> None:
        """Bring the budget of giving way up to now: spent while urgent work held the rest
        back, refilled otherwise; spent out or half back, say so."""
        now = self._clock()
        elapsed, self._accounted = now - self._accounted, now
        raw = self._local + self._remote
        if raw and not self._spent:
            self._budget -= elapsed * (1 - SHARE)
            if self._budget <= 0:
                self._budget, self._spent = 0.0, True
                metrics.give_way_spent()
                self._release()
                self._watch()
        else:
            self._budget = min(BUDGET, self._budget + elapsed * SHARE)
            if self._spent and self._budget >= BUDGET / 2:
                self._spent = False
                if raw:
                    self._clear.clear()
                self._watch()

    def _watch(self) -> None:
        """While urgent work is under way, account again when the budget will be spent (or
        half back): what gives way learns of it then, whoever asks meanwhile."""
        if self._turn is not None:
            self._turn.cancel()
            self._turn = None
        if self._local + self._remote == 0:
            return
        # Spent: until half of it is back; else until it is spent.
        delay = (BUDGET / 2 - self._budget) / SHARE if self._spent else self._budget / (1 - SHARE)
        with contextlib.suppress(RuntimeError):  # no running loop: accounted when asked
            self._turn = asyncio.get_running_loop().call_later(max(delay, 0.001), self._on_turn)

    def _on_turn(self) -> None:
        self._turn = None
        self._account()
        if self._turn is None:  # woken a hair early: no turn yet
            self._watch()

    def share(self, client: Any, name: str) -> None:
        """Tell other processes of this one's urgent work, and listen for theirs, through
        Redis (``client``: redis-py's asyncio client). Needs a running event loop."""
        self._shared, self._name = client, name
        self._tasks = [
            asyncio.create_task(self._announce(), name="urgency-announce"),
            asyncio.create_task(self._look(), name="urgency-look"),
        ]

    async def aclose(self) -> None:
        if self._turn is not None:
            self._turn.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._shared is not None and self._announced:
            with contextlib.suppress(Exception):
                await self._shared.zrem(KEY, self._name)

    @contextlib.contextmanager
    def holding(self, urgent: bool = True) -> Iterator[None]:
        """Mark the block as urgent work under way (nothing when ``urgent`` is false)."""
        if not urgent:
            yield
            return
        self._account()
        self._local += 1
        if self._local == 1:
            if not self._spent:
                self._clear.clear()
            self._changed.set()
            self._watch()
        try:
            yield
        finally:
            self._account()
            self._local -= 1
            if self._local == 0:
                self._changed.set()
                self._settle()
                self._watch()

    def when_clear(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` each time the last urgent work under way ends."""
        self._when_clear.append(callback)

    def busy(self) -> None:
        """Broadcast work is in hand here: look at the other processes' urgent work."""
        if self._shared is None:
            return
        self._busy_at = self._clock()
        if not self._busy.is_set():
            self._busy.set()

    async def give_way(self) -> None:
        """Wait while urgent work is under way, at most ``PAUSE`` seconds."""
        self.busy()
        if self.under_way == 0:
            return
        started = self._clock()
        self.giving_way += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._clear.wait(), PAUSE)
        finally:
            self.giving_way -= 1
            waited = self._clock() - started
            self.waited += waited
            metrics.gave_way(waited)

    def _settle(self) -> None:
        """Nothing urgent under way any more: let what gave way go on."""
        if self.under_way == 0 and not self._clear.is_set():
            self._clear.set()
            for callback in self._when_clear:
                callback()

    def _release(self) -> None:
        """The budget is spent: let what gives way go on (the callbacks run soon, not
        from inside whatever asked)."""
        if self._clear.is_set():
            return
        self._clear.set()
        with contextlib.suppress(RuntimeError):  # no running loop: no one is waiting
            loop = asyncio.get_running_loop()
            for callback in self._when_clear:
                loop.call_soon(callback)

    async def _announce(self) -> None:
        """Keep this process's entry in the shared set while it has urgent work."""
        while True:
            try:
                await self._publish()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: each process gives way to its own only
                log.debug("announcing urgent work failed: %r", exc)
            self._changed.clear()
            # Renewed while the work goes on (or its withdrawal tried again); else at rest.
            again = LEASE / 4 if self._local or self._announced else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), again)

    async def _publish(self) -> None:
        if self._local:
            until = int((time.time() + LEASE) * 1000)
            await self._shared.zadd(KEY, {self._name: until})
            self._announced = True
        elif self._announced:
            await self._shared.zrem(KEY, self._name)
            self._announced = False

    async def _look(self) -> None:
        """While broadcast work is in hand here, look at the others' urgent work."""
        while True:
            if self._clock() - self._busy_at > LOOK_FOR:
                self._seen(False)  # what it saw last is stale by the time it looks again
                self._busy.clear()
                await self._busy.wait()
            try:
                now = int(time.time() * 1000)
                found = await self._shared.zrangebyscore(KEY, now, "+inf", start=0, num=2)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("looking for urgent work failed: %r", exc)
                found = []
            self.looks += 1
            self.looked.set()
            own = self._name.encode()
            self._seen(any(entry not in (own, self._name) for entry in found))
            await asyncio.sleep(LOOK_EVERY)

    def _seen(self, remote: bool) -> None:
        if remote != self._remote:
            self._account()
            self._remote = remote
            self._watch()
            if remote and not self._spent:
                self._clear.clear()
            else:
                self._settle()
