"""Live events across API processes through core NATS, one subject per recipient.

``clarion.inbox.<tenant>.<recipient>``, each id made into one subject token by
:func:`clarion.broker.nats_client.token`: letters and digits kept, ``.`` as ``-``, any
other character as ``_`` and the hex of its bytes. No token holds ``.``, ``*``, ``>`` or
whitespace, and the mapping is one to one, so no recipient id can name a subject of
another recipient, nor a wildcard: a recipient id of one tenant can never receive another's
events. A process subscribes to a recipient's subject while it holds at least one
connection of that recipient, and unsubscribes with the last; what arrives on a
subscription goes to the recipient it was made for (the subject is never read back).

Core NATS, not JetStream: no stream holds ``clarion.inbox.>``, an event is fire-and-forget
like Redis pub/sub, and the inbox table is the truth. Publishing writes into the client's
buffer and returns (its flusher task sends at once); a subscription waits until the server
has it before the connection reads what it missed from the table: the hub sends a message
to its own echo subject behind the SUB, and the server handles one connection's protocol
in order, so when the echo comes back the subscription is in place. One echo serves every
subscription written before it. (The client's ``flush()`` cannot tell this: it writes its
PING straight to the socket, ahead of commands still in the client's buffer.)

The hub has its own connection, made on first use like the broker's
(:func:`clarion.broker.nats_client.connect`: the same servers, credentials and TLS), so a
live event never queues behind the broker's batches. When it is lost, events published
meanwhile are lost for this process: every local connection is closed with reason
``resync``, when it drops and again when it is back, and its client resumes from its last
event id; a connection opened while it is away is closed ``resync`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

import nats.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from clarion.broker.nats_client import REPLY_TIMEOUT, connect, log_error, parse_url, reaching, token
from clarion.realtime.base import RESYNC, Event, Hub, Key

log = logging.getLogger(__name__)

PREFIX = "clarion.inbox."
# Below the server's limit on one protocol line (4 KiB by default), which closes the
# connection of a client that passes it: a subject this long (ids far beyond the API's
# 200 characters) is refused here instead. The longest the API allows is under 2,900.
MAX_SUBJECT = 3072
# Bytes the client buffers while the connection is away (then publishing fails).
_PENDING = 8 * 1024 * 1024
# Events of one recipient waiting in the client for the hub: more than a connection may
# queue, and the hub takes them without waiting, so more means events were dropped.
_SUB_PENDING_BYTES = 16 * 1024 * 1024
_SUBSCRIBE_TIMEOUT = 10.0


def subject(tenant_id: str, recipient_id: str) -> str:
    """The recipient's subject; ``ValueError`` past :data:`MAX_SUBJECT`."""
    name = f"{PREFIX}{token(tenant_id)}.{token(recipient_id)}"
    if not tenant_id or not recipient_id or len(name) > MAX_SUBJECT:
        raise ValueError("no live inbox subject for this recipient id")
    return name


