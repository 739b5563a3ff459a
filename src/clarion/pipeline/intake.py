"""Intake: notifications of concurrent requests share one database commit.

202 is answered only after that commit. Then the notifications are published to the plan
stream at once. Their outbox rows stay until the planner has planned them: if the publish
fails, or the process dies first, the relay publishes them from the outbox after a grace
period, so an accepted notification is never left behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence

from clarion.domain.refusal import Reason, Refused
from clarion.observability import metrics, tracing
from clarion.pipeline.context import Context
from clarion.pipeline.messages import plan_messages
from clarion.resilience.quota import Allowances
from clarion.resilience.ratelimit import Decision, Take
from clarion.store import notifications as store
from clarion.store.batching import Batcher, is_outage

log = logging.getLogger(__name__)

# While requests arrive together, a commit waits this long for more to share it: at a
# moderate rate, commits of two or three notifications cost the database most of their
# time (docs/performance.md). It waits no longer once every open connection's request is
# waiting on it: nothing more can come then but on a new connection.
COMMIT_LINGER = 0.002


def _outcome(result: store.Admission | BaseException) -> store.Admission:
    if isinstance(result, (store.Accepted, Refused)):
        return result
    if isinstance(result, asyncio.CancelledError) or is_outage(result):
        raise result
    if not isinstance(result, Exception):
        raise result
    log.warning("a notification the store refused: %r", result)
    return Refused(
        Reason.UNSTORABLE,
        "the notification could not be stored; check its fields for values no database accepts",
    )


class Intake:
    def __init__(self, ctx: Context, *, max_items: int = 5000) -> None:
        self._ctx = ctx
        # One commit at a time: what arrives meanwhile waits and shares the next one. Two
        # side by side halved each commit's share of concurrent requests and cost more
        # CPU per notification, with no gain in latency (docs/performance.md).
        self._commits: Batcher[store.NewNotification, store.Admission] = Batcher(
            self._commit,
            max_items=max_items,
            name="group-commit",
            linger=COMMIT_LINGER,
            gathered=self._all_waiting,
        )
        # The requests of the HTTP server's connections waiting on a commit, each by the
        # future of its last notification (the batcher writes in the order queued, so
        # these are done in turn); how many connections the server holds open (set by the
        # process that serves them).
        self._waiting: deque[asyncio.Future[store.Admission]] = deque()
        self.open_connections: Callable[[], int] | None = None
        self._publisher: Batcher[store.NewNotification, None] = Batcher(
            self._publish, max_items=2000, name="intake-publish"
        )
        # Concurrent requests' quota charges: one round trip to the limiter for all.
        self._charges: Batcher[Take, Decision] = Batcher(
            ctx.resilience.limiter.take_many, max_items=1000, name="intake-quota"
        )
        self._allowances = Allowances(self._charges.submit)

    def _all_waiting(self) -> bool:
        """Whether every open connection has a request waiting on the commit: a connection
        carries one request at a time, so no other can join the commit before it is
        answered. Idle keep-alive connections and live streams keep this false."""
        count = self.open_connections
        return count is not None and self._still_waiting() >= count()

    def _still_waiting(self) -> int:
        waiting = self._waiting
        while waiting and waiting[0].done():  # written: its answer is on its way
            waiting.popleft()
        return len(waiting)

    def start(self) -> None:
        self._commits.start()
        self._publisher.start()
        self._charges.start()

    async def charge(self, take: Take) -> Decision:
        """Take from a tenant's intake quota (or refuse without taking anything): from
        what this process took ahead for the tenant when it can, else from the shared
        bucket."""
        return await self._allowances.take(take)

    async def _commit(self, items: list[store.NewNotification]) -> list[store.Admission]:
        started = time.perf_counter()
        admissions = await store.accept(
            self._ctx.engine, items, outbox_grace=self._ctx.settings.outbox_grace, pg=self._ctx.pg
        )
        metrics.intake_commit(len(items), time.perf_counter() - started)
        return admissions

    async def _publish(self, items: list[store.NewNotification]) -> list[None]:
        streams = plan_messages((i.id, i.tenant_id, i.trace, i.priority) for i in items)
        for stream, payloads in streams.items():
            try:
                await self._ctx.broker.publish(stream, payloads)
            except Exception as exc:  # the relay publishes these from the outbox instead
                log.warning("publishing %d accepted notifications failed: %r", len(payloads), exc)
        return [None] * len(items)

    async def accept(
        self, items: Sequence[store.NewNotification], *, request: bool = False
    ) -> list[store.Admission]:
        """Store the notifications durably; one outcome per item, in order. ``request``:
        an HTTP request of one of the server's connections waits for them.

        An item the store refuses on its own is refused alone (a 422 ``unstorable``); an
        outage fails the request (a 503)."""
        with tracing.accepting(items):
            trace = tracing.traceparent()  # None unless tracing is on
            if trace is not None:
                # Stored with each notification: a later publish (the relay's, the
                # sweeper's, a replay's) joins this trace, even after a crash.
                for item in items:
                    item.trace = trace
            futures = [self._commits.put_nowait(item) for item in items]
            if request and futures and self.open_connections is not None:
                self._still_waiting()  # what was written leaves, lingering or not
                self._waiting.append(futures[-1])
                self._commits.recheck()
            results = await asyncio.gather(*futures, return_exceptions=True)
        outcomes = [_outcome(result) for result in results]
        metrics.notifications(outcomes, items)
        for item, outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, store.Accepted) and outcome.created and outcome.publish_now:
                self._publisher.put_nowait(item)
        return outcomes

    async def close(self) -> None:
        await self._commits.close()
        await self._publisher.close()
        await self._charges.close()
