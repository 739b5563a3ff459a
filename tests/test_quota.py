"""Intake quotas per tenant: 429 with Retry-After and RateLimit-* headers."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy import func, select, update

from clarion.api.quota import Quota, quota_of
from clarion.config import Settings
from clarion.resilience.quota import ALLOWANCE_HOLD, ALLOWANCE_MOST, Allowances
from clarion.resilience.ratelimit import Decision, MemoryRateLimiter, Take
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


# -- allowances: most charges without a round trip to the shared bucket --------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Bucket:
    """The in-process limiter, counting the charges that reach it."""

    def __init__(self, clock: _Clock) -> None:
        self.limiter = MemoryRateLimiter(clock)
        self.asked: list[int] = []

    async def charge(self, take: Take) -> Decision:
        self.asked.append(take.cost)
        [decision] = await self.limiter.take_many([take])
        return decision


def _allowances() -> tuple[_Clock, _Bucket, Allowances]:
    clock = _Clock()
    bucket = _Bucket(clock)
    return clock, bucket, Allowances(bucket.charge, clock)


async def allowances_take(allowances: Allowances, quota: Quota) -> Decision:
    return await allowances.take(quota.take("t1", 1))


async def test_a_steady_tenant_is_charged_mostly_from_its_allowance() -> None:
    clock, bucket, allowances = _allowances()
    quota = Quota(10_000, 20_000)
    for _ in range(2000):
        decision = await allowances.take(quota.take("t1", 1))
        assert decision.allowed
        clock.now += 0.001
    # The bucket was asked far less often than once per charge, and never gave more than
    # was spent plus one allowance at most.
    assert len(bucket.asked) < 100
    assert 2000 <= sum(bucket.asked) <= 2000 + ALLOWANCE_MOST
    assert 0 < decision.remaining <= quota.burst


async def test_near_its_quota_a_tenant_is_charged_one_by_one() -> None:
    _, bucket, allowances = _allowances()
    small = Quota(0.01, 5)
    remaining = []
    for _ in range(5):
        decision = await allowances.take(small.take("t1", 1))
        assert decision.allowed
        remaining.append(decision.remaining)
    assert remaining == [4, 3, 2, 1, 0]
    refused = await allowances.take(small.take("t1", 1))
    assert not refused.allowed
    assert refused.retry_after > 0
    assert bucket.asked == [1] * 6


async def test_what_is_taken_ahead_is_asked_again_alone_when_refused() -> None:
    clock = _Clock()
    bucket = _Bucket(clock)
    mine, theirs = Allowances(bucket.charge, clock), Allowances(bucket.charge, clock)
    quota = Quota(0.01, 1000)
    for _ in range(40):  # enough to take several ahead
        assert (await allowances_take(mine, quota)).allowed
        await asyncio.sleep(0)  # its top-ups

    [probe] = await bucket.limiter.take_many([Take("intake:t1", 0.01, 1000, 0)])
    # Another process spends all but one of what is left, and what this one holds is
    # forgotten: its next charge asks with some ahead, is refused, and asks again alone.
    assert (await theirs.take(quota.take("t1", probe.remaining - 1))).allowed
    clock.now += ALLOWANCE_HOLD + 0.01
    asked = len(bucket.asked)
    last = await allowances_take(mine, quota)
    assert last.allowed
    assert last.remaining == 0
    first, alone = bucket.asked[asked:]
    assert first > 1
    assert alone == 1
    assert not (await allowances_take(mine, quota)).allowed


async def test_an_allowance_is_forgotten_after_its_time_and_on_a_quota_change() -> None:
    clock, bucket, allowances = _allowances()
    quota = Quota(10_000, 20_000)
    for _ in range(200):
        await allowances.take(quota.take("t1", 1))
    await asyncio.sleep(0)  # a top-up started by the last ones comes back
    asked = len(bucket.asked)
    clock.now += ALLOWANCE_HOLD + 0.01
    await allowances.take(quota.take("t1", 1))
    assert len(bucket.asked) == asked + 1  # what was held is forgotten
    smaller = Quota(10_000, 100)
    await allowances.take(smaller.take("t1", 1))
    assert len(bucket.asked) == asked + 2  # a new quota is asked at once
    # Other tenants never share an allowance.
    await allowances.take(quota.take("t2", 1))
    assert len(bucket.asked) == asked + 3


async def test_concurrent_charges_take_ahead_one_at_a_time() -> None:
    clock = _Clock()
    bucket = _Bucket(clock)

    async def slow_charge(take: Take) -> Decision:
        await asyncio.sleep(0)  # other charges of the tenant come in meanwhile
        return await bucket.charge(take)

    allowances = Allowances(slow_charge, clock)
    quota = Quota(10_000, 20_000)
    spent = 0
    for _ in range(50):
        decisions = await asyncio.gather(*(allowances.take(quota.take("t1", 1)) for _ in range(32)))
        assert all(d.allowed for d in decisions)
        spent += len(decisions)
        # What the process holds of the tenant's (charged, not yet spent) stays bounded.
        assert sum(bucket.asked) - spent <= ALLOWANCE_MOST
        clock.now += 0.005
    # Those that missed while a charge was on its way waited for what it brought.
    assert len(bucket.asked) < 50 * 32 / 8


class _Tasks:
    """A charger that notes which task asked: a request's own, or a top-up's."""

    def __init__(self, bucket: _Bucket) -> None:
        self.bucket = bucket
        self.by: list[asyncio.Task[Any] | None] = []
        self.failing = False

    async def charge(self, take: Take) -> Decision:
        self.by.append(asyncio.current_task())
        await asyncio.sleep(0)  # a round trip: the request's task gives way meanwhile
        if self.failing:
            raise ConnectionError("the bucket is out of reach")
        return await self.bucket.charge(take)


async def _steadily(allowances: Allowances, quota: Quota, clock: _Clock, n: int) -> list[Any]:
    """``n`` requests one after the other, each in a task of its own; the tasks."""
    requests = []
    for _ in range(n):
        request = asyncio.create_task(allowances.take(quota.take("t1", 1)))
        requests.append(request)
        assert (await request).allowed
        await asyncio.sleep(0)  # what a request starts in the background gets its turn
        clock.now += 0.001
    return requests


async def test_a_steady_tenant_is_topped_up_before_its_allowance_runs_out() -> None:
    clock = _Clock()
    charger = _Tasks(_Bucket(clock))
    allowances = Allowances(charger.charge, clock)
    quota = Quota(10_000, 20_000)
    await _steadily(allowances, quota, clock, 100)  # its pace found
    asked = len(charger.by)
    requests = await _steadily(allowances, quota, clock, 1000)
    # No request waited for the bucket: every charge was a top-up in the background, for
    # half of what is taken ahead at most.
    charges = charger.by[asked:]
    assert charges
    assert not set(charges) & set(requests)
    assert len(charges) <= 1000 / (ALLOWANCE_MOST / 2) + 1
    # Never more was given than was spent and one allowance.
    assert sum(charger.bucket.asked) <= 1100 + ALLOWANCE_MOST


async def test_a_top_up_refused_leaves_the_tenant_charged_one_by_one() -> None:
    clock = _Clock()
    bucket = _Bucket(clock)
    charger = _Tasks(bucket)
    mine, theirs = Allowances(charger.charge, clock), Allowances(bucket.charge, clock)
    quota = Quota(0.01, 2000)
    await _steadily(mine, quota, clock, 100)
    [probe] = await bucket.limiter.take_many([Take("intake:t1", 0.01, 2000, 0)])
    # Another process spends all the bucket has left: this one's next top-up is refused.
    assert (await theirs.take(quota.take("t1", probe.remaining))).allowed
    asked = len(bucket.asked)
    for _ in range(ALLOWANCE_MOST * 2):
        decision = await mine.take(quota.take("t1", 1))
        await asyncio.sleep(0)
        if not decision.allowed:
            break
    # What it held was spent, one top-up was refused, and then each request was refused by
    # the bucket itself.
    assert not decision.allowed
    assert decision.retry_after > 0
    refused_top_ups = [cost for cost in bucket.asked[asked:] if cost > 1]
    assert len(refused_top_ups) == 1
    assert bucket.asked[-1] == 1


async def test_a_top_up_that_fails_leaves_the_requests_to_the_bucket() -> None:
    clock = _Clock()
    charger = _Tasks(_Bucket(clock))
    allowances = Allowances(charger.charge, clock)
    quota = Quota(10_000, 20_000)
    await _steadily(allowances, quota, clock, 100)
    charger.failing = True
    outcome: Decision | BaseException | None = None
    for _ in range(ALLOWANCE_MOST * 2):
        try:
            outcome = await allowances.take(quota.take("t1", 1))
        except ConnectionError as exc:
            outcome = exc
            break
        await asyncio.sleep(0)
    # What was held was spent; the top-up's failure was not the request's, but the first
    # request that found nothing held was charged at the bucket and saw the outage.
    assert isinstance(outcome, ConnectionError)
    charger.failing = False
    assert (await allowances.take(quota.take("t1", 1))).allowed


async def test_a_charge_that_misses_while_one_is_on_its_way_waits_for_it() -> None:
    clock = _Clock()
    bucket = _Bucket(clock)
    arrived = asyncio.Event()
    go = asyncio.Event()
    holding = False

    async def held_charge(take: Take) -> Decision:
        if holding and take.cost > 1:  # the one taking ahead: held until the others came
            arrived.set()
            await go.wait()
        return await bucket.charge(take)

    allowances = Allowances(held_charge, clock)
    quota = Quota(10_000, 20_000)
    for _ in range(20):
        assert (await allowances.take(quota.take("t1", 1))).allowed
        await asyncio.sleep(0)
    clock.now += ALLOWANCE_HOLD + 0.01  # what is held is forgotten: the next charge asks
    holding = True
    first = asyncio.create_task(allowances.take(quota.take("t1", 1)))
    await arrived.wait()
    asked = len(bucket.asked)
    others = [asyncio.create_task(allowances.take(quota.take("t1", 1))) for _ in range(3)]
    await asyncio.sleep(0)
    assert len(bucket.asked) == asked  # they wait for it, not for charges of their own
    go.set()
    decisions = await asyncio.gather(first, *others)
    assert all(d.allowed for d in decisions)
    assert len(bucket.asked) == asked + 1