class NatsHub(Hub):
    """Recipients' subjects on one NATS connection of this process."""

    def __init__(self, url: str, queue_size: int = 256) -> None:
        super().__init__(queue_size)
        self._servers, _ = parse_url(url)
        self._nc: Client | None = None
        self._connecting = asyncio.Lock()
        self._subs: dict[Key, NatsSubscription] = {}
        # Subscriptions written, and how many of them the server has confirmed.
        self._written = 0
        self._confirmed = 0
        self._confirming = asyncio.Lock()
        self._echo_subject = ""
        self._echoes: dict[int, asyncio.Future[None]] = {}
        self._echo_count = 0
        self._closing = False

    async def _client(self) -> Client:
        if self._nc is not None and not self._nc.is_closed:
            return self._nc
        async with self._connecting:
            if self._nc is None or self._nc.is_closed:
                if self._subs:
                    # Made on a connection that is gone: a new one starts with none.
                    self._subs.clear()
                    self.close_all(RESYNC)
                nc = await connect(
                    self._servers,
                    "clarion-inbox",
                    pending_size=_PENDING,
                    disconnected=self._disconnected,
                    reconnected=self._reconnected,
                    error=self._error,
                )
                # The client subscribes it again after each reconnection, before anything
                # written since.
                try:
                    self._echo_subject = nc.new_inbox()
                    with reaching():
                        await nc.subscribe(self._echo_subject, cb=self._echoed)
                except BaseException:
                    with contextlib.suppress(nats.errors.Error, OSError):
                        await nc.close()
                    raise
                self._nc = nc
        return self._nc

    async def publish(self, tenant_id: str, recipient_id: str, event: Event) -> None:
        await self.publish_many([(tenant_id, recipient_id, event)])

    async def publish_many(self, items: list[tuple[str, str, Event]]) -> None:
        if not items:
            return
        nc = await self._client()
        with reaching():
            for tenant_id, recipient_id, event in items:
                try:
                    name = subject(tenant_id, recipient_id)
                except ValueError:
                    log.warning("live inbox event for an unusable recipient id dropped")
                    continue
                await nc.publish(name, orjson.dumps(event))

    async def _listen(self, key: Key) -> None:
        name = subject(*key)
        async with asyncio.timeout(_SUBSCRIBE_TIMEOUT):
            nc = await self._client()
            if not nc.is_connected:
                raise ConnectionError("NATS unavailable: reconnecting")
            if key not in self._subs:
                with reaching():
                    sub = await nc.subscribe(
                        name,
                        cb=functools.partial(self._arrived, key),
                        pending_msgs_limit=2 * self.queue_size + 64,
                        pending_bytes_limit=_SUB_PENDING_BYTES,
                    )
                self._written += 1
                if key in self._subs:  # another subscription of the key was made meanwhile
                    await self._drop(sub)
                else:
                    self._subs[key] = sub
            await self._confirm(nc, self._written)
        if key not in self._local:  # its connections closed meanwhile
            await self._unlisten(key)

    async def _confirm(self, nc: Client, mark: int) -> None:
        """Wait until the server has the first ``mark`` subscriptions written: one echo
        for every subscription that waits meanwhile, not one each."""
        async with self._confirming:
            if self._confirmed >= mark:
                return
            upto = self._written
            self._echo_count += 1
            number = self._echo_count
            echoed = self._echoes[number] = asyncio.get_running_loop().create_future()
            try:
                with reaching():
                    await nc.publish(self._echo_subject, str(number).encode())
                async with asyncio.timeout(REPLY_TIMEOUT):
                    await echoed
            finally:
                self._echoes.pop(number, None)
            self._confirmed = max(self._confirmed, upto)

    async def _echoed(self, msg: Msg) -> None:
        with contextlib.suppress(ValueError):
            echoed = self._echoes.get(int(msg.data))
            if echoed is not None and not echoed.done():
                echoed.set_result(None)

    def _fail_echoes(self) -> None:
        for echoed in self._echoes.values():
            if not echoed.done():
                echoed.set_exception(ConnectionError("NATS connection lost"))

    async def _unlisten(self, key: Key) -> None:
        sub = self._subs.pop(key, None)
        if sub is not None:
            await self._drop(sub)

    async def _drop(self, sub: NatsSubscription) -> None:
        # A connection that is away has forgotten it already (the client sends only the
        # subscriptions it still has when it is back).
        with contextlib.suppress(nats.errors.Error, OSError):
            await sub.unsubscribe()

    async def _arrived(self, key: Key, msg: Msg) -> None:
        try:
            event = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            log.warning("undecodable inbox event dropped")
            return
        self.deliver(key, event)

    async def ping(self) -> None:
        nc = await self._client()
        with reaching():
            await nc.flush(timeout=int(REPLY_TIMEOUT))

    async def _disconnected(self) -> None:
        if self._closing:  # closed by aclose
            return
        log.warning("inbox NATS connection lost: live connections resync")
        self._fail_echoes()
        self.close_all(RESYNC)

    async def _reconnected(self) -> None:
        # Connections opened just as it was lost may have missed events too.
        log.info("inbox NATS connection back")
        self.close_all(RESYNC)

    async def _error(self, exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError):
            # The client dropped events of this recipient: its connections resume.
            for key, sub in list(self._subs.items()):
                if sub is exc.sub:
                    for local in list(self._local.get(key, ())):
                        local.close(RESYNC)
            return
        await log_error(exc)

    async def aclose(self) -> None:
        await super().aclose()
        self._closing = True
        nc, self._nc = self._nc, None
        self._subs.clear()
        if nc is not None:
            # Closing sends what is buffered, then ends the connection.
            with contextlib.suppress(nats.errors.Error, OSError):
                await nc.close()
