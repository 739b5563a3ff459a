"""What is read at scrape time: streams, the outbox, dead letters, connections, pools,
breakers.

None of it is counted on the hot path. A scrape asks the broker for every stream's length,
pending entries and lag (one Redis round trip), the database for the outbox's size and
age and for the dead letters by channel (a bounded read of the events' status index), and
the process for its pools and live connections; what it gathers is handed to
Prometheus by a collector registered once per registry.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from clarion.domain.models import PLAN_STREAMS, Channel, channel_streams
from clarion.observability import metrics
from clarion.pipeline.status_events import EVENTS_RETRY_STREAM, EVENTS_STREAM
from clarion.store import dead_letters as dead_letter_store
from clarion.store import notifications as notification_store
from clarion.store.db import pools

if TYPE_CHECKING:
    from clarion.pipeline.context import Context

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
# A scrape waits at most this long for the broker and the database.
SCRAPE_TIMEOUT = 3.0
# Dead letters a scrape counts at most: tenant after tenant, it stops at one more
# (store/dead_letters.py ``backlog_query``).
DEAD_LETTER_CAP = 10_000


def all_streams() -> list[str]:
    streams = list(PLAN_STREAMS)
    for channel in Channel:
        streams.extend(channel_streams(channel.value))
    streams += [EVENTS_STREAM, EVENTS_RETRY_STREAM]
    return streams


@dataclass
class Sources:
    """What one process reports at scrape time, by its roles."""

    ctx: Context
    # Streams and the outbox are shared by every process: reported by processes that
    # consume them (workers, schedulers), so that an API fleet does not multiply the load.
    streams: bool = True
    outbox: bool = True
    dead_letters: bool = True
    inbox: bool = False


@dataclass(eq=False)
class _Snapshot(Collector):
    families: list[Metric] = field(default_factory=list)

    def collect(self) -> Iterator[Metric]:
        yield from self.families


_SNAPSHOTS: weakref.WeakKeyDictionary[Any, _Snapshot] = weakref.WeakKeyDictionary()


def _snapshot(registry: Any) -> _Snapshot:
    snap = _SNAPSHOTS.get(registry)
    if snap is None:
        snap = _SNAPSHOTS[registry] = _Snapshot()
        registry.register(snap)
    return snap


async def _streams(ctx: Context) -> list[Metric]:
    stats = await ctx.broker.stream_stats(all_streams())
    families = {
        "length": GaugeMetricFamily(
            "clarion_stream_length", "Messages in a stream (waiting or held)", labels=["stream"]
        ),
        "pending": GaugeMetricFamily(
            "clarion_stream_pending",
            "Messages taken by a consumer and not yet acked",
            labels=["stream", "group"],
        ),
        "lag": GaugeMetricFamily(
            "clarion_stream_lag",
            "Messages not yet taken by the stream's consumer group",
            labels=["stream", "group"],
        ),
        "delayed": GaugeMetricFamily(
            "clarion_stream_delayed", "Retries and deferred sends not yet due", labels=["stream"]
        ),
    }
    for s in stats:
        families["length"].add_metric([s.stream], s.length)
        families["pending"].add_metric([s.stream, s.group], s.pending)
        families["lag"].add_metric([s.stream, s.group], s.lag)
        families["delayed"].add_metric([s.stream], s.delayed)
    return list(families.values())


async def _outbox(ctx: Context) -> list[Metric]:
    rows, oldest = await notification_store.outbox_backlog(ctx.engine)
    size = GaugeMetricFamily(
        "clarion_outbox_backlog", "Accepted notifications not yet planned (outbox rows)"
    )
    size.add_metric([], rows)
    age = GaugeMetricFamily(
        "clarion_outbox_oldest_age_seconds",
        "How long the oldest outbox row has been due for publishing by the relay (0: none)",
    )
    age.add_metric([], max(0.0, time.time() - oldest.timestamp()) if oldest else 0.0)
    return [size, age]


async def _dead_letters(ctx: Context) -> list[Metric]:
    by_tenant = metrics.METRICS.tenant_label
    rows = await dead_letter_store.backlog(ctx.engine, by_tenant, DEAD_LETTER_CAP)
    backlog = GaugeMetricFamily(
        "clarion_dead_letter_backlog",
        f"Deliveries in the dead letters (status dead), counting at most {DEAD_LETTER_CAP + 1}",
        labels=["channel", *(["tenant"] if by_tenant else [])],
    )
    counts: dict[tuple[str, ...], int] = {}
    if not by_tenant:
        counts = {(channel.value,): 0 for channel in Channel}
    for row in rows:
        counts[tuple(row[:-1])] = row[-1]
    for labels, n in sorted(counts.items()):
        backlog.add_metric(list(labels), n)
    capped = GaugeMetricFamily(
        "clarion_dead_letter_backlog_capped",
        f"1 when the dead letters are more than {DEAD_LETTER_CAP}: the backlog is larger "
        "than that and its split by channel is that of the ones counted, tenant after tenant",
    )
    capped.add_metric([], 1 if sum(n for *_, n in rows) > DEAD_LETTER_CAP else 0)
    return [backlog, capped]


def _pools(ctx: Context) -> list[Metric]:
    family = GaugeMetricFamily(
        "clarion_db_pool_connections",
        "Database connections of this process by pool and state",
        labels=["pool", "state"],
    )
    for name, in_use, idle in pools(ctx.engine, ctx.pg):
        family.add_metric([name, "in_use"], in_use)
        family.add_metric([name, "idle"], idle)
    return [family]


def _breakers() -> list[Metric]:
    family = GaugeMetricFamily(
        "clarion_circuit_breakers",
        "Providers' circuit breakers by state, as this process last saw them",
        labels=["channel", "provider", "state"],
    )
    tally: Counter[tuple[str, str, str]] = Counter()
    for channel, kind, is_open in list(metrics.METRICS.breakers.values()):
        tally[(channel, kind, "open" if is_open else "closed")] += 1
    for labels, n in sorted(tally.items()):
        family.add_metric(list(labels), n)
    return [family]


def _inbox(ctx: Context) -> list[Metric]:
    family = GaugeMetricFamily(
        "clarion_inbox_connections", "Live inbox connections (WebSocket and SSE) held here"
    )
    family.add_metric([], ctx.hub.connections())
    slots = ctx.inbox.slots
    busiest = GaugeMetricFamily(
        "clarion_inbox_connections_busiest",
        "The most live inbox connections one tenant, and one recipient, holds here",
        labels=["scope"],
    )
    limit = GaugeMetricFamily(
        "clarion_inbox_connections_limit",
        "The cap on live inbox connections per tenant and per recipient (0: none)",
        labels=["scope"],
    )
    refused = CounterMetricFamily(
        "clarion_inbox_connections_refused",
        "Live inbox connections refused (429) because a cap was reached, by that cap",
        labels=["scope"],
    )
    for scope, most, cap in zip(
        ("tenant", "recipient"),
        slots.busiest(),
        (slots.per_tenant, slots.per_recipient),
        strict=True,
    ):
        busiest.add_metric([scope], most)
        limit.add_metric([scope], cap)
        refused.add_metric([scope], slots.refused[scope])
    families: list[Metric] = [family, busiest, limit, refused]
    if ctx.settings.metrics_tenant_label:
        by_tenant = GaugeMetricFamily(
            "clarion_inbox_connections_by_tenant",
            "Live inbox connections held here, per tenant",
            labels=["tenant"],
        )
        for tenant_id, n in slots.tenants().items():
            by_tenant.add_metric([tenant_id], n)
        families.append(by_tenant)
    return families


async def _gather(sources: Sources) -> list[Metric]:
    ctx = sources.ctx
    families: list[Metric] = [*_pools(ctx), *_breakers()]
    if sources.inbox:
        families.extend(_inbox(ctx))
    failed = GaugeMetricFamily(
        "clarion_scrape_errors",
        "Parts of this scrape that could not be read (1: the broker or the database did not "
        "answer in time)",
        labels=["part"],
    )
    parts: Sequence[tuple[str, Any]] = [
        ("streams", _streams if sources.streams else None),
        ("outbox", _outbox if sources.outbox else None),
        ("dead_letters", _dead_letters if sources.dead_letters else None),
    ]
    for name, read in parts:
        if read is None:
            continue
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT):
                families.extend(await read(ctx))
            failed.add_metric([name], 0)
        except Exception as exc:
            log.warning("metrics: reading %s failed: %r", name, exc)
            failed.add_metric([name], 1)
    families.append(failed)
    return families


async def exposition(sources: Sources) -> bytes:
    """The process's metrics in Prometheus's text format, gathered now."""
    registry = metrics.METRICS.registry
    # Nothing awaits between storing the snapshot and rendering it: concurrent scrapes
    # each render a whole snapshot.
    _snapshot(registry).families = await _gather(sources)
    return generate_latest(registry)
