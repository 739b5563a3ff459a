"""The event dispatcher: POSTs status events to the tenants' webhooks.

It takes messages from the ``events`` stream (see :mod:`clarion.pipeline.status_events`)
and POSTs each event to every enabled webhook of its tenant that wants its type, signed
with that webhook's secret. A failure worth retrying (5xx, 408, 429, a timeout, a refused
connection) is retried for that webhook alone, after the retry schedule's delay, up to
``max_attempts`` tries; other failures are dropped at once. A message is acked once its
outcome is decided: delivered, dropped, or its retries published.

Retries go to a stream of their own (``events.retry``), each for one webhook. When the
dispatcher holds all it may and a slow webhook's events are all that waits, those beyond
a few are put back on the delayed set for later (``spill``), so it can read past them. A tenant's
POSTs in flight are held to its share of the dispatcher, and those to one endpoint (a
webhook's host and port) to the endpoint's share, however many webhooks an event goes to:
a tenant whose receivers hang never makes another tenant's events wait for a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import orjson

from clarion.broker import Delayed, Message
from clarion.domain.backoff import retry_delay
from clarion.domain.delivery import url_endpoint
from clarion.errors import PermanentError, TransientError
from clarion.net import HttpClient
from clarion.observability import tracing
from clarion.pipeline.consumer import FairConsumer, tenant_of
from clarion.pipeline.context import Context
from clarion.pipeline.status_events import EVENTS_RETRY_STREAM, EVENTS_STREAM
from clarion.pipeline.subscriptions import Subscription
from clarion.providers.webhook import USER_AGENT, post_signed
from clarion.security.netguard import AddressGuard
from clarion.store.batching import Batcher

log = logging.getLogger(__name__)

_Key = tuple[str, str]  # a tenant's endpoint


class EventDispatcher:
    """Delivers events with at most ``event_concurrency`` messages in flight, shared fairly
    between tenants (:class:`~clarion.pipeline.consumer.FairConsumer`)."""

    def __init__(self, ctx: Context, consumer: str, acks: Batcher[Message, None]) -> None:
        self._ctx = ctx
        self._acks = acks
        self._concurrency = ctx.settings.event_concurrency
        self._guard = AddressGuard(ctx.settings.allow_private_webhooks, ctx.settings.proxies)
        self._timeout = ctx.settings.webhook_timeout
        self._http: HttpClient | None = None
        self._consumer = FairConsumer(
            ctx.broker,
            [EVENTS_STREAM],
            consumer,
            self._handle,
            concurrency=self._concurrency,
            tenant_share=ctx.settings.worker_tenant_share,
            lease=ctx.settings.broker_lease,
            name="events",
            screen=self._screen,
            retry_stream=EVENTS_RETRY_STREAM,
            retry_share=ctx.settings.worker_retry_share,
            endpoint=self._endpoint,
            endpoint_share=ctx.settings.worker_endpoint_share,
            spill=self._spill,
        )
        # The POSTs of an event to several webhooks are held to the same shares.
        self._per_tenant = KeyedLimit(self._consumer.tenant_limit)
        self._per_endpoint = KeyedLimit(self._consumer.endpoint_limit)

    @property
    def inflight(self) -> int:
        """Events taken and not finished."""
        return self._consumer.held

    def start(self) -> None:
        self._http = HttpClient(
            self._guard, max_connections=self._concurrency, user_agent=USER_AGENT
        )

    async def run(self, stop: asyncio.Event) -> None:
        await self._consumer.run(stop)

    async def _screen(self, messages: list[Message]) -> list[Message]:
        """Load the webhooks of the take's tenants, once, for :meth:`_endpoint`."""
        with contextlib.suppress(Exception):  # else loaded per message, failing alone
            await self._ctx.webhooks.prepare({tenant_of(m) for m in messages})
        return messages

    async def _spill(self, messages: list[Message]) -> None:
        """Events the consumer could not hold any longer (their webhook is slow, and other
        tenants' events wait behind them): back on their stream later, after a webhook
        timeout that doubles each time an event is spilled again (at most 32 of them)."""
        now = time.time()
        later = []
        for message in messages:
            times = message.payload.get("deferred")
            times = times if isinstance(times, int) and times > 0 else 0
            due = now + self._timeout * 2 ** min(times, 5)
            later.append(Delayed(message.stream, {**message.payload, "deferred": times + 1}, due))
        await self._ctx.broker.publish_delayed(later)
        for message in messages:
            self._acks.post(message)

    def _endpoint(self, message: Message) -> str | None:
        """The endpoint of a message for one webhook (a retry, or an event of a tenant with
        one webhook that wants it); None for an event to several."""
        payload = message.payload
        event = payload.get("event")
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return None
        hooks = self._hooks(tenant_of(message), event["type"], payload.get("webhook"))
        return url_endpoint(hooks[0].url) if len(hooks) == 1 else None

    def _hooks(self, tenant_id: str, event_type: str, only: object) -> list[Subscription]:
        hooks = self._ctx.webhooks.matching(tenant_id, event_type)
        if only is not None:
            hooks = [h for h in hooks if h.name == only]
        return hooks

    async def _handle(self, message: Message) -> None:
        if not _well_formed(message.payload):
            # Taking it again would fail again: drop it.
            log.error("events: dropped a malformed message %s", message.id)
            self._acks.post(message)
            return
        try:
            retries = await self._dispatch(message.payload)
            if retries:
                await self._ctx.broker.publish_delayed(retries)
        except Exception as exc:
            # Not acked: the message comes back after its lease and is tried again.
            log.warning("event %s: dispatching failed: %r", _event_id(message.payload), exc)
            return
        self._acks.post(message)
        self._ctx.made_progress()

    async def _dispatch(self, payload: dict[str, Any]) -> list[Delayed]:
        """POST the event to each webhook it is for; the retries to schedule."""
        tenant_id, event = payload["tenant"], payload["event"]
        await self._ctx.webhooks.prepare([tenant_id])
        hooks = self._hooks(tenant_id, event["type"], payload.get("webhook"))
        if not hooks:
            return []
        body = orjson.dumps(event)
        carried = payload.get("traceparent")
        outcomes = await self._post_each(tenant_id, event, hooks, body, carried)
        retries = []
        for hook, outcome in zip(hooks, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                retry = self._after_failure(payload, hook, outcome)
                if retry is not None:
                    retries.append(retry)
        return retries

    async def _post_each(
        self,
        tenant_id: str,
        event: dict[str, Any],
        hooks: list[Subscription],
        body: bytes,
        carried: object,
    ) -> list[BaseException | None]:
        """POST the event to each hook, each POST started once its endpoint and its tenant
        are under their shares (a hook's POST waits for those before the next hook's is
        considered); each hook's exception, or None."""
        tasks: list[asyncio.Task[None]] = []
        try:
            for hook in hooks:
                keys = await self._take_turn(tenant_id, hook)
                task = asyncio.create_task(self._traced_post(tenant_id, event, hook, body, carried))
                # A callback, not a finally: it runs even for a task cancelled unstarted.
                task.add_done_callback(functools.partial(self._end_turn, keys))
                tasks.append(task)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        return [o if isinstance(o, BaseException) else None for o in outcomes]

    async def _take_turn(self, tenant_id: str, hook: Subscription) -> tuple[str, _Key]:
        endpoint = (tenant_id, url_endpoint(hook.url) or hook.url)
        await self._per_endpoint.acquire(endpoint)
        try:
            await self._per_tenant.acquire(tenant_id)
        except BaseException:
            self._per_endpoint.release(endpoint)
            raise
        return tenant_id, endpoint

    def _end_turn(self, keys: tuple[str, _Key], _: object) -> None:
        self._per_tenant.release(keys[0])
        self._per_endpoint.release(keys[1])

    def _after_failure(
        self, payload: dict[str, Any], hook: Subscription, exc: BaseException
    ) -> Delayed | None:
        attempt: int = payload.get("attempt", 1)
        what = f"event {payload['event']['id']} to webhook {hook.name!r} of {hook.tenant_id}"
        if isinstance(exc, PermanentError):
            log.warning("%s dropped: %s", what, exc.message)
            return None
        if not isinstance(exc, TransientError):
            log.error("%s: unexpected %r", what, exc, exc_info=exc)
        if attempt >= self._ctx.settings.max_attempts:
            log.warning("%s dropped after %d attempts: %r", what, attempt, exc)
            return None
        retry_after = exc.retry_after if isinstance(exc, TransientError) else None
        delay = retry_delay(attempt, self._ctx.settings.retry_delays, retry_after=retry_after)
        again = {**payload, "webhook": hook.name, "attempt": attempt + 1}
        return Delayed(EVENTS_RETRY_STREAM, again, time.time() + delay)

    async def _traced_post(
        self,
        tenant_id: str,
        event: dict[str, Any],
        hook: Subscription,
        body: bytes,
        carried: object,
    ) -> None:
        """:meth:`_post` in an ``event.post`` span when tracing is on (observability/tracing.py),
        its context sent as the request's ``traceparent``."""
        with tracing.posting_event(tenant_id, event, hook.name, carried) as parent:
            await self._post(hook, event["id"], body, parent)

    async def _post(
        self, hook: Subscription, event_id: str, body: bytes, traceparent: str | None = None
    ) -> None:
        """One POST; raises :class:`TransientError` or :class:`PermanentError` on failure."""
        if self._http is None:
            raise RuntimeError("EventDispatcher.run_once before start")
        headers = {"clarion-event-id": event_id, "idempotency-key": f"{event_id}:{hook.name}"}
        if traceparent is not None:
            headers["traceparent"] = traceparent
        await post_signed(self._http, hook.url, hook.secret, body, headers, timeout=self._timeout)

    async def stop(self, deadline: float) -> None:
        """Finish what is in flight within ``deadline`` seconds; give the rest back."""
        await self._consumer.stop(deadline)
        if self._http is not None:
            await self._http.aclose()
            self._http = None


def _event_id(payload: dict[str, Any]) -> str:
    event = payload.get("event")
    return str(event.get("id")) if isinstance(event, dict) else "?"


def _well_formed(payload: dict[str, Any]) -> bool:
    event = payload.get("event")
    return (
        isinstance(payload.get("tenant"), str)
        and isinstance(event, dict)
        and isinstance(event.get("id"), str)
        and isinstance(event.get("type"), str)
    )


@dataclass(slots=True)
class _Turns:
    semaphore: asyncio.Semaphore
    users: int = 0


class KeyedLimit:
    """At most ``limit`` holders of each key at once; the others wait their turn, in order.
    A key nobody holds or waits for is forgotten."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._keys: dict[Hashable, _Turns] = {}

    async def acquire(self, key: Hashable) -> None:
        turns = self._keys.get(key)
        if turns is None:
            turns = self._keys[key] = _Turns(asyncio.Semaphore(self._limit))
        turns.users += 1
        try:
            await turns.semaphore.acquire()
        except BaseException:
            self._leave(key, turns)
            raise

    def release(self, key: Hashable) -> None:
        turns = self._keys[key]
        turns.semaphore.release()
        self._leave(key, turns)

    def _leave(self, key: Hashable, turns: _Turns) -> None:
        turns.users -= 1
        if not turns.users:
            del self._keys[key]
