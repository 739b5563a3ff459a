"""What becomes of a delivery whose attempt failed: retry later, fail, or dead-letter."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from clarion.broker import Delayed
from clarion.domain.backoff import retry_delay
from clarion.domain.delivery import Delivery
from clarion.domain.models import DeliveryStatus
from clarion.domain.status import StatusChange
from clarion.errors import PermanentError, ProviderError, TransientError, error_class

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    schedule: list[float]

    def on_failure(
        self,
        delivery: Delivery,
        exc: BaseException,
        now: datetime,
        *,
        provider: str | None = None,
        latency_ms: int | None = None,
        trace: str | None = None,
    ) -> tuple[StatusChange, Delayed | None]:
        """The status after a failed attempt (``provider``, ``latency_ms``: of its call, if
        one was made; ``trace``: the attempt's), and the retry to schedule, if any."""
        attempt = delivery.attempt
        status, scheduled_for, retry_reason, retry = DeliveryStatus.FAILED, None, None, None
        if isinstance(exc, PermanentError):
            reason, last_error = exc.reason, exc.message
        else:
            reason, last_error = self._why(delivery, exc)
            if attempt >= self.max_attempts:
                status = DeliveryStatus.DEAD
            else:
                retry_after = exc.retry_after if isinstance(exc, TransientError) else None
                delay = retry_delay(attempt, self.schedule, retry_after=retry_after)
                scheduled_for = now + timedelta(seconds=delay)
                status, retry_reason, reason = DeliveryStatus.QUEUED, reason, None
                # The next attempt's lane: a retry's, not the first try's priority lane.
                again = delivery.next_attempt()
                retry = Delayed(again.stream, again, scheduled_for.timestamp())
        change = StatusChange(
            delivery.id,
            delivery.tenant,
            status,
            attempts=attempt,
            reason=reason,
            last_error=last_error,
            scheduled_for=scheduled_for,
            provider=provider,
            attempt=attempt,
            latency_ms=latency_ms,
            error_class=error_class(exc),
            retry_reason=retry_reason,
            delivery=delivery,
            trace=trace,
        )
        return change, retry

    @staticmethod
    def _why(delivery: Delivery, exc: BaseException) -> tuple[str, str]:
        """The reason and the error of a failure worth retrying."""
        if isinstance(exc, ProviderError):
            return exc.reason, exc.message
        # A bug or an unforeseen failure: retried like a transient one, and logged.
        log.error("delivery %s: unexpected %r", delivery.id, exc, exc_info=exc)
        return "internal_error", f"{type(exc).__name__}: {exc}"
