"""Retention: how old deliveries, their events and finished notifications leave the database.

On PostgreSQL ``deliveries`` and ``delivery_events`` are partitioned by day (migration 0016).
A delivery's id starts with the time part of its notification's id (``domain/ids.py``), so
``PARTITION BY RANGE (id)`` puts every delivery in the partition of the day its
notification was accepted, and an event in the partition of its delivery. The hot
statements find a delivery by id, so they touch one partition, and a day leaves the
database as one ``DROP TABLE``: no row-by-row delete, no bloat. A default partition takes
what falls in no day: rows from before the migration (older ids carry no time), and a day
whose partition was never made (no scheduler ran). Its rows, and on SQLite every row,
leave by a batched ``DELETE`` on ``created_at`` instead.

The scheduler role runs :func:`maintain` every ``CLARION_RETENTION_INTERVAL`` seconds: it
makes the partitions of the next days, drops the days older than
``CLARION_RETENTION_DAYS`` and prunes the rest in batches. ``clarion archive`` does the
same for a cutoff given on the command line, exporting every row to compressed JSON lines
before it goes (docs/operations.md, "Retention").
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.domain.ids import time_prefix

log = logging.getLogger(__name__)

# Partitioned tables and the column they are partitioned on.
PARTITIONED = {"deliveries": "id", "delivery_events": "delivery_id"}
# Room left on each page of a day of deliveries: the outcome of an attempt is a new version
# of its row, written on the same page while there is room (migration 0038). Half: a batch
# of outcomes rewrites most rows of a page at once, each about as large as before. Measured
# on 100,000 webhook deliveries: 72% of the outcomes in place at 60, all of them at 50, the
# partition smaller at 50 (53 MB against 56: a row moved to another page leaves its old
# version behind until vacuum).
DELIVERIES_FILLFACTOR = 50
# Partitions made ahead of today, so that a scheduler down for a while costs nothing.
AHEAD_DAYS = 3
BATCH = 5000
# Maintenance waits at most this long for a table lock (partition DDL): a long query on the
# table must not make every writer queue behind the DDL's lock request.
LOCK_TIMEOUT = "2s"
_LOCK = 0x636C_7274  # "clrt": one maintenance at a time across processes
_DAY_NAME = re.compile(r"_p(\d{8})$")


def day_bound(day: date) -> str:
    """The smallest delivery id of a notification accepted on ``day`` (UTC)."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return "dlv_" + time_prefix(int(start.timestamp() * 1000))


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def create_partition_sql(table: str, day: date) -> list[str]:
    """Statements that make ``table``'s partition for ``day``, first moving out of the
    default partition any row that belongs to it (PostgreSQL refuses the partition while
    the default holds one)."""
    column = PARTITIONED[table]
    low, high = _quote(day_bound(day)), _quote(day_bound(day + timedelta(days=1)))
    name = partition_name(table, day)
    return [
        f"CREATE TEMP TABLE moving ON COMMIT DROP AS WITH m AS (DELETE FROM {table}_default "
        f"WHERE {column} >= {low} AND {column} < {high} RETURNING *) SELECT * FROM m",
        f"CREATE TABLE {name} PARTITION OF {table} FOR VALUES FROM ({low}) TO ({high})"
        + (f" WITH (fillfactor = {DELIVERIES_FILLFACTOR})" if table == "deliveries" else ""),
        f"INSERT INTO {table} SELECT * FROM moving",
        "DROP TABLE moving",
    ]


def is_partitioned(conn: Connection) -> bool:
    if conn.dialect.name != "postgresql":
        return False
    query = "SELECT relkind::text FROM pg_class WHERE oid = 'deliveries'::regclass"
    return bool(conn.execute(text(query)).scalar() == "p")


def partition_days(conn: Connection, table: str) -> dict[date, str]:
    """``table``'s day partitions: day → partition name."""
    rows = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = CAST(:table AS regclass)"
        ),
        {"table": table},
    ).scalars()
    days = {}
    for name in rows:
        if found := _DAY_NAME.search(name):
            days[datetime.strptime(found.group(1), "%Y%m%d").date()] = name
    return days


def ensure_partitions(conn: Connection, first: date, last: date) -> list[str]:
    """Make the missing day partitions from ``first`` to ``last``; their names."""
    made = []
    for table in PARTITIONED:
        have = partition_days(conn, table)
        day = first
        while day <= last:
            if day not in have:
                for statement in create_partition_sql(table, day):
                    conn.execute(text(statement))
                made.append(partition_name(table, day))
            day += timedelta(days=1)
    return made


def expired_partitions(conn: Connection, before: date) -> list[tuple[str, date]]:
    """Day partitions wholly before ``before`` (every notification of theirs older)."""
    found = []
    for table in PARTITIONED:
        for day, name in sorted(partition_days(conn, table).items()):
            if day + timedelta(days=1) <= before:
                found.append((name, day))
    return found


