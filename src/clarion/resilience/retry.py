"""What becomes of a delivery whose attempt failed: retry later, fail, or dead-letter."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from clarion.broker import Delayed
from clarion.domain.backoff import retry_delay
from clarion.domain.delivery import Delivery
from clarion.domain.models import DeliveryStatus
from clarion.errors import PermanentError, ProviderError, TransientError, error_class
from clarion.store.deliveries import StatusChange

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    schedule: list[float]

    def on_failure(
        self, delivery: Delivery, exc: BaseException, now: datetime
    ) -> tuple[StatusChange, Delayed | None]:
        """The status after a failed attempt, and the retry to schedule, if any."""
        attempt = delivery.attempt
        base = StatusChange(
            delivery_id=delivery.id,
            tenant_id=delivery.tenant,
            status=DeliveryStatus.FAILED,
            attempts=attempt,
            attempt=attempt,
            error_class=error_class(exc),
        )
        if isinstance(exc, PermanentError):
            base.reason, base.last_error = exc.reason, exc.message
            return base, None
        if isinstance(exc, ProviderError):
            base.last_error = exc.message
            reason = exc.reason
        else:
            # A bug or an unforeseen failure: retried like a transient one, and logged.
            log.error("delivery %s: unexpected %r", delivery.id, exc, exc_info=exc)
            base.last_error = f"{type(exc).__name__}: {exc}"
            reason = "internal_error"
        if attempt >= self.max_attempts:
            base.status, base.reason = DeliveryStatus.DEAD, reason
            return base, None
        retry_after = exc.retry_after if isinstance(exc, TransientError) else None
        delay = retry_delay(attempt, self.schedule, retry_after=retry_after)
        due = now + timedelta(seconds=delay)
        base.status, base.scheduled_for = DeliveryStatus.QUEUED, due
        base.retry_reason = reason
        retry = Delayed(delivery.stream, delivery.next_attempt(), due.timestamp())
        return base, retry
