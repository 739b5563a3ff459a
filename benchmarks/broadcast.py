"""A broadcast to a topic on PostgreSQL + Redis: one POST, N subscribers.

Starts Clarion as in ``e2e.py --config postgres-redis`` (one ``clarion api``, K ``clarion
worker``, one ``clarion scheduler``, a fresh database and a flushed Redis database), creates
N recipients subscribed to one topic, then POSTs one notification to the topic and measures:

* time to all deliveries created: from the POST to the commit of the last chunk (the
  notification's ``planned_at``);
* time to all delivered: from the POST to the last delivery's ``sent_at``, every delivery
  ``sent``;
* the API and the pipeline staying responsive meanwhile: an in-app notification to a
  recipient outside the topic is POSTed every ``--probe-interval`` seconds while the
  broadcast drains, ``critical`` and ``high`` priority in turn; each one's latency is its
  delivery's ``sent_at`` minus the moment it was POSTed (p50, p99, max, per priority),
  and a critical one's split: to its planning (its delivery's ``created_at``), from there
  to the start of its in-app write (the inbox row's ``created_at``: stored, published,
  taken and claimed by then), and the write itself; with ``--probe-tenant other`` the
  probes are another tenant's (a tenant's urgent sends hold another's broadcast back for
  at most half of the time, its own's always: docs/architecture.md);
* peak resident memory (``VmHWM``) of every process started, and its resident memory just
  before the POST.

The N recipients are created before the measurement by the bulk CLI (``clarion recipients
import`` of a CSV written here), as an operator would load them; how long that took is
``recipients_import_s``. Their subscriptions go through ``PUT /v1/topics/{name}/subscribers``,
10,000 a call (``subscribe_s``).

Prints one JSON object to stdout; progress goes to stderr. Takes the same machine-wide lock
as ``e2e.py``, so the two never measure each other.

    uv run python benchmarks/broadcast.py --subscribers 50000
    uv run python benchmarks/broadcast.py --subscribers 1000000 --channel webhook --workers 2
    uv run python benchmarks/broadcast.py --subscribers 1000000 --channel webhook --workers 2 \
        --urgent-workers 1        # the urgent lanes in a worker of their own
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import asyncpg

import e2e

TOPIC = "everyone"
COUNT_EVERY = 5.0
PROBE = "probe"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    parser.add_argument("--subscribers", type=int, default=50_000)
    parser.add_argument("--channel", choices=["inapp", "webhook"], default="inapp")
    parser.add_argument("--priority", choices=["high", "normal", "low"], default="normal")
    parser.add_argument("--probe-interval", type=float, default=0.25)
    parser.add_argument("--probe-tenant", choices=["same", "other"], default="same")
    own, rest = parser.parse_known_args(argv)
    # Everything else (stores, workers, --keep, ...) as e2e.py takes it.
    args = e2e.parse_args(["--config", "postgres-redis", *rest])
    for name, value in vars(own).items():
        setattr(args, name, value)
    if args.subscribers < 1:
        parser.error("--subscribers must be >= 1")
    return args


class Broadcast(e2e.Bench):
    probe_key: str | None = None  # the probes' tenant's key, when it is another

    def create_tenant(self, env: dict[str, str], name: str = "bench") -> str:
        if self.args.probe_tenant == "other":
            self.probe_key = super().create_tenant(env, "bench-probes")
        return super().create_tenant(env, name)

    async def create_fixtures(self, session: aiohttp.ClientSession, sink_url: str) -> None:
        n = self.args.subscribers
        ids = [f"s{i:08d}" for i in range(n)]
        hooks = self.args.channel == "webhook"

        def extra(rid: str) -> dict[str, str]:
            return {"webhook_url": f"{sink_url}/{rid}"} if hooks else {}

        self.import_s = await self._import(ids, extra)
        log(f"{n} recipients imported by the bulk CLI in {self.import_s:.1f}s")
        await self.call(session, "PUT", f"/v1/recipients/{PROBE}", {}, self.probe_key)
        began = time.monotonic()
        for start in range(0, n, 10_000):
            body = {"recipient_ids": ids[start : start + 10_000]}
            reply = await self.call(session, "PUT", f"/v1/topics/{TOPIC}/subscribers", body)
            if reply["errors"]:
                raise RuntimeError(f"subscribing failed: {reply['errors'][:3]}")
        self.subscribe_s = time.monotonic() - began
        content: dict[str, Any] = (
            {"webhook": {"body": {"hello": "{{ recipient.id }}"}}}
            if self.args.channel == "webhook"
            else {"inapp": {"title": "News", "body": "Hello {{ recipient.id }}"}}
        )
        await self.call(session, "PUT", "/v1/templates/news", {"channels": content})
        alert = {"category": "security", "channels": {"inapp": {"title": "Alert", "body": "!"}}}
        await self.call(session, "PUT", "/v1/templates/alert", alert, self.probe_key)
        log(f"{n} recipients subscribed to {TOPIC!r}")

    async def _import(self, ids: list[str], extra: Any) -> float:
        """Create the recipients with ``clarion recipients import`` (a CSV of them); the
        seconds it took."""
        path = self.tmp / "recipients.csv"
        fields = ["id", *extra(ids[0])]
        with path.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(fields)
            writer.writerows([rid, *extra(rid).values()] for rid in ids)
        output = self.tmp / "import.log"
        command = [*e2e.clarion("recipients", "import", str(path)), "--url", self.base]
        began = time.monotonic()
        with output.open("w") as log_file:
            process = await asyncio.create_subprocess_exec(
                *command,
                env={**os.environ, "CLARION_API_KEY": self.key},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
            )
            code = await process.wait()
        took = time.monotonic() - began
        if code != 0:
            raise RuntimeError(f"the import exited {code}: {output.read_text()[-2000:]}")
        return took

    async def measure(
        self, session: aiohttp.ClientSession, sink: e2e.SinkControl
    ) -> dict[str, Any]:
        assert self.database is not None
        db = await asyncpg.connect(e2e.with_database(self.admin_url, self.database))
        try:
            return await self._measure(session, db)
        finally:
            await db.close()

    async def _measure(
        self, session: aiohttp.ClientSession, db: asyncpg.Connection
    ) -> dict[str, Any]:
        n = self.args.subscribers
        memory_before = e2e.memory_now(self.children)
        cpu_before = self.cpu_times()
        started = time.time()
        body = {"template": "news", "to": {"topic": TOPIC}, "priority": self.args.priority}
        nid = (await self.call(session, "POST", "/v1/notifications", body))["id"]
        probes: dict[str, float] = {}
        priorities: dict[str, str] = {}
        deadline = time.monotonic() + self.args.timeout
        sent = 0
        counted = time.monotonic()
        while sent < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {sent} of {n} deliveries sent in {self.args.timeout}s")
            self.children.check()
            posted = time.time()
            # Critical and high in turn: both are to keep going out during the broadcast.
            priority = "critical" if len(probes) % 2 == 0 else "high"
            probe = {"template": "alert", "to": {"recipient_id": PROBE}, "priority": priority}
            reply = await self.call(session, "POST", "/v1/notifications", probe, self.probe_key)
            pid = reply["id"]
            probes[pid], priorities[pid] = posted, priority
            await asyncio.sleep(self.args.probe_interval)
            # Counting a million rows costs the database a good part of a core: look at
            # most every COUNT_EVERY seconds (the end time is read from the rows anyway).
            if time.monotonic() - counted >= COUNT_EVERY:
                counted = time.monotonic()
                sent = await db.fetchval(
                    "SELECT count(*) FROM deliveries "
                    "WHERE notification_id = $1 AND status = 'sent'",
                    nid,
                )
        cpu = e2e.cpu_used(cpu_before, self.cpu_times(), n)
        memory = e2e.memory_used(self.children, memory_before)
        planned_at, last_sent, statuses = await self._broadcast_times(db, nid)
        found = await self._probe_latencies(db, probes)
        parts = [part for pid, part in found if priorities[pid] == "critical"]
        high = [part for pid, part in found if priorities[pid] == "high"]
        latencies = [sum(part) for part in parts]
        return {
            "config": "postgres-redis",
            "channel": self.args.channel,
            "subscribers": n,
            "workers": self.args.workers,
            "priority": self.args.priority,
            "probe_tenant": self.args.probe_tenant,
            "all_created_s": round(planned_at - started, 2),
            "all_delivered_s": round(last_sent - started, 2),
            "created_per_s": round(n / (planned_at - started)),
            "delivered_per_s": round(n / (last_sent - started)),
            "statuses": statuses,
            "critical_probes": len(latencies),
            "critical_p50_ms": round(1000 * e2e.percentile(latencies, 0.50), 1),
            "critical_p99_ms": round(1000 * e2e.percentile(latencies, 0.99), 1),
            "critical_max_ms": round(1000 * latencies[-1], 1),
            # Where a critical send's time went: to the start of its planning (intake, the
            # plan stream, a free planner), then to its send (planning, the lane, a free
            # worker slot, the provider), each p50 / p99 / max.
            "critical_to_planning_ms": _ms_p50_p99_max([p[0] for p in parts]),
            "critical_planning_to_sent_ms": _ms_p50_p99_max([p[1] + p[2] for p in parts]),
            # ... the second part split: to the start of its in-app write (stored,
            # published, taken and claimed), then the write itself to sent.
            "critical_planning_to_write_ms": _ms_p50_p99_max([p[1] for p in parts]),
            "critical_write_to_sent_ms": _ms_p50_p99_max([p[2] for p in parts]),
            # The slowest urgent sends: when each was posted (seconds after the broadcast's
            # POST), its priority and its latency (ms): tails at the start of a broadcast
            # and tails spread over it have different causes.
            "slowest": [
                [round(probes[pid] - started, 1), priorities[pid], round(1000 * sum(part))]
                for pid, part in sorted(found, key=lambda f: -sum(f[1]))[:5]
            ],
            "high_probes": len(high),
            "high_ms": _ms_p50_p99_max([sum(p) for p in high]),
            "high_to_planning_ms": _ms_p50_p99_max([p[0] for p in high]),
            "high_planning_to_sent_ms": _ms_p50_p99_max([p[1] + p[2] for p in high]),
            "recipients_import_s": round(self.import_s, 1),
            "subscribe_s": round(self.subscribe_s, 1),
            "memory": memory,
            "cpu": cpu,
            "machine": e2e.machine(),
            "postgres": self.postgres,
        }

    @staticmethod
    async def _broadcast_times(
        db: asyncpg.Connection, nid: str
    ) -> tuple[float, float, dict[str, int]]:
        planned_at = await db.fetchval("SELECT planned_at FROM notifications WHERE id = $1", nid)
        last_sent = await db.fetchval(
            "SELECT max(sent_at) FROM deliveries WHERE notification_id = $1", nid
        )
        rows = await db.fetch(
            "SELECT status, count(*) FROM deliveries WHERE notification_id = $1 GROUP BY status",
            nid,
        )
        return planned_at.timestamp(), last_sent.timestamp(), {r[0]: r[1] for r in rows}

    @staticmethod
    async def _probe_latencies(
        db: asyncpg.Connection, probes: dict[str, float]
    ) -> list[tuple[str, tuple[float, float, float]]]:
        """Per probe, its id with the seconds from its POST to the start of its planning
        (its delivery's ``created_at``), from there to the start of its in-app write (the
        inbox row's ``created_at``: stored, published, taken and claimed by then), and from
        there to its send (``sent_at``), by total; waits for the last ones."""
        deadline = time.monotonic() + 30
        while True:
            rows = await db.fetch(
                "SELECT d.notification_id, d.created_at, coalesce(i.created_at, d.sent_at), "
                "d.sent_at FROM deliveries AS d "
                "LEFT JOIN inbox_messages AS i ON i.delivery_id = d.id "
                "WHERE d.notification_id = ANY($1::text[]) AND d.status = 'sent'",
                list(probes),
            )
            if len(rows) == len(probes) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        if len(rows) < len(probes):
            raise RuntimeError(f"{len(probes) - len(rows)} critical probes were not sent")
        parts = [
            (
                row[0],
                (
                    row[1].timestamp() - probes[row[0]],
                    row[2].timestamp() - row[1].timestamp(),
                    row[3].timestamp() - row[2].timestamp(),
                ),
            )
            for row in rows
        ]
        return sorted(parts, key=lambda part: sum(part[1]))


def _ms_p50_p99_max(values: list[float]) -> list[float]:
    ordered = sorted(values)
    return [round(1000 * e2e.percentile(ordered, q), 1) for q in (0.5, 0.99, 1.0)]


def log(message: str) -> None:
    print(f"[broadcast {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> int:
    return e2e.run_locked(parse_args(), Broadcast)


if __name__ == "__main__":
    sys.exit(main())
