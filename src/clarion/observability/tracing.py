"""OpenTelemetry traces, optional: ``pip install clarion[otel]`` and the standard ``OTEL_*``
variables turn them on (:func:`configure`, once per process).

Off (the default), :data:`ON` is False and every hook returns at once: no span, no
context, nothing imported from OpenTelemetry. The pipeline calls the hooks a few times per
batch and once per delivery, each behind that flag.

What a trace holds: the API request (a server span), ``intake.accept`` within it (the
notification ids as attributes); the plan message carries the W3C ``traceparent`` of
``intake.accept``, and every delivery planned from it carries the same one. A batch is one
span *linked* to the contexts of its items, never a parent of millions of children:
``planner.batch``, ``worker.take``, ``status.write`` (at most :data:`MAX_LINKS` links
each). Each attempt at a delivery is a ``delivery.attempt`` span, a child of the context
the delivery carried, and its provider call a ``provider.send`` client span within it.

The context is stored with the notification (``notifications.trace``), so whatever
publishes it or its deliveries again carries it too: the outbox relay (a scheduled
``send_at``, or a publish the API never made), the sweeper, embedded recovery, a
dead-letter replay; a retry and a fallback keep the context of the delivery they follow.
What the scheduler role makes starts a trace of its own, linked to where it came from: a
recurring schedule's run (``schedule.run``, linked to the request that stored the
schedule) and a digest (``digest.close``, linked to the notifications it sums up); the
notifications they make keep that trace's context the same way.

Outbound HTTP requests carry their span's context as a W3C ``traceparent`` header, so a
receiver that traces continues the trace: the webhook provider's POST (the
``provider.send`` span, :func:`outbound`), and each status-event POST (an
``event.post`` client span, a child of the attempt whose change made the event when its
message carried that attempt's context: :func:`posting_event`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from msgspec.structs import replace

from clarion.domain.delivery import Delivery

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import SpanContext, SpanKind, Tracer

log = logging.getLogger(__name__)

ON = False  # read by the hot path's hooks; set once by configure() or enable()
MAX_LINKS = 128  # the SDK's default OTEL_SPAN_LINK_COUNT_LIMIT: more would be dropped
MAX_ID_ATTRIBUTES = 100  # notification ids listed on an intake span

_tracer: Tracer | None = None
_provider: TracerProvider | None = None
_NOOP: contextlib.nullcontext[None] = contextlib.nullcontext()
# The planner's batch: the traceparent each notification's plan message carried.
_carried: ContextVar[Mapping[str, str] | None] = ContextVar("clarion_carried", default=None)


def wanted(env: Mapping[str, str]) -> bool:
    """Whether the ``OTEL_*`` variables ask for traces: an exporter named (not ``none``), or
    an OTLP endpoint; never with ``OTEL_SDK_DISABLED=true``."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER")
    if exporters is not None:
        names = {n.strip().lower() for n in exporters.split(",")} - {""}
        return bool(names - {"none"})
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return any(env.get(name, "").strip() for name in endpoints)


def configure(env: Mapping[str, str] | None = None) -> bool:
    """Turn traces on when the environment asks for them and the ``otel`` extra is
    installed; returns whether they are on."""
    env = os.environ if env is None else env
    if not wanted(env):
        return False
    try:
        provider = _provider_from(env)
    except ImportError:
        log.warning(
            "OTEL_* variables ask for traces, but OpenTelemetry is not installed "
            "(pip install 'clarion[otel]'): tracing stays off"
        )
        return False
    enable(provider)
    return True


def _provider_from(env: Mapping[str, str]) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over this default.
    provider = TracerProvider(resource=Resource.create({"service.name": "clarion"}))
    names = env.get("OTEL_TRACES_EXPORTER", "otlp")
    for name in {n.strip().lower() for n in names.split(",")} - {"", "none"}:
        if name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(env)))
        else:
            log.warning("OTEL_TRACES_EXPORTER: unknown exporter %r ignored", name)
    return provider


def _otlp_exporter(env: Mapping[str, str]) -> Any:
    """The OTLP exporter of ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` (``http/protobuf`` by
    default, or ``grpc``); it reads its endpoint, headers and timeout from the environment."""
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol.strip().lower() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    return OTLPSpanExporter()


def enable(provider: TracerProvider) -> None:
    """Send spans to ``provider`` from now on (tests pass one with an in-memory exporter)."""
    global ON, _tracer, _provider
    _provider = provider
    _tracer = provider.get_tracer("clarion")
    ON = True


def disable() -> None:
    """Stop tracing and flush what was recorded."""
    global ON, _tracer, _provider
    ON = False
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def _live() -> Tracer:
    assert _tracer is not None
    return _tracer


# -- the W3C traceparent carried in messages ---------------------------------------------


def traceparent() -> str | None:
    """The current span's context as a W3C ``traceparent``; None when tracing is off."""
    if not ON:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    flags = int(context.trace_flags)
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}"


