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
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import nats
import nats.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg

from clarion.broker.base import Broker, Delayed, Message, StreamStats, Take
from clarion.broker.codec import Payload, decode, encode
from clarion.broker.nats_leads import Leads
from clarion.broker.nats_pulls import Lane, LaneMissing, Puller

log = logging.getLogger(__name__)

GROUP = "clarion"
MOVER = "mover"
# The mover's lease on a delayed message it is moving; a crash hands it to another after.
MOVER_LEASE = 10.0
# Delayed messages moved per take.
MOVE_BATCH = 500
# Messages (or acks) sent per round trip, and how long a reply may take.
PUBLISH_BATCH = 1000
REPLY_TIMEOUT = 10.0
POISON_KEEP = 10_000
DUE, TARGET = "Clarion-Due", "Clarion-Stream"
# The mover's lane among the broker streams' (a name no broker stream has).
DELAYED_LANE = "(delayed)"


def token(stream: str) -> str:
    """A broker stream's name as one subject token and stream name part, one to one:
    letters and digits kept, ``.`` as ``-``, anything else ``_`` and hex of its bytes."""
    out = []
    for char in stream:
        if char.isascii() and char.isalnum():
            out.append(char)
        elif char == ".":
            out.append("-")
        else:
            out.extend(f"_{byte:02x}" for byte in char.encode())
    return "".join(out)


class JetStreamError(RuntimeError):
    """A JetStream API request the server refused."""

    def __init__(self, subject: str, error: dict[str, Any]) -> None:
        self.code = int(error.get("err_code") or 0)
        super().__init__(f"{subject}: {error.get('description', error)} ({self.code})")


# A request to send: subject, data, headers.
Outgoing = tuple[str, bytes, dict[str, str] | None]

STREAM_NOT_FOUND, CONSUMER_NOT_FOUND, STREAM_NAME_IN_USE = 10059, 10014, 10058


@contextlib.contextmanager
def reaching() -> Iterator[None]:
    """NATS client errors as the outage they are (``ConnectionError``), converted where
    they enter Clarion."""
    try:
        yield
    except (
        nats.errors.ConnectionClosedError,
        nats.errors.NoServersError,
        nats.errors.OutboundBufferLimitError,
        nats.errors.StaleConnectionError,
        nats.errors.ConnectionDrainingError,
        nats.errors.ConnectionReconnectingError,
    ) as exc:
        raise ConnectionError(f"NATS unavailable: {exc}") from exc


def parse_url(url: str) -> tuple[list[str], int]:
    """Servers (comma-separated URLs) and ``?replicas=N`` (streams and the lead bucket)."""
    base, _, query = url.partition("?")
    replicas_text = parse_qs(query).get("replicas", ["1"])[0]
    if replicas_text not in ("1", "2", "3", "4", "5"):
        raise ValueError(f"replicas must be 1 to 5, not {replicas_text!r}")
    replicas = int(replicas_text)
    servers = [server.strip() for server in base.split(",") if server.strip()]
    for server in servers:
        if urlsplit(server).scheme not in ("nats", "tls"):
            raise ValueError(f"not a NATS server URL: {server!r}")
    return servers, replicas


