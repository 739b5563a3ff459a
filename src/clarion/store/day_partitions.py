"""The day partition of ``deliveries`` that a batch of delivery ids falls in.

The status writer's update, the claims and a take's screen find deliveries by id lists
(``= ANY($n)``). Named against ``deliveries``, such a statement is planned at each
execution with its values, so that only the partition holding the ids is read (a generic
plan cannot prune partitions by a list, store/pg.py ``fixed_plan``); and planning a
statement over a partitioned table costs PostgreSQL 0.2 to 0.4 ms each time, as much as
running it when batches are small. Nearly every batch falls in one day partition (its
notifications were accepted the same day: store/retention.py): such a batch names that
partition instead, a plain table whose statement is planned once per connection.

A partition is named only once the catalog has shown it to be a partition of
``deliveries`` with the bounds of its day (looked at again every ``RECHECK`` seconds), and
only for ids of the shape delivery ids have (``dlv_`` and 26 characters of Crockford's
base32), compared with the bounds in byte order: PostgreSQL itself put each row in that
partition by the same bounds, in the order of the column's collation, which the same look
checks orders such ids as bytes do (it does under C, libc's locales and ICU's, but not an
ICU collation that compares digits as numbers: then no partition is named). A batch with
an id of another day or shape, or a day without a partition of its own (its rows are in
the default one), names ``deliveries``; so does a statement whose partition is dropped
meanwhile (:meth:`DayPartitions.forget`).

Every index of ``deliveries`` holds the id, and on a near-empty partition reading one of
them whole costs the planner as little as probing the primary key: a statement naming a
partition is planned once only after the partition has grown (store/pg.py ``FEW_PAGES``),
and with its values until then, which is still cheaper than planning it against
``deliveries``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg

from clarion.domain.ids import time_millis
from clarion.store.retention import day_bound, partition_name

if TYPE_CHECKING:
    from clarion.store.pg import PgPool

# How long what the catalog showed of a day stands before it is looked at again (seconds):
# a partition detached by hand is a plain table, no longer where new rows go.
RECHECK = 60.0

_SHAPE = re.compile(r"dlv_[0-9a-hjkmnp-tv-z]{26}").fullmatch

# Ids whose order under a collation shows whether it orders delivery ids as bytes do
# (digits before letters, each character by itself: not "9" before "10").
_PROBES = (
    "dlv_9", "dlv_10", "dlv_09", "dlv_0a", "dlv_a0", "dlv_0z", "dlv_z0", "dlv_001",
    "dlv_01m8e6txyj", "dlv_01m8e6txyk", "dlv_1zz", "dlv_zz9",
)  # fmt: skip
_ORDERED = sorted(_PROBES)
_BOUNDS = (
    "SELECT (SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits AS i "
    "JOIN pg_class AS c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = to_regclass('deliveries') AND c.relname = $1 "
    "AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = i.inhparent)), "
    "(SELECT partcollation[0]::oid::int FROM pg_partitioned_table "
    "WHERE partrelid = to_regclass('deliveries')), "
    "(SELECT array_agg(t ORDER BY t) FROM unnest($2::text[]) AS t)"
)
# The partition key's collation: the database's default (ordered as the probes show), or
# "C" or "POSIX" (bytes).
_DEFAULT_COLLATION, _BYTE_COLLATIONS = 100, (950, 951)


@dataclass(frozen=True)
class _Day:
    table: str | None  # None: no partition of its own
    low: str
    high: str
    # When it is to be looked at again (the clock's seconds).
    until: float


def day_of(delivery_id: str) -> date | None:
    """The day (UTC) whose partition holds a delivery of this id, if it has the shape of
    one; else None."""
    if not _SHAPE(delivery_id):
        return None
    millis = time_millis(delivery_id[4:14])
    return datetime.fromtimestamp(millis / 1000, UTC).date()


def expected_bounds(day: date) -> str:
    """``pg_get_expr`` of the bounds store/retention.py gives ``day``'s partition."""
    low, high = day_bound(day), day_bound(day + timedelta(days=1))
    return f"FOR VALUES FROM ('{low}') TO ('{high}')"


class DayPartitions:
    """What this process knows of ``deliveries``' day partitions, through ``pg``."""

    def __init__(self, pg: PgPool, clock: Callable[[], float] = time.monotonic) -> None:
        self._pg = pg
        self._clock = clock
        self._days: dict[date, _Day] = {}
        self._locks: dict[date, asyncio.Lock] = {}

    async def of(self, ids: Sequence[str]) -> str | None:
        """The partition holding every delivery of ``ids`` when they are all of one day
        that has one (its name); else None."""
        if not ids:
            return None
        day = day_of(ids[0])
        if day is None:
            return None
        known = self._days.get(day)
        if known is None or self._clock() >= known.until:
            known = await self._look(day)
        if known.table is None:
            return None
        low, high, shaped = known.low, known.high, _SHAPE
        for one in ids:
            if not (low <= one < high and shaped(one)):
                return None
        return known.table

    def forget(self, table: str) -> None:
        """``table`` turned out to be gone: look at the catalog again before naming it."""
        for day, known in list(self._days.items()):
            if known.table == table:
                del self._days[day]

    async def _look(self, day: date) -> _Day:
        """Ask the catalog about ``day`` (one question at a time per day)."""
        lock = self._locks.setdefault(day, asyncio.Lock())
        async with lock:
            known = self._days.get(day)
            now = self._clock()
            if known is not None and now < known.until:
                return known  # asked meanwhile
            table = partition_name("deliveries", day)
            [(bounds, collation, ordered)] = await self._pg.fetch(_BOUNDS, table, list(_PROBES))
            as_bytes = collation in _BYTE_COLLATIONS or (
                collation == _DEFAULT_COLLATION and ordered == _ORDERED
            )
            ours = bounds == expected_bounds(day) and as_bytes
            known = _Day(
                table if ours else None,
                day_bound(day),
                day_bound(day + timedelta(days=1)),
                now + RECHECK,
            )
            self._days[day] = known
        return known


async def fetch(
    pg: PgPool, ids: Sequence[str], statement: Callable[[str], str], *args: Any
) -> list[asyncpg.Record]:
    """Run ``statement(table)`` for the delivery ``ids`` (and ``args``): ``table`` the day
    partition holding them all, else ``deliveries``."""
    table = await pg.days.of(ids)
    if table is not None:
        try:
            return await pg.fetch(statement(table), *args)
        except asyncpg.UndefinedTableError:
            pg.days.forget(table)  # dropped since (and its rows with it)
    return await pg.fetch(statement("deliveries"), *args)