def _span_context(value: object) -> SpanContext | None:
    """The remote span context a ``traceparent`` names, or None if it is not one."""
    if not isinstance(value, str) or len(value) != 55:
        return None
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    version, trace_id, span_id, flags = [*value.split("-"), "", "", ""][:4]
    try:
        context = SpanContext(
            int(trace_id, 16), int(span_id, 16), True, TraceFlags(int(flags, 16) & 1)
        )
    except ValueError:
        return None
    if version != "00" or not context.is_valid:
        return None
    return NonRecordingSpan(context).get_span_context()


def _links(traces: Iterable[object]) -> list[Any]:
    from opentelemetry.trace import Link

    contexts = (_span_context(t) for t in traces if t)
    return [Link(c) for c in itertools.islice((c for c in contexts if c), MAX_LINKS)]


# -- batches: one span linked to its items -----------------------------------------------


def batch(name: str, traces: Iterable[object], size: int, **attributes: Any) -> Any:
    """A span for a batch of ``size`` items, linked to the contexts their messages carried
    (``traces``: traceparents, None where an item carried none). A root span of its own."""
    if not ON:
        return _NOOP
    return _batch(name, traces, size, attributes)


def _batch(name: str, traces: Iterable[object], size: int, attributes: dict[str, Any]) -> Any:
    return _root(name, traces, {**attributes, "clarion.batch.size": size}, "clarion.batch")


@contextlib.contextmanager
def _root(
    name: str, traces: Iterable[object], attributes: dict[str, Any], prefix: str
) -> Iterator[None]:
    """A root span linked to ``traces`` (``<prefix>.linked``: how many links it has)."""
    from opentelemetry import context

    links = _links(traces)
    values = {**attributes, f"{prefix}.linked": len(links)}
    with _live().start_as_current_span(
        name, context=context.Context(), links=links, attributes=values
    ):
        yield


def taking(channel: str, messages: Sequence[Any]) -> Any:
    """``worker.take``: a channel worker's take, linked to its deliveries' traces."""
    if not ON:
        return _NOOP
    traces = (m.payload.get("traceparent") for m in messages)
    return _batch("worker.take", traces, len(messages), {"clarion.channel": channel})


def writing(changes: Sequence[Any]) -> Any:
    """``status.write``: a batch of status changes, linked to their attempts' spans."""
    if not ON:
        return _NOOP
    return _batch("status.write", (c.trace for c in changes), len(changes), {})


def planning(messages: Sequence[Any], ids_of: Callable[[Any], Sequence[str]]) -> Any:
    """The planner's batch span; within it, the deliveries planned take the traceparent
    their notification's plan message carried (:func:`stamped`). ``ids_of``: the
    notifications a message asks to plan (the message format is the pipeline's)."""
    if not ON:
        return _NOOP
    return _planning(messages, ids_of)


@contextlib.contextmanager
def _planning(messages: Sequence[Any], ids_of: Callable[[Any], Sequence[str]]) -> Iterator[None]:
    carried: dict[str, str] = {}
    for message in messages:
        trace = message.payload.get("traceparent")
        if isinstance(trace, str):
            # A plan message may carry several notifications of the same trace.
            for nid in ids_of(message):
                carried[nid] = trace
    token = _carried.set(carried)
    try:
        with _batch("planner.batch", carried.values(), len(messages), {}):
            yield
    finally:
        _carried.reset(token)


def carried(notification_id: str) -> str | None:
    """The traceparent the notification's plan message carried, in the planner's batch."""
    if not ON:
        return None
    found = _carried.get()
    return found.get(notification_id) if found else None


def stamped(
    ready: Sequence[Delivery], later: Sequence[tuple[Delivery, float]]
) -> tuple[Sequence[Delivery], Sequence[tuple[Delivery, float]]]:
    """The deliveries with the traceparent of their notification (planner batches only;
    a delivery that carries one keeps it)."""
    found = _carried.get() if ON else None
    if not found:
        return ready, later

    def stamp(d: Delivery) -> Delivery:
        trace = d.trace or found.get(d.notification)
        return d if trace == d.trace else replace(d, trace=trace)

    return [stamp(d) for d in ready], [(stamp(d), due) for d, due in later]


# -- what the scheduler role makes: new traces linked to where they came from -------------


def schedule_run(run: Mapping[str, Any], configured: object) -> Any:
    """``schedule.run``: a recurring schedule's run making its notifications. A trace of
    its own (a schedule fires for months), linked to the request that stored the schedule
    (``configured``: its traceparent, if it was traced); the notifications made within it
    keep its context, so their planning and attempts join this trace."""
    if not ON:
        return _NOOP
    values = {
        "clarion.tenant_id": str(run.get("tenant_id")),
        "clarion.schedule": str(run.get("schedule")),
        "clarion.schedule.run_id": str(run.get("id")),
        "clarion.schedule.zone": str(run.get("zone")),
    }
    return _root("schedule.run", [configured], values, "clarion.schedule")


