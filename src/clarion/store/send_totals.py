"""How many of a send's deliveries are in each status: the ``totals`` of a notification's
detail and of the message log's list, from which its shown status is derived.

They are counted over all of the send's deliveries, which for a broadcast to a million
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
from clarion.store.tables import deliveries

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


# By database and notification: one process may talk to several databases (the tests).
_kept: OrderedDict[tuple[str, str], _Kept] = OrderedDict()


def _now() -> float:
    return time.monotonic()


def _key(engine: AsyncEngine, notification_id: str) -> tuple[str, str]:
    return (engine.url.render_as_string(hide_password=True), notification_id)


def _still_kept(
    engine: AsyncEngine, notification_ids: Iterable[str], now: float
) -> dict[str, Totals]:
    found = {}
    for nid in notification_ids:
        kept = _kept.get(_key(engine, nid))
        if kept is not None and kept.until > now:
            found[nid] = dict(kept.totals)
    return found


def _keep(engine: AsyncEngine, counted: dict[str, Totals], took: float) -> None:
    until = _now() + max(KEEP_AT_LEAST, KEEP_FOR * took)
    for nid, totals in counted.items():
        key = _key(engine, nid)
        if sum(totals.values()) >= LARGE:
            _kept[key] = _Kept(dict(totals), until)
            _kept.move_to_end(key)
        else:
            _kept.pop(key, None)
    while len(_kept) > KEPT:
        _kept.popitem(last=False)


def forget(engine: AsyncEngine, notification_id: str) -> None:
    """Count this send's totals afresh at the next look (it was just cancelled)."""
    _kept.pop(_key(engine, notification_id), None)


async def _count(conn: AsyncConnection, notification_ids: Sequence[str]) -> dict[str, Totals]:
    d = deliveries
    status = shown_status(d)
    counted: dict[str, Totals] = {nid: {} for nid in notification_ids}
    for part in chunks(list(notification_ids), 500):
        query = (
            select(d.c.notification_id, status, func.count())
            .where(d.c.notification_id.in_(part))
            .group_by(d.c.notification_id, status)
        )
        for nid, shown, n in (await conn.execute(query)).all():
            counted[nid][shown] = int(n)
    return {nid: dict(sorted(totals.items())) for nid, totals in counted.items()}


async def totals(
    engine: AsyncEngine,
    notification_ids: Sequence[str],
    conn: AsyncConnection | None = None,
    fresh: bool = False,
) -> dict[str, Totals]:
    """Per notification: how many of its deliveries are in each status, by status name;
    kept ones where a large send's are (``fresh``: counted now whatever was kept). On
    ``conn`` if given, else on a connection of its own."""
    kept = {} if fresh else _still_kept(engine, notification_ids, _now())
    wanted = [nid for nid in dict.fromkeys(notification_ids) if nid not in kept]
    if not wanted:
        return kept
    began = _now()
    if conn is not None:
        counted = await _count(conn, wanted)
    else:
        async with engine.connect() as own:
            counted = await _count(own, wanted)
    _keep(engine, counted, _now() - began)
    return {**kept, **counted}
