"""The work of a webhook notification done without Clarion: Celery + Redis + PostgreSQL.

What a Python team builds by hand: a producer (their API) stores each notification in
PostgreSQL with its idempotency key and queues a Celery task; a task loads the
notification with its recipient and template, checks the recipient's preferences, renders
the template in Jinja's sandbox, POSTs the signed JSON body with an ``Idempotency-Key`` (no
redirects followed) and stores the outcome. Failed sends are retried with backoff; tasks
are acknowledged late, so a worker that dies loses nothing. The webhook sink, the way
delivery is counted and the CPU accounting are those of ``e2e.py``, so the figures compare.

    uv run --with 'celery[redis]' --with 'psycopg[binary,pool]' \\
        python benchmarks/celery_baseline.py --notifications 30000 --recipients 1000
    # 100 notifications per task, stored 1,000 at a time (the batch path's shape)
    uv run --with 'celery[redis]' --with 'psycopg[binary,pool]' \\
        python benchmarks/celery_baseline.py --notifications 30000 --per-task 100

Celery runs as ``celery worker --pool prefork`` (``--concurrency`` processes, twice the
cores by default: the tasks wait on the network), prefetch multiplier 4, late acks,
``reject_on_worker_lost``, results ignored, JSON messages. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SECRET = b"celery-baseline-signing-secret"
TEMPLATE_BODY = '{"n": {{ n }}}'

# -- the Celery side (imported by the worker processes) -----------------------------------

if os.environ.get("CELERY_BASELINE_DATABASE"):
    import httpx
    from celery import Celery
    from jinja2.sandbox import SandboxedEnvironment
    from psycopg_pool import ConnectionPool

    app = Celery("celery_baseline", broker=os.environ["CELERY_BASELINE_BROKER"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=4,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    _state: dict[str, Any] = {}

    _lock = threading.Lock()

    def _pool() -> ConnectionPool:
        with _lock:
            if "pool" not in _state:  # one per worker process, made after the fork
                _state["pool"] = ConnectionPool(
                    os.environ["CELERY_BASELINE_DATABASE"], min_size=1, max_size=16, open=True
                )
                _state["http"] = httpx.Client(timeout=10.0, follow_redirects=False)
                _state["jinja"] = SandboxedEnvironment(autoescape=False)
                _state["templates"] = {}
        pool: ConnectionPool = _state["pool"]
        return pool

    @app.task(
        bind=True,
        autoretry_for=(httpx.TransportError, RuntimeError),
        retry_backoff=True,
        max_retries=5,
    )
    def deliver(self: Any, ids: list[str]) -> None:
        pool = _pool()
        with pool.connection() as conn:
            rows = conn.execute(
                "SELECT n.id, n.data, n.idempotency_key, r.webhook_url, r.preferences, "
                "t.name, t.body FROM notifications n JOIN recipients r ON r.id = n.recipient_id "
                "JOIN templates t ON t.name = n.template "
                "WHERE n.id = ANY(%s) AND n.status = 'queued'",
                (ids,),
            ).fetchall()
        outcomes: list[tuple[str, str]] = []
        failed = False
        for nid, data, key, url, preferences, name, source in rows:
            if (preferences or {}).get("webhook") is False:
                outcomes.append(("suppressed", nid))
                continue
            template = _state["templates"].get(name)
            if template is None:
                template = _state["templates"][name] = _state["jinja"].from_string(source)
            body = template.render(**data).encode()
            headers = {
                "content-type": "application/json",
                "idempotency-key": key,
                "clarion-notification-id": nid,
                "clarion-signature": hmac.new(SECRET, body, hashlib.sha256).hexdigest(),
            }
            response = _state["http"].post(url, content=body, headers=headers)
            if response.status_code >= 500 or response.status_code == 429:
                failed = True
                continue
            outcomes.append(("sent" if response.status_code < 300 else "failed", nid))
        if outcomes:
            with pool.connection() as conn:
                conn.cursor().executemany(
                    "UPDATE notifications SET status = %s, attempts = attempts + 1, "
                    "updated_at = now() WHERE id = %s",
                    outcomes,
                )
        if failed:
            raise RuntimeError("a receiver answered 5xx or 429: retried")


# -- the benchmark --------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE recipients (id text PRIMARY KEY, webhook_url text NOT NULL, preferences jsonb);
CREATE TABLE templates (name text PRIMARY KEY, body text NOT NULL);
CREATE TABLE notifications (
    id text PRIMARY KEY,
    recipient_id text NOT NULL REFERENCES recipients (id),
    template text NOT NULL REFERENCES templates (name),
    data jsonb NOT NULL,
    idempotency_key text NOT NULL UNIQUE,
    status text NOT NULL DEFAULT 'queued',
    attempts int NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notifications", "-m", type=int, default=30_000)
    parser.add_argument("--recipients", "-n", type=int, default=1000)
    parser.add_argument("--per-task", type=int, default=1, help="notifications per task")
    parser.add_argument("--store-batch", type=int, default=None, help="rows per INSERT")
    parser.add_argument("--concurrency", type=int, default=2 * (os.cpu_count() or 1))
    parser.add_argument("--pool", choices=["prefork", "threads"], default="prefork")
    parser.add_argument("--producers", type=int, default=8, help="threads storing and queuing")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    return parser.parse_args()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import psycopg

    import e2e

    store_batch = args.store_batch or (1 if args.per_task == 1 else 1000)
    database = f"celery_bench_{secrets.token_hex(4)}"
    e2e.claim_redis(args.redis_url)
    await e2e.create_database(args.postgres_url, database)
    db_url = e2e.with_database(args.postgres_url, database)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"celery-baseline-{secrets.token_hex(4)}"
    tmp.mkdir()
    children: list[subprocess.Popen[bytes]] = []
    try:
        records = tmp / "received.tsv"
        sink = spawn([sys.executable, str(HERE / "e2e.py"), "--sink-records", str(records)])
        children.append(sink)
        assert sink.stdout is not None
        ports = json.loads(sink.stdout.readline())
        control = e2e.SinkControl(ports["control"])
        sink_url = f"http://127.0.0.1:{ports['port']}"
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(SCHEMA)
            conn.cursor().executemany(
                "INSERT INTO recipients (id, webhook_url, preferences) VALUES (%s, %s, %s)",
                [
                    (f"r{i}", f"{sink_url}/r{i}", json.dumps({"sms": False}))
                    for i in range(args.recipients)
                ],
            )
            conn.execute(
                "INSERT INTO templates (name, body) VALUES ('bench', %s)", (TEMPLATE_BODY,)
            )
        env = dict(
            os.environ,
            CELERY_BASELINE_DATABASE=db_url,
            CELERY_BASELINE_BROKER=args.redis_url,
        )
        command = [sys.executable, "-m", "celery", "-A", "celery_baseline", "worker"]
        command += ["--pool", args.pool, "--concurrency", str(args.concurrency)]
        command += ["--loglevel", "WARNING", "--without-gossip", "--without-mingle"]
        worker = spawn(command, env=env, log=tmp / "worker.log")
        children.append(worker)
        os.environ.update(env)
        from celery_baseline import deliver  # the producer's side of the same app

        await asyncio.sleep(5)  # the worker's processes start and connect
        if worker.poll() is not None:
            raise RuntimeError((tmp / "worker.log").read_text()[-4000:])
        e2e.log(f"sending {args.notifications} notifications")
        roles = {sink.pid: "sink", os.getpid(): "loadgen"}
        before = cpu_times(roles, worker.pid, database, args.redis_url)
        accepted_at, started = produce(args, db_url, store_batch, deliver)
        accept_span = max(accepted_at.values()) - started
        e2e.log(f"accepted {len(accepted_at)} in {accept_span:.1f}s")
        deadline = time.monotonic() + args.timeout
        while (await control.ask("stats"))["distinct"] < args.notifications:
            if time.monotonic() > deadline:
                raise RuntimeError("not everything was delivered in time")
            await asyncio.sleep(0.5)
        # The producer, the team's API, runs in this process: only the sink is outside.
        cpu = e2e.cpu_used(
            before,
            cpu_times(roles, worker.pid, database, args.redis_url),
            args.notifications,
            outside=("sink",),
        )
        await asyncio.sleep(2)  # late repeats count as duplicates
        await control.ask("dump")
        control.close()
        received = e2e.read_records(records)
    finally:
        for child in reversed(children):  # the worker before the sink it sends to
            child.terminate()
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
        await e2e.drop_database(args.postgres_url, database)
        e2e.flush_redis(args.redis_url)
    first: dict[str, float] = {}
    for nid, _key, at in received:
        first.setdefault(nid, at)
    times = sorted(first.values())
    latencies = sorted(first[n] - accepted_at[n] for n in first if n in accepted_at)
    return {
        "baseline": "celery",
        "notifications": args.notifications,
        "recipients": args.recipients,
        "per_task": args.per_task,
        "store_batch": store_batch,
        "celery_pool": args.pool,
        "celery_concurrency": args.concurrency,
        "producers": args.producers,
        "accepted_per_s": round(args.notifications / accept_span, 1),
        "delivered": len(first),
        "delivered_per_s": round(len(first) / (times[-1] - started), 1),
        "sustained_delivered_per_s": round(e2e.sustained(times, 0.1, 0.9), 1),
        "latency_ms": {
            q: round(1000 * e2e.percentile(latencies, v), 1)
            for q, v in (("p50", 0.5), ("p99", 0.99))
        },
        "duplicates": len(received) - len(first),
        "cpu": cpu,
        "machine": e2e.machine(),
        "command": "python benchmarks/celery_baseline.py " + " ".join(sys.argv[1:]),
    }


def spawn(
    command: list[str], env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """A child process: its stdout piped back, or written to ``log`` with its stderr."""
    if log is None:
        return subprocess.Popen(command, stdout=subprocess.PIPE, env=env, cwd=HERE)
    return subprocess.Popen(
        command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=HERE
    )


def produce(
    args: argparse.Namespace, db_url: str, store_batch: int, deliver: Any
) -> tuple[dict[str, float], float]:
    """The team's API: store each notification (its key unique), then queue its task."""
    import psycopg

    run = secrets.token_hex(4)
    accepted_at: dict[str, float] = {}
    starts = list(range(0, args.notifications, store_batch))

    def producer(share: list[int]) -> None:
        with psycopg.connect(db_url, autocommit=True) as conn:
            for start in share:
                rows = [
                    (f"{run}-{i}", f"r{i % args.recipients}", json.dumps({"n": i}), f"{run}-k{i}")
                    for i in range(start, min(start + store_batch, args.notifications))
                ]
                with conn.transaction():
                    conn.cursor().executemany(
                        "INSERT INTO notifications (id, recipient_id, template, data, "
                        "idempotency_key) VALUES (%s, %s, 'bench', %s, %s) "
                        "ON CONFLICT (idempotency_key) DO NOTHING",
                        rows,
                    )
                ids = [row[0] for row in rows]
                for part in range(0, len(ids), args.per_task):
                    deliver.delay(ids[part : part + args.per_task])
                now = time.time()
                for nid in ids:
                    accepted_at[nid] = now

    started = time.time()
    # Several request handlers at once, as the team's API would run (threads: the work is
    # waiting on PostgreSQL and Redis).
    with ThreadPoolExecutor(args.producers) as pool:
        list(pool.map(producer, [starts[i :: args.producers] for i in range(args.producers)]))
    return accepted_at, started


