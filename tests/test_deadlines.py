"""Deadlines on one timer: what asyncio.timeout promises, for many calls at once."""

from __future__ import annotations

import asyncio

import pytest

from clarion.resilience.deadlines import Deadlines


async def hang(deadlines: Deadlines) -> None:
    with deadlines():
        await asyncio.Event().wait()


async def test_a_call_past_its_deadline_raises_timeout_error() -> None:
    deadlines = Deadlines(0.05)
    with pytest.raises(TimeoutError):
        await hang(deadlines)
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    assert deadlines.open == 0


async def test_a_call_within_its_deadline_is_left_alone() -> None:
    deadlines = Deadlines(30)

    async def quick() -> int:
        with deadlines():
            await asyncio.sleep(0)
            return 7

    assert await quick() == 7
    assert deadlines.open == 0


async def test_many_calls_time_out_each_on_one_timer() -> None:
    deadlines = Deadlines(0.05, tick=0.01)
    outcomes = await asyncio.gather(*(hang(deadlines) for _ in range(50)), return_exceptions=True)
    assert all(isinstance(outcome, TimeoutError) for outcome in outcomes)
    assert deadlines.open == 0


async def test_calls_that_finish_leave_the_late_ones_bounded() -> None:
    deadlines = Deadlines(0.05)
    release = asyncio.Event()

    async def waits() -> str:
        with deadlines():
            await release.wait()
            return "done"

    first = asyncio.create_task(waits())
    await asyncio.sleep(0)
    release.set()
    assert await first == "done"
    with pytest.raises(TimeoutError):
        await hang(deadlines)


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    deadlines = Deadlines(30)
    started = asyncio.Event()

    async def call() -> None:
        with deadlines():
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(call())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert deadlines.open == 0


def test_each_event_loop_gets_its_own_timer() -> None:
    deadlines = Deadlines(0.02)
    for _ in range(2):
        with pytest.raises(TimeoutError):
            asyncio.run(hang(deadlines))


async def test_outside_a_task_it_refuses() -> None:
    deadlines = Deadlines(1)
    loop = asyncio.get_running_loop()
    failed: list[BaseException] = []

    def outside() -> None:
        try:
            with deadlines():
                pass
        except RuntimeError as exc:
            failed.append(exc)

    done = asyncio.Event()
    loop.call_soon(lambda: (outside(), done.set()))
    await done.wait()
    assert len(failed) == 1
