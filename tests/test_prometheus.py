"""Debian's Prometheus scraping Clarion's roles on PostgreSQL + Redis.

``clarion api``, ``clarion worker`` and ``clarion scheduler`` run as processes, the last two
with their operations port (``CLARION_METRICS_PORT``); a real ``prometheus`` scrapes all
three every second, and the test asks Prometheus's HTTP query API what it sees after a few
sends: the sent counter going up, every stream's lag, the accept → sent histogram.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from procs import Procs, clarion_env, create_tenant, free_port, wait_ready, wait_until
from servers import _missing

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(120)]

TEMPLATE = {"channels": {"email": {"subject": "Hi {{ n }}", "text": "Number {{ n }}"}}}
CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: clarion
    static_configs:
      - targets: [{targets}]
"""


@dataclass(frozen=True)
class Ports:
    prometheus: int
    api: int
    worker: int
    scheduler: int


@pytest.fixture
def ports(tmp_path: Path) -> Iterator[Ports]:
    """A ``prometheus`` scraping the three roles' ports every second (they start later);
    stopped after the test."""
    binary = shutil.which("prometheus")
    if binary is None:
        _missing("prometheus is not installed (Debian: apt-get install prometheus)")
    chosen = Ports(free_port(), free_port(), free_port(), free_port())
    targets = ", ".join(f"'127.0.0.1:{p}'" for p in (chosen.api, chosen.worker, chosen.scheduler))
    config = tmp_path / "prometheus.yml"
    config.write_text(CONFIG.format(targets=targets))
    with (tmp_path / "prometheus.log").open("wb") as log:
        server = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{chosen.prometheus}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield chosen
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


async def query(client: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
    response = await client.get("/api/v1/query", params={"query": expr})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def value(result: list[dict[str, Any]]) -> float:
    return sum(float(item["value"][1]) for item in result)


async def test_prometheus_sees_sends_lag_and_latency(
    postgres_url: str, redis_url: str, procs: Procs, ports: Ports
) -> None:
    settings = {"log_level": "INFO", "shutdown_timeout": 3}
    env = clarion_env(postgres_url, redis_url, http_port=ports.api, **settings)
    key = await asyncio.to_thread(create_tenant, env, "acme")
    auth = {"Authorization": f"Bearer {key}"}
    api = procs.start("api", ["api"], env)
    worker_env = {**env, "CLARION_METRICS_PORT": f"{ports.worker}"}
    worker = procs.start("worker", ["worker", "--channels", "email"], worker_env)
    scheduler_env = {**env, "CLARION_METRICS_PORT": f"{ports.scheduler}"}
    scheduler = procs.start("scheduler", ["scheduler"], scheduler_env)
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.api}", timeout=30) as client,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.prometheus}", timeout=10) as prom,
    ):
        await wait_ready(client, api)
        for proc, port in ((worker, ports.worker), (scheduler, ports.scheduler)):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as ops:
                await wait_ready(ops, proc)
        await run_checks(client, prom, auth, procs, ports.scheduler)
    # Every role says what it serves; a worker sending to the sandbox on PostgreSQL says so.
    assert f"ready: api on http://127.0.0.1:{ports.api}" in api.output(100_000)
    worker_log = worker.output(100_000)
    assert (
        "ready: planner (streams plan.critical, plan.high, plan, plan.chunks); "
        "channel workers for email" in worker_log
    )
    assert f"metrics and probes on http://127.0.0.1:{ports.worker}/metrics" in worker_log
    assert "CLARION_DEFAULT_PROVIDER is `sandbox`" in worker_log
    assert "has no email provider: its email deliveries go to the sandbox" in worker_log
    assert "ready: scheduler (outbox relay, sweeper, schedules)" in scheduler.output(100_000)


async def run_checks(
    client: httpx.AsyncClient,
    prom: httpx.AsyncClient,
    auth: dict[str, str],
    procs: Procs,
    scheduler_port: int,
) -> None:
    async def every_target_up() -> bool:
        try:
            up = await query(prom, "up")
        except httpx.TransportError:
            return False
        return len(up) == 3 and value(up) == 3

    await wait_until(every_target_up, 60, "Prometheus to scrape the three roles", 0.5)
    sent = 'sum(clarion_deliveries_total{status="sent",channel="email"}) or vector(0)'
    before = value(await query(prom, sent))
    assert (await client.put("/v1/templates/hello", json=TEMPLATE, headers=auth)).is_success
    assert (
        await client.put("/v1/recipients/u-1", json={"email": "u@example.com"}, headers=auth)
    ).is_success
    for n in range(5):
        body = {"template": "hello", "to": {"recipient_id": "u-1"}, "data": {"n": n}}
        response = await client.post("/v1/notifications", json=body, headers=auth)
        assert response.status_code == 202, response.text

    async def five_more_sent() -> bool:
        return value(await query(prom, sent)) >= before + 5

    await wait_until(five_more_sent, 60, "the sent counter to rise by 5", 0.5, procs.report)
    lag = await query(prom, 'clarion_stream_lag{stream="send.email.normal"}')
    assert lag, "no stream lag series"
    assert {item["metric"]["group"] for item in lag} == {"clarion"}
    planned = await query(prom, 'clarion_stream_lag{stream="plan"}')
    assert planned
    buckets = await query(
        prom, 'sum by (le) (clarion_delivery_latency_seconds_bucket{channel="email",lane="normal"})'
    )
    assert buckets, "no latency histogram"
    assert max(float(b["value"][1]) for b in buckets) >= 5
    p99 = await query(
        prom,
        "histogram_quantile(0.99, sum by (le) "
        '(clarion_delivery_latency_seconds_bucket{channel="email"}))',
    )
    assert p99
    assert float(p99[0]["value"][1]) > 0

    async def five_accepted() -> bool:
        # The API is a target of its own, scraped on its own schedule.
        return value(await query(prom, "sum(clarion_notifications_accepted_total)")) >= 5

    await wait_until(five_accepted, 30, "the accepted counter to reach 5", 0.5)
    # The dead-letter backlog is read by the scheduler, one series per channel.
    backlog = await query(prom, "clarion_dead_letter_backlog")
    scraped = {item["metric"]["instance"] for item in backlog}
    assert scraped == {f"127.0.0.1:{scheduler_port}"}, backlog
    assert {item["metric"]["channel"] for item in backlog} >= {"email", "webhook"}
    assert value(backlog) == 0
