"""A tenant whose receivers hang holds no more than its share of a worker: another tenant's
deliveries and status events go out as if it were alone."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from harness import Harness, make_settings, running
from standins import serving
from webhook_sink import WebhookSink

HOOK = {"channels": {"webhook": {"body": {"n": "{{ n }}"}}}}
NOISY, QUIET = 1000, 200
# With the `app` fixture a hanging call holds its slot for the 10 s webhook timeout, so a
# quiet tenant's send that waited behind one would arrive 10 s late or more. Half of that
# tells the two apart on a busy machine too (several test processes on two cores).
HELD_BACK = 5.0
SECRET_KEY = base64.b64encode(secrets.token_bytes(32)).decode()


class Hang:
    """An HTTP server that reads requests and never answers them."""

    def __init__(self) -> None:
        self.arrived = 0
        self.first_tries = 0  # requests of a delivery's first attempt
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._changed = asyncio.Event()
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=2048)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if head := await reader.readuntil(b"\r\n\r\n"):
                self.arrived += 1
                self.first_tries += b"\r\nclarion-attempt: 1\r\n" in head.lower()
                self._changed.set()
            while await reader.read(65536):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def wait_for(self, count: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while self.arrived < count:
                self._changed.clear()
                await self._changed.wait()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()


@pytest.fixture
async def hang() -> AsyncIterator[Hang]:
    async with serving(Hang()) as server:
        yield server


@pytest.fixture
async def app(backend: tuple[str, str]) -> AsyncIterator[Harness]:
    """Clarion on each backend with the default webhook timeout (10 s): a hanging receiver
    holds its slot that long. Once a test is over, the noisy tenant's POSTs still under
    way are handed back at a short deadline rather than waited for."""
    settings = make_settings(
        *backend, webhook_timeout=10.0, secret_key=SECRET_KEY, shutdown_timeout=0.5
    )
    async with running(settings) as harness:
        yield harness


async def tenant(app: Harness, name: str) -> httpx.AsyncClient:
    key = await app.new_tenant(name)
    client = httpx.AsyncClient(
        transport=app.client._transport,
        base_url="http://clarion",
        headers={"Authorization": f"Bearer {key}"},
    )
    response = await client.put("/v1/templates/hook", json=HOOK)
    assert response.status_code == 200, response.text
    return client


async def send(client: httpx.AsyncClient, prefix: str, count: int, url: str) -> float:
    """``count`` notifications, each to a recipient of its own at ``url``/<n>; returns when
    they were accepted."""
    recipients = [
        {"id": f"{prefix}{i}", "webhook_url": f"{url}/{prefix}/{i}"} for i in range(count)
    ]
    for start in range(0, count, 500):
        response = await client.post(
            "/v1/recipients/batch", json={"recipients": recipients[start : start + 500]}
        )
        assert response.status_code == 200, response.text
    notifications = [
        {
            "template": "hook",
            "to": {"recipient_id": f"{prefix}{i}"},
            "data": {"n": i},
            "idempotency_key": f"{prefix}-{i}",
        }
        for i in range(count)
    ]
    for start in range(0, count, 500):
        response = await client.post(
            "/v1/notifications/batch",
            json={"notifications": notifications[start : start + 500]},
        )
        assert response.status_code == 202, response.text
    return time.time()


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[max(0, int(len(ordered) * 0.99) - 1)]


async def test_hanging_receivers_of_one_tenant_do_not_slow_another(
    app: Harness, hang: Hang, sink: WebhookSink
) -> None:
    noisy, quiet = await tenant(app, "noisy"), await tenant(app, "quiet")
    async with contextlib.aclosing(noisy), contextlib.aclosing(quiet):
        await send(noisy, "a", NOISY, hang.url)
        # The noisy tenant's receivers (all on one host) hold every slot they may have.
        limit = app.runtime.workers[0]._consumer.tenant_limit
        await hang.wait_for(app.runtime.workers[0]._consumer.endpoint_limit, timeout=30)

        accepted = await send(quiet, "b", QUIET, sink.url)
        await sink.wait_for(QUIET, timeout=30)

    latencies = [hit.at - accepted for hit in sink.received if hit.path.startswith("/b/")]
    assert len(latencies) == QUIET
    assert p99(latencies) < HELD_BACK, sorted(latencies)[-5:]
    # The noisy tenant was held to its share: no more of its requests than its limit
    # arrived while the quiet tenant's went through.
    assert hang.arrived <= limit * len(app.runtime.workers)


async def test_a_hanging_status_webhook_of_one_tenant_does_not_slow_another(
    app: Harness, hang: Hang, sink: WebhookSink
) -> None:
    noisy, quiet = await tenant(app, "noisy"), await tenant(app, "quiet")
    async with contextlib.aclosing(noisy), contextlib.aclosing(quiet):
        for client, url in ((noisy, hang.url), (quiet, sink.url)):
            response = await client.put(
                "/v1/webhooks/status", json={"url": f"{url}/events", "events": ["delivery.sent"]}
            )
            assert response.status_code == 200, response.text
        # The noisy tenant's deliveries go out at once; each of their status events hangs.
        await send(noisy, "a", NOISY, sink.url)
        events = app.runtime._events
        assert events is not None
        await hang.wait_for(events._consumer.endpoint_limit, timeout=30)

        accepted = await send(quiet, "b", QUIET, sink.url)
        await sink.wait_for(NOISY + 2 * QUIET, timeout=30)

    latencies = [hit.at - accepted for hit in sink.received if hit.path == "/events"]
    assert len(latencies) == QUIET
    assert p99(latencies) < HELD_BACK, sorted(latencies)[-5:]


async def test_a_tenant_with_a_thousand_hanging_status_webhooks_does_not_slow_another(
    app: Harness, hang: Hang, sink: WebhookSink
) -> None:
    """Each of the noisy tenant's events goes to a thousand webhooks that hang: its POSTs
    in flight are held to its share, so the quiet tenant's events never wait for one of
    the dispatcher's connections."""
    noisy, quiet = await tenant(app, "noisy"), await tenant(app, "quiet")
    async with contextlib.aclosing(noisy), contextlib.aclosing(quiet):
        for start in range(0, 1000, 100):
            answers = await asyncio.gather(
                *(
                    noisy.put(
                        f"/v1/webhooks/h{i}", json={"url": f"{hang.url}/{i}", "events": ["*"]}
                    )
                    for i in range(start, start + 100)
                )
            )
            assert all(a.status_code == 200 for a in answers), answers[0].text
        response = await quiet.put(
            "/v1/webhooks/status", json={"url": f"{sink.url}/events", "events": ["*"]}
        )
        assert response.status_code == 200, response.text
        await send(noisy, "a", 100, sink.url)
        events = app.runtime._events
        assert events is not None
        await hang.wait_for(16, timeout=30)  # its POSTs hang

        accepted = await send(quiet, "b", QUIET, sink.url)
        await sink.wait_for(100 + 2 * QUIET, timeout=30)

    latencies = [hit.at - accepted for hit in sink.received if hit.path == "/events"]
    assert len(latencies) == QUIET
    assert p99(latencies) < HELD_BACK, sorted(latencies)[-5:]
    # The noisy tenant's POSTs were held to its share of the dispatcher.
    assert hang.arrived <= events._consumer.tenant_limit


