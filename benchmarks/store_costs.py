"""What the stores did for a run, per notification: counters read before and after it.

- Redis: ``INFO commandstats`` and ``INFO stats`` of each server given (every master of a
  cluster): commands (all, and the most called), the servers' own time in them, and the
  bytes read from and written to clients (replication not counted). The benchmark's own
  ``INFO`` calls are left out. On a Redis shared with others the counters are the whole
  server's.
- NATS: the monitoring endpoint's ``/varz`` (messages and bytes in and out, all clients)
  and ``/jsz`` (JetStream API requests).
- PostgreSQL: ``pg_stat_database`` of the run's database (commits, rollbacks, rows
  inserted, updated, deleted), the WAL written (``pg_current_wal_lsn()``, the whole
  server's) and, where ``pg_stat_statements`` is loaded (``shared_preload_libraries``),
  statements executed in the run's database and the most called. A backend reports its
  counts to the statistics at most once a second (and when it exits), so the last
  snapshot is read once every backend of the database has gone: after its clients stop.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp

TOP = 8  # the most called commands and statements listed
OWN_COMMANDS = ("info",)  # what the snapshots send Redis themselves


@dataclass
class Stores:
    """Where the counters are: Redis servers (host, port), a NATS monitoring URL, and a
    PostgreSQL server (an admin URL) with the run's database."""

    redis: list[tuple[str, int]]
    redis_scope: str = "server"
    nats_monitor: str | None = None
    postgres_admin: str | None = None
    database: str | None = None
    database_url: str | None = None  # the run's database, for pg_stat_statements


async def snapshot(stores: Stores) -> dict[str, Any]:
    shot: dict[str, Any] = {}
    if stores.redis:
        shot["redis"] = await redis_counters(stores.redis)
    if stores.nats_monitor:
        shot["nats"] = await nats_counters(stores.nats_monitor)
    if stores.postgres_admin and stores.database and stores.database_url:
        shot["postgres"] = await postgres_counters(
            stores.postgres_admin, stores.database, stores.database_url
        )
    return shot


def per_notification(
    stores: Stores, before: dict[str, Any], after: dict[str, Any], notifications: int
) -> dict[str, Any]:
    n = max(1, notifications)
    costs: dict[str, Any] = {"notifications": notifications}
    if "redis" in after:
        costs["redis"] = {
            "servers": len(stores.redis),
            "scope": stores.redis_scope,
            **redis_costs(before["redis"], after["redis"], n),
        }
    if "nats" in after:
        costs["nats"] = {
            f"{name}_per_notification": round((after["nats"][name] - before["nats"][name]) / n, 2)
            for name in after["nats"]
        }
    if "postgres" in after:
        costs["postgres"] = postgres_costs(before["postgres"], after["postgres"], n)
    return costs


# -- Redis ---------------------------------------------------------------------------------


async def redis_counters(servers: list[tuple[str, int]]) -> dict[str, Any]:
    import redis.asyncio as aredis

    calls: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for host, port in servers:
        async with aredis.Redis(host=host, port=port, socket_timeout=10) as client:
            stats = await client.info("stats")
            commands = await client.info("commandstats")
        for key, value in commands.items():
            name = key.removeprefix("cmdstat_")
            if name not in OWN_COMMANDS:
                calls[name] += int(value["calls"])
                totals["usec"] += int(value["usec"])
        totals["in_bytes"] += int(stats.get("total_net_input_bytes", 0))
        totals["out_bytes"] += int(stats.get("total_net_output_bytes", 0))
    return {"calls": calls, **totals}


def redis_costs(before: dict[str, Any], after: dict[str, Any], n: int) -> dict[str, Any]:
    calls: Counter[str] = after["calls"] - before["calls"]
    return {
        "commands_per_notification": round(calls.total() / n, 2),
        "top": {name: round(count / n, 3) for name, count in calls.most_common(TOP)},
        "server_us_per_notification": round((after["usec"] - before["usec"]) / n, 1),
        "in_bytes_per_notification": round((after["in_bytes"] - before["in_bytes"]) / n),
        "out_bytes_per_notification": round((after["out_bytes"] - before["out_bytes"]) / n),
    }


# -- NATS ----------------------------------------------------------------------------------


