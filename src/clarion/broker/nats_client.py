"""Connections to NATS (the broker's, and the live inbox hub's: :func:`connect`) and
JetStream as the broker uses it: requests to the JetStream API, messages stored with their
acks awaited, streams and consumers made once, and the names of broker streams in NATS."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import nats
import nats.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg

from clarion.broker.nats_pulls import Lane, Puller

log = logging.getLogger(__name__)

# Messages (or acks) sent per round trip, and how long a reply may take.
PUBLISH_BATCH = 1000
REPLY_TIMEOUT = 10.0


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


Callback = Callable[[], Awaitable[None]]


async def log_error(exc: Exception) -> None:
    """What a connection's error callback does at least: say it (a server that is away
    once, when disconnected, not at each attempt)."""
    log.log(logging.DEBUG if isinstance(exc, OSError) else logging.WARNING, "nats: %r", exc)


async def connect(
    servers: list[str],
    name: str,
    *,
    pending_size: int,
    disconnected: Callback,
    reconnected: Callback,
    error: Callable[[Exception], Awaitable[None]] = log_error,
) -> Client:
    """A connection to ``servers`` (from :func:`parse_url`: credentials in the URL, and
    ``tls://`` for TLS, are nats-py's). The first attempt fails, as an outage
    (``ConnectionError``), after trying each server twice; once made, the connection is
    made again after a loss for as long as it takes, and says so through ``disconnected``
    and ``reconnected``. ``pending_size``: bytes buffered while it is away."""
    with reaching():
        nc = await nats.connect(
            servers,
            name=name,
            connect_timeout=int(REPLY_TIMEOUT),
            max_reconnect_attempts=1,
            reconnect_time_wait=0.5,
            pending_size=pending_size,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        )
    nc.options["max_reconnect_attempts"] = -1
    return nc


class JetStream:
    """One connection, made on first use, and what is known to exist on the server."""

    def __init__(self, url: str) -> None:
        self._servers, self.replicas = parse_url(url)
        self._nc: Client | None = None
        self._puller: Puller | None = None
        self._connecting = asyncio.Lock()
        self._streams: set[str] = set()  # JetStream streams known to exist
        self.lanes: dict[str, Lane] = {}  # lanes by name, their consumer made

    def forget(self) -> None:
        """Streams or consumers were deleted under us (an operator, a server that lost its
        store): make them again as they are used."""
        self._streams.clear()
        self.lanes.clear()

    @property
    def puller(self) -> Puller:
        if self._puller is None:
            raise RuntimeError("JetStream.client() was not called")
        return self._puller

    async def client(self) -> Client:
        """The connection, made on first use: a process starts while NATS is away, and its
        calls fail (an outage, waited out by the callers) until it is back."""
        if self._nc is not None and not self._nc.is_closed:
            return self._nc
        async with self._connecting:
            if self._nc is None or self._nc.is_closed:
                nc = await connect(
                    self._servers,
                    "clarion",
                    pending_size=64 * 1024 * 1024,
                    disconnected=self._disconnected,
                    reconnected=self._reconnected,
                )
                self.forget()  # what a closed connection knew of the server
                puller = Puller(nc)
                await puller.start()
                self._nc, self._puller = nc, puller
        return self._nc

    async def _disconnected(self) -> None:
        log.warning("nats: disconnected, reconnecting")

    async def _reconnected(self) -> None:
        log.info("nats: reconnected")
        if self._puller is not None:
            self._puller.forget()

    async def close(self) -> None:
        if self._puller is not None:
            await self._puller.close()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
        self._nc, self._puller = None, None

    async def ping(self) -> None:
        nc = await self.client()
        with reaching():
            await nc.flush(timeout=int(REPLY_TIMEOUT))
        await self.api("INFO", None)

    async def api(self, subject: str, body: dict[str, Any] | None) -> dict[str, Any]:
        """One JetStream API request; a refusal raises ``JetStreamError``."""
        nc = await self.client()
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

    async def requests(self, items: Sequence[Outgoing]) -> list[Msg]:
        """Requests sent together and answered together, a batch per round trip."""
        nc = await self.client()
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

    async def store(self, items: Sequence[Outgoing]) -> None:
        """Publish to JetStream, each message stored (its ack received) before this
        returns."""
        if not items:
            return
        try:
            replies = await self.requests(items)
        except nats.errors.NoRespondersError as exc:
            # A stream deleted under us (an operator, a server that lost its store).
            self.forget()
            raise ConnectionError("NATS: no stream for a subject; made again on retry") from exc
        for reply in replies:
            answer = orjson.loads(reply.data)
            if "error" in answer:
                raise JetStreamError("publish", answer["error"])

    async def ensure_stream(self, name: str, subjects: list[str], **config: Any) -> None:
        if name in self._streams:
            return
        body = {
            "name": name,
            "subjects": subjects,
            "storage": "file",
            "num_replicas": self.replicas,
            **config,
        }
        try:
            await self.api(f"STREAM.CREATE.{name}", body)
        except JetStreamError as exc:
            if exc.code != STREAM_NAME_IN_USE:
                raise
            await self.api(f"STREAM.UPDATE.{name}", body)
        self._streams.add(name)

    async def lane(self, name: str, stream: str, consumer: str, ack_wait: float) -> Lane:
        lane = self.lanes.get(name)
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
        await self.api(
            f"CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
            {"stream_name": stream, "config": config},
        )
        await self.client()
        lane = self.puller.add(Lane(name, stream, consumer, ack_wait))
        self.lanes[name] = lane
        return lane

    async def infos(self, subjects: Iterable[str]) -> list[dict[str, Any] | None]:
        async def info(subject: str) -> dict[str, Any] | None:
            try:
                return await self.api(subject, None)
            except JetStreamError as exc:
                if exc.code in (STREAM_NOT_FOUND, CONSUMER_NOT_FOUND):
                    return None
                raise

        return list(await asyncio.gather(*(info(s) for s in subjects)))
