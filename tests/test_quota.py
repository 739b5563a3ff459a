"""Intake quotas per tenant: 429 with Retry-After and RateLimit-* headers."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import func, select, update

from clarion.api.quota import Quota, quota_of
from clarion.config import Settings
from clarion.store import tenants as tenant_store
from clarion.store.tables import notifications, tenants
from harness import Harness

TEMPLATE = {"channels": {"inapp": {"title": "Hi", "body": "Hello {{ recipient.id }}"}}}


async def _tenant(app: Harness, name: str, settings: dict[str, Any]) -> tuple[str, dict[str, str]]:
    tenant = await tenant_store.create_tenant(app.ctx.engine, name)
    async with app.ctx.engine.begin() as conn:
        await conn.execute(
            update(tenants).where(tenants.c.id == tenant.id).values(settings=settings)
        )
    key = await tenant_store.create_key(app.ctx.engine, tenant.id, ["send", "read", "manage"])
    auth = {"Authorization": f"Bearer {key}"}
    put = await app.client.put("/v1/recipients/u", json={}, headers=auth)
    assert put.status_code == 200, put.text
    put = await app.client.put("/v1/templates/hi", json=TEMPLATE, headers=auth)
    assert put.status_code == 200, put.text
    return tenant.id, auth


async def _send(app: Harness, auth: dict[str, str]) -> httpx.Response:
    body = {"template": "hi", "to": {"recipient_id": "u"}}
    return await app.client.post("/v1/notifications", json=body, headers=auth)


async def _stored(app: Harness, tenant_id: str) -> int:
    query = select(func.count()).where(notifications.c.tenant_id == tenant_id)
    async with app.ctx.engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


# A slow refill (one notification per 20 s) keeps the counts independent of how long the
# requests take.
SMALL = {"intake_rate_per_second": 0.05, "intake_burst": 5}


async def test_the_sixth_notification_is_refused(app: Harness) -> None:
    tenant_id, auth = await _tenant(app, "small", SMALL)
    for remaining in (4, 3, 2, 1, 0):
        response = await _send(app, auth)
        assert response.status_code == 202, response.text
        assert response.headers["RateLimit-Limit"] == "5"
        assert response.headers["RateLimit-Remaining"] == str(remaining)
        assert 0 < int(response.headers["RateLimit-Reset"]) <= 100
    refused = await _send(app, auth)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit-Limit"] == "5"
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert int(refused.headers["RateLimit-Reset"]) >= 1
    assert await _stored(app, tenant_id) == 5
    # Other tenants have their own buckets.
    other = await app.send({"template": "missing", "to": {"recipient_id": "nobody"}})
    assert other.status_code == 422
    assert other.headers["RateLimit-Limit"] == str(app.settings.intake_burst)


async def test_a_batch_is_charged_whole(app: Harness) -> None:
    tenant_id, auth = await _tenant(app, "batchy", SMALL)
    item = {"template": "hi", "to": {"recipient_id": "u"}}
    too_many = await app.client.post(
        "/v1/notifications/batch", json={"notifications": [item] * 10}, headers=auth
    )
    assert too_many.status_code == 429
    assert too_many.json()["error"]["code"] == "rate_limited"
    assert int(too_many.headers["Retry-After"]) >= 1
    assert await _stored(app, tenant_id) == 0
    fits = await app.client.post(
        "/v1/notifications/batch", json={"notifications": [item] * 4}, headers=auth
    )
    assert fits.status_code == 202, fits.text
    assert fits.headers["RateLimit-Remaining"] == "1"
    over = await app.client.post(
        "/v1/notifications/batch", json={"notifications": [item] * 2}, headers=auth
    )
    assert over.status_code == 429
    assert await _stored(app, tenant_id) == 4


async def test_requests_refused_before_the_quota_cost_nothing(app: Harness) -> None:
    _, auth = await _tenant(app, "strict", {"intake_rate_per_second": 0.01, "intake_burst": 1})
    invalid = await app.client.post("/v1/notifications", json={"template": "hi"}, headers=auth)
    assert invalid.status_code == 422
    assert (await _send(app, auth)).status_code == 202


def test_quota_settings_fall_back_to_the_deployment() -> None:
    settings = Settings(intake_rate_per_second=100, intake_burst=200)
    assert quota_of(settings, None) == Quota(100, 200)
    assert quota_of(settings, {"intake_rate_per_second": 2.5}) == Quota(2.5, 200)
    assert quota_of(settings, {"intake_burst": 7}) == Quota(100, 7)
    for bad in ("ten", -1, 0, True, float("nan"), None, [1]):
        assert quota_of(settings, {"intake_rate_per_second": bad, "intake_burst": bad}) == (
            Quota(100, 200)
        )
