"""Prometheus metrics: the catalogue and the hooks the pipeline calls.

Every process has its own registry (``REGISTRY`` below) and exposes it on ``/metrics``:
the API on its own port, workers and schedulers on ``CLARION_METRICS_PORT``
(api/ops_server.py). A Clarion process is one event loop and never forks, so
there is no multiprocess mode to manage: Prometheus scrapes each process.

The hooks are small and count per batch where a batch exists (``inc(n)``); label children
are cached, so a hook on the hot path is a dictionary lookup and an addition. What is
costly to know (stream lengths and lag, the outbox, pools) is read at scrape time
(pipeline/scrape.py), never on the hot path.

Labels are bounded: channel, lane, provider *kind* (``ses``, ``smtp``, …, never a tenant's
provider name), status, reason (a fixed vocabulary). Tenant ids appear only when
``CLARION_METRICS_TENANT_LABEL`` is set, and only on the notification and delivery counters.

``CLARION_METRICS=off`` turns every hook into a return: each checks the module's
``ENABLED`` flag first (one global read), before touching a metric, and ``/metrics``
answers 404.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from clarion import __version__
from clarion.domain.delivery import Stored

# accept → sent: from milliseconds (in-app) to an hour (a retried or rate-limited email).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# A group commit: a round trip and an fsync, from half a millisecond to a stalled server.
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
# How late the event loop ran a timer: from a fraction of a millisecond (nothing else
# ready) to seconds (a stall: a long computation, a blocking call).
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# The value of a label with nothing to tell (no provider called, no reason).
NONE = "none"
_B32 = {c: i for i, c in enumerate("0123456789abcdefghjkmnpqrstvwxyz")}


class Metrics:
    """The metrics of one process. ``tenant_label`` adds ``tenant`` to the notification and
    delivery counters (unbounded with the number of tenants: off by default)."""

    def __init__(self, *, tenant_label: bool = False) -> None:
        self.tenant_label = tenant_label
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        tenant = ("tenant",) if tenant_label else ()
        info = Gauge("clarion_build_info", "Clarion's version", ["version"], registry=r)
        info.labels(__version__).set(1)
        counter, histogram = self._counter, self._histogram
        self.accepted = counter(
            "clarion_notifications_accepted",
            "Notifications accepted (stored durably, answered 202)",
            *tenant,
        )
        self.refused = counter(
            "clarion_notifications_refused",
            "Notifications refused, by the error code answered",
            "reason",
            *tenant,
        )
        self.deliveries = counter(
            "clarion_deliveries",
            "Delivery outcomes: planned (queued, scheduled, suppressed, failed) and attempted "
            "(sent, queued for a retry, failed, dead)",
            "channel",
            "provider",
            "status",
            "reason",
            *tenant,
        )
        self.latency = histogram(
            "clarion_delivery_latency_seconds",
            "From a notification's acceptance to its delivery being sent",
            LATENCY_BUCKETS,
            "channel",
            "lane",
        )
        self.provider_calls = histogram(
            "clarion_provider_call_seconds",
            "Provider calls by outcome (ok, transient, permanent, timeout, error)",
            CALL_BUCKETS,
            "channel",
            "provider",
            "outcome",
        )
        self.retries = counter(
            "clarion_delivery_retries", "Failed attempts put back for a retry", "channel", "reason"
        )
        self.dead = counter(
            "clarion_dead_letters", "Deliveries out of attempts (dead letters)", "channel", "reason"
        )
        self.breaker_rejections = counter(
            "clarion_circuit_breaker_rejections",
            "Sends a provider's open circuit breaker turned away",
            "channel",
            "provider",
        )
        self.rate_waits = histogram(
            "clarion_rate_limit_wait_seconds",
            "Time a send waited for its provider's rate-limit slot",
            CALL_BUCKETS,
            "channel",
            "provider",
        )
        self.rate_deferred = counter(
            "clarion_rate_limit_deferred",
            "Sends put back for later because their rate-limit slot was too far away",
            "channel",
            "provider",
        )
        self.feedback = counter(
            "clarion_email_feedback",
            "Bounces and complaints that providers reported, by source (ses, sendgrid, dsn) "
            "and kind (hard_bounce, soft_bounce, complaint)",
            "source",
            "kind",
        )
        self.suppressions_added = counter(
            "clarion_suppressions_added",
            "Addresses put on (or confirmed on) a suppression list, by reason and source",
            "reason",
            "source",
        )
        self.suppressed_sends = counter(
            "clarion_suppressed_sends",
            "Sends not made because the address is on its tenant's suppression list",
            "channel",
            "reason",
        )
        self.tracking = counter(
            "clarion_tracking_hits",
            "Email open images and tracked links fetched (docs/tracking.md), by what was "
            "made of the hit: recorded, not_recorded (no such delivery, or its cap reached) "
            "or invalid (a token not signed as it should be)",
            "event",
            "outcome",
        )
        self.reports = counter(
            "clarion_provider_reports",
            "Delivery reports providers sent back (status callbacks, webhooks), by what they "
            "said (delivered, read, failed) or refused (a forged or unverifiable one)",
            "channel",
            "provider",
            "status",
        )
        self.commit_size = histogram(
            "clarion_intake_commit_size",
            "Notifications stored by one group commit of the API's intake (every request "
            "waiting at that moment shares it)",
            BATCH_BUCKETS,
        )
        self.commit_seconds = histogram(
            "clarion_intake_commit_seconds",
            "Time one group commit of the API's intake took, its linger left out: what a "
            "202 waits for beside the event loop",
            COMMIT_BUCKETS,
        )
        self.planner_batch = histogram(
            "clarion_planner_batch_size",
            "Notifications taken by the planner in one batch",
            BATCH_BUCKETS,
        )
        self.planner_seconds = histogram(
            "clarion_planner_batch_seconds", "Time the planner spent on one batch", CALL_BUCKETS
        )
        self.gave_way = counter(
            "clarion_broadcast_gave_way_seconds",
            "Time topic sends' chunks waited, before their reads and their store, for "
            "critical and high-priority work under way (pipeline/urgency.py)",
        )
        self.give_way_spent = counter(
            "clarion_broadcast_give_way_spent",
            "Times a tenant's budget of holding back the other tenants' broadcasts and "
            "lower lanes (half the time) ran out in this process (pipeline/urgency.py)",
        )
        self.loop_lag = histogram(
            "clarion_event_loop_lag_seconds",
            "How late this process's event loop ran a timer (every half second): the wait "
            "of everything ready at that moment behind the work in hand",
            LAG_BUCKETS,
        )
        # (tenant, provider name) → (channel, kind, open?): as this process last saw it.
        self.breakers: dict[tuple[str, str], tuple[str, str, bool]] = {}
        # Label children of the per-attempt metrics, found without the library's lock.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    # Every metric is registered on this process's registry, never the library's global one.
    def _counter(self, name: str, doc: str, *labels: str) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def _histogram(self, name: str, doc: str, buckets: Sequence[float], *labels: str) -> Histogram:
        return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: the per-attempt hooks call this per send."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found


METRICS = Metrics()
# False with CLARION_METRICS=off: every hook below returns at once, /metrics answers 404.
ENABLED = True


def configure(*, tenant_label: bool, enabled: bool = True) -> Metrics:
    """Set the process's metrics up (once, at start); returns them."""
    global METRICS, ENABLED
    ENABLED = enabled
    if METRICS.tenant_label != tenant_label:
        METRICS = Metrics(tenant_label=tenant_label)
    return METRICS


