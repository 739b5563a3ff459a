"""What a batch's columns cost to send to PostgreSQL: as arrays, or packed into one text.

The hot statements send a batch as one parameter per column (store/bulk.py). This sends
the same batch (``--rows`` rows of ``--columns`` columns of ``--kind``: texts of 30
characters, or timestamps, NULLs among them) ``--repeats`` times both ways, in
alternation, through one asyncpg connection, and prints the CPU that the sending process
and the server's backend spent per element (from ``/proc``), with medians over
``--rounds``:

    uv run python benchmarks/array_params.py
    uv run python benchmarks/array_params.py --kind timestamptz
    uv run python benchmarks/array_params.py --kind epoch
    uv run python benchmarks/array_params.py --database-url postgresql://postgres@127.0.0.1/postgres

A timestamp travels packed as its ISO 8601 text (``datetime.isoformat``), which
PostgreSQL parses (``--kind timestamptz``), or as its microseconds since the Unix epoch,
which PostgreSQL adds to the epoch (``--kind epoch``); the
arrays way sends the same timestamps as a ``timestamptz[]``.

The query only splits and counts the rows (``unnest``): no table is read or written.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import string
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from clarion.store import packed

_TICK = os.sysconf("SC_CLK_TCK")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A timestamp sent as its microseconds since the Unix epoch, as PostgreSQL reads it back.
_FROM_MICROS = "('epoch'::timestamptz + {} * interval '1 microsecond')"


def _micros(values: list[Any]) -> list[str | None]:
    return [None if v is None else str((v - _EPOCH) // timedelta(microseconds=1)) for v in values]


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def _query(columns: int, kind: str, as_text: bool) -> str:
    if as_text:  # packed.param keeps timestamps as arrays; here both ways are measured
        cast = {"text": "", "timestamptz": "::timestamptz[]", "epoch": "::int8[]"}[kind]
        params = ", ".join(
            f"string_to_array(${i + 1}, E'\\x1f', E'\\x1e'){cast}" for i in range(columns)
        )
    else:
        params = ", ".join(f"${i + 1}::{_ARRAY_KIND[kind]}[]" for i in range(columns))
    names = ", ".join(f"c{i}" for i in range(columns))
    if kind == "text":
        return f"SELECT count(*) FROM unnest({params}) AS u({names})"
    # Timestamps are read as they would be stored: each value made a timestamptz.
    if as_text and kind == "epoch":
        values = ", ".join(f"max({_FROM_MICROS.format(f'c{i}')})" for i in range(columns))
    else:
        values = ", ".join(f"max(c{i})" for i in range(columns))
    return f"SELECT count(*), {values} FROM unnest({params}) AS u({names})"


_ARRAY_KIND = {"text": "text", "timestamptz": "timestamptz", "epoch": "timestamptz"}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--columns", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kind", choices=["text", "timestamptz", "epoch"], default="text")
    args = parser.parse_args()
    rng = random.Random(1)
    letters = string.ascii_letters

    start = datetime(2026, 11, 27, tzinfo=UTC)

    def value() -> Any:
        if rng.random() < 0.2:
            return None
        if args.kind != "text":
            return start + timedelta(microseconds=rng.randrange(10**11))
        return "".join(rng.choices(letters, k=30))

    def texts(column: list[Any]) -> str | None:
        if args.kind == "timestamptz":
            return packed.pack([None if v is None else v.isoformat() for v in column])
        if args.kind == "epoch":
            return packed.pack(_micros(column))
        return packed.pack(column)

    columns = [[value() for _ in range(args.rows)] for _ in range(args.columns)]
    conn = await asyncpg.connect(args.database_url)
    try:
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        found: dict[str, dict[str, list[float]]] = {
            way: {"client": [], "server": []} for way in ("arrays", "packed")
        }
        elements = args.rows * args.columns * args.repeats
        for _ in range(args.rounds):
            for way in ("arrays", "packed"):
                query = _query(args.columns, args.kind, way == "packed")
                first = columns if way == "arrays" else [texts(column) for column in columns]
                got = await conn.fetchrow(query, *first)
                assert got[0] == args.rows
                if args.kind != "text":
                    assert list(got[1:]) == [max(v for v in c if v is not None) for c in columns]
                client, server = _own_cpu(), _cpu(backend)
                for _ in range(args.repeats):
                    if way == "arrays":
                        await conn.fetchval(query, *columns)
                    else:
                        await conn.fetchval(query, *[texts(column) for column in columns])
                found[way]["client"].append((_own_cpu() - client) / elements * 1e6)
                found[way]["server"].append((_cpu(backend) - server) / elements * 1e6)
    finally:
        await conn.close()
    report = {
        "kind": args.kind,
        "rows": args.rows,
        "columns": args.columns,
        "repeats": args.repeats,
        "us_per_element": {
            way: {
                side: {"median": round(statistics.median(v), 3), "runs": [round(x, 3) for x in v]}
                for side, v in sides.items()
            }
            for way, sides in found.items()
        },
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
