"""Mobile push: one delivery goes to every token of its recipient.

A push delivery's address is a list of ``{"platform": "apns" | "fcm", "token": ...}``.
:class:`PushFanout` hands each platform's tokens to that platform's provider; each provider
sends its tokens concurrently. Both combine what came back by one rule (:func:`combine`):

- any token accepted: the delivery is sent; tokens the service called gone ride along in
  ``SendResult.dead_addresses`` so the worker removes them;
- every token gone: ``PermanentError("unregistered", dead_address=[tokens])``;
- otherwise the most retryable failure wins: a transient error (the longest ``retry_after``)
  before a permanent one, so a single throttled token retries the delivery rather than
  failing it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import msgspec

from clarion.domain.delivery import Delivery
from clarion.errors import PermanentError, ProviderError, TransientError
from clarion.providers.base import Provider, SendResult

# What one device token's send came to.
TokenResult = SendResult | ProviderError

__all__ = ["PushFanout", "push_targets", "send_tokens", "tokens_for"]


def push_targets(to: Any) -> list[tuple[str, str]]:
    """The ``(platform, token)`` pairs of a push address, malformed entries left out and
    repeats sent once."""
    if not isinstance(to, list):
        return []
    pairs: dict[tuple[str, str], None] = {}
    for entry in to:
        if not isinstance(entry, dict):
            continue
        platform, token = entry.get("platform"), entry.get("token")
        if isinstance(platform, str) and isinstance(token, str) and token:
            pairs[(platform, token)] = None
    return list(pairs)


def tokens_for(message: Delivery, platform: str) -> list[str]:
    """The tokens of one platform in a push message."""
    return [token for kind, token in push_targets(message.to) if kind == platform]


def _dead(outcome: TokenResult) -> list[Any]:
    if isinstance(outcome, SendResult):
        return list(outcome.dead_addresses)
    address = getattr(outcome, "dead_address", None)
    if address is None:
        return []
    return list(address) if isinstance(address, list | tuple) else [address]


def _retry_after(error: TransientError) -> float:
    return error.retry_after or 0.0


def combine(outcomes: Sequence[TokenResult], noun: str = "push token") -> SendResult:
    """One result from the outcomes of several tokens (or platforms, or chat addresses:
    ``noun`` names them in a message); see the module doc."""
    dead = [address for outcome in outcomes for address in _dead(outcome)]
    sent = [outcome for outcome in outcomes if isinstance(outcome, SendResult)]
    if sent:
        first_id = next((r.provider_message_id for r in sent if r.provider_message_id), None)
        return SendResult(provider_message_id=first_id, dead_addresses=tuple(dead))
    errors = [outcome for outcome in outcomes if isinstance(outcome, ProviderError)]
    if not errors:
        raise PermanentError(f"the delivery has no {noun}", reason="no_address")
    transient = [error for error in errors if isinstance(error, TransientError)]
    if transient:
        raise max(transient, key=_retry_after)
    live = [error for error in errors if not _dead(error)]
    if not live:
        raise PermanentError(
            f"every {noun} ({len(dead)}) is gone", reason="unregistered", dead_address=dead
        )
    first = live[0]
    # The gone tokens are still reported, so the worker removes them with the failure.
    raise PermanentError(first.message, reason=first.reason, dead_address=dead or None) from first


async def gather_outcomes(calls: Iterable[Awaitable[TokenResult]]) -> list[TokenResult]:
    """Run the calls concurrently; a ProviderError is an outcome, anything else a bug."""

    async def run(call: Awaitable[TokenResult]) -> TokenResult:
        try:
            return await call
        except ProviderError as exc:
            return exc

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(run(call)) for call in calls]
    return [task.result() for task in tasks]


async def send_tokens(
    tokens: Sequence[str], send_one: Callable[[str], Awaitable[str | None]], timeout: float
) -> SendResult:
    """Send to every token at once, each within ``timeout``, and combine the outcomes.

    ``send_one`` returns the service's message id, or raises a ProviderError (with
    ``dead_address=token`` when the service says the token is gone).
    """

    async def one(token: str) -> TokenResult:
        try:
            async with asyncio.timeout(timeout):
                return SendResult(provider_message_id=await send_one(token))
        except TimeoutError as exc:
            raise TransientError(f"timed out after {timeout}s", reason="timeout") from exc

    if not tokens:
        raise PermanentError("the delivery has no token for this platform", reason="no_address")
    return combine(await gather_outcomes(one(token) for token in tokens))


class PushFanout(Provider):
    """Sends a push delivery through the provider of each of its tokens' platforms.

    The providers belong to whoever built the fan-out: ``start`` and ``aclose`` leave them
    alone.
    """

    kind = "push"

    def __init__(self, by_platform: dict[str, Provider]) -> None:
        self._by_platform = dict(by_platform)

    async def send(self, message: Delivery) -> SendResult:
        targets = push_targets(message.to)
        if not targets:
            raise PermanentError("the delivery has no push token", reason="no_address")
        platforms = list(dict.fromkeys(platform for platform, _ in targets))
        usable = [platform for platform in platforms if platform in self._by_platform]
        if not usable:
            raise PermanentError(
                f"no provider for push platform(s) {', '.join(platforms)}", reason="no_provider"
            )
        calls = [
            self._by_platform[platform].send(_narrowed(message, platform)) for platform in usable
        ]
        return combine(await gather_outcomes(calls))


def _narrowed(message: Delivery, platform: str) -> Delivery:
    to = [{"platform": platform, "token": token} for token in tokens_for(message, platform)]
    return msgspec.structs.replace(message, to=to)
