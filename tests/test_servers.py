"""The real-server fixtures give working, isolated servers."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


@pytest.mark.postgres
async def test_postgres_url_is_a_fresh_database(postgres_url: str) -> None:
    engine = create_async_engine(postgres_url)
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT 1"))).scalar_one() == 1
            tables = await connection.execute(
                text("SELECT count(*) FROM information_schema.tables WHERE table_schema='public'")
            )
            assert tables.scalar_one() == 0
    finally:
        await engine.dispose()


@pytest.mark.redis
async def test_redis_url_is_an_empty_database(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.dbsize() == 0
        await client.set("clarion:test", "1")  # the next test must not see this
    finally:
        await client.aclose()
