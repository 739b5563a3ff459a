"""End-to-end throughput of Clarion: HTTP batch intake to webhook received.

Starts Clarion as real processes in one of two configurations, a webhook sink in a process
of its own, creates recipients whose webhook URL points at the sink and a template, sends
notifications through the batch API (or one POST each, ``--mode single``) and waits until
the sink has received every one. Prints one JSON object with the figures to stdout; progress
goes to stderr. Each notification carries an idempotency key, as real clients send
(``--no-idempotency-keys`` to leave them out); ``--rate R`` paces the load at R
notifications a second, for latency below saturation. A request refused with 429 (over the
tenant's intake quota, 10,000 a second by default) is sent again after its ``Retry-After``,
as a client would; the output counts them as ``throttled``.

    uv run python benchmarks/e2e.py --config embedded --notifications 100000 --recipients 1000
    uv run python benchmarks/e2e.py --config postgres-redis --notifications 100000 \\
        --recipients 1000 --workers 2
    uv run python benchmarks/e2e.py --config postgres-redis --mode single --concurrency 32 \
        --notifications 20000
    uv run python benchmarks/e2e.py --config postgres-redis --rate 1000 --batch 10 \
        --notifications 30000
    uv run python benchmarks/e2e.py --config postgres-redis --broker redis-cluster \
        --apis 2 --workers 2 --notifications 60000
    uv run python benchmarks/e2e.py --config postgres-redis --broker nats --notifications 60000

``embedded``: one ``clarion serve`` on a fresh SQLite file with the in-process broker.
``postgres-redis``: K ``clarion api`` (``--apis``, 1 by default), M ``clarion worker``
(``--workers``) and one ``clarion scheduler`` sharing a fresh PostgreSQL database (created
here, dropped at the end) and a broker (``--broker``):

- ``redis``: the Redis database of ``--redis-url`` (flushed before and after), which also
  holds the shared state (rate limits, breakers, live events);
- ``redis-cluster``: a private Redis Cluster, three masters and three replicas started here
  from ``redis-server`` (free ports, no persistence, files in the run's temporary
  directory) and stopped at the end, for the broker and the shared state, each stream in
  ``--shards`` shards (3 by default);
- ``nats``: a private ``nats-server`` with JetStream (free port, its store in the run's
  temporary directory, the monitoring endpoint on another port), stopped at the end; the
  shared state in the Redis of ``--redis-url``.

``--one-process`` runs every role of ``postgres-redis`` in one ``clarion serve`` instead (the
stores and the broker the same), to see what the hops between processes cost.

The K API processes listen on K ports and the load generator sends its requests to them in
turn, as a load balancer in front of them would. Not one port shared with SO_REUSEPORT: the
kernel then gives each new connection to a listener by a hash of its addresses, and the
load generator holds only ``--concurrency`` keep-alive connections (4 by default), so how
many requests each process got would be left to chance (two of three processes could take
them all); round robin gives each the same number, and needs nothing of Clarion.

Paced (``--rate``), ``--burst N`` sends the requests N at a time, every N / rate seconds, at
the same rate: how much of a request's cost is its process waking for it alone.
``--awake`` keeps both cores from going idle for the run with two spinning processes of the
lowest scheduling class (``SCHED_IDLE``: any other process preempts them at once; their CPU
shows as ``other_s`` and the machine as fully busy): how much of the cost at a moderate
rate is the cores waking from idle.

A notification counts as delivered when the sink has received its webhook. Times are wall
clock (``time.time()``) in both processes of this machine.

``cpu``: CPU seconds from the first request to the last delivery, by role, and
``processes``: each process (role, name, pid) with its CPU seconds, per notification and
its busy share of one core over the window (``core_pct``; ``core_pct_range`` gives the
lowest and highest per role of several processes, so one idle beside one saturated
shows); PostgreSQL's processes are one row; ``by_role``: per notification, each role's
CPU in the kernel (the rest is user time), and how often its processes went to sleep
waiting for work and were preempted (context switches). ``costs`` (postgres-redis): what
the stores did per notification (store_costs.py): Redis commands (summed over the
cluster's masters), NATS messages and bytes, PostgreSQL commits, rows, WAL and, with
``pg_stat_statements`` loaded (``--private-postgres --pg-statements``), statements. Its
counters are read before the CPU window opens and after the Clarion processes have
stopped, so their reading costs the window nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import fcntl
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import aiohttp
import orjson
import uvloop

from clarion.errors import TransientError
from clarion.net.http1 import HttpClient
from clarion.security.netguard import AddressGuard
from private_servers import LocalCluster, nats_binary, start_nats, stop_process
from store_costs import Stores, backends_gone, per_notification, snapshot

STARTUP_TIMEOUT = 90.0  # per process group: imports take seconds on a busy machine
STOP_TIMEOUT = 20.0  # after SIGTERM, before SIGKILL
REQUEST_TIMEOUT = 120.0
RETRIES = 5  # per batch request, only when it was surely not processed: no connection, 429, 503
TEMPLATE = "bench"
THIS_FILE = Path(__file__).resolve()


def log(message: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- the sink process ------------------------------------------------------------------------


async def run_sink(records: Path) -> None:
    """The sink role: receive webhooks, answer control commands on a second port.

    Control protocol, one line each way: ``stats`` -> ``{"received", "distinct"}``;
    ``dump`` -> writes ``notification id, idempotency key, time`` lines to ``records``;
    ``quit`` -> stops. The first line on stdout is ``{"port", "control"}``.
    """
    from webhook_sink import Received, WebhookSink

    rows: list[tuple[str, str, float]] = []
    keys: set[str] = set()

    def record(request: Received) -> int:
        key = request.headers.get("idempotency-key", "")
        rows.append((request.headers.get("clarion-notification-id", ""), key, request.at))
        keys.add(key)
        return 200

    sink = WebhookSink(respond=record, keep_bodies=False)
    await sink.start()
    done = asyncio.Event()
    # The control connections' handlers, ended by closing their connections on the way
    # out (a handler still waiting for a line when the loop ends would be cancelled, and
    # asyncio would log its callback's CancelledError).
    handlers: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers[task] = writer
        while line := await reader.readline():
            command = line.decode().strip()
            reply: dict[str, Any] = {"received": len(rows), "distinct": len(keys)}
            if command == "dump":
                with records.open("w") as out:
                    out.writelines(f"{nid}\t{key}\t{at!r}\n" for nid, key, at in rows)
            elif command == "quit":
                done.set()
            writer.write(orjson.dumps(reply) + b"\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(control, "127.0.0.1", 0)
    control_port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    print(orjson.dumps({"port": sink.port, "control": control_port}).decode(), flush=True)
    await done.wait()
    server.close()
    for writer in handlers.values():
        writer.close()
    if handlers:
        await asyncio.wait(handlers, timeout=5.0)
    await sink.close()


class SinkControl:
    """The benchmark's end of the sink's control connection."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def ask(self, command: str) -> dict[str, Any]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self._port)
        self._writer.write(command.encode() + b"\n")
        await self._writer.drain()
        async with asyncio.timeout(60):
            line = await self._reader.readline()
        if not line:
            raise RuntimeError("the sink closed its control connection")
        reply: dict[str, Any] = orjson.loads(line)
        return reply

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


