"""How many of a send's deliveries are in each status (the ``totals`` of a notification's
detail and of the message log's list, from which its shown status is derived), and how
many of its workflow runs (its ``run_totals``).

They are counted over all of the send's deliveries or runs, which for a broadcast to a million
recipients is a read of a million rows (about half a second a look on two cores). A client
polling such a send's progress every second would keep half a core of the database busy.
So the totals of a large send (``LARGE`` deliveries or more) are kept by the process that
counted them, for ten times as long as the count took and at least a second: however
often its progress is asked for, a large send costs the database at most about a tenth
of a core per API process. A send's totals are then up to that old (about 5 s for a million
here); a small send's are counted at every look, and a cancellation in this process counts
afresh.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.store.deliveries import shown_status
from clarion.store.sql import chunks
from clarion.store.tables import deliveries, workflow_runs

# A send of this many deliveries or more has its totals kept a while.
LARGE = 10_000
# How long, as a multiple of the time its count took, and at least.
KEEP_FOR = 10.0
KEEP_AT_LEAST = 1.0
# How many sends' totals a process keeps (the least recently counted go first).
KEPT = 1_000

Totals = dict[str, int]


class _Kept(NamedTuple):
    totals: Totals
    until: float


# By database, what is counted (deliveries or runs) and notification: one process may
# talk to several databases (the tests).
Key = tuple[str, str, str]
_kept: OrderedDict[Key, _Kept] = OrderedDict()


def _now() -> float:
    return time.monotonic()


def _key(engine: AsyncEngine, kind: str, notification_id: str) -> Key:
    return (engine.url.render_as_string(hide_password=True), kind, notification_id)


def _still_kept(
    engine: AsyncEngine, kind: str, notification_ids: Iterable[str], now: float
) -> dict[str, Totals]:
    found = {}
    for nid in notification_ids:
        kept = _kept.get(_key(engine, kind, nid))
        if kept is not None and kept.until > now:
            found[nid] = dict(kept.totals)
    return found


def _keep(engine: AsyncEngine, kind: str, counted: dict[str, Totals], took: float) -> None:
    until = _now() + max(KEEP_AT_LEAST, KEEP_FOR * took)
    for nid, totals in counted.items():
        key = _key(engine, kind, nid)
        if sum(totals.values()) >= LARGE:
            _kept[key] = _Kept(dict(totals), until)
            _kept.move_to_end(key)
        else:
            _kept.pop(key, None)
    while len(_kept) > KEPT:
        _kept.popitem(last=False)


async def _count(
    conn: AsyncConnection, kind: str, notification_ids: Sequence[str]
) -> dict[str, Totals]:
    table = deliveries if kind == _DELIVERIES else workflow_runs
    status = shown_status(table) if kind == _DELIVERIES else table.c.status
    counted: dict[str, Totals] = {nid: {} for nid in notification_ids}
    for part in chunks(list(notification_ids), 500):
        query = (
            select(table.c.notification_id, status, func.count())
            .where(table.c.notification_id.in_(part))
            .group_by(table.c.notification_id, status)
        )
        for nid, shown, n in (await conn.execute(query)).all():
            counted[nid][shown] = int(n)
    return {nid: dict(sorted(totals.items())) for nid, totals in counted.items()}


_DELIVERIES = "deliveries"
_RUNS = "runs"


async def _totals(
    engine: AsyncEngine,
    kind: str,
    notification_ids: Sequence[str],
    conn: AsyncConnection | None,
    fresh: bool,
) -> dict[str, Totals]:
    kept = {} if fresh else _still_kept(engine, kind, notification_ids, _now())
    wanted = [nid for nid in dict.fromkeys(notification_ids) if nid not in kept]
    if not wanted:
        return kept
    began = _now()
    if conn is not None:
        counted = await _count(conn, kind, wanted)
    else:
        async with engine.connect() as own:
            counted = await _count(own, kind, wanted)
    _keep(engine, kind, counted, _now() - began)
    return {**kept, **counted}


async def totals(
    engine: AsyncEngine,
    notification_ids: Sequence[str],
    conn: AsyncConnection | None = None,
    fresh: bool = False,
) -> dict[str, Totals]:
    """Per notification: how many of its deliveries are in each status, by status name;
    kept ones where a large send's are (``fresh``: counted now whatever was kept). On
    ``conn`` if given, else on a connection of its own."""
    return await _totals(engine, _DELIVERIES, notification_ids, conn, fresh)


async def run_totals(engine: AsyncEngine, notification_id: str, fresh: bool = False) -> Totals:
    """How many of a notification's workflow runs are in each status (none: not a workflow
    send), as :func:`totals` counts deliveries."""
    return (await _totals(engine, _RUNS, [notification_id], None, fresh))[notification_id]
