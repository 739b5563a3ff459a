"""The NATS JetStream broker: one JetStream stream per broker stream, read through one
durable pull consumer.

* A broker stream ``send.email.normal`` is the JetStream stream ``clarion-send-email-normal``
  on the subject ``clarion.q.send-email-normal``, with work-queue retention: an acked
  message is deleted, so the stream holds what is left to do. Its consumer ``clarion``
  hands each message to one taker; ``AckWait`` is the lease, an in-progress ack (``+WPI``)
  renews it, a ``-NAK`` gives a message back at once. Redeliveries are unlimited
  (``MaxDeliver`` -1): Clarion counts attempts in the store, and a message's delivery count
  says whether it was handed out before.
* Delayed messages wait in one stream, ``clarion-delayed`` (subject
  ``clarion.delay.<stream>.<due second>``, header ``Clarion-Due``), read by the consumer
  ``mover``: a message not yet due is given back with a ``-NAK`` delayed until its due
  time, so the server itself keeps the clock and hands it out again then (surviving
  restarts: it stays unacked in a file-backed stream). A consuming broker instance runs a
  mover that publishes due messages to their streams (with ``Nats-Msg-Id``, so two movers
  or a retried move store one copy) and acks them. See ``broker/nats_pulls.py`` for how
  lanes are read.
* Leads live in the key-value bucket ``clarion-leads``: a holder renews by a
  compare-and-set on the revision it wrote; a contender takes a lead whose revision has
  not changed for ``ttl`` seconds of its own clock (no two machines' clocks compared).
* Undecodable messages are copied to ``clarion-poison`` (subject
  ``clarion.poison.<stream>``, the last 10,000 per stream) and acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Sequence

import nats
import nats.errors
import orjson
from nats.aio.msg import Msg

from clarion.broker.base import Broker, Delayed, Message, StreamStats, Take
from clarion.broker.codec import Payload, decode, encode
from clarion.broker.nats_client import (
    STREAM_NOT_FOUND,
    JetStream,
    JetStreamError,
    Outgoing,
    reaching,
    token,
)
from clarion.broker.nats_leads import Leads
from clarion.broker.nats_pulls import Lane, LaneMissing

log = logging.getLogger(__name__)

GROUP = "clarion"
MOVER = "mover"
# The mover's lease on a delayed message it is moving; a crash hands it to another after.
MOVER_LEASE = 10.0
# Delayed messages moved per take.
MOVE_BATCH = 500
POISON_KEEP = 10_000
DUE, TARGET = "Clarion-Due", "Clarion-Stream"
# The mover's lane among the broker streams' (a name no broker stream has).
DELAYED_LANE = "(delayed)"


class NatsBroker(Broker):
    """Streams in NATS JetStream (nats-server 2.9+)."""

    def __init__(self, url: str, lease: float = 30.0, prefix: str = "clarion") -> None:
        self._js = JetStream(url)
        self._lease = lease
        self._prefix = prefix
        self._leads = Leads(self._js.client, f"{prefix}-leads", self._js.replicas)
        self._mover: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    # -- names -----------------------------------------------------------------------------

    def _stream_name(self, stream: str) -> str:
        return f"{self._prefix}-{token(stream)}"

    def _subject(self, stream: str) -> str:
        return f"{self._prefix}.q.{token(stream)}"

    @property
    def _delayed(self) -> str:
        return f"{self._prefix}-delayed"

    def poison_stream(self) -> str:
        """Where entries that cannot be decoded are kept for an operator to read."""
        return f"{self._prefix}-poison"

    # -- connection ------------------------------------------------------------------------

    async def close(self) -> None:
        self._closing.set()
        if self._mover is not None:
            self._mover.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._mover
            self._mover = None
        await self._js.close()

    async def ping(self) -> None:
        await self._js.ping()

    async def _settle(self, messages: Sequence[Message], verb: bytes) -> None:
        """Ack, nak or renew messages, each with a reply so that this returns once the
        server has done it (an acked message is gone from its stream by then)."""
        if not messages:
            return
        try:
            await self._js.requests([(m.id, verb, None) for m in messages])
        except nats.errors.NoRespondersError:
            # Its consumer is gone, and the message with it (or it comes back from a new
            # consumer, once more).
            log.warning("nats: a consumer was deleted while its messages were held")

    # -- streams and consumers -------------------------------------------------------------

    async def _ensure_work(self, stream: str) -> None:
        name = self._stream_name(stream)
        await self._js.ensure_stream(name, [self._subject(stream)], retention="workqueue")

    async def _work_lane(self, stream: str) -> Lane:
        if stream not in self._js.lanes:
            await self._ensure_work(stream)
        return await self._js.lane(stream, self._stream_name(stream), GROUP, self._lease)

    async def _ensure_delayed(self) -> None:
        await self._js.ensure_stream(
            self._delayed, [f"{self._prefix}.delay.>"], retention="workqueue"
        )

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, stream: str, payloads: Sequence[Payload]) -> None:
        if not payloads:
            return
        await self._ensure_work(stream)
        subject = self._subject(stream)
        await self._js.store([(subject, encode(p), None) for p in payloads])

    async def publish_delayed(self, items: Sequence[Delayed]) -> None:
        """Held in the delayed stream until due; what is due already goes straight to its
        stream."""
        if not items:
            return
        now = time.time()
        for stream in {item.stream for item in items}:
            await self._ensure_work(stream)  # for the mover to publish to
        await self._ensure_delayed()
        batch: list[Outgoing] = []
        for item in items:
            if item.due <= now:
                batch.append((self._subject(item.stream), encode(item.payload), None))
                continue
            subject = f"{self._prefix}.delay.{token(item.stream)}.{int(item.due)}"
            headers = {DUE: repr(item.due), TARGET: item.stream}
            batch.append((subject, encode(item.payload), headers))
        await self._js.store(batch)

    # -- consuming -------------------------------------------------------------------------

    async def _consume(self, take: Take) -> list[Message]:
        lanes = [await self._work_lane(stream) for stream in take.streams]
        self._start_mover()
        try:
            with reaching():
                got = await self._js.puller.take(
                    lanes, take.count, take.deadline, take.overfill, take.stop
                )
        except LaneMissing:
            self._js.forget()
            raise
        taken = [_message(lane.name, msg) for lane, msg in got]
        poison = [m for m in taken if m.poison is not None]
        if poison:
            await self._set_aside(poison)
            taken = [m for m in taken if m.poison is None]
        return taken

    async def _set_aside(self, messages: Sequence[Message]) -> None:
        """Copy undecodable messages to the poison stream, then ack them: handed out again
        they would fail again, forever."""
        await self._poison(
            [
                (m.stream, str(m.payload.get("raw", "")).encode(), m.poison or "", m.id)
                for m in messages
            ]
        )

    async def _poison(self, items: Sequence[tuple[str, bytes, str, str]]) -> None:
        """Each ``(stream, raw data, error, ack subject)``: kept in the poison stream for an
        operator, then acked."""
        await self._js.ensure_stream(
            self.poison_stream(),
            [f"{self._prefix}.poison.>"],
            retention="limits",
            max_msgs_per_subject=POISON_KEEP,
        )
        copies: list[Outgoing] = []
        for stream, raw, error, ack_subject in items:
            log.error(
                "stream %s: message %s cannot be used (%s): set aside in %s",
                stream,
                ack_subject,
                error,
                self.poison_stream(),
            )
            headers = {TARGET: stream, "Clarion-Error": error}
            copies.append((f"{self._prefix}.poison.{token(stream)}", raw, headers))
        await self._js.store(copies)
        await self._js.requests([(ack_subject, b"+ACK", None) for *_, ack_subject in items])

    # -- delayed messages ------------------------------------------------------------------

    def _start_mover(self) -> None:
        if self._mover is None and not self._closing.is_set():
            self._mover = asyncio.get_running_loop().create_task(self._move(), name="nats-mover")

    async def _move(self) -> None:
        """Move due delayed messages while this instance consumes: one standing pull on the
        ``mover`` consumer; the server hands out each delayed message when it is due."""
        pause = 0.0
        while not self._closing.is_set():
            try:
                await self._ensure_delayed()
                lane = await self._js.lane(DELAYED_LANE, self._delayed, MOVER, MOVER_LEASE)
                deadline = time.monotonic() + 60.0
                got = await self._js.puller.take([lane], MOVE_BATCH, deadline, False, self._closing)
                await self._move_batch([msg for _, msg in got])
                pause = 0.0
            except Exception as exc:
                self._js.lanes.pop(DELAYED_LANE, None)
                pause = min(max(pause * 2, 0.5), 10.0)
                log.warning("nats: moving delayed messages failed, again in %.1fs: %r", pause, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), pause)

    async def _move_batch(self, msgs: Sequence[Msg]) -> None:
        now = time.time()
        due: list[Msg] = []
        later: list[Outgoing] = []
        bad: list[tuple[str, bytes, str, str]] = []
        for msg in msgs:
            headers = msg.headers or {}
            try:
                at, stream = float(headers[DUE]), headers[TARGET]
            except (KeyError, ValueError):
                at, stream = now, ""
            if not stream:
                bad.append((DELAYED_LANE, msg.data, "no due time or stream", msg.reply))
            elif at <= now:
                due.append(msg)
            else:
                wait = orjson.dumps({"delay": int((at - now) * 1e9)})
                later.append((msg.reply, b"-NAK " + wait, None))
        if due:
            for stream in {(m.headers or {})[TARGET] for m in due}:
                await self._ensure_work(stream)
            await self._js.store(
                [(self._subject((m.headers or {})[TARGET]), m.data, _move_id(m)) for m in due]
            )
            later += [(m.reply, b"+ACK", None) for m in due]
        if later:
            await self._js.requests(later)
        if bad:
            await self._poison(bad)

    # -- settling --------------------------------------------------------------------------

    async def ack(self, messages: Sequence[Message]) -> None:
        await self._settle(messages, b"+ACK")

    async def release(self, messages: Sequence[Message]) -> None:
        await self._settle(messages, b"-NAK")

    async def extend(self, messages: Sequence[Message], consumer: str) -> None:
        """An in-progress ack restarts the lease of a message still held; one acked since
        is left alone by the server."""
        await self._settle(messages, b"+WPI")

    # -- leads -----------------------------------------------------------------------------

    async def lead(self, role: str, holder: str, ttl: float) -> bool:
        with reaching():
            return await self._leads.lead(role, holder, ttl)

    async def step_down(self, role: str, holder: str) -> None:
        with reaching():
            await self._leads.step_down(role, holder)

    # -- counting --------------------------------------------------------------------------

    async def _delayed_counts(self, due_before: float | None) -> Counter[str]:
        """Delayed messages per broker stream token, due before ``due_before`` (to the
        second: their subjects carry the due second) or all."""
        counts: Counter[str] = Counter()
        head = f"{self._prefix}.delay."
        offset = 0
        while True:
            try:
                answer = await self._js.api(
                    f"STREAM.INFO.{self._delayed}", {"subjects_filter": ">", "offset": offset}
                )
            except JetStreamError as exc:
                if exc.code == STREAM_NOT_FOUND:
                    return counts
                raise
            subjects: dict[str, int] = answer["state"].get("subjects") or {}
            for subject, n in subjects.items():
                name, _, second = subject.removeprefix(head).rpartition(".")
                if due_before is None or int(second) < due_before:
                    counts[name] += n
            offset += len(subjects)
            if not subjects or offset >= int(answer.get("total") or 0):
                return counts

    async def backlog(
        self, streams: Sequence[str], due_before: float | None = None
    ) -> dict[str, int]:
        infos = await self._js.infos(
            f"STREAM.INFO.{self._stream_name(stream)}" for stream in streams
        )
        delayed = await self._delayed_counts(due_before)
        return {
            stream: (info["state"]["messages"] if info else 0) + delayed[token(stream)]
            for stream, info in zip(streams, infos, strict=True)
        }

    async def stream_stats(self, streams: Sequence[str]) -> list[StreamStats]:
        """Stream length (waiting and held), the consumer's unacked (``pending``) and
        not yet delivered (``lag``) counts, and the delayed messages."""
        names = [self._stream_name(stream) for stream in streams]
        infos = await self._js.infos(f"STREAM.INFO.{name}" for name in names)
        consumers = await self._js.infos(f"CONSUMER.INFO.{name}.{GROUP}" for name in names)
        delayed = await self._delayed_counts(None)
        stats = []
        for stream, info, consumer in zip(streams, infos, consumers, strict=True):
            length = info["state"]["messages"] if info else 0
            pending = int(consumer["num_ack_pending"]) if consumer else 0
            lag = int(consumer["num_pending"]) if consumer else length
            stats.append(StreamStats(stream, GROUP, length, pending, lag, delayed[token(stream)]))
        return stats


def _move_id(msg: Msg) -> dict[str, str]:
    """The moved copy's ``Nats-Msg-Id``: the delayed message's sequence and store time, so
    a move repeated within the stream's duplicate window (two minutes) stores one copy,
    and a delayed stream made anew (its sequence starting over) is not taken for one."""
    meta = msg.metadata
    return {"Nats-Msg-Id": f"delayed:{meta.sequence.stream}:{meta.timestamp.timestamp():.9f}"}


def _message(stream: str, msg: Msg) -> Message:
    """A delivery as a broker message: its id is its ack subject (unique per delivery)."""
    try:
        payload, poison = decode(msg.data), None
    except ValueError as exc:
        payload, poison = {"raw": repr(msg.data)[:1000]}, f"{type(exc).__name__}: {exc}"
    redelivered = msg.metadata.num_delivered > 1
    return Message(stream, msg.reply, payload, redelivered=redelivered, poison=poison)