async def nats_counters(monitor: str) -> dict[str, int]:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(f"{monitor}/varz") as response:
            varz = await response.json()
        async with session.get(f"{monitor}/jsz") as response:
            jsz = await response.json()
    counters = {name: int(varz[name]) for name in ("in_msgs", "out_msgs", "in_bytes", "out_bytes")}
    counters["jetstream_api_requests"] = int(jsz["api"]["total"])
    return counters


# -- PostgreSQL ----------------------------------------------------------------------------

DATABASE_COUNTERS = {
    "commits": "xact_commit",
    "rollbacks": "xact_rollback",
    "rows_inserted": "tup_inserted",
    "rows_updated": "tup_updated",
    "rows_deleted": "tup_deleted",
}


async def postgres_counters(admin_url: str, database: str, database_url: str) -> dict[str, Any]:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        row = await conn.fetchrow(
            f"SELECT {', '.join(DATABASE_COUNTERS.values())}, pg_current_wal_lsn()::text AS lsn"
            " FROM pg_stat_database WHERE datname = $1",
            database,
        )
        preload = await conn.fetchval("SELECT current_setting('shared_preload_libraries')")
    finally:
        await conn.close()
    assert row is not None, f"no statistics for database {database}"
    counters: dict[str, Any] = {
        name: int(row[column]) for name, column in DATABASE_COUNTERS.items()
    }
    counters["lsn"] = row["lsn"]
    if "pg_stat_statements" in preload:
        counters["statements"] = await statement_counters(database_url)
    return counters


async def statement_counters(database_url: str) -> dict[int, tuple[int, float, str, float]]:
    """Per statement of the database: calls, milliseconds executing, text, milliseconds
    planning (0 unless ``pg_stat_statements.track_planning`` is on; the extension created
    in the database on the first call)."""
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        rows = await conn.fetch(
            "SELECT queryid, calls, total_exec_time, query, total_plan_time FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND query NOT LIKE '%pg_stat_statements%'"
        )
    finally:
        await conn.close()
    return {
        int(r["queryid"]): (
            int(r["calls"]),
            float(r["total_exec_time"]),
            r["query"],
            float(r["total_plan_time"]),
        )
        for r in rows
    }


def lsn(text: str) -> int:
    """A WAL position (``16/B374D848``) as a byte offset, as ``pg_wal_lsn_diff`` counts."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


async def backends_gone(admin_url: str, database: str, timeout: float) -> bool:
    """Wait (bounded) until no session but this one is connected to ``database``: every
    backend has then reported its counts."""
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            left = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", database
            )
            if left == 0:
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


def postgres_costs(before: dict[str, Any], after: dict[str, Any], n: int) -> dict[str, Any]:
    costs: dict[str, Any] = {
        f"{name}_per_notification": round((after[name] - before[name]) / n, 3)
        for name in DATABASE_COUNTERS
    }
    wal = lsn(after["lsn"]) - lsn(before["lsn"])
    costs["wal_bytes_per_notification"] = round(wal / n)
    if "statements" not in after:
        costs["statements"] = "not measured: pg_stat_statements is not in shared_preload_libraries"
        return costs
    earlier = before.get("statements", {})
    deltas = []
    for queryid, (calls, ms, text, plan_ms) in after["statements"].items():
        was_calls, was_ms, _, was_plan_ms = earlier.get(queryid, (0, 0.0, "", 0.0))
        if calls > was_calls:
            text = " ".join(text.split())[:160]
            deltas.append((calls - was_calls, ms - was_ms, text, plan_ms - was_plan_ms))

    def shown(calls: int, ms: float, text: str, plan_ms: float) -> dict[str, Any]:
        return {
            "query": text,
            "per_notification": round(calls / n, 4),
            "exec_ms": round(ms, 1),
            "plan_ms": round(plan_ms, 1),
        }

    deltas.sort(reverse=True)
    costs["statements"] = {
        "per_notification": round(sum(d[0] for d in deltas) / n, 3),
        "exec_ms_per_notification": round(sum(d[1] for d in deltas) / n, 4),
        # Planning is counted with pg_stat_statements.track_planning on (else 0).
        "plan_ms_per_notification": round(sum(d[3] for d in deltas) / n, 4),
        "top": [shown(*d) for d in deltas[:TOP]],
        # By time in the server (a statement's time includes what it waited for).
        "slowest": [shown(*d) for d in sorted(deltas, key=lambda d: -d[1])[:TOP]],
    }
    return costs