# Rows that leave one by one (in batches): the default partitions' on PostgreSQL, every
# row on SQLite, and finished notifications on both. Each query picks one batch of keys.
def _prunable(conn: Connection) -> list[tuple[str, str, str]]:
    """(table, key column, condition on a row older than :cutoff) to prune row by row."""
    pg = conn.dialect.name == "postgresql"
    partitioned = pg and is_partitioned(conn)
    # A notification is waiting (not planned, or scheduled for later) while its outbox row
    # is there; planned, cancelled or failed, it has none.
    notification = (
        "created_at < :cutoff "
        "AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.notification_id = notifications.id)"
    )
    if partitioned:
        return [
            ("deliveries_default", "id", "created_at < :cutoff"),
            ("delivery_events_default", "id", "created_at < :cutoff"),
            ("notifications", "id", notification),
        ]
    return [
        ("deliveries", "id", "created_at < :cutoff"),
        ("delivery_events", "id", "created_at < :cutoff"),
        ("notifications", "id", notification),
    ]


# State kept only while it matters, pruned with the rows above but not archived: an
# attempt's claim, once its lease ended before the cutoff (its delivery is older), and a
# workflow run that ended before it. No
# index: the oldest lie first in the table, and a batch stops when it is full.
_EXPIRED_STATE = [
    ("delivery_claims", "id", "leased_until < :cutoff"),
    # A workflow run that ended (none is due: it has no wake time) before the cutoff.
    ("workflow_runs", "id", "updated_at < :cutoff AND wake_at IS NULL"),
    # A digest window that should have closed before the cutoff: its carrier never came
    # back for it (its workflow or notification gone).
    ("workflow_digests", "run_id", "closes_at < :cutoff"),
    # Triggers collected in a window that is no more (its carrier ended without closing it).
    (
        "workflow_digest_events",
        "carrier_id",
        "created_at < :cutoff AND NOT EXISTS (SELECT 1 FROM workflow_digests w "
        "WHERE w.run_id = workflow_digest_events.carrier_id "
        "AND w.step = workflow_digest_events.step)",
    ),
]


def _delete_batch(conn: Connection, table: str, key: str, where: str, cutoff: datetime) -> int:
    result = conn.execute(
        text(
            f"DELETE FROM {table} WHERE {key} IN "
            f"(SELECT {key} FROM {table} WHERE {where} LIMIT {BATCH})"
        ),
        {"cutoff": cutoff},
    )
    return int(result.rowcount or 0)


@dataclass
class Report:
    """What one maintenance pass did."""

    made: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    deleted: dict[str, int] = field(default_factory=dict)

    @property
    def work(self) -> int:
        return len(self.made) + len(self.dropped) + sum(self.deleted.values())


def _locked(conn: Connection) -> bool:
    """Take the maintenance lock for this transaction (PostgreSQL); False if another
    process holds it."""
    if conn.dialect.name != "postgresql":
        return True
    conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    got = conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _LOCK}).scalar()
    return bool(got)


async def maintain(
    engine: AsyncEngine, now: datetime, days: float, max_batches: int = 20
) -> Report:
    """One maintenance pass at ``now``: partitions for today and the next days, and (when
    ``days`` > 0) everything older than ``days`` days dropped or pruned, at most
    ``max_batches`` batches of rows per table."""
    report = Report()
    today = now.astimezone(UTC).date()

    def partitions(conn: Connection) -> None:
        if not is_partitioned(conn) or not _locked(conn):
            return
        report.made = ensure_partitions(conn, today, today + timedelta(days=AHEAD_DAYS))

    async with engine.begin() as conn:
        await conn.run_sync(partitions)
    if days <= 0:
        return report
    cutoff = now - timedelta(days=days)

    def drop(conn: Connection) -> None:
        if not is_partitioned(conn) or not _locked(conn):
            return
        for name, _day in expired_partitions(conn, cutoff.astimezone(UTC).date()):
            conn.execute(text(f"DROP TABLE {name}"))
            report.dropped.append(name)

    async with engine.begin() as conn:
        await conn.run_sync(drop)
    async with engine.connect() as conn:
        targets = [*await conn.run_sync(_prunable), *_EXPIRED_STATE]
    for table, key, where in targets:
        for _ in range(max_batches):
            async with engine.begin() as conn:
                deleted = await conn.run_sync(_delete_batch, table, key, where, cutoff)
            report.deleted[table] = report.deleted.get(table, 0) + deleted
            if deleted < BATCH:
                break
    for name in report.dropped:
        log.info("retention: dropped partition %s (older than %s)", name, cutoff.isoformat())
    if any(report.deleted.values()):
        log.info("retention: deleted %s", report.deleted)
    return report


# ---- archive: export, then remove ------------------------------------------------------


