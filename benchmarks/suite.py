"""Every path of docs/performance.md's current figures, and the Celery baseline, in one run.

Runs each benchmark of the table in turn, ``--rounds`` times (the order of the runs turns
round from one round to the next, so a slow minute does not always fall on the same run),
and prints one JSON object: for each run its figures in every round and their medians,
the Clarion paths' ratios to the Celery baseline of the same run, and how idle the machine
was outside the runs' own processes.

    uv run python benchmarks/suite.py                      # the table of docs/performance.md
    uv run python benchmarks/suite.py --before ../before   # each Clarion run also from a
                                                           # checkout of the code before a change,
                                                           # alternating, with after/before ratios
    uv run python benchmarks/suite.py --only procs-1x1,procs-2x2,procs-3x3   # more processes
                                                           # on a Redis Cluster
    uv run python benchmarks/suite.py --only redis-batch,cluster-batch,nats-batch  # brokers
    uv run python benchmarks/suite.py --only batch --e2e-arg=--private-postgres   # a stock
                                                           # PostgreSQL of its own (autovacuum on)

``--before`` names another checkout of Clarion with its environment set up
(``uv sync --all-extras`` in it); its benchmarks run from there, in four rounds unless told
otherwise: the code before goes first in even rounds and after first in odd ones, and the
second run of a pair is often the cheaper, so the rounds must be even for each side to go
first as often. Celery runs with
``uv run --with 'celery[redis]' --with 'psycopg[binary,pool]'`` (fetched on first use).
Each run is a separate process that prints one JSON object; ``--keep DIR`` writes each of
them to DIR as well.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CELERY = ["uv", "run", "--with", "celery[redis]", "--with", "psycopg[binary,pool]", "python"]
# name -> (arguments of benchmarks/e2e.py or celery_baseline.py, Celery or not)
RUNS: dict[str, tuple[list[str], bool]] = {
    "batch": (
        ["e2e.py", "--config", "postgres-redis", "--notifications", "100000", "--recipients",
         "1000", "--workers", "2"],
        False,
    ),
    "single": (
        ["e2e.py", "--config", "postgres-redis", "--mode", "single", "--concurrency", "32",
         "--notifications", "30000", "--recipients", "1000", "--workers", "2"],
        False,
    ),
    "paced": (
        ["e2e.py", "--config", "postgres-redis", "--mode", "single", "--rate", "1000",
         "--concurrency", "64", "--notifications", "30000", "--recipients", "1000",
         "--workers", "2"],
        False,
    ),
    "embedded": (
        ["e2e.py", "--config", "embedded", "--notifications", "30000", "--recipients", "1000"],
        False,
    ),
    "celery-batch": (
        ["celery_baseline.py", "--notifications", "30000", "--recipients", "1000",
         "--per-task", "100"],
        True,
    ),
    "celery-single": (
        ["celery_baseline.py", "--notifications", "6000", "--recipients", "1000"],
        True,
    ),
    # Past one Redis (docs/operations.md, "Redis Cluster" and "NATS JetStream"): the batch
    # path on each broker, and K API processes x M workers on a Redis Cluster.
    "redis-batch": (
        ["e2e.py", "--config", "postgres-redis", "--broker", "redis", "--notifications",
         "60000", "--recipients", "1000", "--workers", "2"],
        False,
    ),
    "cluster-batch": (
        ["e2e.py", "--config", "postgres-redis", "--broker", "redis-cluster",
         "--notifications", "60000", "--recipients", "1000", "--workers", "2"],
        False,
    ),
    "nats-batch": (
        ["e2e.py", "--config", "postgres-redis", "--broker", "nats", "--notifications",
         "60000", "--recipients", "1000", "--workers", "2"],
        False,
    ),
    **{
        f"procs-{k}x{k}": (
            ["e2e.py", "--config", "postgres-redis", "--broker", "redis-cluster", "--apis",
             str(k), "--workers", str(k), "--notifications", "60000", "--recipients", "1000"],
            False,
        )
        for k in (1, 2, 3)
    },
}  # fmt: skip
# What runs without --only: the table of docs/performance.md.
DEFAULT_RUNS = ["batch", "single", "paced", "embedded", "celery-batch", "celery-single"]
# A Clarion path and the Celery run that does the same work the way a team would by hand.
AGAINST_CELERY = {"batch": "celery-batch", "single": "celery-single"}
FIGURES: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "delivered_per_s": lambda r: r.get("delivered_per_s"),
    "sustained_delivered_per_s": lambda r: r.get("sustained_delivered_per_s"),
    "cpu_ms_per_notification": lambda r: r.get("cpu", {}).get("ms_per_notification"),
    # Clarion and its stores only: the acceptance figure (no load generator, no sink).
    "system_cpu_ms_per_notification": lambda r: r.get("cpu", {}).get("system_ms_per_notification"),
    "worker_ms_per_notification": lambda r: _role_ms(r, "worker"),
    "api_ms_per_notification": lambda r: _role_ms(r, "api"),
    "postgres_ms_per_notification": lambda r: _role_ms(r, "postgres"),
    "latency_p50_ms": lambda r: r.get("latency_ms", {}).get("p50"),
    "latency_p99_ms": lambda r: r.get("latency_ms", {}).get("p99"),
    "api_p99_ms": lambda r: r.get("api_latency_ms", {}).get("p99"),
    "machine_busy_pct": lambda r: r.get("cpu", {}).get("machine_busy_pct"),
    "other_cpu_s": lambda r: r.get("cpu", {}).get("other_s"),
    "redis_commands_per_notification": lambda r: (
        (r.get("costs") or {}).get("redis", {}).get("commands_per_notification")
    ),
    "pg_wal_bytes_per_notification": lambda r: (
        (r.get("costs") or {}).get("postgres", {}).get("wal_bytes_per_notification")
    ),
}


def _role_ms(result: dict[str, Any], role: str) -> float | None:
    """CPU milliseconds per notification of one role's processes (all of them together)."""
    seconds = result.get("cpu", {}).get("seconds", {}).get(role)
    count = result.get("notifications")
    if seconds is None or not count:
        return None
    return round(1000 * seconds / count, 3)


