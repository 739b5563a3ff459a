"""Live inbox connections on one ``clarion api`` process, and accept→frame latency.

Starts a private Redis, then ``clarion api`` and ``clarion worker --channels inapp`` on a
fresh SQLite file (Redis as broker and live hub). Creates ``--connections`` recipients,
mints a recipient token for each and opens one WebSocket per recipient to the API process
(in steps, ``--step`` at a time), reading the API process's resident memory before and
after. Then sends in-app notifications at ``--rate`` per second for ``--seconds`` seconds,
each to a random connected recipient, in batches every 50 ms; each carries the time it was
sent, and the latency is from the send to the frame arriving at the client, split at the
message's ``created_at`` (stored by the worker) into send→stored and stored→frame. Each
message is numbered: a frame that never came is named, and the store is asked whether its
message was stored (PostgreSQL). Reports the CPU seconds of each process while sending.
Takes the machine-wide lock of ``e2e.py`` (``$TMPDIR/clarion-e2e.lock``). Prints one JSON
object; progress goes to stderr.

    uv run python benchmarks/inbox.py --connections 1000 --rate 1000 --seconds 10

The client runs on the same machine, in one process: on a small machine it competes with
the server for the CPU, so the figures are an upper bound of the server's own share.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import random
import resource
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from api_memory import rss_mib
from e2e import (
    STARTUP_TIMEOUT,
    Children,
    clarion,
    cpu_used,
    create_database,
    drop_database,
    free_port,
    log,
    machine,
    percentile,
    process_cpu,
    read_text,
    wait_for_lock,
    with_database,
)

TEMPLATE = {"channels": {"inapp": {"title": "bench", "body": "{{ t }}"}}}


def quantiles_ms(values: list[float]) -> list[float] | None:
    if not values:
        return None
    return [round(percentile(values, q) * 1000, 1) for q in (0.5, 0.99)]


def by_second(arrived: dict[int, tuple[float, float, float]], start: float) -> list[list[float]]:
    """Accept→frame latency p50, p99 and max (ms) of the messages sent in each second of
    the run: whether the slow ones cluster (a start, a pause) or spread."""
    seconds: dict[int, list[float]] = {}
    for at, to_stored, to_frame in arrived.values():
        seconds.setdefault(int(at - start), []).append(to_stored + to_frame)
    rows = []
    for second in sorted(seconds):
        values = sorted(seconds[second])
        rows.append([round(percentile(values, q) * 1000, 1) for q in (0.5, 0.99, 1.0)])
    return rows


def cpu_times(children: Children, database: str | None) -> dict[tuple[str, int], float]:
    """CPU seconds so far of each process of the run (PostgreSQL: the backends serving the
    run's database), and of the whole machine."""
    times = {(c.name, c.popen.pid): process_cpu(c.popen.pid) for c in children.items}
    for pid in os.listdir("/proc") if database else ():
        if pid.isdigit() and f" {database} " in read_text(f"/proc/{pid}/cmdline"):
            times[("postgres", int(pid))] = process_cpu(int(pid))
    times[("loadgen", os.getpid())] = process_cpu(os.getpid())
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    jiffies = [int(f) for f in fields]
    times[("machine", 0)] = (sum(jiffies) - jiffies[3] - jiffies[4]) / os.sysconf("SC_CLK_TCK")
    times[("wall", 0)] = time.monotonic()
    return times


async def stored_state(url: str, missing_to: list[str]) -> dict[str, Any]:
    """What the store holds for the run: deliveries by status, inbox messages, and how many
    of the recipients whose frames are missing have as many messages as were sent them."""
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        statuses = await conn.fetch(
            "SELECT status, attempts, count(*) AS n FROM deliveries GROUP BY 1, 2"
        )
        messages = await conn.fetchval("SELECT count(*) FROM inbox_messages")
        stored_for_missing = await conn.fetchval(
            "SELECT count(*) FROM inbox_messages WHERE recipient_id = ANY($1::text[])",
            sorted(set(missing_to)),
        )
    finally:
        await conn.close()
    return {
        "deliveries": {f"{r['status']}/{r['attempts']}": r["n"] for r in statuses},
        "inbox_messages": messages,
        "messages_of_recipients_missing_frames": stored_for_missing,
    }


def profile(directory: Path, children: Children, seconds: float) -> list[subprocess.Popen[bytes]]:
    """py-spy on the API process and the worker for the sending phase (collapsed stacks)."""
    directory.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(c.popen.pid),
                "--duration",
                str(round(seconds)),
                "--rate",
                "50",
                "--format",
                "raw",
                "--output",
                str(directory / f"{c.name}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for c in children.items
        if c.name in ("api", "worker")
    ]


def raise_file_limit() -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Client:
    """Every WebSocket of the benchmark, and the latencies their frames show."""

    def __init__(self) -> None:
        self.sockets: list[ClientConnection] = []
        self.latencies: list[float] = []
        # Per message number: (sent at, sent → stored, stored → frame) seconds.
        self.arrived: dict[int, tuple[float, float, float]] = {}
        self.readers: list[asyncio.Task[None]] = []
        self.closed = 0
        # Why they closed: the close code the server sent (None: no close frame came).
        self.close_codes: Counter[Any] = Counter()
        self.expected = -1
        self.all_arrived = asyncio.Event()

    async def open(self, url: str) -> None:
        # No pings from this side: 10,000 connections' keepalives would be load the
        # benchmark adds, and a late pong would close a connection here, not at the server.
        ws = await connect(url, open_timeout=60, max_queue=64, ping_interval=None)
        self.sockets.append(ws)
        self.readers.append(asyncio.create_task(self._read(ws)))

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for frame in ws:
                received = time.time()
                event = orjson.loads(frame)
                if event.get("type") == "message":
                    message = event["message"]
                    at, _, number = message["body"].partition(" ")
                    stored = datetime.fromisoformat(message["created_at"]).timestamp()
                    self.latencies.append(received - float(at))
                    self.arrived[int(number)] = (float(at), stored - float(at), received - stored)
                    if len(self.latencies) == self.expected:
                        self.all_arrived.set()
        except ConnectionClosed as exc:
            self.close_codes[exc.rcvd.code if exc.rcvd else None] += 1
        except Exception as exc:
            self.close_codes[type(exc).__name__] += 1
        self.closed += 1

    async def aclose(self) -> None:
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str, headers: dict[str, str]) -> None:
        self.session, self.base, self.headers = session, base, headers

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        for attempt in range(3):
            try:
                return await self._once(method, path, body)
            except aiohttp.ClientOSError:
                # A kept-alive connection the server closed as the request left: the
                # request was not sent.
                if attempt == 2:
                    raise
        return None

    async def _once(self, method: str, path: str, body: Any) -> Any:
        async with self.session.request(
            method, self.base + path, data=orjson.dumps(body), headers=self.headers
        ) as response:
            text = await response.read()
            if response.status >= 300:
                raise RuntimeError(f"{path}: HTTP {response.status}: {text[:300]!r}")
            return orjson.loads(text)


