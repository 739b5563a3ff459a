"""Per recipient and category caps (``max_per_hour``, ``max_per_day``) and what becomes of
a notification over them (the category's ``overflow``).

Each cap is a GCRA bucket of its size refilled evenly over its period, shared by every
planner (Redis, or in process). A notification counts once per recipient whatever its
channels; critical ones, digests and what is already held or suppressed are never capped
and don't count. Over a cap:

* ``drop``: suppressed with reason ``rate_limited``;
* ``defer``: the slot is reserved (up to ``DEFER_HORIZON`` ahead) and the delivery is
  scheduled for it, reason ``rate_limited``; one that finds no slot that soon is dropped;
* ``digest``: held for the category's digest (dropped on a channel the template has no
  digest content for).

The planner hands a batch over in the order its notifications were accepted
(``planner.accept_order``), on either store: over a cap, the first accepted are the ones
that go, and the later ones overflow.

With both caps set, each is asked: one may have counted a notification that the other
refused, which errs on the side of sending less.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

from clarion.domain.models import DeliveryStatus, Priority
from clarion.domain.preferences import CategoryPolicy
from clarion.pipeline.categories import Policies
from clarion.pipeline.digests import Holding
from clarion.resilience.ratelimit import RateLimiter, Take, recipient_category_take

DEFER_HORIZON = 7 * 86400.0
RATE_LIMITED = "rate_limited"
# A reserved slot this close is taken as now (GCRA's clock noise).
_NOW = 0.001


def day_take(tenant_id: str, recipient_id: str, category: str, max_per_day: int) -> Take:
    """The request one notification makes against its category's ``max_per_day``."""
    return Take(f"mpd:{tenant_id}:{category}:{recipient_id}", max_per_day / 86400.0, max_per_day)


def _takes(row: Mapping[str, Any], policy: CategoryPolicy) -> list[Take]:
    wait = DEFER_HORIZON if policy.overflow == "defer" else 0.0
    takes = []
    if policy.max_per_hour:
        take = recipient_category_take(
            row["tenant_id"], row["recipient_id"], policy.name, policy.max_per_hour
        )
        takes.append(Take(take.key, take.rate, take.burst, max_wait=wait))
    if policy.max_per_day:
        take = day_take(row["tenant_id"], row["recipient_id"], policy.name, policy.max_per_day)
        takes.append(Take(take.key, take.rate, take.burst, max_wait=wait))
    return takes


def _capped(
    row: Mapping[str, Any], categories: Mapping[str, Policies], exempt: Collection[str]
) -> CategoryPolicy | None:
    """The policy whose caps apply to the delivery, if any do."""
    if row["status"] not in (DeliveryStatus.QUEUED, DeliveryStatus.SCHEDULED):
        return None
    if row["priority"] == Priority.CRITICAL or row["notification_id"] in exempt:
        return None
    policy = categories.get(row["tenant_id"], {}).get(row["category"])
    if policy is None or policy.critical or not (policy.max_per_hour or policy.max_per_day):
        return None
    return policy


async def cap(
    limiter: RateLimiter,
    rows: list[dict[str, Any]],
    categories: Mapping[str, Policies],
    holding: Holding,
    now: datetime,
    exempt: Collection[str] = (),
) -> None:
    """Apply the caps to a batch's new deliveries, in place (one round trip to the limiter);
    ``exempt`` names notifications that are never capped (digests)."""
    # (notification, recipient) -> its policy, its deliveries, and its takes' slice
    groups: dict[tuple[str, str], tuple[CategoryPolicy, list[dict[str, Any]], slice]] = {}
    takes: list[Take] = []
    for row in rows:
        policy = _capped(row, categories, exempt)
        if policy is None:
            continue
        key = (row["notification_id"], row["recipient_id"])
        if key not in groups:
            start = len(takes)
            takes.extend(_takes(row, policy))
            groups[key] = (policy, [], slice(start, len(takes)))
        groups[key][1].append(row)
    if not takes:
        return
    decisions = await limiter.take_many(takes)
    for policy, group, span in groups.values():
        mine = decisions[span]
        wait = max(d.retry_after for d in mine)
        if all(d.allowed for d in mine):
            if wait > _NOW:
                for row in group:
                    _defer(row, now + timedelta(seconds=wait))
            continue
        for row in group:
            if policy.overflow == "digest" and holding.can_hold(row):
                holding.hold(row)
            else:
                row.update(
                    status=DeliveryStatus.SUPPRESSED, reason=RATE_LIMITED, scheduled_for=None
                )


def _defer(row: dict[str, Any], until: datetime) -> None:
    current = row["scheduled_for"]
    if current is not None and current >= until:
        return  # quiet hours or a snooze already hold it longer
    expires_at = row["expires_at"]
    if expires_at is not None and expires_at <= until:
        row.update(status=DeliveryStatus.FAILED, reason="expired", scheduled_for=None)
        return
    row.update(status=DeliveryStatus.SCHEDULED, reason=RATE_LIMITED, scheduled_for=until)
