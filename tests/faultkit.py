"""Tools for the fault-injection tests: provider stand-ins that fail, hang and keep time,
and private Redis and PostgreSQL servers a test may stop and start again.

The stand-ins add modes to those in ``standins/`` without changing them: a SendGrid that
answers 503 to everything, or holds every request, until told otherwise; a Twilio that
notes when each request arrived. Both count what they accepted by Clarion's delivery id
(SendGrid's ``custom_args``, the ``delivery`` parameter of Twilio's ``StatusCallback``).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest
from aiohttp import web
from sqlalchemy import func, select

from clarion.api.app import create_app
from clarion.store.tables import deliveries
from harness import Harness
from servers import _as_postgres_user, _free_port, _pg_bindir, _private_dir, _run, _wait_for_redis
from standins.sendgrid import SendgridStandIn
from standins.twilio import TwilioStandin

SECRET_KEY = base64.b64encode(secrets.token_bytes(32)).decode()
# Long enough to outlive any send timeout of the tests; a held request is let go at close.
HOLD_AT_MOST = 30.0

OK, FAIL, HOLD = "ok", "fail", "hold"


@dataclass(slots=True)
class Arrival:
    at: float  # time.monotonic() when the request arrived
    delivery_id: str | None
    status: int | None = None  # what it was answered (None: not answered yet)


@dataclass
class FaultySendgrid(SendgridStandIn):
    """SendGrid whose ``mode`` is ``ok`` (itself), ``fail`` (503 to everything) or ``hold``
    (keep every request waiting until :meth:`let_go`, then answer 503)."""

    mode: str = OK
    arrivals: list[Arrival] = field(default_factory=list)
    accepted: collections.Counter[str] = field(default_factory=collections.Counter)
    holding: int = 0
    most_held: int = 0
    _let_go: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> FaultySendgrid:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A client that gives up on a held request cancels its handler: ``holding`` counts
        # only requests a client is still waiting on.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = self._runner.addresses[0][1]
        return self

    def config(self) -> dict[str, Any]:
        return {"api_key": "SG.standin", "from": "no-reply@acme.test", "base_url": self.url}

    def let_go(self) -> None:
        """Answer (503) every held request and hold no more (``mode`` becomes ``ok``)."""
        self.mode = OK
        self._let_go.set()

    async def close(self) -> None:
        self._let_go.set()
        await super().close()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        arrival = Arrival(time.monotonic(), _sendgrid_delivery(body))
        self.arrivals.append(arrival)
        if self.mode == HOLD:
            await self._hold()
            arrival.status = 503
            return web.json_response({"errors": [{"message": "held"}]}, status=503)
        if self.mode == FAIL:
            arrival.status = 503
            return web.json_response({"errors": [{"message": "unavailable"}]}, status=503)
        response = await super()._handle(request)
        arrival.status = response.status
        if response.status == 202 and arrival.delivery_id is not None:
            self.accepted[arrival.delivery_id] += 1
        return response

    async def _hold(self) -> None:
        self.holding += 1
        self.most_held = max(self.most_held, self.holding)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._let_go.wait(), HOLD_AT_MOST)
        finally:
            self.holding -= 1


def _sendgrid_delivery(body: bytes) -> str | None:
    try:
        value = orjson.loads(body)["custom_args"]["clarion_delivery_id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return value if isinstance(value, str) else None


@dataclass
class TimedTwilio(TwilioStandin):
    """Twilio that notes when each request arrived and counts accepted messages by the
    delivery id in their ``StatusCallback``."""

    arrivals: list[float] = field(default_factory=list)

    @property
    def accepted(self) -> collections.Counter[str]:
        return collections.Counter(twilio_delivery(sms.status_callback) for sms in self.received)

    async def _create(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.monotonic())
        return await super()._create(request)


def twilio_delivery(callback: str | None) -> str:
    """The delivery id in a StatusCallback URL (Clarion names it there)."""
    assert callback is not None, "sent without a StatusCallback"
    [delivery] = parse_qs(urlsplit(callback).query)["delivery"]
    return delivery


def most_in_any_window(stamps: list[float], window: float = 1.0) -> int:
    """The largest number of ``stamps`` inside any half-open interval of ``window`` s."""
    ordered = sorted(stamps)
    most, start = 0, 0
    for end, stamp in enumerate(ordered):
        while stamp - ordered[start] >= window:
            start += 1
        most = max(most, end - start + 1)
    return most


# -- Clarion ---------------------------------------------------------------------------------


async def put_provider(app: Harness, name: str, **body: Any) -> None:
    response = await app.client.put(f"/v1/providers/{name}", json=body, headers=app.auth)
    assert response.status_code in (200, 201), response.text
    # The planner names the provider from the settings prepare() loaded.
    await app.ctx.providers.prepare([app.tenant_id])


async def put_recipients(app: Harness, recipients: list[dict[str, Any]]) -> None:
    for start in range(0, len(recipients), 1000):
        chunk = recipients[start : start + 1000]
        response = await app.client.post(
            "/v1/recipients/batch", json={"recipients": chunk}, headers=app.auth
        )
        assert response.status_code == 200, response.text


async def send_batch(app: Harness, items: list[dict[str, Any]]) -> list[str]:
    """Submit ``items`` in batches of 1,000; the ids of the notifications, all accepted."""
    ids: list[str] = []
    for start in range(0, len(items), 1000):
        response = await app.client.post(
            "/v1/notifications/batch",
            json={"notifications": items[start : start + 1000]},
            headers=app.auth,
            timeout=60,
        )
        assert response.status_code == 202, response.text
        results = response.json()["results"]
        assert all("id" in r for r in results), [r for r in results if "id" not in r][:3]
        ids += [r["id"] for r in results]
    return ids


def tolerant_client(app: Harness) -> httpx.AsyncClient:
    """A client on the harness's app that gets a 500 as a response, as a remote client
    would, instead of the exception behind it."""
    transport = httpx.ASGITransport(
        app=create_app(app.ctx, app.runtime.intake), raise_app_exceptions=False
    )
    return httpx.AsyncClient(transport=transport, base_url="http://clarion", headers=app.auth)


async def submit_until_accepted(
    client: httpx.AsyncClient, items: list[dict[str, Any]], tries: int = 200
) -> int:
    """POST one batch again until it is accepted (each item carries an idempotency key,
    so a repeat stores nothing twice); how many answers were 5xx before."""
    for failures in range(tries):
        response = await client.post(
            "/v1/notifications/batch", json={"notifications": items}, timeout=60
        )
        if response.status_code < 500:
            assert response.status_code == 202, response.text
            assert all("id" in r for r in response.json()["results"])
            return failures
    raise AssertionError(f"the batch was refused {tries} times: {response.status_code}")


async def deliveries_of(app: Harness, nids: list[str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for nid in nids:
        found += (await app.notification(nid))["deliveries"]
    return found


async def count_by_status(app: Harness, channel: str | None = None) -> dict[str, int]:
    """Deliveries of the harness's tenant (of one channel), by status, from the store."""
    query = (
        select(deliveries.c.status, func.count())
        .where(deliveries.c.tenant_id == app.tenant_id)
        .group_by(deliveries.c.status)
    )
    if channel is not None:
        query = query.where(deliveries.c.channel == channel)
    async with app.ctx.engine.connect() as conn:
        return {str(status): int(n) for status, n in (await conn.execute(query)).all()}


