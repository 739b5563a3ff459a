"""The attempt limit holds under a backlog older than the sweeper's patience: each failing
delivery gets exactly ``max_attempts`` calls, its ``attempts`` counts them, it ends
``dead``, and nothing is called again after a success."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from clarion.store.tables import deliveries
from harness import Harness, make_settings, running

TEMPLATE = {"channels": {"webhook": {"body": {"hello": "{{ recipient.id }}"}}}}
MAX_ATTEMPTS = 4
# Long enough that a busy event loop does not time a send out before its request is
# written (a connection's opening delayed past the deadline fails the attempt unsent).
WEBHOOK_TIMEOUT = 1.0
# Receivers by kind (the first part of their URL's path), and how many of each.
KINDS = {"fail": 500, "limited": 500, "hang": 30, "flaky": 500, "ok": 200}
FAILING = {"fail", "limited", "hang"}

pytestmark = pytest.mark.slow


class Receivers:
    """The webhook receivers (tests/backlog_receivers.py says what each kind answers), in
    a process of their own."""

    def __init__(self) -> None:
        self.calls: dict[str, list[int]] = {}
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        script = Path(__file__).with_name("backlog_receivers.py")
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            "--hang",
            str(WEBHOOK_TIMEOUT * 4),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        self.port = int(await asyncio.wait_for(self._proc.stdout.readline(), 30))

    def url(self, kind: str, rid: str) -> str:
        return f"http://127.0.0.1:{self.port}/{kind}/{rid}"

    async def close(self) -> None:
        """Stop the receivers; :attr:`calls` then holds every call they saw."""
        proc = self._proc
        if proc is None:
            return
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            proc.stdin.write(b"calls\n")
            await proc.stdin.drain()
            self.calls = json.loads(await asyncio.wait_for(proc.stdout.read(), 30))
            await asyncio.wait_for(proc.wait(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@pytest.fixture
async def impatient(backend: tuple[str, str]) -> AsyncIterator[Harness]:
    """Clarion whose sweeper publishes again what waits half a second, with leases and
    timeouts all shorter than the backlog below."""
    settings = make_settings(
        *backend,
        sweep_after=0.5,
        broker_lease=1.0,
        webhook_timeout=WEBHOOK_TIMEOUT,
        max_attempts=MAX_ATTEMPTS,
        retry_schedule="20ms,40ms,80ms",
        worker_concurrency=32,
        worker_tenant_share=1.0,
    )
    async with running(settings) as harness:
        yield harness


async def _broadcast(app: Harness, receivers: Receivers) -> dict[str, str]:
    """A topic send to every receiver; the kind of each recipient."""
    kinds = {f"{kind}-{i}": kind for kind, count in KINDS.items() for i in range(count)}
    people = [{"id": rid, "webhook_url": receivers.url(kind, rid)} for rid, kind in kinds.items()]
    for start in range(0, len(people), 1000):
        response = await app.client.post(
            "/v1/recipients/batch", json={"recipients": people[start:][:1000]}, headers=app.auth
        )
        assert response.status_code == 200, response.text
    response = await app.client.put(
        "/v1/topics/all/subscribers", json={"recipient_ids": list(kinds)}, headers=app.auth
    )
    assert response.status_code == 200, response.text
    await app.put_template("hook", TEMPLATE)
    sent = await app.send({"template": "hook", "to": {"topic": "all"}})
    assert sent.status_code == 202, sent.text
    return kinds


@pytest.mark.timeout(480)  # a backlog by design: on a slow machine it takes minutes
async def test_the_attempt_limit_holds_under_a_backlog(
    impatient: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    app = impatient
    caplog.set_level(logging.INFO, logger="clarion.pipeline.scheduler")
    receivers = Receivers()
    await receivers.start()
    try:
        kinds = await _broadcast(app, receivers)
        await app.drain(timeout=420)  # 220-240 s on SQLite on a slow hour
    finally:
        await receivers.close()
    # The backlog outlasted the sweeper's patience: it published deliveries again.
    assert any("publishing" in r.getMessage() for r in caplog.records)

    d = deliveries
    async with app.ctx.engine.connect() as conn:
        query = select(d.c.id, d.c.recipient_id, d.c.status, d.c.attempts)
        rows = (await conn.execute(query)).all()
    assert len(rows) == len(kinds)
    wrong = []
    for did, rid, status, attempts in rows:
        calls = receivers.calls.get(did, [])
        kind = kinds[rid]
        if kind in FAILING:
            expected = ("dead", MAX_ATTEMPTS, MAX_ATTEMPTS)
        elif kind == "flaky":
            expected = ("sent", 3, 3)
        else:
            expected = ("sent", 1, 1)
        if (status, attempts, len(calls)) != expected or (200 in calls and calls[-1] != 200):
            wrong.append((rid, status, attempts, calls))
    assert not wrong, f"{len(wrong)} deliveries off the limit, e.g. {wrong[:5]}"