async def wait_ready(session: aiohttp.ClientSession, base: str, children: Children) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        children.check()
        try:
            async with session.get(f"{base}/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("clarion api did not start")
        await asyncio.sleep(0.2)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    limit = raise_file_limit()
    tmp = Path(tempfile.mkdtemp(prefix="clarion-inbox-"))
    children = Children(tmp)
    port, redis_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    children.start(
        "redis",
        ["redis-server", "--port", str(redis_port), "--save", "", "--dir", str(tmp)],
        dict(os.environ),
    )
    env = dict(os.environ)
    database = None
    database_url = f"sqlite+aiosqlite:///{tmp / 'clarion.db'}"
    if args.postgres_url:
        database = f"clarion_inbox_{os.getpid()}"
        await create_database(args.postgres_url, database)
        database_url = with_database(args.postgres_url, database, "postgresql+asyncpg")
        env.setdefault("CLARION_SECRET_KEY", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
    env.update(
        CLARION_DATABASE_URL=database_url,
        CLARION_BROKER_URL=f"redis://127.0.0.1:{redis_port}/0",
        CLARION_HTTP_HOST="127.0.0.1",
        CLARION_HTTP_PORT=str(port),
        CLARION_HTTP_MAX_CONNECTIONS=str(args.connections + 1000),
        CLARION_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "warning"),
    )
    client = Client()
    try:
        created = await asyncio.create_subprocess_exec(
            *clarion("tenants", "create", "bench"), env=env, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await created.communicate()
        key = out.decode().strip().splitlines()[-1]
        api = children.start("api", clarion("api"), env)
        children.start("worker", clarion("worker", "--channels", "inapp"), env)
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        timeout = aiohttp.ClientTimeout(total=300)
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            call = Api(session, base, headers).call
            await wait_ready(session, base, children)

            await call("PUT", "/v1/templates/bench", TEMPLATE)
            ids = [f"r{i}" for i in range(args.connections)]
            for start in range(0, len(ids), 1000):
                people = [{"id": rid} for rid in ids[start : start + 1000]]
                await call("POST", "/v1/recipients/batch", {"recipients": people})
            log(f"{len(ids)} recipients")
            tokens = await asyncio.gather(
                *(call("POST", f"/v1/recipients/{rid}/token") for rid in ids)
            )
            log("tokens minted")
            rss_before = rss_mib(api.popen.pid)
            ws_base = base.replace("http://", "ws://") + "/v1/inbox/ws?token="
            opened_at = time.monotonic()
            failed = 0
            for start in range(0, len(ids), args.step):
                results = await asyncio.gather(
                    *(client.open(ws_base + t["token"]) for t in tokens[start : start + args.step]),
                    return_exceptions=True,
                )
                failed += sum(isinstance(r, BaseException) for r in results)
                log(f"{len(client.sockets)} open, {failed} failed")
            open_seconds = time.monotonic() - opened_at
            # The client's own 10,000 connections are long-lived objects: left to the
            # collector, a full collection stopped this process for over a second, and
            # every frame waiting meanwhile counted that pause as latency.
            # Nor a collection while it measures: it lasts a minute at most.
            gc.collect()
            gc.freeze()
            gc.disable()
            # Let the connections' opening counts arrive before measuring memory.
            await asyncio.sleep(2)
            rss_open = rss_mib(api.popen.pid)
            connected = [ids[i] for i in range(len(client.sockets))]

            sent = 0
            to: list[str] = []
            posts: list[asyncio.Task[Any]] = []
            profilers = profile(args.profile, children, args.seconds + 5) if args.profile else []
            cpu_before = cpu_times(children, database)
            log(f"sending {args.rate}/s for {args.seconds:g}s")
            started = time.monotonic()
            started_wall = time.time()
            period = 0.05
            per_batch = max(1, round(args.rate * period))
            while time.monotonic() - started < args.seconds:
                tick = time.monotonic()
                now = time.time()
                batch = []
                for _ in range(per_batch):
                    to.append(random.choice(connected))
                    batch.append(
                        {
                            "template": "bench",
                            "to": {"recipient_id": to[-1]},
                            "data": {"t": f"{now:.6f} {len(to) - 1}"},
                        }
                    )
                posts.append(
                    asyncio.create_task(
                        call("POST", "/v1/notifications/batch", {"notifications": batch})
                    )
                )
                sent += per_batch
                await asyncio.sleep(max(0.0, period - (time.monotonic() - tick)))
            await asyncio.gather(*posts)
            log(f"{sent} sent")
            # Frames still on their way.
            client.expected = sent
            if len(client.latencies) >= sent:
                client.all_arrived.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.all_arrived.wait(), 30)
            cpu = cpu_used(cpu_before, cpu_times(children, database), sent)
            for profiler in profilers:
                profiler.wait()
            latencies = sorted(client.latencies)
            missing = [n for n in range(sent) if n not in client.arrived]
            stored_s = sorted(a[1] for a in client.arrived.values())
            pushed_s = sorted(a[2] for a in client.arrived.values())
            store_check = None
            if database is not None:
                store_check = await stored_state(database_url, [to[n] for n in missing])
            return {
                "machine": machine(),
                "store": "postgresql" if database is not None else "sqlite",
                "file_limit": limit,
                "connections_asked": args.connections,
                "connections_open": len(client.sockets),
                "connections_failed": failed,
                "connections_closed_by_server": client.closed,
                "close_codes": {str(k): v for k, v in client.close_codes.items()},
                "open_seconds": round(open_seconds, 1),
                "api_rss_mib_before": round(rss_before, 1),
                "api_rss_mib_open": round(rss_open, 1),
                "kib_per_connection": round(
                    (rss_open - rss_before) * 1024 / max(1, len(client.sockets)), 1
                ),
                "rate_per_second": args.rate,
                "seconds": args.seconds,
                "sent": sent,
                "frames": len(latencies),
                "latency_ms_p50": round(percentile(latencies, 0.5) * 1000, 1)
                if latencies
                else None,
                "latency_ms_p99": round(percentile(latencies, 0.99) * 1000, 1)
                if latencies
                else None,
                "latency_ms_max": round(latencies[-1] * 1000, 1) if latencies else None,
                "send_to_stored_ms_p50_p99": quantiles_ms(stored_s),
                "stored_to_frame_ms_p50_p99": quantiles_ms(pushed_s),
                "latency_ms_p50_p99_max_by_second": by_second(client.arrived, started_wall),
                "missing": len(missing),
                "missing_recipients": len({to[n] for n in missing}),
                "store_check": store_check,
                "cpu": cpu,
            }
    finally:
        gc.enable()
        await client.aclose()
        children.stop_all()
        if database is not None:
            await drop_database(args.postgres_url, database)
        if args.keep:
            log(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--step", type=int, default=250)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--keep", action="store_true", help="keep the processes' logs")
    parser.add_argument(
        "--profile",
        type=Path,
        help="a directory for py-spy profiles (collapsed stacks) of the API process and the "
        "worker while notifications are sent",
    )
    parser.add_argument(
        "--postgres-url",
        help="store on PostgreSQL: a server where the benchmark may create and drop a "
        "database (postgresql://postgres@127.0.0.1:5432/postgres); SQLite when not given",
    )
    parser.add_argument(
        "--wait-for-other",
        type=float,
        default=1800.0,
        help="seconds to wait for another benchmark run on the machine to finish",
    )
    args = parser.parse_args()
    with Path(tempfile.gettempdir(), "clarion-e2e.lock").open("w") as lock:
        wait_for_lock(lock, args.wait_for_other)
        result = asyncio.run(run(args))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