class NatsBroker(Broker):
    """Streams in NATS JetStream (nats-server 2.9+)."""

    def __init__(self, url: str, lease: float = 30.0, prefix: str = "clarion") -> None:
        self._servers, self._replicas = parse_url(url)
        self._lease = lease
        self._prefix = prefix
        self._nc: Client | None = None
        self._puller: Puller | None = None
        self._connecting = asyncio.Lock()
        self._streams: set[str] = set()  # JetStream streams known to exist
        self._lanes: dict[str, Lane] = {}  # broker stream -> its lane, consumer made
        self._leads = Leads(self._client, f"{prefix}-leads", self._replicas)
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

    async def _client(self) -> Client:
        """The connection, made on first use: a process starts while NATS is away, and its
        calls fail (an outage, waited out by the callers) until it is back."""
        if self._nc is not None and not self._nc.is_closed:
            return self._nc
        async with self._connecting:
            if self._nc is None or self._nc.is_closed:
                with reaching():
                    nc = await nats.connect(
                        self._servers,
                        name="clarion",
                        connect_timeout=int(REPLY_TIMEOUT),
                        max_reconnect_attempts=-1,
                        reconnect_time_wait=0.5,
                        pending_size=64 * 1024 * 1024,
                        reconnected_cb=self._reconnected,
                        error_cb=self._error,
                    )
                puller = Puller(nc)
                await puller.start()
                self._nc, self._puller = nc, puller
        return self._nc

    async def _reconnected(self) -> None:
        if self._puller is not None:
            self._puller.forget()

    async def _error(self, exc: Exception) -> None:
        log.warning("nats: %r", exc)

    async def close(self) -> None:
        self._closing.set()
        if self._mover is not None:
            self._mover.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._mover
            self._mover = None
        if self._puller is not None:
            await self._puller.close()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
        self._nc, self._puller = None, None

    async def ping(self) -> None:
        nc = await self._client()
        with reaching():
            await nc.flush(timeout=int(REPLY_TIMEOUT))
        await self._api_request("INFO", None)

    # -- requests --------------------------------------------------------------------------

    async def _api_request(self, subject: str, body: dict[str, Any] | None) -> dict[str, Any]:
        """One JetStream API request; a refusal raises ``JetStreamError``."""
        nc = await self._client()
        with reaching():
            try:
                reply = await nc.request(
                    f"$JS.API.{subject}",
                    orjson.dumps(body) if body is not None else b"",
                    timeout=REPLY_TIMEOUT,
                )
            except nats.errors.NoRespondersError as exc:
                raise ConnectionError("NATS: JetStream is not enabled on the server") from exc
        answer: dict[str, Any] = orjson.loads(reply.data)
        if "error" in answer:
            raise JetStreamError(subject, answer["error"])
        return answer

    async def _requests(self, items: Sequence[Outgoing]) -> list[Msg]:
        """Requests sent together and answered together, a batch per round trip."""
        nc = await self._client()
        replies: list[Msg] = []
        for start in range(0, len(items), PUBLISH_BATCH):
            chunk = items[start : start + PUBLISH_BATCH]
            with reaching():
                answers = await asyncio.gather(
                    *(
                        nc.request(subject, data, timeout=REPLY_TIMEOUT, headers=headers)
                        for subject, data, headers in chunk
                    ),
                    return_exceptions=True,
                )
            for answer in answers:
                if isinstance(answer, BaseException):
                    raise answer
                replies.append(answer)
        return replies

    async def _store(self, items: Sequence[Outgoing]) -> None:
        """Publish to JetStream, each message stored (its ack received) before this
        returns."""
        if not items:
            return
        try:
            replies = await self._requests(items)
        except nats.errors.NoRespondersError as exc:
            # A stream deleted under us (an operator, a server that lost its store).
            self._streams.clear()
            self._lanes.clear()
            raise ConnectionError("NATS: no stream for a subject; made again on retry") from exc
        for reply in replies:
            answer = orjson.loads(reply.data)
            if "error" in answer:
                raise JetStreamError("publish", answer["error"])

    async def _settle(self, messages: Sequence[Message], verb: bytes) -> None:
        """Ack, nak or renew messages, each with a reply so that this returns once the
        server has done it (an acked message is gone from its stream by then)."""
        if not messages:
            return
        try:
            await self._requests([(m.id, verb, None) for m in messages])
        except nats.errors.NoRespondersError:
            # Its consumer is gone, and the message with it (or it comes back from a new
            # consumer, once more).
            log.warning("nats: a consumer was deleted while its messages were held")

    # -- streams and consumers -------------------------------------------------------------

    async def _ensure_stream(self, name: str, subjects: list[str], **config: Any) -> None:
        if name in self._streams:
            return
        body = {
            "name": name,
            "subjects": subjects,
            "storage": "file",
            "num_replicas": self._replicas,
            **config,
        }
        try:
            await self._api_request(f"STREAM.CREATE.{name}", body)
        except JetStreamError as exc:
            if exc.code != STREAM_NAME_IN_USE:
                raise
            await self._api_request(f"STREAM.UPDATE.{name}", body)
        self._streams.add(name)

    async def _ensure_work(self, stream: str) -> None:
        name = self._stream_name(stream)
        await self._ensure_stream(name, [self._subject(stream)], retention="workqueue")

    async def _lane(self, name: str, stream: str, consumer: str, ack_wait: float) -> Lane:
        lane = self._lanes.get(name)
        if lane is not None:
            return lane
        config = {
            "durable_name": consumer,
            "ack_policy": "explicit",
            "ack_wait": int(ack_wait * 1e9),
            "max_deliver": -1,
            "max_ack_pending": -1,
            "deliver_policy": "all",
        }
        # Made, or its config brought up to date (a changed lease): the server does either.
        await self._api_request(
            f"CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
            {"stream_name": stream, "config": config},
        )
        await self._client()
        assert self._puller is not None  # made with the connection
        lane = self._puller.add(Lane(name, stream, consumer, ack_wait))
        self._lanes[name] = lane
        return lane

    async def _work_lane(self, stream: str) -> Lane:
        if stream not in self._lanes:
            await self._ensure_work(stream)
        return await self._lane(stream, self._stream_name(stream), GROUP, self._lease)

    async def _ensure_delayed(self) -> None:
        await self._ensure_stream(self._delayed, [f"{self._prefix}.delay.>"], retention="workqueue")

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, stream: str, payloads: Sequence[Payload]) -> None:
        if not payloads:
            return
        await self._ensure_work(stream)
        subject = self._subject(stream)
        await self._store([(subject, encode(p), None) for p in payloads])

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
        await self._store(batch)

    # -- consuming -------------------------------------------------------------------------

    async def _consume(self, take: Take) -> list[Message]:
        lanes = [await self._work_lane(stream) for stream in take.streams]
        self._start_mover()
        assert self._puller is not None  # made with the connection
        try:
            got = await self._puller.take(
                lanes, take.count, take.deadline, take.overfill, take.stop
            )
        except LaneMissing:
            for stream in take.streams:
                self._lanes.pop(stream, None)
            self._streams.clear()
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
        await self._ensure_stream(
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
        await self._store(copies)
        await self._requests([(ack_subject, b"+ACK", None) for *_, ack_subject in items])

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
                lane = await self._lane(DELAYED_LANE, self._delayed, MOVER, MOVER_LEASE)
                assert self._puller is not None  # made with the connection
                deadline = time.monotonic() + 60.0
                got = await self._puller.take([lane], MOVE_BATCH, deadline, False, self._closing)
                await self._move_batch([msg for _, msg in got])
                pause = 0.0
            except Exception as exc:
                self._lanes.pop(DELAYED_LANE, None)
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
            await self._store(
                [
                    (
                        self._subject((m.headers or {})[TARGET]),
                        m.data,
                        {"Nats-Msg-Id": f"{self._delayed}:{m.metadata.sequence.stream}"},
                    )
                    for m in due
                ]
            )
            later += [(m.reply, b"+ACK", None) for m in due]
        if later:
            await self._requests(later)
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

    async def _stream_infos(self, subjects: Iterable[str]) -> list[dict[str, Any] | None]:
        async def info(subject: str) -> dict[str, Any] | None:
            try:
                return await self._api_request(subject, None)
            except JetStreamError as exc:
                if exc.code in (STREAM_NOT_FOUND, CONSUMER_NOT_FOUND):
                    return None
                raise

        return list(await asyncio.gather(*(info(s) for s in subjects)))

    async def _delayed_counts(self, due_before: float | None) -> Counter[str]:
        """Delayed messages per broker stream token, due before ``due_before`` (to the
        second: their subjects carry the due second) or all."""
        counts: Counter[str] = Counter()
        head = f"{self._prefix}.delay."
        offset = 0
        while True:
            try:
                answer = await self._api_request(
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
        infos = await self._stream_infos(
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
        infos = await self._stream_infos(f"STREAM.INFO.{name}" for name in names)
        consumers = await self._stream_infos(f"CONSUMER.INFO.{name}.{GROUP}" for name in names)
        delayed = await self._delayed_counts(None)
        stats = []
        for stream, info, consumer in zip(streams, infos, consumers, strict=True):
            length = info["state"]["messages"] if info else 0
            pending = int(consumer["num_ack_pending"]) if consumer else 0
            lag = int(consumer["num_pending"]) if consumer else length
            stats.append(StreamStats(stream, GROUP, length, pending, lag, delayed[token(stream)]))
        return stats


def _message(stream: str, msg: Msg) -> Message:
    """A delivery as a broker message: its id is its ack subject (unique per delivery)."""
    try:
        payload, poison = decode(msg.data), None
    except ValueError as exc:
        payload, poison = {"raw": repr(msg.data)[:1000]}, f"{type(exc).__name__}: {exc}"
    redelivered = msg.metadata.num_delivered > 1
    return Message(stream, msg.reply, payload, redelivered=redelivered, poison=poison)
