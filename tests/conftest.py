"""Shared fixtures. Real servers come from ``servers.py``; Clarion itself from ``harness.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from harness import Harness, make_settings, running
from servers import pg_server, postgres_url, redis_server, redis_url  # noqa: F401
from webhook_sink import WebhookSink


@pytest.fixture(params=["sqlite+embedded", "postgres+redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(database URL, broker URL) for each supported configuration."""
    if request.param == "sqlite+embedded":
        return f"sqlite+aiosqlite:///{tmp_path / 'clarion.db'}", "embedded://"
    return request.getfixturevalue("postgres_url"), request.getfixturevalue("redis_url")


@pytest.fixture
async def app(backend: tuple[str, str]) -> AsyncIterator[Harness]:
    """Clarion with every role running, on each backend."""
    async with running(make_settings(*backend)) as harness:
        yield harness


@pytest.fixture
async def lite(tmp_path: Path) -> AsyncIterator[Harness]:
    """Clarion on the embedded default only (for API checks that don't touch backends)."""
    async with running(
        make_settings(f"sqlite+aiosqlite:///{tmp_path / 'clarion.db'}", "embedded://")
    ) as harness:
        yield harness


@pytest.fixture
async def sink() -> AsyncIterator[WebhookSink]:
    server = WebhookSink()
    await server.start()
    yield server
    await server.close()