def accepted_at(notification_id: str) -> float | None:
    """When a notification was accepted (Unix seconds), read from its time-ordered id."""
    _, _, body = notification_id.partition("_")
    if len(body) != 26:
        return None
    value = 0
    for char in body[:10]:  # 50 bits: two zero bits, then the 48 bits of milliseconds
        digit = _B32.get(char)
        if digit is None:
            return None
        value = (value << 5) | digit
    return value / 1000.0


# -- hooks ------------------------------------------------------------------------------


def notifications(outcomes: Sequence[Any], items: Sequence[Any]) -> None:
    """The intake's outcomes of a request's notifications (``Accepted`` or ``Refused``),
    in the order of ``items`` (their ``NewNotification``)."""
    if not ENABLED:
        return
    m = METRICS
    if not m.tenant_label:
        created = refused = 0
        codes: Tally[str] = Tally()
        for outcome in outcomes:
            code = getattr(outcome, "code", None)
            if code is None:
                created += bool(getattr(outcome, "created", False))
            else:
                codes[code] += 1
                refused += 1
        if created:
            m.accepted.inc(created)
        for code, n in codes.items():
            m.refused.labels(code).inc(n)
        return
    for outcome, item in zip(outcomes, items, strict=False):
        code, tenant = getattr(outcome, "code", None), item.tenant_id
        if code is None:
            if getattr(outcome, "created", False):
                m.accepted.labels(tenant).inc()
        else:
            m.refused.labels(code, tenant).inc()


def refused(reason: str, n: int = 1, tenant: str = "") -> None:
    """Notifications refused before the intake (validation, quota, authentication)."""
    if not ENABLED:
        return
    m = METRICS
    if m.tenant_label:
        # Refused before authentication: no tenant to tell.
        child = m.refused.labels(_label(reason), _label(tenant))
    else:
        child = m.refused.labels(_label(reason))
    child.inc(n)