def check_roles_alive(app: Harness) -> None:
    """Fail at once, naming it, when a role of the harness's runtime has stopped for good
    (rather than waiting out a timeout for work that can no longer happen)."""
    for task in app.runtime._tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise AssertionError(f"role {task.get_name()} died: {task.exception()!r}")


async def breaker_states(app: Harness) -> dict[str, dict[str, Any]]:
    response = await app.client.get("/v1/health/providers", headers=app.auth)
    assert response.status_code == 200, response.text
    return {item["provider"]: item for item in response.json()["data"]}


# -- servers a test may stop -----------------------------------------------------------------


@dataclass
class RedisProcess:
    """A private ``redis-server`` without persistence: killing it loses everything."""

    directory: str
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server not found on PATH")
        args = [binary, "--save", "", "--appendonly", "no", "--dir", self.directory]
        args += ["--port", str(self.port), "--bind", "127.0.0.1"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_redis(self.url, self.process)

    def kill(self) -> None:
        """SIGKILL: the data is gone and every connection drops."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None


@contextlib.contextmanager
def private_redis() -> Iterator[RedisProcess]:
    """A Redis server of this test alone, killed at the end."""
    with tempfile.TemporaryDirectory(prefix="clarion-redis-") as tmp:
        server = RedisProcess(directory=tmp)
        try:
            server.start()
            yield server
        finally:
            server.kill()


@dataclass
class PostgresProcess:
    """A private PostgreSQL cluster (trust auth, no fsync) in its own directory."""

    bindir: Path
    tmp: str
    port: int = field(default_factory=_free_port)

    @property
    def data(self) -> str:
        return str(Path(self.tmp) / "data")

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        _run([str(self.bindir / "pg_ctl"), "-D", self.data, *args], cwd=self.tmp)

    def init(self) -> None:
        initdb = [str(self.bindir / "initdb"), "-D", self.data, "-A", "trust", "-U", "postgres"]
        _run([*initdb, "--no-sync", "-E", "UTF8", "--locale=C"], cwd=self.tmp)

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.tmp} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        log = str(Path(self.tmp) / "postgres.log")
        self._pg_ctl("-l", log, "-o", options, "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("stop", "-m", mode, "-w")

    def running(self) -> bool:
        status = subprocess.run(
            _as_postgres_user([str(self.bindir / "pg_ctl"), "-D", self.data, "status"]),
            cwd=self.tmp,
            capture_output=True,
            check=False,
        )
        return status.returncode == 0


@contextlib.asynccontextmanager
async def private_postgres() -> AsyncIterator[PostgresProcess]:
    """A PostgreSQL server of this test alone, stopped and removed at the end."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries not found")
    server = PostgresProcess(bindir, _private_dir())
    try:
        await asyncio.to_thread(server.init)
        await asyncio.to_thread(server.start)
        yield server
    finally:
        if await asyncio.to_thread(server.running):
            await asyncio.to_thread(server.stop, "immediate")
        shutil.rmtree(server.tmp, ignore_errors=True)