class ArchiveFile:
    """Compressed JSON lines written to a temporary name and renamed once complete (and
    synced): a file under its final name holds every row it names."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._partial = path.with_name(path.name + ".partial")
        self._raw = open(self._partial, "wb")  # noqa: SIM115 (closed in close())
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb")
        self.rows = 0

    def write(self, row: dict[str, Any]) -> None:
        self._gz.write(orjson.dumps(row, default=str) + b"\n")
        self.rows += 1

    def flush(self) -> None:
        self._gz.flush()

    def close(self) -> None:
        self._gz.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(self._partial, self.path)

    def abandon(self) -> None:
        self._gz.close()
        self._raw.close()
        self._partial.unlink(missing_ok=True)


@dataclass
class Archived:
    # (file name or, with dry_run, table or partition name; rows)
    files: list[tuple[str, int]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def _page(
    conn: Connection, table: str, key: str, where: str, cutoff: datetime, after: str | None
) -> list[dict[str, Any]]:
    clause = f"({where}) AND {key} > :after" if after is not None else where
    query = f"SELECT * FROM {table} WHERE {clause} ORDER BY {key} LIMIT {BATCH}"
    return [
        dict(r) for r in conn.execute(text(query), {"cutoff": cutoff, "after": after}).mappings()
    ]


def _delete_keys(conn: Connection, table: str, key: str, keys: list[Any]) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"DELETE FROM {table} WHERE {key} = ANY(:keys)"), {"keys": keys})
    else:
        conn.execute(
            text(f"DELETE FROM {table} WHERE {key} IN (SELECT value FROM json_each(:keys))"),
            {"keys": orjson.dumps(keys).decode()},
        )


async def _count(engine: AsyncEngine, query: str, cutoff: datetime) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text(query), {"cutoff": cutoff})).scalar() or 0)


async def _archive_partition(engine: AsyncEngine, name: str, directory: Path) -> int:
    """Export a whole day partition, then drop it; the rows exported."""
    key = "id" if name.startswith("deliveries_") else "delivery_id, id"
    out = ArchiveFile(directory / f"{name}.jsonl.gz")
    try:
        async with engine.connect() as conn:
            result = await conn.stream(text(f"SELECT * FROM {name} ORDER BY {key}"))
            async for row in result.mappings():
                out.write(dict(row))
    except BaseException:
        out.abandon()
        raise
    out.close()
    async with engine.begin() as conn:
        await conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        await conn.execute(text(f"DROP TABLE {name}"))
    return out.rows


async def _archive_rows(
    engine: AsyncEngine, target: tuple[str, str, str], cutoff: datetime, path: Path
) -> int:
    """Export and delete a table's rows older than ``cutoff``, a batch per transaction;
    the rows exported (no file when there are none)."""
    table, key, where = target
    out: ArchiveFile | None = None
    after: Any = None
    try:
        while True:
            async with engine.begin() as conn:
                rows = await conn.run_sync(_page, table, key, where, cutoff, after)
                if not rows:
                    break
                if out is None:
                    out = ArchiveFile(path)
                for row in rows:
                    out.write(row)
                out.flush()
                keys = [row[key] for row in rows]
                await conn.run_sync(_delete_keys, table, key, keys)
            after = keys[-1]
            if len(rows) < BATCH:
                break
    finally:
        if out is not None:
            out.close()
    return out.rows if out is not None else 0


async def archive(
    engine: AsyncEngine, cutoff: datetime, directory: Path, stamp: str, dry_run: bool = False
) -> Archived:
    """Export to ``directory`` and remove every delivery, delivery event and finished
    notification older than ``cutoff``: a whole day partition (PostgreSQL) as one file and
    one ``DROP`` once the file is complete, other rows in batches, each deleted in the
    transaction that read it after it was written. A failure keeps what was written (a
    later run may export a row twice, never lose one). With ``dry_run``, only counts."""
    done = Archived()
    async with engine.connect() as conn:
        partitioned = await conn.run_sync(is_partitioned)
        day = cutoff.astimezone(UTC).date()
        expired = await conn.run_sync(expired_partitions, day) if partitioned else []
        targets = await conn.run_sync(_prunable)
    if dry_run:
        for name, _day in expired:
            done.files.append((name, await _count(engine, f"SELECT count(*) FROM {name}", cutoff)))
        for table, _key, where in targets:
            query = f"SELECT count(*) FROM {table} WHERE {where}"
            done.files.append((table, await _count(engine, query, cutoff)))
        return done
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    for name, _day in expired:
        rows = await _archive_partition(engine, name, directory)
        done.files.append((f"{name}.jsonl.gz", rows))
        done.dropped.append(name)
    for target in targets:
        path = directory / f"{target[0]}-before-{stamp}.jsonl.gz"
        if rows := await _archive_rows(engine, target, cutoff, path):
            done.files.append((path.name, rows))
    return done
