"""Shared fixtures. Real servers come from ``servers.py``; Clarion itself from ``harness.py``."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from clarion.pipeline.runtime import Roles
from harness import CLUSTER_SHARDS, Harness, make_settings, running
from procs import Procs
from standins import serving
from webhook_sink import WebhookSink

# The real servers, and the migrated databases copied from a template on them.
pytest_plugins = ["servers", "cluster_servers", "databases"]

# The suite talks to its own servers on loopback: a proxy set in the shell that runs it
# would carry that traffic (Clarion honours these, docs/operations.md). Tests of the proxy
# set their own.
for _name in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY"):
    for _spelling in (_name, _name.lower(), f"CLARION_{_name}"):
        os.environ.pop(_spelling, None)


# The configurations every pipeline test runs on; a few end-to-end tests add NATS or a
# Redis Cluster (``@pytest.mark.parametrize("backend", WITH_NATS, indirect=True)``), whose
# brokers the contract suite (tests/test_broker_contract.py) covers on its own.
BACKENDS = ["sqlite+embedded", "postgres+redis"]
# NATS and the six-node Redis Cluster run in the slow step (one process at a time): beside
# the fast suite's two, a cluster on two cores answers slowly enough to upset timings.
WITH_NATS = [*BACKENDS, pytest.param("postgres+nats", marks=[pytest.mark.nats, pytest.mark.slow])]
WITH_ENGINES = [*WITH_NATS, pytest.param("postgres+redis-cluster", marks=pytest.mark.slow)]
CLUSTER = pytest.param("redis-cluster", marks=pytest.mark.slow)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(database URL, broker URL) for each supported configuration; the database is the
    test's own, at the newest schema."""
    if request.param == "sqlite+embedded":
        return request.getfixturevalue("migrated_sqlite_url"), "embedded://"
    urls = {"postgres+nats": "nats_url", "postgres+redis-cluster": "redis_cluster_url"}
    broker = urls.get(request.param, "redis_url")
    return request.getfixturevalue("migrated_postgres_url"), request.getfixturevalue(broker)


@pytest.fixture(params=["sqlite+embedded", "postgres+redis"])
def unmigrated_backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(database URL, broker URL) for each supported configuration, the database empty:
    for the tests of the migrations themselves."""
    if request.param == "sqlite+embedded":
        return f"sqlite+aiosqlite:///{tmp_path / 'clarion.db'}", "embedded://"
    return request.getfixturevalue("postgres_url"), request.getfixturevalue("redis_url")


@pytest.fixture
async def app(backend: tuple[str, str]) -> AsyncIterator[Harness]:
    """Clarion with every role running, on each backend."""
    shards = CLUSTER_SHARDS if backend[1].startswith("redis+cluster://") else 1
    async with running(make_settings(*backend, broker_shards=shards)) as harness:
        yield harness


@pytest.fixture
async def planned_only(backend: tuple[str, str]) -> AsyncIterator[Harness]:
    """Clarion that plans deliveries and sends none (no channel worker)."""
    async with running(make_settings(*backend), Roles(api=True, planner=True)) as harness:
        yield harness


@pytest.fixture
async def lite(migrated_sqlite_url: str) -> AsyncIterator[Harness]:
    """Clarion on the embedded default only (for API checks that don't touch backends)."""
    async with running(make_settings(migrated_sqlite_url, "embedded://")) as harness:
        yield harness


@pytest.fixture
async def strict(migrated_sqlite_url: str) -> AsyncIterator[Harness]:
    """Clarion on the embedded default refusing private and plain-http webhook addresses
    (``allow_private_webhooks`` off, as in production)."""
    settings = make_settings(migrated_sqlite_url, "embedded://", allow_private_webhooks=False)
    async with running(settings) as harness:
        yield harness


@pytest.fixture
async def sink() -> AsyncIterator[WebhookSink]:
    async with serving(WebhookSink()) as server:
        yield server


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """Clarion processes a test starts (tests/procs.py), all stopped when it ends."""
    started = Procs(tmp_path)
    try:
        yield started
    finally:
        started.close()
