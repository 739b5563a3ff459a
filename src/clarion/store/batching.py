"""Group work that arrives concurrently into one round trip.

A batch is whatever has arrived while the previous one was being written, up to a maximum:
no timer adds latency when traffic is light, and under load each round trip carries many
items. A batcher may also *linger*: when its last batch had more than one item (items are
arriving together), it waits that long for more before it writes, so that a moderate load
shares round trips too; an item that arrives alone is written at once. A batcher told how
to see that nothing more can come (``gathered``: for the group commit, every open connection's
request is waiting on it) stops lingering as soon as that holds. Used for group commit of
notifications, status updates, and captured messages.

Items of a batch belong to different tenants, so one item must not fail the others: a batch
that fails for anything but an outage (the store or broker out of reach) is split in halves
and each half written again, down to the item that fails, which alone gets the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import asyncpg
from redis.exceptions import ClusterError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

# Server errors that say the server, not a statement, is the trouble: connection failures
# (08), shutdowns and "cannot connect now" (57), too many connections, disk full (53).
_PG_OUTAGES = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)

# The database client's errors that the API answers with a 503 whatever they say.
DATABASE_ERRORS: tuple[type[Exception], ...] = (OperationalError, DBAPIError, PoolTimeout)
# The errors of the hot statements' driver (store/pg.py): an outage or not, as
# :func:`is_outage` says.
DRIVER_ERRORS: tuple[type[Exception], ...] = (asyncpg.PostgresError, asyncpg.InterfaceError)


_OUTAGES = (
    OSError,
    TimeoutError,
    PoolTimeout,
    RedisConnectionError,
    RedisTimeoutError,
    ClusterError,
    SlotNotCoveredError,
    TryAgainError,
)


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` says the store or broker is out of reach (every item would fail
    alike), False when it may be one item's fault."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc, OperationalError):
            return True
        # asyncpg refuses a value it cannot encode with a ValueError under InterfaceError.
        return isinstance(exc, InterfaceError) and not isinstance(exc.orig, ValueError)
    if isinstance(exc, asyncpg.PostgresError):  # the hot statements run on asyncpg directly
        return isinstance(exc, _PG_OUTAGES)
    if isinstance(exc, asyncpg.InterfaceError):
        # A connection or pool that is closed; a value asyncpg cannot encode is a ValueError.
        return not isinstance(exc, ValueError)
    # A Redis Cluster down, reshaping or failing over (ClusterError, of which the cluster's
    # CLUSTERDOWN) is out of reach alike.
    return isinstance(exc, _OUTAGES)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Batcher(Generic[T, R]):
    """Feeds items to ``flush`` in batches; each caller gets its own item's result.

    ``flush`` takes a list of items and returns one result per item, in order. If it raises
    for an outage, every caller of that batch gets the exception; for anything else the
    batch is bisected, so that only the items that fail on their own get it.
    """

    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_items: int = 1000,
        concurrency: int = 1,
        name: str = "batcher",
        linger: float = 0.0,
        gathered: Callable[[], bool] | None = None,
    ) -> None:
        self._flush = flush
        # Whether every item that could join a lingering batch has joined it: asked when a
        # linger would begin and as each item arrives during one, which it then ends.
        self._gathered = gathered
        self._lingering: asyncio.Future[None] | None = None
        self._max = max_items
        self._linger = linger
        self._last = 0  # how many items the last batch had
        self._taken = 0  # items taken from the queue and not yet written (or failed)
        self._concurrency = concurrency
        self._name = name
        # Each item with the future its caller waits on (None: no one waits, see ``post``).
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R] | None]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        # The loop its tasks run on, kept: on Python 3.11 each asyncio.get_running_loop()
        # is a getpid system call, and a future is made for every item.
        self._loop: asyncio.AbstractEventLoop | None = None
        self.flushes = 0

    def start(self) -> None:
        if not self._tasks:
            self._loop = asyncio.get_running_loop()
            self._tasks = [
                self._loop.create_task(self._run(), name=f"{self._name}-{i}")
                for i in range(self._concurrency)
            ]

    def _future(self) -> asyncio.Future[R]:
        loop = self._loop if self._tasks else None
        return (loop or asyncio.get_running_loop()).create_future()

    async def submit(self, item: T) -> R:
        future = self._future()
        self._queue.put_nowait((item, future))
        if self._lingering is not None:
            self.recheck()
        return await future

    def put_nowait(self, item: T) -> asyncio.Future[R]:
        """Queue an item without waiting; the future holds its result."""
        future = self._future()
        self._queue.put_nowait((item, future))
        if self._lingering is not None:
            self.recheck()
        return future

    def post(self, item: T) -> None:
        """Queue an item whose result no one waits for (an ack): no future is made for it;
        if it fails, the failure is logged."""
        self._queue.put_nowait((item, None))

    @property
    def pending(self) -> int:
        """Items queued or in a batch not yet written (lingering, or on its way)."""
        return self._queue.qsize() + self._taken

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            self._taken += 1
            try:
                self._take_queued(batch)
                if self._linger and self._last > 1 and len(batch) < self._max:
                    # Items are arriving together: wait a moment for more to share the trip.
                    await self._linger_a_moment()
                    self._take_queued(batch)
                self._last = len(batch)
                await self._write(batch)
            except asyncio.CancelledError:
                # Stopped with a batch in hand (lingering, say): its callers are told so
                # rather than left waiting on futures no one will resolve.
                for _, future in batch:
                    if future is not None and not future.done():
                        future.cancel()
                raise
            except Exception as exc:
                # Not the flush's failure (``_write`` hands that to the callers) but a fault
                # in handing out the results: the callers get it rather than wait forever,
                # and this task lives on for the next batches.
                log.error("%s: a batch of %d was lost: %r", self._name, len(batch), exc)
                for _, future in batch:
                    if future is not None and not future.done():
                        future.set_exception(exc)
            finally:
                self._taken -= len(batch)
                for _ in batch:
                    self._queue.task_done()

    async def _linger_a_moment(self) -> None:
        """Wait ``linger`` seconds, or less: until ``gathered`` says no more can come."""
        if self._gathered is None:
            await asyncio.sleep(self._linger)
            return
        if self._gathered():
            return
        loop = self._loop or asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(self._linger, _wake, waiter)
        self._lingering = waiter
        try:
            await waiter
        finally:
            self._lingering = None
            timer.cancel()

    def recheck(self) -> None:
        """End a linger if ``gathered`` now holds (asked as each item arrives; a caller
        whose items ``gathered`` counts only once they are queued asks again then)."""
        waiter = self._lingering
        if waiter is not None and self._gathered is not None and self._gathered():
            _wake(waiter)

    def _take_queued(self, batch: list[tuple[T, asyncio.Future[R] | None]]) -> None:
        while len(batch) < self._max and not self._queue.empty():
            batch.append(self._queue.get_nowait())
            self._taken += 1

    async def _write(self, batch: list[tuple[T, asyncio.Future[R] | None]]) -> None:
        items = [item for item, _ in batch]
        try:
            results = await self._flush(items)
        except asyncio.CancelledError:
            for _, future in batch:
                if future is not None and not future.done():
                    future.cancel()
            raise
        except Exception as exc:
            if len(batch) > 1 and not is_outage(exc):
                log.info("%s: batch of %d failed, bisecting: %r", self._name, len(items), exc)
                middle = len(batch) // 2
                await self._write(batch[:middle])
                await self._write(batch[middle:])
                return
            log.debug("%s: batch of %d failed: %r", self._name, len(items), exc)
            posted = 0
            for _, future in batch:
                if future is None:
                    posted += 1
                elif not future.done():
                    future.set_exception(exc)
            if posted:
                log.warning("%s: %d posted item(s) failed: %r", self._name, posted, exc)
            return
        self.flushes += 1
        for (_, future), result in zip(batch, results, strict=True):
            if future is not None and not future.done():
                future.set_result(result)

    async def close(self) -> None:
        """Write what is queued, then stop."""
        if self._tasks:
            await self._queue.join()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
