"""Timeouts for many concurrent calls of one length, on one timer.

``asyncio.timeout`` arms a timer per call, and under uvloop each is a libuv handle made,
started, stopped and closed: a channel worker would pay that per send. :class:`Deadlines`
keeps the calls in flight in one dict (in the order they started, which is the order of
their deadlines, since all are as long) and one watchdog timer, woken at the soonest
deadline but no more often than every ``tick``, that cancels the calls past theirs. Such a
call raises :class:`TimeoutError`, as it would under ``asyncio.timeout``; a cancellation
from elsewhere stays a cancellation. A call may outrun its deadline by up to ``tick``.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

TICK = 0.05


class Deadlines:
    """``with deadlines():`` bounds the block to ``seconds`` (in a task)."""

    def __init__(self, seconds: float, tick: float = TICK) -> None:
        self.seconds = seconds
        self._tick = tick
        self._open: dict[_Call, None] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    def __call__(self) -> _Call:
        return _Call(self)

    @property
    def open(self) -> int:
        """Calls in flight."""
        return len(self._open)

    def _add(self, call: _Call, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:
            # Another event loop (a process runs one, tests one each): the old one's timer
            # and calls are gone with it.
            self._open.clear()
            self._loop, self._watchdog = loop, None
        self._open[call] = None
        if self._watchdog is None:
            self._watchdog = loop.call_at(call.at, self._watch)

    def _watch(self) -> None:
        self._watchdog = None
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        while self._open:
            call = next(iter(self._open))  # the soonest deadline
            if call.at > now:
                self._watchdog = loop.call_at(max(call.at, now + self._tick), self._watch)
                return
            del self._open[call]
            call.expire()


class _Call:
    __slots__ = ("_cancelling", "_owner", "_task", "at", "expired")

    def __init__(self, owner: Deadlines) -> None:
        self._owner = owner

    def __enter__(self) -> None:
        # By the loop last seen when there is one: asyncio.current_task() alone asks for
        # the running loop, a getpid system call on Python 3.11, once per call bounded.
        seen = self._owner._loop
        task = asyncio.current_task(seen) if seen is not None else None
        if task is None:
            task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline bounds a task's call")
        loop = task.get_loop()
        self._task = task
        self._cancelling = task.cancelling()
        self.at = loop.time() + self._owner.seconds
        self.expired = False
        self._owner._add(self, loop)

    def expire(self) -> None:
        self.expired = True
        self._task.cancel()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._owner._open.pop(self, None)
        # As asyncio.timeout: the cancellation is ours when no other was asked for since.
        if (
            self.expired
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc
