"""A workflow sent to a topic: N runs wait in a delay at once, then resume and send.

Starts Clarion as ``e2e.py`` does (``--config postgres-redis``: one ``clarion api``, K
``clarion worker``, one ``clarion scheduler``; ``--config embedded``: one ``clarion serve``),
creates N recipients subscribed to one topic, a webhook template and a workflow of two
steps, ``delay`` (``--delay``) then a webhook ``channel`` step, and POSTs one notification
to the topic through the workflow. Measures:

* time to all runs stored and waiting (each run's delay starts when it is stored);
* how many runs waited at once (the most seen in the notification's ``run_totals``);
* resume lag: per run, when its channel step started minus when its delay ended (both
  from the run's own steps, ``GET /v1/notifications/{id}/runs``): p50, p99, max. A run
  woken ahead of its delay's end (``CLARION_WORKFLOW_WAKE_AHEAD``) starts its channel
  step at the end, its delivery made earlier and scheduled for it: 0;
* sent lag: per run, when its webhook arrived minus when its delay ended: p50, p99, max
  (what the receiving end sees: the resume, then the send, at the rate deliveries go);
* time to all delivered, and every run ``completed`` with its webhook sent once (with
  ``--resume-only`` no worker sends webhooks: the runs resume, their deliveries wait);
* CPU of the whole run (``cpu``) and of the resume alone (``resume_cpu``: from a second
  before the first run is due to all delivered), and what the stores did in that window
  (``resume_costs``; statements with ``--private-postgres --pg-statements``);
* peak resident memory (``VmHWM``) of every Clarion process, and its resident memory
  just before the send.

Prints one JSON object to stdout; progress goes to stderr. Takes the machine-wide lock of
``e2e.py``.

    uv run python benchmarks/workflow_runs.py --subscribers 100000 --delay 4m
    uv run python benchmarks/workflow_runs.py --config embedded --subscribers 10000 --delay 90s
    uv run python benchmarks/workflow_runs.py --subscribers 100000 --delay 4m --resume-only
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import aiohttp

import e2e
from clarion.domain.durations import duration_seconds
from clarion.domain.models import ALL_CHANNELS

TOPIC = "everyone"
LOOK_EVERY = 2.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--delay", default="4m", help="the workflow's delay (a duration)")
    parser.add_argument(
        "--resume-only",
        action="store_true",
        help="no webhook workers: the runs resume and their deliveries wait, unsent (the "
        "resume's own rate, without the sends competing for the cores)",
    )
    args = e2e.parse_with(parser, argv)
    if args.resume_only:
        if args.config != "postgres-redis":
            parser.error("--resume-only is for --config postgres-redis")
        args.worker_channels = ",".join(c for c in ALL_CHANNELS if c != "webhook")
    if args.subscribers < 1:
        parser.error("--subscribers must be >= 1")
    return args


class WorkflowRuns(e2e.Bench):
    async def create_fixtures(self, session: aiohttp.ClientSession, sink_url: str) -> None:
        n = self.args.subscribers
        ids = [f"s{i:08d}" for i in range(n)]
        gate = asyncio.Semaphore(4)

        async def people(start: int) -> None:
            body = {
                "recipients": [
                    {"id": rid, "webhook_url": f"{sink_url}/{rid}"}
                    for rid in ids[start : start + 1000]
                ]
            }
            async with gate:
                await self.call(session, "POST", "/v1/recipients/batch", body)

        await asyncio.gather(*(people(start) for start in range(0, n, 1000)))
        for start in range(0, n, 10_000):
            body = {"recipient_ids": ids[start : start + 10_000]}
            reply = await self.call(session, "PUT", f"/v1/topics/{TOPIC}/subscribers", body)
            if reply["errors"]:
                raise RuntimeError(f"subscribing failed: {reply['errors'][:3]}")
        hook = {"channels": {"webhook": {"body": {"hello": "{{ recipient.id }}"}}}}
        await self.call(session, "PUT", "/v1/templates/news", hook)
        steps = [
            {"id": "wait", "type": "delay", "duration": self.args.delay},
            {"id": "hook", "type": "channel", "channel": "webhook", "template": "news"},
        ]
        await self.call(session, "PUT", "/v1/workflows/later", {"name": "Later", "steps": steps})
        log(f"{n} recipients subscribed to {TOPIC!r}")

    async def measure(
        self, session: aiohttp.ClientSession, sink: e2e.SinkControl
    ) -> dict[str, Any]:
        n = self.args.subscribers
        before = e2e.memory_now(self.children)
        cpu_before = self.cpu_times()
        started = time.time()
        body = {"workflow": "later", "to": {"topic": TOPIC}}
        nid = (await self.call(session, "POST", "/v1/notifications", body))["id"]
        deadline = time.monotonic() + self.args.timeout
        most_waiting, all_waiting_at = 0, None
        # The resume's own window opens a little before the first run is due.
        resume_opens = started + duration_seconds(self.args.delay) - 1.0
        resume_before: dict[tuple[str, int], float] | None = None
        stores_before: dict[str, Any] = {}
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"not every run completed in {self.args.timeout}s")
            self.children.check()
            note = await self.call(session, "GET", f"/v1/notifications/{nid}", None)
            totals: dict[str, int] = note["run_totals"]
            waiting = totals.get("waiting", 0)
            most_waiting = max(most_waiting, waiting)
            if (
                all_waiting_at is None
                and sum(totals.values()) == n
                and waiting + totals.get("completed", 0) == n
                and totals.get("completed", 0) == 0
            ):
                all_waiting_at = time.time()
                log(f"all {n} runs waiting after {all_waiting_at - started:.1f}s")
            if resume_before is None and all_waiting_at is not None:
                await asyncio.sleep(max(0.0, resume_opens - time.time()))
                stores_before = await e2e.snapshot(self.stores) if self.stores else {}
                resume_before = self.cpu_times()
                log("the resume's window opens")
                continue
            sent = note["totals"].get("sent", 0)
            if totals.get("completed", 0) == n and (sent == n or self.args.resume_only):
                break
            await asyncio.sleep(LOOK_EVERY)
        if not self.args.resume_only:
            await self.wait_delivered(sink, n)
        await asyncio.sleep(self.args.settle)  # late repeats count as duplicates
        stats = await sink.ask("stats")
        cpu_after = self.cpu_times()
        cpu = e2e.cpu_used(cpu_before, dict(cpu_after), n)
        resume_cpu = (
            e2e.cpu_used(resume_before, dict(cpu_after), n) if resume_before is not None else None
        )
        memory = e2e.memory_used(self.children, before)
        arrived: dict[str, float] = {}
        if not self.args.resume_only:
            await sink.ask("dump")
            for _nid, key, at in e2e.read_records(self.tmp / "received.tsv"):
                arrived.setdefault(key, at)
        lags, last_sent, sent_lags = await self._lags(session, nid, arrived)
        ordered = sorted(lags)
        sent_ordered = sorted(sent_lags)
        costs = await self.costs(stores_before, n) if self.stores and stores_before else None
        return {
            "config": self.args.config,
            "subscribers": n,
            "delay": self.args.delay,
            "resume_only": self.args.resume_only,
            "workers": self.args.workers if self.args.config == "postgres-redis" else 0,
            "all_waiting_s": None if all_waiting_at is None else round(all_waiting_at - started, 2),
            "most_waiting_at_once": most_waiting,
            "resume_lag_s": {
                "p50": round(e2e.percentile(ordered, 0.5), 3),
                "p99": round(e2e.percentile(ordered, 0.99), 3),
                "max": round(ordered[-1], 3),
            },
            "sent_lag_s": {
                "p50": round(e2e.percentile(sent_ordered, 0.5), 3),
                "p99": round(e2e.percentile(sent_ordered, 0.99), 3),
                "max": round(sent_ordered[-1], 3),
            }
            if sent_ordered
            else None,
            # The last channel step's start; with --resume-only nothing is delivered.
            "all_resumed_s": round(last_sent - started, 2),
            # The last webhook's arrival.
            "all_delivered_s": round(max(arrived.values()) - started, 2) if arrived else None,
            "webhooks": stats,
            "memory": memory,
            "cpu": cpu,
            "resume_cpu": resume_cpu,
            "resume_costs": costs,
            "machine": e2e.machine(),
        }

    async def _lags(
        self, session: aiohttp.ClientSession, nid: str, arrived: dict[str, float]
    ) -> tuple[list[float], float, list[float]]:
        """Per run, seconds from its delay's end to its channel step's start; the latest
        of those starts; and per run whose webhook ``arrived`` (by delivery id), seconds
        from its delay's end to the webhook's arrival."""
        lags: list[float] = []
        sent_lags: list[float] = []
        cursor: str | None = None
        last = 0.0
        while True:
            path = f"/v1/notifications/{nid}/runs?limit=100" + (
                f"&cursor={cursor}" if cursor else ""
            )
            page = await self.call(session, "GET", path, None)
            for run in page["data"]:
                if run["status"] != "completed":
                    raise RuntimeError(f"run {run['id']} ended {run['status']}")
                wait, hook = run["steps"]
                until = datetime.fromisoformat(wait["until"]).timestamp()
                began = datetime.fromisoformat(hook["started_at"]).timestamp()
                lags.append(began - until)
                last = max(last, began)
                sent_lags += [arrived[d] - until for d in hook["delivery_ids"] if d in arrived]
            cursor = page["next_cursor"]
            if cursor is None:
                return lags, last, sent_lags


def log(message: str) -> None:
    print(f"[workflow_runs {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> int:
    return e2e.run_locked(parse_args(), WorkflowRuns)


if __name__ == "__main__":
    sys.exit(main())
