"""Urgent work under way, and the broadcast work that gives way to it.

A broadcast's chunks (pipeline/planner.py) are the largest pieces of work a process does:
thousands of deliveries built, stored in one transaction and published; and its
deliveries fill every slot of the channel workers. While they run, a critical or
high-priority send waits its turn for the event loop, for a pooled connection and for a
core behind them. So the stages on an urgent send's path say when one is under way, and
for which tenant (:meth:`Urgency.holding`: its planning, its attempt), and meanwhile:

* a chunk, before its reads and before its store, waits (:meth:`Urgency.give_way`) until
  none is, or until a bounded pause has passed: a steady stream of urgent sends slows a
  broadcast's planning, it never stops it;
* the channel workers start few handlers from the lanes below the urgent ones
  (pipeline/consumer.py ``yield_limit``).

Urgent sends are a tenant's own choice, so what they hold back of *other* tenants is
bounded in time: each tenant has a budget of giving way (``BUDGET`` seconds), spent while
its urgent work is under way and refilled at ``SHARE`` of a second a second; once spent,
that tenant's urgent work holds back only its own broadcasts and lower lanes until half of
the budget is back. A tenant that keeps critical sends flowing therefore holds the others
back for at most ``SHARE`` of the time (after a first burst); its own broadcasts give way
to it all the time.

With Redis, the processes tell each other: each one's urgent work under way is an entry of
a shared sorted set per tenant (its name and the tenant's, scored by when the entry lapses,
so that a process that died is forgotten), and a process with broadcast work in hand looks
at the set every ``LOOK_EVERY`` seconds: an urgent send's planning in one process and its
attempt in another both find the whole deployment's broadcast work giving way. Each process
keeps the budgets of what it sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
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
# The shared set of urgent work under way, an entry per process and tenant; an entry
# lapses after LEASE seconds unless renewed (every LEASE / 4 while the work goes on).
KEY = "clarion:urgent"
LEASE = 2.0
# How often a process with broadcast work in hand looks at the others' urgent work, and
# for how long after its last broadcast work it goes on looking (seconds).
LOOK_EVERY = 0.05
LOOK_FOR = 1.0
# A tenant's budget of holding back other tenants (seconds), and the share of time it
# holds them back at most: time at rest refills it at SHARE a second, time with its urgent
# work under way spends it at 1 - SHARE a second.
SHARE = 0.5
BUDGET = 2.0
# The most entries of the shared set one look reads.
_LOOK_MOST = 1000
# How long closing waits for the tasks sharing urgent work to end (seconds): a Redis call
# under way is bounded by the client's socket timeout.
_CLOSE_WAIT = 15.0


@dataclass
class _Budget:
    left: float = field(default_factory=lambda: BUDGET)
    spent: bool = False


@dataclass(frozen=True)
class Held:
    """What urgent work holds back now: ``everyone``'s lower lanes and broadcasts (a
    tenant with budget left has urgent work under way), or else those of ``tenants`` only
    (urgent work of theirs is under way, their budgets spent)."""

    everyone: bool
    tenants: frozenset[str]

    def __bool__(self) -> bool:
        return self.everyone or bool(self.tenants)

    def holds(self, tenant: str) -> bool:
        return self.everyone or tenant in self.tenants


NOTHING_HELD = Held(False, frozenset())


class Urgency:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # Urgent work under way: here, per tenant; and the tenants with some elsewhere.
        self._local: Counter[str] = Counter()
        self._remote: frozenset[str] = frozenset()
        # The tenants' budgets (only of tenants with urgent work or a budget refilling),
        # when they were last accounted, and when one is next spent or half back.
        self._budgets: dict[str, _Budget] = {}
        self._accounted = clock()
        self._turn: asyncio.TimerHandle | None = None
        self._held = NOTHING_HELD
        # Set and replaced at each change of what is held: what waits, waits for one.
        self._change = asyncio.Event()
        self._when_clear: list[Callable[[], None]] = []
        self._calling = False
        # Sharing (``share``): the client, this process's name, the tenants announced.
        self._shared: Any = None
        self._name = ""
        self._announced: set[str] = set()
        self._changed = asyncio.Event()
        self._busy_at = -LOOK_FOR
        self._busy = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        # Looks at the shared set; chunks giving way now, and the seconds they have
        # spent so in all.
        self.looks = 0
        self.looked = asyncio.Event()  # set after each look
        self.giving_way = 0
        self.waited = 0.0

    @property
    def under_way(self) -> int:
        """Urgent work under way: here, plus a tenant with some in another process."""
        return self._local.total() + len(self._remote)

    def held(self) -> Held:
        """What urgent work holds back now (see :class:`Held`)."""
        if self._local or self._remote:
            self._account()
        return self._held

    def holds(self, tenant: str) -> bool:
        """Urgent work holds back ``tenant``'s broadcasts and lower lanes now."""
        return self.held().holds(tenant)

    def spent(self, tenant: str) -> bool:
        """``tenant``'s budget of holding back the others is spent."""
        self._account()
        budget = self._budgets.get(tenant)
        return budget is not None and budget.spent

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
            self._turn = None
        # The loops see the flag once woken: a cancellation can be lost on its way through
        # a Redis call (asyncio.wait_for of Python 3.11 returns the call's result when it
        # finished as the cancellation came), and a loop that lost it must not wait on.
        self._closing = True
        self._busy.set()
        self._changed.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=_CLOSE_WAIT)
            if pending:
                log.warning("urgency: %d task(s) did not stop when asked", len(pending))
        self._tasks = []
        if self._shared is not None and self._announced:
            with contextlib.suppress(Exception):
                await self._shared.zrem(KEY, *(self._member(t) for t in self._announced))

    @contextlib.contextmanager
    def holding(self, tenants: Iterable[str]) -> Iterator[None]:
        """Mark the block as urgent work of ``tenants`` under way (none: nothing urgent)."""
        mine = Counter(tenants)
        if not mine:
            yield
            return
        self._account()
        new = any(tenant not in self._local for tenant in mine)
        self._local.update(mine)
        if new:
            self._changed.set()
            self._settle()
        try:
            yield
        finally:
            self._account()
            self._local.subtract(mine)
            if any(self._local[tenant] <= 0 for tenant in mine):
                self._local = +self._local  # the tenants with none left go
                self._changed.set()
                self._settle()

    def when_clear(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (soon) each time urgent work holds back less than before."""
        self._when_clear.append(callback)

    def busy(self) -> None:
        """Broadcast work is in hand here: look at the other processes' urgent work."""
        if self._shared is None:
            return
        self._busy_at = self._clock()
        if not self._busy.is_set():
            self._busy.set()

    async def give_way(self, tenant: str) -> None:
        """Wait while urgent work holds back ``tenant``'s broadcasts, at most ``PAUSE``
        seconds."""
        self.busy()
        if not self.holds(tenant):
            return
        started = self._clock()
        self.giving_way += 1
        try:
            async with asyncio.timeout(PAUSE):
                while self.holds(tenant):
                    await self._change.wait()
        except TimeoutError:
            pass
        finally:
            self.giving_way -= 1
            waited = self._clock() - started
            self.waited += waited
            metrics.gave_way(waited)

    def _account(self) -> None:
        """Bring the budgets up to now: spent by tenants with urgent work under way and
        budget left, refilled for the others; then what is held follows."""
        now = self._clock()
        elapsed, self._accounted = now - self._accounted, now
        urgent = self._urgent()
        changed = False
        for tenant in urgent:
            if tenant not in self._budgets:
                self._budgets[tenant] = _Budget()
        for tenant, budget in list(self._budgets.items()):
            if tenant in urgent and not budget.spent:
                budget.left -= elapsed * (1 - SHARE)
                if budget.left <= 0:
                    budget.left, budget.spent, changed = 0.0, True, True
                    metrics.give_way_spent()
            else:
                budget.left = min(BUDGET, budget.left + elapsed * SHARE)
                if budget.spent and budget.left >= BUDGET / 2:
                    budget.spent, changed = False, True
                if budget.left >= BUDGET and tenant not in urgent:
                    del self._budgets[tenant]  # full again: as if it had never been
        if changed:
            self._settle()

    def _urgent(self) -> set[str]:
        return set(self._local) | self._remote

    def _settle(self) -> None:
        """Work out what is held now; tell what waits of a change, the callbacks of less
        held than before; and account again when a budget is next spent or half back."""
        urgent = self._urgent()
        live = {t for t in urgent if not self._budgets.get(t, _Budget()).spent}
        if live:
            held = Held(True, frozenset())
        else:
            held = Held(False, frozenset(urgent)) if urgent else NOTHING_HELD
        before, self._held = self._held, held
        if held != before:
            self._change.set()
            self._change = asyncio.Event()
            if not held.everyone and (before.everyone or before.tenants - held.tenants):
                self._call_soon()
        self._watch(live)

    def _call_soon(self) -> None:
        if self._calling or not self._when_clear:
            return
        with contextlib.suppress(RuntimeError):  # no running loop: no one is waiting
            asyncio.get_running_loop().call_soon(self._call)
            self._calling = True

    def _call(self) -> None:
        self._calling = False
        for callback in self._when_clear:
            callback()

    def _watch(self, live: set[str]) -> None:
        """While urgent work is under way, account again when the first budget is spent
        (or half back): what gives way learns of it then, whoever asks meanwhile."""
        if self._turn is not None:
            self._turn.cancel()
            self._turn = None
        delays = [
            (BUDGET / 2 - self._budgets[t].left) / SHARE
            if t not in live
            else self._budgets.get(t, _Budget()).left / (1 - SHARE)
            for t in self._urgent()
        ]
        if not delays:
            return
        with contextlib.suppress(RuntimeError):  # no running loop: accounted when asked
            loop = asyncio.get_running_loop()
            self._turn = loop.call_later(max(min(delays), 0.001), self._on_turn)

    def _on_turn(self) -> None:
        self._turn = None
        self._account()
        if self._turn is None:  # woken a hair early: no turn yet
            self._settle()

    def _member(self, tenant: str) -> str:
        return f"{self._name} {tenant}"

    async def _announce(self) -> None:
        """Keep this process's entries in the shared set while it has urgent work."""
        while not self._closing:
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
        tenants = set(self._local)
        gone = self._announced - tenants
        if tenants:
            until = int((time.time() + LEASE) * 1000)
            await self._shared.zadd(KEY, {self._member(t): until for t in tenants})
            self._announced |= tenants
        if gone:
            await self._shared.zrem(KEY, *(self._member(t) for t in gone))
            self._announced -= gone

    async def _look(self) -> None:
        """While broadcast work is in hand here, look at the others' urgent work."""
        while not self._closing:
            if self._clock() - self._busy_at > LOOK_FOR:
                self._seen(frozenset())  # what it saw last is stale by the time it looks
                self._busy.clear()
                await self._busy.wait()
                if self._closing:
                    return
            try:
                now = int(time.time() * 1000)
                found = await self._shared.zrangebyscore(KEY, now, "+inf", start=0, num=_LOOK_MOST)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("looking for urgent work failed: %r", exc)
                found = []
            self.looks += 1
            self.looked.set()
            self._seen(self._others(found))
            await asyncio.sleep(LOOK_EVERY)

    def _others(self, found: list[Any]) -> frozenset[str]:
        """The tenants of the other processes' entries (an entry without one, from an
        older version, holds back everyone's as a tenant of no name)."""
        tenants = set()
        for entry in found:
            member = entry.decode() if isinstance(entry, bytes) else str(entry)
            name, _, tenant = member.partition(" ")
            if name != self._name:
                tenants.add(tenant)
        return frozenset(tenants)

    def _seen(self, remote: frozenset[str]) -> None:
        if remote != self._remote:
            self._account()
            self._remote = remote
            self._settle()
