"""The broker interface: streams of plain-data messages, consumed in groups with leases.

The broker moves work; the database holds the truth. Every message is encoded to JSON bytes
on publish and decoded on consume (``broker/codec.py``), in every backend, so serialisation
is always exercised.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from clarion.broker.codec import Payload


@dataclass(slots=True)
class Message:
    """A message taken from a stream. Ack it once its work is durably done."""

    stream: str
    id: str
    payload: dict[str, Any]
    # True when this message was handed out before (its consumer died or gave it back):
    # the work may already be done, so a consumer checks the store before repeating it.
    redelivered: bool = False
    # Why the message cannot be decoded, if it cannot: a broker sets such a message aside
    # (see docs/operations.md, "Poison messages") instead of handing it out.
    poison: str | None = None


@dataclass(frozen=True, slots=True)
class Delayed:
    """A message to publish on ``stream`` once the clock reaches ``due`` (unix seconds)."""

    stream: str
    payload: Payload
    due: float


@dataclass(frozen=True, slots=True)
class StreamStats:
    """A stream as its consumer group sees it (metrics, read at scrape time).

    ``length``: messages in the stream (waiting or held: acked ones are deleted);
    ``pending``: taken by a consumer and not yet acked; ``lag``: not yet taken;
    ``delayed``: retries and deferred sends waiting to be due."""

    stream: str
    group: str
    length: int
    pending: int
    lag: int
    delayed: int


@dataclass(frozen=True, slots=True)
class Take:
    """One :meth:`Broker.consume` call: its arguments, with its timeout made a
    ``time.monotonic()`` deadline."""

    streams: Sequence[str]
    consumer: str
    count: int
    deadline: float
    overfill: bool
    stop: asyncio.Event | None

    @property
    def stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()


class Broker(ABC):
    """Streams with consumer groups. One group per stream: every message goes to one consumer.

    A message taken and not acked within the lease is handed out again, to any consumer.
    """

    @abstractmethod
    async def publish(self, stream: str, payloads: Sequence[Payload]) -> None:
        """Append messages to a stream, in one round trip."""

    @abstractmethod
    async def publish_delayed(self, items: Sequence[Delayed]) -> None:
        """Hold messages until they are due, then append them to their streams."""

    async def consume(
        self,
        streams: Sequence[str],
        consumer: str,
        count: int,
        timeout: float,
        *,
        overfill: bool = False,
        stop: asyncio.Event | None = None,
    ) -> list[Message]:
        """Take up to ``count`` messages, from earlier streams first (they are higher lanes).

        Waits up to ``timeout`` seconds when there is nothing to take, and no longer once
        ``stop`` is set (a process that is stopping waits for no more work); returns ``[]``
        then.
        ``overfill``: the caller holds (and renews the leases of) whatever it is given, so
        the broker may return up to ``count`` per stream when that saves it round trips.
        """
        deadline = time.monotonic() + timeout
        return await self._consume(Take(streams, consumer, count, deadline, overfill, stop))

    @abstractmethod
    async def _consume(self, take: Take) -> list[Message]:
        """:meth:`consume`, as each backend does it."""

    @abstractmethod
    async def ack(self, messages: Sequence[Message]) -> None:
        """The work of these messages is done and durable: forget them."""

    @abstractmethod
    async def release(self, messages: Sequence[Message]) -> None:
        """Give messages back unfinished, to be handed out again at once."""

    @abstractmethod
    async def extend(self, messages: Sequence[Message], consumer: str) -> None:
        """Renew the lease of messages ``consumer`` still holds: a consumer that keeps taken
        messages waiting (its tenants' fair shares) keeps them from being handed out again.
        An acked message is left alone. Call it well within the lease: one already taken
        back by another consumer may be claimed back by this one."""

    async def lead(self, role: str, holder: str, ttl: float) -> bool:
        """Take or keep the lead of ``role`` for ``ttl`` seconds; True when ``holder`` has
        it (pipeline/lead.py). A broker of one process: that process always leads."""
        return True

    async def step_down(self, role: str, holder: str) -> None:  # noqa: B027 - optional
        """Give up the lead of ``role`` if ``holder`` has it, for another to take at once."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise if the broker cannot be reached."""

    @abstractmethod
    async def backlog(
        self, streams: Sequence[str], due_before: float | None = None
    ) -> dict[str, int]:
        """Messages waiting or held unacked, per stream (for metrics and draining).

        Delayed messages count when due before ``due_before`` (a Unix time), or all of them
        when it is None."""

    async def stream_stats(self, streams: Sequence[str]) -> list[StreamStats]:
        """Length, pending, lag and delayed messages of each stream (for metrics)."""
        counts = await self.backlog(streams)
        return [StreamStats(s, "clarion", n, 0, n, 0) for s, n in counts.items()]

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect and prepare; called once before use."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
