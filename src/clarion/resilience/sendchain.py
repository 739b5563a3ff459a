"""The send chain: breaker, pacing and timeout around one provider call, with failover.

For one delivery and its tenant's providers of the channel (in priority order) the chain
takes the first provider whose circuit breaker lets a call through, waits for that
provider's rate-limit slot, sends within a timeout, and records the outcome in the breaker.

Failover happens through the breakers, never inside one attempt: after a transient error
from the first provider the attempt ends (the provider may have sent it anyway: trying the
second at once risks a double send). Once the first provider's breaker opens, the next
attempts go to the second. When every breaker is open the outcome is
:class:`NoHealthyProvider`, to be rescheduled without spending an attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from clarion.domain.delivery import Delivery
from clarion.errors import PermanentError, TransientError
from clarion.net.answers import transport_error
from clarion.observability import metrics, tracing
from clarion.providers.base import Provider, SendResult
from clarion.providers.kinds import UNGUARDED
from clarion.resilience.breaker import BreakerKey, CircuitBreaker
from clarion.resilience.deadlines import Deadlines
from clarion.resilience.ratelimit import PACE_MAX_WAIT, RateLimiter

log = logging.getLogger(__name__)

# Soonest a deferred delivery is looked at again.
MIN_DEFER = 0.05


class Candidate(Protocol):
    """A provider the chain may use (``ProviderSpec`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def rate_limit_per_second(self) -> float | None: ...


class ProviderLookup(Protocol):
    """Where provider instances come from (``ProviderSet`` is one)."""

    def ready(self, tenant_id: str, channel: str, name: str) -> Provider | None:
        """The provider when it is at hand without waiting; None: ask :meth:`sender`."""

    async def sender(self, tenant_id: str, channel: str, name: str) -> Provider: ...


@dataclass(frozen=True, slots=True)
class _Called:
    """A provider was chosen (and, mostly, called): what the outcome tells of it."""

    provider: str
    # The provider's kind (``ses``, ``smtp``, …): the bounded name metrics use; not part
    # of the outcome's identity.
    kind: str = field(default="", compare=False, kw_only=True)
    # How long the provider call took (seconds); None when no call was made.
    latency: float | None = field(default=None, compare=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Sent(_Called):
    result: SendResult


@dataclass(frozen=True, slots=True)
class Failed(_Called):
    """The call failed: ``error`` goes to the retry policy (transient, permanent, or an
    unforeseen exception, retried like a transient one)."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class Deferred:
    """Not attempted now: publish again after ``retry_in`` seconds, same attempt number."""

    retry_in: float
    reason: str


@dataclass(frozen=True, slots=True)
class NoHealthyProvider(Deferred):
    """Every provider's breaker is open (``retry_in``: until the soonest re-check)."""


@dataclass(frozen=True, slots=True)
class Throttled(Deferred):
    """The chosen provider's rate-limit queue is longer than a send may wait."""

    provider: str = ""


@dataclass(frozen=True, slots=True)
class NotClaimed:
    """The gate before the call said no: not to be sent (cancelled, finished, or this
    attempt made by another worker). Nothing to store, nothing to retry."""


Outcome = Sent | Failed | Deferred | NotClaimed
# Asked right before the provider call, after the breaker and the rate limit let it
# through: whether the call may be made (the worker claims the attempt: pipeline/claims.py).
Gate = Callable[[], Awaitable[bool]]


class SendChain:
    """Policy around ``provider.send``: one instance per process, shared by the workers."""

    def __init__(
        self,
        breakers: CircuitBreaker,
        limiter: RateLimiter,
        providers: ProviderLookup,
        *,
        timeout: float,
        max_pace_wait: float = PACE_MAX_WAIT,
        unguarded: Collection[str] = UNGUARDED,
    ) -> None:
        self._breakers = breakers
        self._limiter = limiter
        self._providers = providers
        self._timeout = timeout
        # One timer for every call in flight, not one per call (resilience/deadlines.py).
        self._deadline = Deadlines(timeout)
        self._max_pace_wait = max_pace_wait
        self._unguarded = frozenset(unguarded)

    async def send(
        self,
        message: Delivery,
        candidates: Sequence[Candidate],
        gate: Gate | None = None,
    ) -> Outcome:
        """Send ``message`` through the first usable candidate, if ``gate`` (asked last,
        right before the call) lets it."""
        if not candidates:
            error = PermanentError(
                f"no enabled provider for channel {message.channel!r}", reason="no_provider"
            )
            return Failed("", error)
        # The common case awaits nothing before the call: an unguarded first provider (no
        # breaker to ask), already built, with no rate limit.
        first = candidates[0]
        if self._is_unguarded(first):
            chosen = first
        else:
            choice = await self._choose(message.tenant, message.channel, candidates)
            if isinstance(choice, NoHealthyProvider):
                return choice
            chosen = choice
        # The provider is built (and its connections opened) before its rate-limit slot is
        # taken, so that the send leaves when its slot comes, not a connection later.
        provider = self._providers.ready(message.tenant, message.channel, chosen.name)
        if provider is None:
            found = await self._provider(message, chosen.name)
            if isinstance(found, Failed):
                return found
            provider = found
        if chosen.rate_limit_per_second:
            throttled = await self._pace(message.tenant, message.channel, chosen)
            if throttled is not None:
                return throttled
        for where, rate in provider.pacing(message):
            # The service's own limit per destination (a Slack channel's message a second).
            throttled = await self._pace(message.tenant, message.channel, chosen, where, rate)
            if throttled is not None:
                return throttled
        if gate is not None and not await gate():
            return NotClaimed()
        return await self._call(message, chosen, provider)

    async def _choose(
        self, tenant_id: str, channel: str, candidates: Sequence[Candidate]
    ) -> Candidate | NoHealthyProvider:
        for candidate in candidates:
            if self._is_unguarded(candidate):
                return candidate
            allowed = await self._allows(BreakerKey(tenant_id, candidate.name))
            metrics.breaker_seen(channel, tenant_id, candidate.name, kind_of(candidate), allowed)
            if allowed:
                return candidate
        waits = []
        for candidate in candidates:
            status = await self._breakers.status(BreakerKey(tenant_id, candidate.name))
            waits.append(status.retry_in)
        return NoHealthyProvider(max(MIN_DEFER, min(waits)), "no_healthy_provider")

    async def _allows(self, key: BreakerKey) -> bool:
        try:
            return await self._breakers.allow(key)
        except Exception as exc:
            # Breaker state unreachable: send rather than stop every delivery.
            log.warning("breaker %s unavailable, letting the call through: %r", key, exc)
            return True

    async def _pace(
        self,
        tenant_id: str,
        channel: str,
        chosen: Candidate,
        where: str | None = None,
        rate: float | None = None,
    ) -> Throttled | None:
        """Wait for the provider's slot (at its ``rate_limit_per_second``), or for the slot
        of one of its destinations (``where``, at ``rate``)."""
        rate = rate if where is not None else chosen.rate_limit_per_second
        if not rate:
            return None
        key = f"provider:{tenant_id}:{chosen.name}" + (f":{where}" if where is not None else "")
        started = time.perf_counter()
        try:
            decision = await self._limiter.acquire(key, rate, 1, max_wait=self._max_pace_wait)
        except Exception as exc:
            log.warning("rate limit %s unavailable: %r", key, exc)
            return Throttled(1.0, "rate_limit_unavailable", chosen.name)
        waited = time.perf_counter() - started
        metrics.rate_limit(channel, kind_of(chosen), waited, deferred=not decision.allowed)
        if decision.allowed:
            return None
        return Throttled(max(MIN_DEFER, decision.retry_after), "rate_limited", chosen.name)

    def _is_unguarded(self, candidate: Candidate) -> bool:
        return (getattr(candidate, "kind", None) or candidate.name) in self._unguarded

    async def _provider(self, message: Delivery, name: str) -> Provider | Failed:
        try:
            return await self._providers.sender(message.tenant, message.channel, name)
        except KeyError:
            return Failed(name, PermanentError(f"no provider named {name!r}", reason="no_provider"))
        except Exception as exc:
            # Credentials that can't be decrypted, a provider that can't start: the attempt
            # fails like a send would (retried if transient), and says nothing of the
            # service's health.
            return Failed(name, exc)

    async def _call(
        self, message: Delivery, chosen: Candidate, provider: Provider
    ) -> Sent | Failed:
        name, kind = chosen.name, kind_of(chosen)
        error: BaseException
        started = time.perf_counter()
        try:
            with self._deadline(), tracing.provider_call(message, name, kind):
                result = await provider.send(message)
        except TimeoutError as exc:
            error = transport_error(exc, after=self._timeout)
            outcome = "timeout"
        except Exception as exc:
            error = exc
            outcome = _outcome_of(exc)
        else:
            took = time.perf_counter() - started
            metrics.provider_call(message.channel, kind, "ok", took)
            if not self._is_unguarded(chosen):
                await self._record(message.tenant, chosen, True)
            return Sent(name, result, kind=kind, latency=took)
        took = time.perf_counter() - started
        metrics.provider_call(message.channel, kind, outcome, took)
        # A permanent error is the provider answering: it says nothing against its health.
        await self._record(message.tenant, chosen, isinstance(error, PermanentError))
        return Failed(name, error, kind=kind, latency=took)

    async def _record(self, tenant_id: str, chosen: Candidate, ok: bool) -> None:
        if self._is_unguarded(chosen):
            return
        try:
            await self._breakers.record(BreakerKey(tenant_id, chosen.name), ok)
        except Exception as exc:
            log.warning("breaker %s/%s: recording failed: %r", tenant_id, chosen.name, exc)


def kind_of(candidate: Candidate) -> str:
    """A provider's kind (its name when it has none, as the sandbox)."""
    kind = getattr(candidate, "kind", None)
    return kind if isinstance(kind, str) else candidate.name


def _outcome_of(exc: BaseException) -> str:
    if isinstance(exc, PermanentError):
        return "permanent"
    if isinstance(exc, TransientError):
        return "transient"
    return "error"


def fallback_channel(
    channel: str,
    *,
    critical: bool,
    fallbacks: Mapping[str, str],
    unavailable: Collection[str] = (),
) -> str | None:
    """The channel a critical delivery moves to when ``channel`` has no healthy provider.

    ``fallbacks`` is the template's mapping (``{"push": "sms", "sms": "email"}``); a
    fallback that is itself in ``unavailable`` is followed further. ``None``: keep waiting
    on ``channel`` (not critical, no fallback, or every fallback unavailable or a loop).
    """
    if not critical:
        return None
    seen = {channel}
    following = fallbacks.get(channel)
    while following is not None and following not in seen:
        if following not in unavailable:
            return following
        seen.add(following)
        following = fallbacks.get(following)
    return None
