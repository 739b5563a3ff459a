"""What the sweeper's pass over new deliveries costs, per delivery.

The sweeper reads every delivery once, ``CLARION_SWEEP_AFTER`` after it was made, to watch
those still waiting (store/sweeps.py). An end-to-end run is over long before that, so its
CPU figures leave this out; this measures it on a database a run left behind
(``e2e.py --keep``): the pass is moved back to before the first delivery and run until it
has caught up, on one connection, whose server process's CPU is read from ``/proc``.

    uv run python benchmarks/e2e.py --config postgres-redis --notifications 100000 \\
        --recipients 1000 --workers 2 --keep          # prints the database's name
    uv run python benchmarks/sweep_pass.py --database-url \\
        postgresql+asyncpg://postgres@127.0.0.1:5432/clarion_bench_...

Prints one JSON object: the deliveries read, the passes, the wall time and the server's CPU,
in all and per delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import create_async_engine

from clarion.store import sweeps
from clarion.store.tables import deliveries
from clarion.store.tables import sweeps as sweeps_table


def cpu_seconds(pid: int) -> float:
    """A process's user and system CPU time (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(url: str) -> dict[str, object]:
    # One connection: every pass on the same server process.
    engine = create_async_engine(url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            first, count, waiting = (
                await conn.execute(
                    select(
                        func.min(deliveries.c.created_at),
                        func.count(),
                        func.count().filter(deliveries.c.status.in_(("queued", "scheduled"))),
                    )
                )
            ).one()
        if not count:
            raise SystemExit("no deliveries in this database")
        async with engine.begin() as conn:
            await conn.execute(update(deliveries).values(watched_since=None))
            await conn.execute(
                update(sweeps_table).values(swept_until=first - timedelta(seconds=1))
            )
        until = datetime.now(UTC) + timedelta(seconds=1)
        cpu, wall, passes = cpu_seconds(pid), time.perf_counter(), 1
        while await sweeps.watch_new(engine, datetime.now(UTC), until, sweeps.OVERLAP):
            passes += 1
        wall = time.perf_counter() - wall
        cpu = cpu_seconds(pid) - cpu
    finally:
        await engine.dispose()
    return {
        "deliveries": count,
        "waiting": waiting,
        "passes": passes,
        "wall_ms": round(wall * 1000, 1),
        "postgres_cpu_ms": round(cpu * 1000, 1),
        "wall_us_per_delivery": round(wall * 1e6 / count, 2),
        "postgres_us_per_delivery": round(cpu * 1e6 / count, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="a run's database (asyncpg URL)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.database_url))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