def run_one(
    name: str, checkout: Path, keep: Path | None, label: str, extra: list[str]
) -> dict[str, Any]:
    arguments, celery = RUNS[name]
    if not celery and arguments[0] == "e2e.py":
        arguments = [*arguments, *extra]
    script = str(checkout / "benchmarks" / arguments[0])
    if celery:
        command = [*CELERY, script, *arguments[1:]]
    else:
        command = ["uv", "run", "--directory", str(checkout), "python", script, *arguments[1:]]
    print(f"[suite] {label} {name}: {' '.join(arguments)}", file=sys.stderr, flush=True)
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if keep is not None:
        stamp = time.strftime("%H%M%S")
        (keep / f"{stamp}-{label}-{name}.json").write_text(json.dumps(result, indent=1))
    return result


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for figure, read in FIGURES.items():
        values = [v for v in (read(r) for r in results) if v is not None]
        if values:
            out[figure] = {"median": round(statistics.median(values), 3), "runs": values}
    out["delivered_all_once"] = all(
        r.get("duplicates") == 0 and r.get("delivered") == r.get("notifications") for r in results
    )
    return out


def median(block: dict[str, Any], name: str, figure: str) -> float | None:
    value = block.get(name, {}).get(figure, {}).get("median")
    return float(value) if value is not None else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def idle_share(before: list[int], after: list[int]) -> float:
    busy = [a - b for a, b in zip(after, before, strict=True)]
    return round(100 * (busy[3] + busy[4]) / max(1, sum(busy)), 1)


def jiffies() -> list[int]:
    with open("/proc/stat") as stat:
        return [int(v) for v in stat.readline().split()[1:]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=int, help="3 by default; with --before 4, and an even number"
    )
    parser.add_argument(
        "--only", default=",".join(DEFAULT_RUNS), help=f"runs, comma-separated: {', '.join(RUNS)}"
    )
    parser.add_argument("--before", type=Path, help="a checkout of the code before a change")
    parser.add_argument("--keep", type=Path, help="a folder for each run's JSON")
    parser.add_argument(
        "--e2e-arg",
        action="append",
        default=[],
        help="an argument added to every e2e.py run, such as --e2e-arg=--private-postgres",
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(RUNS)
    if unknown:
        parser.error(f"unknown runs: {sorted(unknown)}; runs: {', '.join(RUNS)}")
    if args.rounds is None:
        args.rounds = 4 if args.before else 3
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    if args.before and args.rounds % 2:
        parser.error(
            "--rounds with --before: an even number, so that the code before and after each"
            " go first in as many rounds"
        )
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    checkouts = {"after": HERE.parent}
    if args.before:
        checkouts = {"before": args.before.resolve(), "after": HERE.parent}
    results: dict[str, dict[str, list[dict[str, Any]]]] = {c: {} for c in checkouts}
    idle_start, started = jiffies(), time.time()
    for round_ in range(args.rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            labels = list(checkouts) if not RUNS[name][1] else ["after"]
            if round_ % 2:
                labels.reverse()
            for label in labels:
                result = run_one(name, checkouts[label], args.keep, label, args.e2e_arg)
                results[label].setdefault(name, []).append(result)
    blocks = {c: {n: summary(r) for n, r in runs.items()} for c, runs in results.items()}
    after = blocks["after"]
    report: dict[str, Any] = {
        "rounds": args.rounds,
        "minutes": round((time.time() - started) / 60, 1),
        "machine_idle_pct_over_the_suite": idle_share(idle_start, jiffies()),
        "medians": blocks,
        "against_celery": {
            f"{path}/{celery}": ratio(
                median(after, path, "delivered_per_s"), median(after, celery, "delivered_per_s")
            )
            for path, celery in AGAINST_CELERY.items()
            if path in after and celery in after
        },
    }
    if "before" in blocks:
        report["after_over_before"] = {
            name: {
                figure: ratio(median(after, name, figure), median(blocks["before"], name, figure))
                for figure in (
                    "delivered_per_s",
                    "cpu_ms_per_notification",
                    "system_cpu_ms_per_notification",
                )
            }
            for name in blocks["before"]
        }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
