"""What a process is waiting on: on SIGUSR1, every thread's stack and every asyncio task's
chain of awaits are written to standard error (a debugging aid, see docs/operations.md).

A thread dump alone shows an idle event loop in ``select``; the tasks' await chains show
which ``await`` each piece of work is parked on.
"""

from __future__ import annotations

import asyncio
import faulthandler
import signal
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any, TextIO


def _frames(awaitable: Any) -> Iterator[FrameType | str]:
    """The frames of a coroutine and of what it awaits, outermost first; what ends the chain
    (a future, a task) is named."""
    seen = 0
    while awaitable is not None and seen < 200:
        seen += 1
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        frame = frame or getattr(awaitable, "ag_frame", None)
        if frame is not None:
            yield frame
        nxt = (
            getattr(awaitable, "cr_await", None)
            or getattr(awaitable, "gi_yieldfrom", None)
            or getattr(awaitable, "ag_await", None)
        )
        if nxt is None and frame is None:
            yield repr(awaitable)[:300]
        awaitable = nxt


def dump_tasks(out: TextIO) -> None:
    """Every task of the running loop with the awaits it is parked on."""
    tasks = asyncio.all_tasks()
    print(f"--- {len(tasks)} asyncio tasks ---", file=out)
    for task in sorted(tasks, key=lambda t: t.get_name()):
        print(f"task {task.get_name()}:", file=out)
        for item in _frames(task.get_coro()):
            if isinstance(item, str):
                print(f"    awaiting {item}", file=out)
            else:
                code = item.f_code
                print(f"    {code.co_filename}:{item.f_lineno} in {code.co_name}", file=out)
    print("--- end of tasks ---", file=out)
    out.flush()


def install() -> None:
    """Dump threads and tasks on SIGUSR1 (no-op where there is no such signal)."""
    usr1 = getattr(signal, "SIGUSR1", None)
    if usr1 is None:
        return

    def dump() -> None:
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        dump_tasks(sys.stderr)

    asyncio.get_running_loop().add_signal_handler(usr1, dump)
