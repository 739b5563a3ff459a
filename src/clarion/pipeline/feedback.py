"""Bounces and complaints, once read: the addresses suppressed, the bounced deliveries failed.

Whatever path a report came by (SES through SNS, SendGrid's event webhook, a DSN handed
to the API), what it says is recorded the same way, for the tenant the report was made
for:

- each hard bounce and complaint puts its address on the tenant's suppression list (one
  write for the report), so the channel workers send nothing more to it;
- a hard bounce that names its delivery marks that delivery ``failed`` with reason
  ``bounced`` and the provider's diagnostic (only a delivery still ``queued`` or ``sent``
  changes, as for any provider report), and its status event goes out;
- every report is counted (``clarion_email_feedback``) and logged, soft bounces included,
  which change nothing else: the next message to the address may well go through.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from clarion.domain.contact import suppression_key
from clarion.domain.feedback import MAX_ADDRESS, Feedback, FeedbackKind, SuppressionReason
from clarion.domain.models import DeliveryStatus
from clarion.observability import logs, metrics
from clarion.pipeline.context import Context
from clarion.pipeline.status_events import StatusEvents
from clarion.store import deliveries as delivery_store
from clarion.store import suppressions as suppression_store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Recorded:
    """What a report changed: addresses suppressed, deliveries marked bounced."""

    suppressed: int = 0
    bounced: int = 0
    reports: int = 0


async def record(
    ctx: Context, tenant_id: str, source: str, reports: Sequence[Feedback]
) -> Recorded:
    """Record a report's findings for ``tenant_id`` (``source``: ses, sendgrid, dsn)."""
    for kind, n in Counter(item.kind.value for item in reports).items():
        metrics.feedback(source, kind, n)
    entries = [
        suppression_store.Entry(key, reason, source, item.detail, item.delivery_id)
        for item in reports
        if (reason := item.suppresses) is not None
        # An address whose domain grows past the column in its ASCII form is no address.
        and len(key := suppression_key(item.address)) <= MAX_ADDRESS
    ]
    stored = await suppression_store.add(ctx.engine, tenant_id, entries)
    for reason, n in Counter(row["reason"] for row in stored).items():
        metrics.suppressions_added(reason, source, n)
    bounced = 0
    with logs.bound(tenant_id=tenant_id):
        for item in reports:
            if item.kind is FeedbackKind.HARD_BOUNCE and item.delivery_id is not None:
                bounced += await _bounced(ctx, tenant_id, item)
            about = f" (delivery {item.delivery_id})" if item.delivery_id else ""
            log.info("%s reported a %s for %s%s", source, item.kind.value, item.address, about)
    return Recorded(len(stored), bounced, len(reports))


async def _bounced(ctx: Context, tenant_id: str, item: Feedback) -> int:
    assert item.delivery_id is not None
    changed = await delivery_store.apply_provider_report(
        ctx.engine,
        tenant_id,
        item.delivery_id,
        DeliveryStatus.FAILED,
        reason=SuppressionReason.BOUNCED.value,
        last_error=item.detail,
    )
    if changed:
        await StatusEvents(ctx).emit_report(tenant_id, item.delivery_id, DeliveryStatus.FAILED)
    return int(changed)