def digest(tenant_id: str, notification_id: str, held: Sequence[object]) -> str | None:
    """``digest.close``: a digest notification made of held ones. A trace of its own,
    linked to the traces of the notifications it sums up (``held``: their traceparents);
    returns its traceparent, which the digest keeps like any notification (None when
    off)."""
    if not ON:
        return None
    values = {
        "clarion.tenant_id": tenant_id,
        "clarion.notification_id": notification_id,
        "clarion.digest.items": len(held),
    }
    with _root("digest.close", held, values, "clarion.digest"):
        return traceparent()


# -- spans of one item -------------------------------------------------------------------


def accepting(items: Sequence[Any]) -> Any:
    """``intake.accept``: within the request's span, around the group commit of ``items``
    (new notifications: their ids as attributes)."""
    if not ON:
        return _NOOP
    listed = [item.id for item in items[:MAX_ID_ATTRIBUTES]]
    values: dict[str, Any] = {"clarion.notification.count": len(items)}
    if len(listed) == 1:
        values["clarion.notification_id"] = listed[0]
    else:
        values["clarion.notification_ids"] = listed
    return _live().start_as_current_span("intake.accept", attributes=values)


def attempt(delivery: Delivery) -> Any:
    """``delivery.attempt``: a child of the context the delivery carried. Yields the
    traceparent of the attempt (for the status write's link); None when off."""
    if not ON:
        return _NOOP
    return _attempt(delivery)


@contextlib.contextmanager
def _attempt(delivery: Delivery) -> Iterator[str | None]:
    from opentelemetry import trace

    values: dict[str, Any] = {
        "clarion.delivery_id": delivery.id,
        "clarion.notification_id": delivery.notification,
        "clarion.tenant_id": delivery.tenant,
        "clarion.channel": delivery.channel,
        "clarion.attempt": delivery.attempt,
    }
    with _child_of(delivery.trace, "delivery.attempt", trace.SpanKind.CONSUMER, values):
        yield traceparent()


def _child_of(carried: object, name: str, kind: SpanKind, values: dict[str, Any]) -> Any:
    """Span ``name``, a child of the context ``carried`` (a traceparent), else the root of a
    trace of its own: never a child of whatever span happens to be current, which belongs
    to other work."""
    from opentelemetry import context, trace

    parent = _span_context(carried)
    base = trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent else None
    return _live().start_as_current_span(
        name, context=base or context.Context(), kind=kind, attributes=values
    )


def provider_call(message: Delivery, name: str, kind: str) -> Any:
    """``provider.send``: the provider's call (its HTTP request, SMTP session...)."""
    if not ON:
        return _NOOP
    from opentelemetry import trace

    values = {
        "clarion.provider": name,
        "clarion.provider.kind": kind,
        "clarion.channel": message.channel,
        "clarion.delivery_id": message.id,
        "clarion.notification_id": message.notification,
    }
    return _live().start_as_current_span(
        "provider.send", kind=trace.SpanKind.CLIENT, attributes=values
    )


def outbound(headers: dict[str, str]) -> None:
    """Add the current span's ``traceparent`` to an outbound request's headers (nothing
    when tracing is off or no span is current)."""
    if not ON:
        return
    value = traceparent()
    if value is not None:
        headers["traceparent"] = value


def posting_event(tenant_id: str, event: Mapping[str, Any], hook: str, carried: object) -> Any:
    """``event.post``: one status-event POST to one webhook, a child of the context the
    event's message ``carried`` (the attempt that made it), else a trace of its own. Yields
    its traceparent (the request's header); None when off."""
    if not ON:
        return _NOOP
    return _posting_event(tenant_id, event, hook, carried)


@contextlib.contextmanager
def _posting_event(
    tenant_id: str, event: Mapping[str, Any], hook: str, carried: object
) -> Iterator[str | None]:
    from opentelemetry import trace

    data = event.get("data")
    values: dict[str, Any] = {
        "clarion.tenant_id": tenant_id,
        "clarion.event_id": str(event.get("id", "")),
        "clarion.event_type": str(event.get("type", "")),
        "clarion.webhook": hook,
    }
    if isinstance(data, Mapping) and isinstance(data.get("delivery_id"), str):
        values["clarion.delivery_id"] = data["delivery_id"]
    with _child_of(carried, "event.post", trace.SpanKind.CLIENT, values):
        yield traceparent()


# -- the API's requests ------------------------------------------------------------------


def serving(method: str, path: str, carried: str | None) -> Any:
    """``{method}``: the server span of one HTTP request, a child of the ``traceparent`` the
    caller sent (``carried``), if any; the API's middleware (``api/request_spans.py``)
    adds the status and the route. Only when :data:`ON`."""
    from opentelemetry import trace

    values: dict[str, Any] = {"http.request.method": method, "url.path": path}
    return _child_of(carried, method, trace.SpanKind.SERVER, values)
