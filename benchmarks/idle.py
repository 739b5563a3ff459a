"""A deployment at rest: how much CPU Clarion's processes use with nothing to do.

Starts Clarion as ``e2e.py`` does (``--config postgres-redis``: one ``clarion api``, K
``clarion worker``, one ``clarion scheduler``; ``--config embedded``: one ``clarion serve``),
creates the same fixtures, waits ``--settle`` seconds for start-up work to end, then reads
every process's CPU time over ``--seconds`` seconds in which nothing is sent. Reports, per
role and in total, the share of one core used (100% is one core busy the whole time), and
the same for PostgreSQL and Redis as their work for Clarion at rest.

Prints one JSON object to stdout; progress goes to stderr. Takes the machine-wide lock of
``e2e.py``.

    uv run python benchmarks/idle.py --seconds 60
    uv run python benchmarks/idle.py --config embedded --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

import aiohttp

import e2e

CLARION_ROLES = ("api", "worker", "urgent", "scheduler", "serve")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long it is watched")
    parser.add_argument("--settle", type=float, default=10.0, help="a pause before watching")
    args = e2e.parse_with(parser, argv)
    if args.seconds <= 0:
        parser.error("--seconds must be > 0")
    return args


class Idle(e2e.Bench):
    async def measure(
        self, session: aiohttp.ClientSession, sink: e2e.SinkControl
    ) -> dict[str, Any]:
        e2e.log(f"ready: settling {self.args.settle:.0f}s, then watching {self.args.seconds:.0f}s")
        await asyncio.sleep(self.args.settle)
        before = self.cpu_times()
        await asyncio.sleep(self.args.seconds)
        after = self.cpu_times()
        window = after[("wall", 0)] - before[("wall", 0)]
        busy = after[("machine", 0)] - before[("machine", 0)]
        per_role: dict[str, float] = {}
        per_process: dict[str, float] = {}
        for (role, pid), seconds in after.items():
            if role in ("wall", "machine", "loadgen", "sink"):
                continue
            used = seconds - before.get((role, pid), seconds)
            per_role[role] = per_role.get(role, 0.0) + used
            if role in CLARION_ROLES:
                per_process[f"{role}-{pid}"] = used
        clarion = sum(v for role, v in per_role.items() if role in CLARION_ROLES)

        def pct(seconds: float) -> float:
            return round(100 * seconds / window, 2)

        return {
            "config": self.args.config,
            "workers": self.args.workers if self.args.config == "postgres-redis" else None,
            "window_s": round(window, 1),
            "clarion_pct_of_a_core": pct(clarion),
            "per_role_pct_of_a_core": {role: pct(v) for role, v in sorted(per_role.items())},
            "per_process_pct_of_a_core": {p: pct(v) for p, v in sorted(per_process.items())},
            "machine_busy_pct": round(100 * busy / (window * len(os.sched_getaffinity(0))), 1),
            "machine": e2e.machine(),
            "command": " ".join(["python", *sys.argv]),
        }


def main() -> int:
    return e2e.run_locked(parse_args(), Idle)


if __name__ == "__main__":
    sys.exit(main())
