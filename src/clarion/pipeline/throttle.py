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

from clarion.domain.delivery import Delivery, Stored
from clarion.domain.models import WAITING_STATUSES, DeliveryStatus, Priority
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


def _takes(delivery: Delivery, policy: CategoryPolicy) -> list[Take]:
    wait = DEFER_HORIZON if policy.overflow == "defer" else 0.0
    takes = []
    tenant, recipient = delivery.tenant, delivery.recipient
    if policy.max_per_hour:
        take = recipient_category_take(tenant, recipient, policy.name, policy.max_per_hour)
        takes.append(Take(take.key, take.rate, take.burst, max_wait=wait))
    if policy.max_per_day:
        take = day_take(tenant, recipient, policy.name, policy.max_per_day)
        takes.append(Take(take.key, take.rate, take.burst, max_wait=wait))
    return takes


def _capped(
    item: Stored, categories: Mapping[str, Policies], exempt: Collection[str]
) -> CategoryPolicy | None:
    """The policy whose caps apply to the delivery, if any do."""
    if item.status not in WAITING_STATUSES:
        return None
    delivery = item.delivery
    if delivery.priority == Priority.CRITICAL or delivery.notification in exempt:
        return None
    if delivery.category is None:
        return None
    policy = categories.get(delivery.tenant, {}).get(delivery.category)
    if policy is None or policy.critical or not (policy.max_per_hour or policy.max_per_day):
        return None
    return policy


async def cap(
    limiter: RateLimiter,
    items: list[Stored],
    categories: Mapping[str, Policies],
    holding: Holding,
    now: datetime,
    exempt: Collection[str] = (),
) -> None:
    """Apply the caps to a batch's new deliveries, in place (each capped one is replaced by
    its new state; one round trip to the limiter); ``exempt`` names notifications that are
    never capped (digests)."""
    # (notification, recipient) -> its policy, its deliveries' places, and its takes' slice
    groups: dict[tuple[str, str], tuple[CategoryPolicy, list[int], slice]] = {}
    takes: list[Take] = []
    for place, item in enumerate(items):
        policy = _capped(item, categories, exempt)
        if policy is None:
            continue
        key = (item.delivery.notification, item.delivery.recipient)
        if key not in groups:
            start = len(takes)
            takes.extend(_takes(item.delivery, policy))
            groups[key] = (policy, [], slice(start, len(takes)))
        groups[key][1].append(place)
    if not takes:
        return
    decisions = await limiter.take_many(takes)
    for policy, places, span in groups.values():
        mine = decisions[span]
        wait = max(d.retry_after for d in mine)
        if all(d.allowed for d in mine):
            if wait > _NOW:
                for place in places:
                    items[place] = _defer(items[place], now + timedelta(seconds=wait))
            continue
        for place in places:
            items[place] = _overflow(items[place], policy, holding)


def _overflow(item: Stored, policy: CategoryPolicy, holding: Holding) -> Stored:
    """A delivery over its cap: held for the digest, or dropped."""
    if policy.overflow == "digest" and holding.can_hold(item):
        return holding.hold(item)
    return Stored(item.delivery, DeliveryStatus.SUPPRESSED, RATE_LIMITED)


def _defer(item: Stored, until: datetime) -> Stored:
    current = item.scheduled_for
    if current is not None and current >= until:
        return item  # quiet hours or a snooze already hold it longer
    expires_at = item.delivery.expires_at
    if expires_at is not None and expires_at <= until.timestamp():
        return Stored(item.delivery, DeliveryStatus.FAILED, "expired", last_error=item.last_error)
    return Stored(
        item.delivery, DeliveryStatus.SCHEDULED, RATE_LIMITED, until, last_error=item.last_error
    )
