"""Category digests in tests: time moved for the open windows instead of waited for, and
what their closing made.

A window is carried by a run of the built-in workflow ``~digest`` that waits until the
window closes; the run engine (every planner's run waker) closes it then. Moving a window's
times back moves its carrier's wait with it, so the next wake finds it due."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update

from clarion.domain.digests import digest_notification_id
from clarion.domain.runs import run_id
from clarion.store.db import as_utc, write_tx
from clarion.store.tables import digest_windows, notifications, workflow_runs
from harness import Harness


def carrier_id(window: dict[str, Any]) -> str:
    """The id of the run that carries ``window`` (a row of digest_windows)."""
    return run_id(digest_notification_id(window["id"]), window["recipient_id"])


async def time_passes(app: Harness, by: timedelta) -> None:
    """``by`` passes for the open digest windows: their times, and their carriers' waits,
    move back by it."""
    w, r = digest_windows, workflow_runs
    async with write_tx(app.ctx.engine) as conn:
        windows = (await conn.execute(select(w).where(w.c.closed_at.is_(None)))).mappings().all()
        for window in windows:
            await conn.execute(
                update(w)
                .where(w.c.id == window["id"])
                .values(
                    opened_at=_earlier(window["opened_at"], by),
                    closes_at=_earlier(window["closes_at"], by),
                )
            )
            found = (
                (await conn.execute(select(r).where(r.c.id == carrier_id(dict(window)))))
                .mappings()
                .first()
            )
            if found is None or found["wake_at"] is None:
                continue
            steps = [
                {**step, "until": step["until"] - by.total_seconds()} if "until" in step else step
                for step in found["steps"]
            ]
            await conn.execute(
                update(r)
                .where(r.c.id == found["id"])
                .values(wake_at=_earlier(found["wake_at"], by), steps=steps)
            )


def _earlier(moment: datetime, by: timedelta) -> datetime:
    shifted = as_utc(moment)
    assert shifted is not None
    return shifted - by


async def digests_made(app: Harness) -> int:
    """How many digest notifications exist."""
    n = notifications
    query = select(func.count()).select_from(n).where(n.c.digest_of.is_not(None))
    async with app.ctx.engine.connect() as conn:
        return int((await conn.execute(query)).scalar() or 0)


async def close_after(app: Harness, by: timedelta) -> int:
    """Let ``by`` pass for the open windows, then let Clarion (every role running) close
    those due and plan their digests (drained); how many digests that made."""
    before = await digests_made(app)
    await time_passes(app, by)
    await app.drain()
    return await digests_made(app) - before