def cpu_times(
    roles: dict[int, str], worker: int, database: str, redis_url: str
) -> dict[tuple[str, int], float]:
    """As e2e.py counts it: the Celery processes (the worker and its children), the
    database's PostgreSQL backends, Redis, the sink and this process."""
    import e2e

    found = dict(roles)
    found[worker] = "celery"
    redis_port = redis_url.rsplit(":", 1)[1].split("/")[0]
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) in found:
            continue
        command = e2e.read_text(f"/proc/{pid}/cmdline").replace("\0", " ")
        if e2e.parent_pid(int(pid)) == worker:
            found[int(pid)] = "celery"
        elif command.startswith("redis-server") and f":{redis_port}" in command:
            found[int(pid)] = "redis"
        elif command.startswith("postgres") and database in command:
            found[int(pid)] = "postgres"
    times = {(role, pid): e2e.process_cpu(pid) for pid, role in found.items()}
    fields = e2e.read_text("/proc/stat").split("\n", 1)[0].split()[1:9]
    jiffies = [int(f) for f in fields]
    times[("machine", 0)] = (sum(jiffies) - jiffies[3] - jiffies[4]) / os.sysconf("SC_CLK_TCK")
    times[("wall", 0)] = time.monotonic()
    return times


def main() -> None:
    args = parse_args()
    sys.path.insert(0, str(HERE))
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