@pytest.fixture
async def outage_app(backend: tuple[str, str]) -> AsyncIterator[Harness]:
    """Clarion with a short webhook timeout and retry delay, attempts enough that every
    failing delivery keeps retrying while the test runs, and a pool of 64 sends (a
    tenant's share 32, an endpoint's 16, the retries' 8): small enough that a few hundred
    deliveries fill the failing endpoints' shares, so the slots they hold, not the
    machine's CPU, are what the healthy endpoint's work could wait for."""
    settings = make_settings(
        *backend,
        webhook_timeout=0.5,
        retry_schedule="100ms",
        max_attempts=50,
        secret_key=SECRET_KEY,
        worker_concurrency=64,
    )
    async with running(settings) as harness:
        yield harness


HANGING, FAILING = 400, 100


# Hundreds of sends timing out and retrying keep the process busy: run alone (the slow
# step), not beside other test processes.
@pytest.mark.slow
async def test_retries_to_failing_endpoints_do_not_starve_the_same_tenants_fresh_work(
    outage_app: Harness, hang: Hang, sink: WebhookSink
) -> None:
    """An outage of two of a tenant's endpoints (one hangs, one answers 503 slowly) fills
    their endpoint shares and the retries' share, with hundreds more of their deliveries
    waiting: the tenant's fresh deliveries to a healthy endpoint go out past them. Judged
    by order, not by the clock: all of them arrive before the hanging endpoint has been
    sent half of the work still waiting for it, which it would have been sent first had
    they queued behind it."""
    consumer = outage_app.runtime.workers[0]._consumer
    failing = WebhookSink(respond=lambda _: 503, keep_bodies=False, delay=0.2)
    await failing.start()
    client = await tenant(outage_app, "busy")
    async with contextlib.aclosing(client):
        await send(client, "h", HANGING, hang.url)
        await send(client, "f", FAILING, failing.url)
        # Both endpoints in trouble: the hanging one's first sends timed out, the failing
        # one's deliveries are being retried.
        await failing.wait_for(FAILING + FAILING // 2, timeout=30)
        await hang.wait_for(2 * consumer.tenant_limit, timeout=30)
        before = hang.first_tries
        assert before < HANGING // 2, "most of the hanging endpoint's work still waits"

        await send(client, "b", QUIET, sink.url)
        arrived: dict[str, list[int]] = {}
        async with asyncio.timeout(30):
            while len(arrived) < QUIET:
                await sink.wait_for(sink.count + 1, timeout=30)
                arrived.clear()
                for hit in sink.received:
                    attempt = int(hit.headers["clarion-attempt"])
                    arrived.setdefault(hit.path, []).append(attempt)
        during = hang.first_tries - before
    await failing.close()

    assert during < (HANGING - before) // 2, (before, during)
    # A delivery reached twice was tried again after an attempt that timed out (the sink
    # shares the test's event loop, which a busy machine can hold up past the timeout):
    # never the same attempt twice.
    assert all(attempts == sorted(set(attempts)) for attempts in arrived.values()), arrived


async def test_a_backlog_of_events_to_a_hanging_webhook_does_not_hold_back_another_tenant(
    app: Harness, hang: Hang, sink: WebhookSink
) -> None:
    """More of the noisy tenant's events wait for its hanging webhook than the dispatcher
    may hold: those it cannot start are put back for later, and it reads past them."""
    noisy, quiet = await tenant(app, "noisy"), await tenant(app, "quiet")
    events = app.runtime._events
    assert events is not None
    backlog = 3 * events._consumer._max_held
    async with contextlib.aclosing(noisy), contextlib.aclosing(quiet):
        for client, url in ((noisy, hang.url), (quiet, sink.url)):
            response = await client.put(
                "/v1/webhooks/status", json={"url": f"{url}/events", "events": ["delivery.sent"]}
            )
            assert response.status_code == 200, response.text
        await send(noisy, "a", backlog, sink.url)
        await sink.wait_for(backlog, timeout=60)  # its deliveries, and so its events

        accepted = await send(quiet, "b", QUIET, sink.url)
        await sink.wait_for(backlog + 2 * QUIET, timeout=30)

    latencies = [hit.at - accepted for hit in sink.received if hit.path == "/events"]
    assert len(latencies) == QUIET
    assert p99(latencies) < HELD_BACK, sorted(latencies)[-5:]
    assert hang.arrived <= events._consumer.endpoint_limit