# -- child processes -------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: TextIO | None = None


@dataclass
class Children:
    """Every process this benchmark started; ``stop_all`` ends them, whatever happened."""

    log_dir: Path
    items: list[Child] = field(default_factory=list)

    def start(
        self, name: str, args: Sequence[str], env: dict[str, str], *, stdout_pipe: bool = False
    ) -> Child:
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("w")
        popen = subprocess.Popen(
            list(args),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else log_file,
            stderr=log_file,
            start_new_session=True,  # a Ctrl-C on the terminal reaches only this process
        )
        child = Child(name, popen, log_path, log_file)
        self.items.append(child)
        return child

    def check(self) -> None:
        for child in self.items:
            code = child.popen.poll()
            if code is not None:
                raise RuntimeError(f"{child.name} exited with code {code}:\n{tail(child)}")

    def stop(self, children: Sequence[Child], timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM to each, then SIGKILL to any still running after ``timeout`` seconds."""
        alive = [c for c in children if c.popen.poll() is None]
        for child in alive:
            with contextlib.suppress(ProcessLookupError):
                child.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(c.popen.poll() is None for c in alive):
            time.sleep(0.05)
        for child in alive:
            if child.popen.poll() is None:
                log(f"{child.name} did not stop within {timeout:.0f}s: SIGKILL")
                child.popen.kill()
            child.popen.wait()

    def stop_all(self, timeout: float = STOP_TIMEOUT) -> None:
        self.stop(self.items, timeout)
        for child in self.items:
            if child.log_file is not None:
                child.log_file.close()
            if child.popen.stdout is not None:
                child.popen.stdout.close()


def tail(child: Child, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        text = child.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])
    return ""


def clarion(*args: str) -> list[str]:
    return [sys.executable, "-m", "clarion.cli", *args]


# -- backing stores --------------------------------------------------------------------------


def with_database(url: str, database: str, scheme: str | None = None) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme=scheme or parts.scheme, path=f"/{database}"))


async def create_database(admin_url: str, name: str, settings: Sequence[str] = ()) -> None:
    """Create the database; ``settings`` (``name=value``) become its defaults."""
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        for setting in settings:
            key, _, value = setting.partition("=")
            literal = value.strip().replace("'", "''")
            await conn.execute(f"ALTER DATABASE \"{name}\" SET {key.strip()} = '{literal}'")
    finally:
        await conn.close()


async def drop_database(admin_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def postgres_bindir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin, or the directory of `initdb` on PATH."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []

    def version(path: Path) -> float:
        with contextlib.suppress(ValueError):
            return float(path.parent.name)
        return 0.0

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) not found")


class PrivatePostgres:
    """A throwaway PostgreSQL cluster with stock settings, on a free port; ``preload``:
    libraries for ``shared_preload_libraries`` (such as pg_stat_statements); ``settings``:
    server settings (``NAME=VALUE``) instead of the stock ones."""

    def __init__(self, preload: Sequence[str] = (), settings: Sequence[str] = ()) -> None:
        self.preload = list(preload)
        self.settings = list(settings)
        self.bindir = postgres_bindir()
        self.dir = Path(tempfile.mkdtemp(prefix="clarion-e2e-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.started = False

    def _run(self, *args: str) -> None:
        command = list(args)
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=STARTUP_TIMEOUT, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> str:
        if os.geteuid() == 0:
            shutil.chown(self.dir, user="postgres", group="postgres")
        initdb = str(self.bindir / "initdb")
        self._run(initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        if self.preload:
            options += f" -c shared_preload_libraries={','.join(self.preload)}"
        for setting in self.settings:
            options += f" -c {setting}"
        log_file = str(self.dir / "postgres.log")
        pg_ctl = str(self.bindir / "pg_ctl")
        self._run(pg_ctl, "-D", str(self.data), "-l", log_file, "-o", options, "-w", "start")
        self.started = True
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().split()[0])
        return None

    def stop(self) -> None:
        try:
            if self.started:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "stop", "-m", "fast")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


async def postgres_settings(admin_url: str) -> dict[str, str]:
    import asyncpg

    names = ["server_version", "autovacuum", "fsync", "synchronous_commit", "shared_buffers"]
    conn = await asyncpg.connect(admin_url)
    try:
        rows = await conn.fetch(
            "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1)", names
        )
    finally:
        await conn.close()
    return {r["name"]: r["setting"] + (f" x {r['unit']}" if r["unit"] else "") for r in rows}


REDIS_LOCK = "clarion-e2e:running"
REDIS_LOCK_TTL = 30


def claim_redis(url: str) -> None:
    """Flush the Redis database and mark it in use, unless another run marked it."""
    import redis

    with redis.Redis.from_url(url) as client:
        if client.exists(REDIS_LOCK):
            raise RuntimeError(
                f"another benchmark is using {url} (key {REDIS_LOCK!r}); "
                "wait for it or pass --redis-url with another database number"
            )
        client.flushdb()
        client.set(REDIS_LOCK, os.getpid(), ex=REDIS_LOCK_TTL)


async def hold_redis(url: str) -> None:
    """Keep the in-use mark alive while the benchmark runs."""
    import redis.asyncio as aredis

    async with aredis.Redis.from_url(url) as client:
        while True:
            await asyncio.sleep(REDIS_LOCK_TTL / 3)
            await client.set(REDIS_LOCK, os.getpid(), ex=REDIS_LOCK_TTL)


def flush_redis(url: str) -> None:
    import redis

    with redis.Redis.from_url(url) as client:
        client.flushdb()


def connected_to(pid: int, port: int) -> bool:
    """True when process ``pid`` holds an established TCP connection to ``port`` (Linux).

    A worker connects to Redis when its loops start reading: it is past its imports and
    taking work. Redis shows no trace of a consumer before it has been handed a message.
    """
    sockets: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    sockets.add(target[8:-1])
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if fields[3] == "01" and remote_port == port and fields[9] in sockets:
                    return True
    return False


# -- the benchmark ---------------------------------------------------------------------------


@dataclass
class Load:
    """What the load generator saw."""

    started: float = 0.0
    accepted_at: dict[str, float] = field(default_factory=dict)
    rejected: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    throttled: int = 0
    # Seconds from sending each request to its answer (the API's 202 latency).
    request_seconds: list[float] = field(default_factory=list)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="clarion-e2e-"))
        self.children = Children(self.tmp)
        # One port per `clarion api` (--apis); the load goes round robin over them.
        self.ports = [free_port() for _ in range(args.apis)]
        self.port = self.ports[0]
        self.bases = [f"http://127.0.0.1:{port}" for port in self.ports]
        self.base = self.bases[0]
        self.database: str | None = None
        self.admin_url: str = args.postgres_url
        self.private_postgres: PrivatePostgres | None = None
        self.postgres: dict[str, str] | None = None
        self.redis_url: str | None = None
        self.cluster: LocalCluster | None = None
        self.nats: subprocess.Popen[bytes] | None = None
        self.broker_ports: list[int] = []  # a worker connected to one is taking work
        self.stores: Stores | None = None  # where `costs` reads its counters
        self.server_names: dict[int, str] = {}  # pid -> name, of the servers started here
        self.process_names: dict[int, str] = {}
        self.roles: dict[int, str] = {}  # pid -> role, as the last cpu_times() found them
        self.sink: Child | None = None
        self.spinners: list[subprocess.Popen[bytes]] = []  # --awake
        self.key = ""
        self.run_id = secrets.token_hex(4)
        # Roles on PostgreSQL refuse to start without one; every process shares it.
        self.secret_key = base64.b64encode(secrets.token_bytes(32)).decode()

    # -- set-up ----------------------------------------------------------------------------

    def env(self, database_url: str, broker_url: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            CLARION_DATABASE_URL=database_url,
            CLARION_BROKER_URL=broker_url,
            CLARION_HTTP_HOST="127.0.0.1",
            CLARION_HTTP_PORT=str(self.port),
            CLARION_ALLOW_PRIVATE_WEBHOOKS="true",
            CLARION_LOG_LEVEL=os.environ.get("CLARION_LOG_LEVEL", "warning"),
            CLARION_SECRET_KEY=os.environ.get("CLARION_SECRET_KEY") or self.secret_key,
        )
        return env

    async def prepare_stores(self) -> dict[str, str]:
        if self.args.config == "embedded":
            return self.env(f"sqlite+aiosqlite:///{self.tmp / 'clarion.db'}", "embedded://")
        broker_env = await asyncio.to_thread(self.start_broker)
        if self.args.private_postgres:
            preload = ["pg_stat_statements"] if self.args.pg_statements else []
            self.private_postgres = PrivatePostgres(preload, self.args.pg_server)
            self.admin_url = await asyncio.to_thread(self.private_postgres.start)
        self.postgres = await postgres_settings(self.admin_url)
        if self.postgres.get("autovacuum") == "off":
            log("warning: autovacuum is off on this server: no statistics, stale query plans")
        name = f"clarion_bench_{secrets.token_hex(4)}"
        await create_database(self.admin_url, name, self.args.pg_set)
        self.database = name
        database_url = with_database(self.admin_url, name, "postgresql+asyncpg")
        assert self.stores is not None
        self.stores.postgres_admin, self.stores.database = self.admin_url, name
        self.stores.database_url = with_database(self.admin_url, name)
        log(f"database {name}, broker {broker_env['CLARION_BROKER_URL']}")
        env = self.env(database_url, broker_env.pop("CLARION_BROKER_URL"))
        return {**env, **broker_env}

    def start_broker(self) -> dict[str, str]:
        """Start or claim the broker and the Redis for shared state (``--broker``); returns
        their variables for the Clarion processes."""
        shards = {"CLARION_BROKER_SHARDS": str(self.args.shards)} if self.args.shards else {}
        if self.args.broker == "redis-cluster":
            self.cluster = self.start_cluster()
            url = self.cluster.url
            masters = [("127.0.0.1", node.port) for node in self.cluster.masters()]
            self.stores = Stores(masters, "cluster masters")
            return {"CLARION_BROKER_URL": url, "CLARION_REDIS_URL": url, **shards}
        claim_redis(self.args.redis_url)
        self.redis_url = self.args.redis_url
        parts = urlsplit(self.redis_url)
        redis_server = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.stores = Stores([redis_server], "server (all its databases)")
        if self.args.broker == "nats":
            url, self.stores.nats_monitor = self.start_nats()
            return {"CLARION_BROKER_URL": url, "CLARION_REDIS_URL": self.redis_url}
        self.broker_ports = [redis_server[1]]
        return {"CLARION_BROKER_URL": self.redis_url, **shards}

    def start_cluster(self) -> LocalCluster:
        """A private Redis Cluster of three masters and three replicas."""
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            raise RuntimeError("--broker redis-cluster needs redis-server and redis-cli on PATH")
        root = self.tmp / "redis-cluster"
        root.mkdir()
        # redis.conf's node timeout: a node slow to answer on a loaded machine is not failed.
        self.cluster = LocalCluster(server, cli, root, node_timeout_ms=15_000)
        self.cluster.start()
        roles = self.cluster.roles()
        for node in self.cluster.nodes:
            assert node.process is not None
            self.server_names[node.process.pid] = f"redis-{roles[node.port][0]}-{node.port}"
        self.broker_ports = [node.port for node in self.cluster.nodes]
        log(f"Redis Cluster: {self.cluster.url} (and three replicas)")
        return self.cluster

    def start_nats(self) -> tuple[str, str]:
        """A private nats-server with JetStream and its monitoring endpoint: their URLs."""
        binary = nats_binary()
        if binary is None:
            raise RuntimeError("--broker nats needs nats-server on PATH")
        port, monitor = free_port(), free_port()
        store = self.tmp / "nats"
        store.mkdir()
        self.nats = start_nats(binary, port, str(store), monitor_port=monitor)
        self.server_names[self.nats.pid] = "nats"
        self.broker_ports = [port]
        log(f"NATS: nats://127.0.0.1:{port}, monitoring on port {monitor}")
        return f"nats://127.0.0.1:{port}", f"http://127.0.0.1:{monitor}"

    async def start_sink(self) -> tuple[str, SinkControl]:
        records = self.tmp / "received.tsv"
        args = [sys.executable, str(THIS_FILE), "--sink-records", str(records)]
        self.sink = self.children.start("sink", args, dict(os.environ), stdout_pipe=True)
        stdout = self.sink.popen.stdout
        assert stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(stdout.readline), STARTUP_TIMEOUT)
        if not line:
            self.children.check()
            raise RuntimeError("the sink did not start")
        ports = orjson.loads(line)
        return f"http://127.0.0.1:{ports['port']}", SinkControl(ports["control"])

    def create_tenant(self, env: dict[str, str], name: str = "bench") -> str:
        result = subprocess.run(
            clarion("tenants", "create", name),
            env=env,
            capture_output=True,
            text=True,
            timeout=STARTUP_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"`clarion tenants create` failed:\n{result.stderr[-4000:]}")
        return result.stdout.strip().splitlines()[-1]

    def start_clarion(self, env: dict[str, str]) -> list[int]:
        """Start the Clarion processes; returns the worker processes' pids."""
        if self.args.config == "embedded":
            self.children.start("serve", clarion("serve"), env)
            return []
        if self.args.one_process:
            self.children.start("serve", clarion("serve"), env)
            return []
        api_args = ["api", "--planner"] if self.args.api_plans else ["api"]
        for i, port in enumerate(self.ports):
            env_i = {**env, "CLARION_HTTP_PORT": str(port)}
            self.children.start(f"api-{i}", clarion(*api_args), env_i)
        worker_args = ["worker", "--no-planner"] if self.args.api_plans else ["worker"]
        if self.args.worker_channels:
            worker_args += ["--channels", self.args.worker_channels]
        urgent_args = []
        if self.args.urgent_workers:
            # Workers of the urgent lanes beside ones of the others (docs/operations.md).
            urgent_args = [*worker_args, "--lanes", "critical,high"]
            worker_args += ["--lanes", "normal,low"]
        pids = [
            self.children.start(f"worker-{i}", clarion(*worker_args), env).popen.pid
            for i in range(self.args.workers)
        ]
        pids += [
            self.children.start(f"urgent-{i}", clarion(*urgent_args), env).popen.pid
            for i in range(self.args.urgent_workers)
        ]
        self.children.start("scheduler", clarion("scheduler"), env)
        return pids

    async def wait_ready(self, session: aiohttp.ClientSession, worker_pids: list[int]) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        waiting = list(self.bases)
        while True:
            self.children.check()
            for base in list(waiting):
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{base}/readyz") as response:
                        if response.status == 200:
                            waiting.remove(base)
            taking = all(
                any(connected_to(pid, port) for port in self.broker_ports) for pid in worker_pids
            )
            if not waiting and taking:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"Clarion was not ready within {STARTUP_TIMEOUT:.0f}s")
            await asyncio.sleep(0.2)

    async def call(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        body: Any,
        key: str | None = None,
    ) -> dict[str, Any]:
        """A call with the tenant's key (or ``key``, another tenant's); its JSON reply."""
        bearer = key or self.key
        headers = {"authorization": f"Bearer {bearer}", "content-type": "application/json"}
        data = orjson.dumps(body) if body is not None else None
        url = self.base + path
        async with session.request(method, url, data=data, headers=headers) as response:
            text = await response.read()
            if response.status >= 300:
                raise RuntimeError(f"{method} {path}: HTTP {response.status}: {text[:500]!r}")
            reply: dict[str, Any] = orjson.loads(text)
            return reply

    async def create_fixtures(self, session: aiohttp.ClientSession, sink_url: str) -> None:
        ids = [f"r{i}" for i in range(self.args.recipients)]
        extra: dict[str, Any] = {}
        if self.args.preferences:
            extra = {"locale": "fr-CA", "timezone": "America/Toronto"}
        for start in range(0, len(ids), 1000):
            people = [
                {"id": rid, "webhook_url": f"{sink_url}/{rid}", **extra}
                for rid in ids[start:][:1000]
            ]
            await self.call(session, "POST", "/v1/recipients/batch", {"recipients": people})
        template: dict[str, Any] = {"channels": {"webhook": {"body": {"n": "{{ n }}"}}}}
        if self.args.preferences:
            # Every recipient has preferences the planner must read and decide on (quiet
            # hours that are not in force, opt-outs of other channels), and a French locale
            # that falls back from fr-CA to the template's fr content.
            template["locales"] = {"fr": {"webhook": {"body": {"n": "{{ n }}", "l": "fr"}}}}
            prefs = preferences_not_in_force()
            for rid in ids:
                await self.call(session, "PUT", f"/v1/recipients/{rid}/preferences", prefs)
        await self.call(session, "PUT", f"/v1/templates/{TEMPLATE}", template)

    # -- load ------------------------------------------------------------------------------

    def item(self, i: int) -> dict[str, Any]:
        notification: dict[str, Any] = {
            "template": TEMPLATE,
            "to": {"recipient_id": f"r{i % self.args.recipients}"},
            "data": {"n": i},
        }
        if self.args.priority:
            notification["priority"] = self.args.priority
        if self.args.idempotency_keys:
            # As real clients do: one key per notification, unique to this run.
            notification["idempotency_key"] = f"{self.run_id}-{i}"
        return notification

    def bodies(self) -> list[bytes]:
        """One request body per request: a batch, or one notification in `single` mode."""
        m = self.args.notifications
        if self.args.mode == "single":
            return [orjson.dumps(self.item(i)) for i in range(m)]
        size = self.args.batch
        return [
            orjson.dumps(
                {"notifications": [self.item(i) for i in range(start, min(start + size, m))]}
            )
            for start in range(0, m, size)
        ]

    async def post_batch(self, client: HttpClient, body: bytes, load: Load, base: str) -> None:
        headers = {"authorization": f"Bearer {self.key}", "content-type": "application/json"}
        single = self.args.mode == "single"
        url = f"{base}/v1/notifications" + ("" if single else "/batch")
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                sent_at = time.monotonic()
                reply = await client.request(
                    "POST", url, headers, body, timeout=REQUEST_TIMEOUT, max_body=1 << 24
                )
                raw, status = reply.body, reply.status
                load.request_seconds.append(time.monotonic() - sent_at)
                if status == 429:
                    retry_after = float(reply.headers.get("retry-after", "1"))
            except TransientError as exc:  # refused, reset or timed out
                if exc.reason != "connection_error" or attempt == RETRIES:
                    raise
                status, raw = 0, repr(exc).encode()
            if status == 202:
                break
            load.retries += 1
            if retry_after is not None:
                # Over the tenant's intake quota: a client waits as told, for as long as
                # it takes (the quota paces the load; it refuses nothing for good).
                load.throttled += 1
                await asyncio.sleep(retry_after)
                continue
            # Anything else may have been accepted: sending it again would count it twice.
            if attempt == RETRIES or status not in (0, 503):
                raise RuntimeError(f"batch refused: HTTP {status}: {raw[:500]!r}")
            await asyncio.sleep(0.2 * 2**attempt)
            attempt += 1
        now = time.time()
        answer = orjson.loads(raw)
        for result in [answer] if single else answer["results"]:
            if "id" in result:
                load.accepted_at[result["id"]] = now
            else:
                load.rejected[result.get("error", {}).get("code", "unknown")] += 1

    async def send_all(self, session: aiohttp.ClientSession) -> Load:
        # The load goes out through Clarion's own HTTP/1.1 client, which costs the shared
        # cores less per request than aiohttp (the other calls here are few).
        client = HttpClient(AddressGuard(allow_private=True), max_connections=1024)
        try:
            return await self._send_all(client)
        finally:
            await client.aclose()

    async def _send_all(self, client: HttpClient) -> Load:
        bodies = self.bodies()
        queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        for item in enumerate(bodies):
            queue.put_nowait(item)
        load = Load()

        per_request = 1 if self.args.mode == "single" else self.args.batch
        interval = per_request / self.args.rate if self.args.rate else 0.0
        burst = self.args.burst
        slots = iter(range(len(bodies)))
        paced_from = time.monotonic()

        async def sender() -> None:
            while not queue.empty():
                k, body = queue.get_nowait()
                if interval:  # paced: request k goes out at k * interval (--burst: with
                    # the others of its burst, at the first one's time), not before
                    due = paced_from + next(slots) // burst * burst * interval
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                # Round robin over the API processes, as a load balancer in front of them.
                await self.post_batch(client, body, load, self.bases[k % len(self.bases)])

        load.started = time.time()
        paced_from = time.monotonic()
        async with asyncio.TaskGroup() as group:
            for _ in range(min(self.args.concurrency, len(bodies))):
                group.create_task(sender())
        return load

    async def wait_delivered(self, sink: SinkControl, expected: int) -> None:
        deadline = time.monotonic() + self.args.timeout
        last_log = 0.0
        while True:
            stats = await sink.ask("stats")
            if stats["distinct"] >= expected:
                return
            self.children.check()
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(
                    f"only {stats['distinct']} of {expected} webhooks within {self.args.timeout}s"
                )
            if now - last_log >= 5:
                log(f"received {stats['distinct']} of {expected}")
                last_log = now
            await asyncio.sleep(0.1)

    async def check_statuses(self, session: aiohttp.ClientSession, load: Load) -> dict[str, Any]:
        """Read a sample of notifications back: every delivery should be `sent`."""
        ids = list(load.accepted_at)
        sample = [ids[i] for i in range(0, len(ids), max(1, len(ids) // 20))][:20]
        sent = 0
        for nid in sample:
            found = await self.call(session, "GET", f"/v1/notifications/{nid}", None)
            deliveries = found["deliveries"]
            if deliveries and all(d["status"] == "sent" for d in deliveries):
                sent += 1
        return {"checked": len(sample), "all_deliveries_sent": sent}

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        env = await self.prepare_stores()
        holder = asyncio.create_task(hold_redis(self.redis_url)) if self.redis_url else None
        sink: SinkControl | None = None
        try:
            sink_url, sink = await self.start_sink()
            self.key = await asyncio.to_thread(self.create_tenant, env)
            worker_pids = self.start_clarion(env)
            if self.args.awake:
                self.spinners = [spin() for _ in os.sched_getaffinity(0)]
            timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
            connector = aiohttp.TCPConnector(limit=max(self.args.concurrency, 4))
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
                await self.wait_ready(session, worker_pids)
                await self.create_fixtures(session, sink_url)
                return await self.measure(session, sink)
        finally:
            for spinner in self.spinners:
                spinner.kill()
                spinner.wait()
            if sink is not None:
                sink.close()
            if holder is not None:
                holder.cancel()

    async def measure(self, session: aiohttp.ClientSession, sink: SinkControl) -> dict[str, Any]:
        log(f"ready: sending {self.args.notifications} notifications")
        # The stores' counters are read outside the CPU window, so that reading them is
        # not counted in it.
        stores_before = await snapshot(self.stores) if self.stores else {}
        cpu_before = self.cpu_times()
        switches_before = self.switches()
        load = await self.send_all(session)
        log(f"accepted {len(load.accepted_at)} in {time.time() - load.started:.1f}s")
        m = len(load.accepted_at)
        await self.wait_delivered(sink, m)
        cpu_after = self.cpu_times()
        switches_after = self.switches()
        cpu = cpu_used(cpu_before, cpu_after, m, self.process_names)
        cpu["by_role"] = switches_used(switches_before, switches_after, m)
        await asyncio.sleep(self.args.settle)  # late repeats count as duplicates
        await sink.ask("dump")
        statuses = await self.check_statuses(session, load)
        received = read_records(self.tmp / "received.tsv")
        costs = await self.costs(stores_before, m) if self.stores else None
        return {
            **self.figures(load, received),
            "status_check": statuses,
            "cpu": cpu,
            "costs": costs,
        }

    async def costs(self, before: dict[str, Any], notifications: int) -> dict[str, Any]:
        """What the stores did per notification, from the first request until the Clarion
        processes have stopped and their database sessions have ended (PostgreSQL counts a
        session's work when it reports it: at most once a second, and when it ends)."""
        assert self.stores is not None
        clarion_roles = [c for c in self.children.items if c is not self.sink]
        await asyncio.to_thread(self.children.stop, clarion_roles)
        costs: dict[str, Any] = {"window": "first request to the Clarion processes stopped"}
        if self.stores.postgres_admin and self.stores.database:
            ended = await backends_gone(self.stores.postgres_admin, self.stores.database, 30)
            if not ended:
                costs["warning"] = "sessions of the database still open: counts may be short"
        after = await snapshot(self.stores)
        return {**costs, **per_notification(self.stores, before, after, notifications)}

    def cpu_times(self) -> dict[tuple[str, int], float]:
        """CPU seconds used so far by each process of this run, and by the whole machine."""
        names = {c.popen.pid: c.name for c in self.children.items}
        names.update(self.server_names)
        names[os.getpid()] = "loadgen"
        self.process_names = names
        roles = {pid: name.split("-")[0] for pid, name in names.items()}
        self.roles = roles
        postmaster = self.private_postgres.postmaster_pid() if self.private_postgres else None
        if postmaster is not None:
            roles[postmaster] = "postgres"
        redis_port = (urlsplit(self.redis_url).port or 6379) if self.redis_url else None
        for pid in os.listdir("/proc"):
            if pid.isdigit() and int(pid) not in roles:
                command = read_text(f"/proc/{pid}/cmdline").replace("\0", " ")
                if command.startswith("redis-server") and f":{redis_port}" in command:
                    roles[int(pid)] = "redis"
                elif command.startswith("postgres") and (
                    (self.database is not None and self.database in command)
                    or (postmaster is not None and parent_pid(int(pid)) == postmaster)
                ):
                    roles[int(pid)] = "postgres"
        times = {(role, pid): process_cpu(pid) for pid, role in roles.items()}
        fields = read_text("/proc/stat").split("\n", 1)[0].split()[1:9]
        jiffies = [int(f) for f in fields]
        busy = sum(jiffies) - jiffies[3] - jiffies[4]  # all but idle and iowait
        times[("machine", 0)] = busy / os.sysconf("SC_CLK_TCK")
        times[("wall", 0)] = time.monotonic()
        return times

    def switches(self) -> dict[tuple[str, int], tuple[float, int, int]]:
        """For each process cpu_times() last found: its CPU seconds in the kernel, and how
        many times it went to sleep (waiting for work) and was preempted so far."""
        return {(role, pid): kernel_and_switches(pid) for pid, role in self.roles.items()}

    def figures(self, load: Load, received: list[tuple[str, str, float]]) -> dict[str, Any]:
        m = len(load.accepted_at)
        first_at: dict[str, float] = {}
        for nid, _key, at in received:
            if nid in load.accepted_at and nid not in first_at:
                first_at[nid] = at
        delivered = sorted(first_at.values())
        latencies = sorted(first_at[nid] - load.accepted_at[nid] for nid in first_at)
        requests = sorted(load.request_seconds)
        keys = Counter(key for _nid, key, _at in received)
        accept_span = max(load.accepted_at.values()) - load.started
        deliver_span = delivered[-1] - load.started
        apart = self.args.config == "postgres-redis"
        workers = self.args.workers if apart and not self.args.one_process else None
        return {
            "config": self.args.config,
            "broker": self.args.broker if apart else None,
            "shards": self.args.shards,
            "notifications": self.args.notifications,
            "recipients": self.args.recipients,
            "preferences": self.args.preferences,
            "apis": self.args.apis if apart else None,
            "workers": workers,
            "worker_channels": (self.args.worker_channels or "all") if workers else None,
            "urgent_workers": self.args.urgent_workers or None,
            "priority": self.args.priority,
            "mode": self.args.mode,
            "batch": self.args.batch if self.args.mode == "batch" else 1,
            "concurrency": self.args.concurrency,
            "rate": self.args.rate or None,
            "burst": self.args.burst if self.args.rate and self.args.burst > 1 else None,
            "one_process": self.args.one_process or None,
            "api_plans": self.args.api_plans or None,
            "awake": self.args.awake or None,
            "idempotency_keys": self.args.idempotency_keys,
            "accepted": m,
            "rejected": dict(load.rejected),
            "batch_retries": load.retries,
            "throttled": load.throttled,
            "delivered": len(first_at),
            "accept_seconds": round(accept_span, 2),
            "deliver_seconds": round(deliver_span, 2),
            "accepted_per_s": round(m / accept_span, 1),
            "delivered_per_s": round(m / deliver_span, 1),
            "sustained_delivered_per_s": round(sustained(delivered, 0.1, 0.9), 1),
            "latency_ms": {
                name: round(percentile(latencies, q) * 1000, 1)
                for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
            },
            "api_latency_ms": {
                name: round(percentile(requests, q) * 1000, 1)
                for name, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
            },
            "webhooks_received": len(received),
            "duplicates": sum(count - 1 for count in keys.values()),
            "postgres": {**self.postgres, "database_settings": self.args.pg_set}
            if self.postgres
            else None,
            "clarion_env": {
                k: v for k, v in sorted(os.environ.items()) if k.startswith("CLARION_")
            },
            "machine": machine(),
            "command": shlex.join(["python", *sys.argv]),
        }

    def cleanup(self, failed: bool) -> None:
        if failed:
            for child in self.children.items:
                if text := tail(child):
                    log(f"--- last lines of {child.name} ---\n{text}")
        self.children.stop_all()
        self.stop_servers()
        if self.args.keep:
            kept = [str(self.tmp)] + [f"database {self.database}"] * bool(self.database)
            if self.private_postgres is not None:
                pg = self.private_postgres
                kept.append(f"PostgreSQL on port {pg.port} (pg_ctl -D {pg.data} stop)")
            log(f"kept: {', '.join(kept)}; Redis data stays until the next run flushes it")
            return
        if (name := self.database) is not None:
            admin = self.admin_url
            attempt(f"drop database {name}", lambda: asyncio.run(drop_database(admin, name)))
        if (redis_url := self.redis_url) is not None:
            attempt(f"flush {redis_url}", lambda: flush_redis(redis_url))
        if (private := self.private_postgres) is not None:
            attempt("stop the private PostgreSQL", private.stop)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def stop_servers(self) -> None:
        """Stop the Redis Cluster or NATS server started here (their files are in the
        temporary directory, kept with --keep)."""
        if self.cluster is not None:
            attempt("stop the Redis Cluster", self.cluster.stop)
        if (nats := self.nats) is not None:
            attempt("stop nats-server", lambda: stop_process(nats))


def attempt(what: str, action: Callable[[], object]) -> None:
    """One step of the clean-up: a failure is logged, and the steps after it still run."""
    try:
        action()
    except Exception as exc:
        log(f"could not {what}: {exc!r}")


def read_text(path: str) -> str:
    try:
        with open(path, "rb") as file:
            return file.read().decode(errors="replace")
    except OSError:
        return ""


def rss_mib(pid: int) -> tuple[float, float]:
    """A process's resident memory now and at its peak (``VmRSS``, ``VmHWM``), in MiB."""
    fields = dict(
        line.split(":", 1) for line in read_text(f"/proc/{pid}/status").splitlines() if ":" in line
    )

    def mib(name: str) -> float:
        return round(int(fields.get(name, "0 kB").split()[0]) / 1024, 1)

    return mib("VmRSS"), mib("VmHWM")


def memory_now(children: Children) -> dict[str, float]:
    """Each started process's resident memory now, in MiB, by name."""
    return {c.name: rss_mib(c.popen.pid)[0] for c in children.items}


def memory_used(children: Children, before: dict[str, float]) -> dict[str, dict[str, float]]:
    """Each started process's resident memory before (``memory_now``), now and at its
    peak, in MiB, by name."""
    return {
        c.name: dict(
            zip(
                ("before_mib", "now_mib", "peak_mib"),
                (before.get(c.name, 0.0), *rss_mib(c.popen.pid)),
                strict=True,
            )
        )
        for c in children.items
    }


def parent_pid(pid: int) -> int | None:
    stat = read_text(f"/proc/{pid}/stat")
    return int(stat.rsplit(")", 1)[1].split()[1]) if ")" in stat else None


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (0 when it is gone)."""
    stat = read_text(f"/proc/{pid}/stat")
    if ")" not in stat:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kernel_and_switches(pid: int) -> tuple[float, int, int]:
    """A process's system CPU seconds (in the kernel) and its main thread's voluntary and
    involuntary context switches so far (zeros when it is gone)."""
    stat, status = read_text(f"/proc/{pid}/stat"), read_text(f"/proc/{pid}/status")
    if ")" not in stat:
        return 0.0, 0, 0
    kernel = int(stat.rsplit(")", 1)[1].split()[12]) / os.sysconf("SC_CLK_TCK")
    counts = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    voluntary = int(counts.get("voluntary_ctxt_switches", "0"))
    return kernel, voluntary, int(counts.get("nonvoluntary_ctxt_switches", "0"))


def switches_used(
    before: dict[tuple[str, int], tuple[float, int, int]],
    after: dict[tuple[str, int], tuple[float, int, int]],
    notifications: int,
) -> dict[str, dict[str, float]]:
    """By role, per notification: the CPU milliseconds spent in the kernel (the rest of
    the role's CPU is user time), and how many times its processes went to sleep waiting
    for work (``sleeps``: voluntary context switches) and were preempted by another process
    (``preempted``)."""
    totals: dict[str, list[float]] = {}
    for (role, pid), (kernel, voluntary, preempted) in after.items():
        was = before.get((role, pid), (0.0, 0, 0))
        total = totals.setdefault(role, [0.0, 0.0, 0.0])
        for i, (now, then) in enumerate(zip((kernel, voluntary, preempted), was, strict=True)):
            total[i] += now - then
    return {
        role: {
            "kernel_ms_per_notification": round(1000 * kernel / notifications, 3),
            "sleeps_per_notification": round(voluntary / notifications, 2),
            "preempted_per_notification": round(preempted / notifications, 2),
        }
        for role, (kernel, voluntary, preempted) in sorted(totals.items())
    }


def cpu_used(
    before: dict[tuple[str, int], float],
    after: dict[tuple[str, int], float],
    notifications: int,
    names: dict[int, str] | None = None,
    outside: tuple[str, ...] = ("sink", "loadgen"),
) -> dict[str, Any]:
    """CPU seconds between two snapshots by role; `other` is whatever else the machine did;
    `processes`, each process's own (``names``: pid -> name, else its role). The system's
    figure (``system_ms_per_notification``) leaves out the roles ``outside`` it: the
    load generator and the receiving end, which are not Clarion's work."""
    window = after.pop(("wall", 0)) - before.pop(("wall", 0))
    busy = after.pop(("machine", 0)) - before.pop(("machine", 0))
    by_role: dict[str, float] = {}
    for (role, pid), seconds in after.items():
        by_role[role] = by_role.get(role, 0.0) + seconds - before.get((role, pid), 0.0)
    ours = sum(by_role.values())
    capacity = window * len(os.sched_getaffinity(0))
    rows = process_rows(before, after, window, notifications, names or {})
    return {
        "window_s": round(window, 1),
        "machine_busy_pct": round(100 * busy / capacity, 1),
        "seconds": {role: round(v, 1) for role, v in sorted(by_role.items(), key=lambda i: -i[1])},
        "other_s": round(max(0.0, busy - ours), 1),
        "ms_per_notification": round(1000 * ours / notifications, 2),
        "system_ms_per_notification": round(
            1000 * sum(v for role, v in by_role.items() if role not in outside) / notifications, 3
        ),
        "processes": rows,
        "core_pct_range": {
            role: [min(shares), max(shares)]
            for role in by_role
            if len(shares := [r["core_pct"] for r in rows if r["role"] == role]) > 1
        },
    }


def process_rows(
    before: dict[tuple[str, int], float],
    after: dict[tuple[str, int], float],
    window: float,
    notifications: int,
    names: dict[int, str],
) -> list[dict[str, Any]]:
    """One row a process: CPU seconds in the window, per notification, and its busy share of
    one core (100: it used a whole core all along). PostgreSQL's processes, many and
    short-lived, are one row, with its busiest process's share."""

    def row(role: str, name: str, pid: int | None, used: float) -> dict[str, Any]:
        return {
            "role": role,
            "name": name,
            "pid": pid,
            "cpu_s": round(used, 2),
            "ms_per_notification": round(1000 * used / notifications, 3),
            "core_pct": round(100 * used / window, 1) if window > 0 else None,
        }

    rows, postgres = [], []
    for (role, pid), seconds in sorted(
        after.items(), key=lambda i: (i[0][0], names.get(i[0][1], ""))
    ):
        used = seconds - before.get((role, pid), 0.0)
        if role == "postgres":
            postgres.append(used)
        else:
            rows.append(row(role, names.get(pid, role), pid, used))
    if postgres:
        pg = row("postgres", f"postgres ({len(postgres)} processes)", None, sum(postgres))
        pg["busiest_core_pct"] = round(100 * max(postgres) / window, 1) if window > 0 else None
        rows.append(pg)
    return rows


def read_records(path: Path) -> list[tuple[str, str, float]]:
    rows = []
    with path.open() as lines:
        for line in lines:
            nid, key, at = line.rstrip("\n").split("\t")
            rows.append((nid, key, float(at)))
    return rows


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(q * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def sustained(times: list[float], low: float, high: float) -> float:
    """Deliveries per second between the ``low`` and ``high`` fractions of them."""
    if len(times) < 10:
        return float("nan")
    first, last = int(low * len(times)), int(high * len(times)) - 1
    span = times[last] - times[first]
    return (last - first) / span if span > 0 else float("inf")


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "memory_gb": memory_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def preferences_not_in_force() -> dict[str, Any]:
    """Opt-outs of channels the benchmark does not use, and quiet hours starting in 2 h."""
    local = datetime.now(ZoneInfo("America/Toronto"))
    start, end = local + timedelta(hours=2), local + timedelta(hours=3)
    return {
        "channels": {"sms": False, "push": False},
        "categories": {"marketing": {"email": False}},
        "quiet_hours": {"start": f"{start:%H:%M}", "end": f"{end:%H:%M}"},
    }


def parse_with(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """A benchmark built on this one: its own options (``parser``, made with
    ``add_help=False``) with ``--config``, and everything else (stores, workers, --keep,
    --timeout, ...) as this file takes it."""
    parser.add_argument(
        "--config", choices=["embedded", "postgres-redis"], default="postgres-redis"
    )
    own, rest = parser.parse_known_args(argv)
    args = parse_args(["--config", own.config, *rest])
    for name, value in vars(own).items():
        setattr(args, name, value)
    return args


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=["embedded", "postgres-redis"])
    parser.add_argument("--notifications", "-m", type=int, default=10_000)
    parser.add_argument("--recipients", "-n", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="postgres-redis: worker processes")
    parser.add_argument(
        "--apis",
        type=int,
        default=1,
        help="postgres-redis: `clarion api` processes, each on a port, the load round robin",
    )
    parser.add_argument(
        "--broker",
        choices=["redis", "redis-cluster", "nats"],
        default="redis",
        help="postgres-redis: the Redis of --redis-url; a private Redis Cluster (3 masters, "
        "3 replicas); or a private nats-server with JetStream, the shared state in "
        "--redis-url's Redis",
    )
    parser.add_argument(
        "--shards",
        type=int,
        help="CLARION_BROKER_SHARDS, with a Redis broker (redis-cluster: 3 by default)",
    )
    parser.add_argument(
        "--worker-channels",
        default="",
        help="postgres-redis: `clarion worker --channels` (default: every channel)",
    )
    parser.add_argument(
        "--urgent-workers",
        type=int,
        default=0,
        help="postgres-redis: this many more `clarion worker --lanes critical,high`, the "
        "--workers then given `--lanes normal,low`",
    )
    parser.add_argument(
        "--mode",
        choices=["batch", "single"],
        default="batch",
        help="batch: POST /v1/notifications/batch; single: one POST /v1/notifications each",
    )
    parser.add_argument("--batch", type=int, default=1000, help="notifications per request")
    parser.add_argument(
        "--priority",
        choices=["critical", "high", "normal", "low"],
        help="every notification's priority (default: none given, so normal)",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (clients)")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="notifications per second, paced (0: as fast)"
    )
    parser.add_argument(
        "--burst",
        type=int,
        default=1,
        help="with --rate: send the requests this many at a time, at the same rate",
    )
    parser.add_argument(
        "--one-process",
        action="store_true",
        help="postgres-redis: every role in one `clarion serve` (no --apis, --workers apart)",
    )
    parser.add_argument(
        "--api-plans",
        action="store_true",
        help="postgres-redis: `clarion api --planner` and `clarion worker --no-planner`",
    )
    parser.add_argument(
        "--awake",
        action="store_true",
        help="keep every core from going idle with a spinning process of the lowest class",
    )
    parser.add_argument(
        "--no-idempotency-keys",
        dest="idempotency_keys",
        action="store_false",
        help="send notifications without an idempotency key (by default each has one)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for all")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to wait for repeats")
    parser.add_argument(
        "--postgres-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a server where this benchmark may create and drop a database",
    )
    parser.add_argument(
        "--private-postgres",
        action="store_true",
        help="start a throwaway PostgreSQL cluster with stock settings instead",
    )
    parser.add_argument(
        "--pg-statements",
        action="store_true",
        help="with --private-postgres: load pg_stat_statements, for the statements in `costs`",
    )
    parser.add_argument(
        "--pg-server",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="with --private-postgres: a server setting instead of the stock one, repeatable",
    )
    parser.add_argument(
        "--pg-set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the benchmark's database (ALTER DATABASE ... SET), repeatable",
    )
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/13",
        help="a Redis database this benchmark flushes before and after",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the logs, the SQLite file or PostgreSQL database, and the Redis data",
    )
    parser.add_argument(
        "--wait-for-other",
        type=float,
        default=1800.0,
        help="seconds to wait for another run of this benchmark on the machine to finish",
    )
    parser.add_argument(
        "--preferences",
        action="store_true",
        help="give every recipient preferences, quiet hours (not in force) and a locale",
    )
    parser.add_argument("--sink-records", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.config is None and args.sink_records is None:
        parser.error("--config is required")
    if not 1 <= args.batch <= 1000:
        parser.error("--batch must be between 1 and 1000")
    if args.rate < 0:
        parser.error("--rate must be >= 0")
    if args.burst < 1 or (args.burst > 1 and not args.rate):
        parser.error("--burst must be >= 1, and goes with --rate")
    if min(args.notifications, args.recipients, args.workers, args.concurrency, args.apis) < 1:
        parser.error(
            "--notifications, --recipients, --workers, --apis and --concurrency must be >= 1"
        )
    check_stores(parser, args)
    return args


def check_stores(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The options of the stores that go together; --shards defaults by --broker."""
    if args.config == "embedded" and (args.broker != "redis" or args.apis != 1):
        parser.error("--broker and --apis are for --config postgres-redis")
    if args.one_process and (
        args.config != "postgres-redis" or args.apis != 1 or args.urgent_workers
    ):
        parser.error(
            "--one-process is for --config postgres-redis, without --apis or --urgent-workers"
        )
    if args.api_plans and (
        args.config != "postgres-redis" or args.one_process or args.urgent_workers
    ):
        parser.error(
            "--api-plans is for --config postgres-redis, without --one-process or --urgent-workers"
        )
    if args.shards is not None and (args.broker == "nats" or not 1 <= args.shards <= 64):
        parser.error("--shards is for a Redis broker, 1 to 64")
    if args.broker == "redis-cluster" and args.shards is None:
        args.shards = 3
    if args.pg_server and not args.private_postgres:
        parser.error("--pg-server needs --private-postgres (the server's own settings)")
    if any("=" not in setting or " " in setting for setting in args.pg_server):
        parser.error("--pg-server takes NAME=VALUE without spaces")
    if args.pg_statements and not args.private_postgres:
        parser.error("--pg-statements needs --private-postgres (a server's preload setting)")


def spin() -> subprocess.Popen[bytes]:
    """A process that keeps one core from going idle, and gives it up to any other at once
    (``SCHED_IDLE``, the lowest scheduling class; Linux). It dies with this one."""
    code = (
        "import ctypes, os, signal\n"
        "ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG\n"
        "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
        "while True: pass"
    )
    return subprocess.Popen([sys.executable, "-c", code])


def wait_for_lock(lock: TextIO, wait: float) -> None:
    """Take a machine-wide lock so that two runs never measure each other: wait for a run
    in progress, at most ``wait`` seconds. The lock goes with the process."""
    deadline = time.monotonic() + wait
    waiting = False
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"another benchmark run held the lock for {wait:.0f}s") from None
            if not waiting:
                log("waiting for another benchmark run to finish")
                waiting = True
            time.sleep(1)


def run_benchmark(
    args: argparse.Namespace, make: Callable[[argparse.Namespace], Bench] | None = None
) -> int:
    def on_sigterm(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    bench = (make or Bench)(args)
    failed = True
    try:
        result = uvloop.run(bench.run())
        failed = False
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        bench.cleanup(failed)
    print(orjson.dumps(result).decode(), flush=True)
    return 0


def main() -> int:
    args = parse_args()
    if args.sink_records is not None:
        # The sink stands for the receivers, which are not on this machine in production:
        # on uvloop it takes as little of the machine's CPU from Clarion as it can.
        uvloop.run(run_sink(args.sink_records))
        return 0
    return run_locked(args)


def run_locked(
    args: argparse.Namespace, make: Callable[[argparse.Namespace], Bench] | None = None
) -> int:
    """Run one benchmark (``make`` builds it: a subclass of :class:`Bench`) under the
    machine-wide lock, so that no two measure each other; print its JSON."""
    with Path(tempfile.gettempdir(), "clarion-e2e.lock").open("w") as lock:
        wait_for_lock(lock, args.wait_for_other)
        return run_benchmark(args, make)


if __name__ == "__main__":
    sys.exit(main())