def refused_items(bodies: Iterable[dict[str, Any]]) -> None:
    """Items of a batch refused one by one (their error bodies)."""
    if not ENABLED:
        return
    for code, n in Tally(body["error"]["code"] for body in bodies).items():
        refused(code, n)


def planned(items: Sequence[Stored]) -> None:
    """Deliveries the planner created, by the state it created them in."""
    if not ENABLED or not items:
        return
    m = METRICS
    keys: Tally[tuple[str, ...]] = Tally()
    for item in items:
        status, reason, delivery = str(item.status), _label(item.reason), item.delivery
        key: tuple[str, ...] = (delivery.channel, NONE, status, reason)
        keys[(*key, delivery.tenant) if m.tenant_label else key] += 1
    for key, n in keys.items():
        m.deliveries.labels(*key).inc(n)


def _label(value: str | None) -> str:
    """A label's value: never empty (``none`` when there is nothing to tell)."""
    return value or NONE


def loop_lag(seconds: float) -> None:
    if not ENABLED:
        return
    METRICS.loop_lag.observe(seconds)


def gave_way(seconds: float) -> None:
    if not ENABLED:
        return
    METRICS.gave_way.inc(seconds)


def give_way_spent() -> None:
    if not ENABLED:
        return
    METRICS.give_way_spent.inc()


def intake_commit(size: int, seconds: float) -> None:
    if not ENABLED:
        return
    METRICS.commit_size.observe(size)
    METRICS.commit_seconds.observe(seconds)


def planner_batch(size: int, seconds: float) -> None:
    if not ENABLED:
        return
    METRICS.planner_batch.observe(size)
    METRICS.planner_seconds.observe(seconds)


def attempt(
    channel: str, delivery: Any, kind: str, status: str, reason: str | None, retry: bool
) -> None:
    """The stored outcome of one attempt at ``delivery`` (a ``domain.delivery.Delivery``)."""
    if not ENABLED:
        return
    m = METRICS
    labels = (channel, _label(kind), str(status), _label(reason))
    if m.tenant_label:
        m.child(m.deliveries, *labels, delivery.tenant).inc()
    else:
        m.child(m.deliveries, *labels).inc()
    if status == "sent":
        accepted = accepted_at(delivery.notification)
        if accepted is not None:
            lane = delivery.priority
            m.child(m.latency, channel, lane).observe(max(0.0, time.time() - accepted))
    elif retry:
        m.child(m.retries, channel, _label(reason)).inc()
    elif status == "dead":
        m.child(m.dead, channel, _label(reason)).inc()


def provider_call(channel: str, kind: str, outcome: str, seconds: float) -> None:
    if not ENABLED:
        return
    METRICS.child(METRICS.provider_calls, channel, kind, outcome).observe(seconds)


def provider_report(channel: str, kind: str, status: str, count: int = 1) -> None:
    """Reports a provider sent back: ``status`` is what they said, or ``refused``."""
    if not ENABLED:
        return
    METRICS.child(METRICS.reports, channel, kind, status).inc(count)


def breaker_seen(channel: str, tenant: str, name: str, kind: str, allowed: bool) -> None:
    """A breaker's answer, remembered for the ``clarion_circuit_breakers`` gauge."""
    if not ENABLED:
        return
    m = METRICS
    m.breakers[(tenant, name)] = (channel, kind, not allowed)
    if not allowed:
        m.breaker_rejections.labels(channel, kind).inc()


def tracked(event: str, outcome: str) -> None:
    """An open image or a tracked link fetched: ``event`` opened or clicked, ``outcome``
    recorded, not_recorded or invalid."""
    if not ENABLED:
        return
    METRICS.child(METRICS.tracking, event, outcome).inc()


def rate_limit(channel: str, kind: str, waited: float, deferred: bool) -> None:
    if not ENABLED:
        return
    m = METRICS
    if deferred:
        m.rate_deferred.labels(channel, kind).inc()
    else:
        m.rate_waits.labels(channel, kind).observe(waited)


def feedback(source: str, kind: str, n: int = 1) -> None:
    """Reports of bounces and complaints received (each address counts once)."""
    if not ENABLED or not n:
        return
    METRICS.feedback.labels(source, kind).inc(n)


def suppressions_added(reason: str, source: str, n: int = 1) -> None:
    if not ENABLED or not n:
        return
    METRICS.suppressions_added.labels(reason, source).inc(n)


def suppressed_send(channel: str, reason: str | None) -> None:
    if not ENABLED:
        return
    METRICS.child(METRICS.suppressed_sends, channel, _label(reason)).inc()
