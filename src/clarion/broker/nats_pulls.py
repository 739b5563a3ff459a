"""Pulling from JetStream consumers: lanes, fetches that do not wait, and standing pulls.

A *lane* is one durable pull consumer as one broker instance reads it. What the server
delivers lands in the lane's ``ready`` queue, whichever request brought it; a take hands
out from there.

* A *fetch* asks for up to N messages with ``no_wait``: the server sends what it has at
  once and ends the request with a status (404 none, 408 fewer than asked), or says nothing
  more once it has sent all N. One fetch per lane runs at a time, so its deliveries can be
  counted.
* A *standing pull* asks for one message and waits on the server (``expires``) for up to
  ``STANDING`` seconds: the long-poll of a take that found nothing. It outlives the take
  that made it (a later take on the lane finds its message in ``ready``), and a lane has
  at most one. Its delivery, or its end, wakes whoever waits.

Deliveries come to two inbox subscriptions (fetches, standing pulls); a delivered message
carries its original subject, so it is told apart by its ack subject (which names its
JetStream stream); a status by the inbox token it is sent to.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = logging.getLogger(__name__)

# How long a standing pull waits on the server: at rest a lane costs one pull this often.
STANDING = 5.0
# How long the server may take to answer a fetch before the broker is taken to be away.
REPLY_TIMEOUT = 10.0
# Inbox buffers: a fetch may bring a large batch at once.
PENDING_MESSAGES = 1_000_000
PENDING_BYTES = 1 << 30


class LaneMissing(ConnectionError):
    """The server did not answer a fetch: it is away, or the consumer is gone (deleted by
    an operator, a server that lost its store). The lane is made again on the next take."""


@dataclass(eq=False)
class Lane:
    """One durable pull consumer of a JetStream stream, as this broker instance reads it."""

    name: str  # the broker stream (or an internal one, for the delayed messages)
    stream: str  # the JetStream stream
    consumer: str
    ack_wait: float
    # Delivered here and not handed out yet: (message, when it came, monotonic).
    ready: deque[tuple[Msg, float]] = field(default_factory=deque)
    # Deliveries of fetches so far: a fetch counts its own from where it started.
    fetched: int = 0
    fetching: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The standing pull open on the server: its inbox token, and until when (monotonic).
    standing: str | None = None
    standing_until: float = 0.0

    @property
    def next_subject(self) -> str:
        return f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.consumer}"


class _Fetch:
    """One fetch in flight: ended by a status, or by its last delivery."""

    def __init__(self) -> None:
        self.ended = asyncio.Event()
        self.status = ""


async def _first_of(timeout: float, event: asyncio.Event, stop: asyncio.Event | None) -> None:
    """Wait until ``event`` or ``stop`` is set, or for ``timeout`` seconds."""
    waits = [asyncio.ensure_future(event.wait())]
    if stop is not None:
        waits.append(asyncio.ensure_future(stop.wait()))
    try:
        await asyncio.wait(waits, timeout=max(timeout, 0), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


class Puller:
    """The lanes of one connection and the inbox subscriptions their deliveries come to."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._inbox = client.new_inbox()
        self._lanes: dict[str, Lane] = {}  # by JetStream stream
        self._fetches: dict[str, _Fetch] = {}  # by inbox token
        self._tokens = itertools.count()
        self._changed = asyncio.Event()
        self._subs: list[Subscription] = []
        self._stale: list[Msg] = []

    async def start(self) -> None:
        for kind, handler in (("f", self._on_fetched), ("s", self._on_standing)):
            sub = await self._client.subscribe(
                f"{self._inbox}.{kind}.*",
                cb=handler,
                pending_msgs_limit=PENDING_MESSAGES,
                pending_bytes_limit=PENDING_BYTES,
            )
            self._subs.append(sub)

    def add(self, lane: Lane) -> Lane:
        return self._lanes.setdefault(lane.stream, lane)

    def forget(self) -> None:
        """After a reconnect: the server knows none of our requests any more."""
        for lane in self._lanes.values():
            lane.standing, lane.standing_until = None, 0.0
        for fetch in self._fetches.values():
            fetch.status = "reconnected"
            fetch.ended.set()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- what the server sends ---------------------------------------------------------

    def _delivered(self, msg: Msg) -> Lane | None:
        """Queue a delivery on its lane; None if it is a status, not a delivery."""
        if not msg.reply:
            return None
        try:
            stream = msg.metadata.stream
        except Exception:  # not a JetStream delivery: nothing we asked for
            return None
        lane = self._lanes.get(stream)
        if lane is not None:
            lane.ready.append((msg, time.monotonic()))
        # A delivery for a lane this instance no longer reads comes back after its lease.
        return lane

    async def _on_fetched(self, msg: Msg) -> None:
        lane = self._delivered(msg)
        if lane is not None:
            lane.fetched += 1
        elif not msg.reply:
            status = (msg.headers or {}).get("Status", "")
            if status != "100":  # not a heartbeat: the fetch is over
                fetch = self._fetches.pop(msg.subject.rsplit(".", 1)[-1], None)
                if fetch is not None:
                    fetch.status = status
                    fetch.ended.set()
        self._wake()

    async def _on_standing(self, msg: Msg) -> None:
        lane = self._delivered(msg)
        if lane is not None:
            # Its one message came (a delivery carries its original subject, not the
            # request's inbox: a lane has one standing pull, so it was that one).
            lane.standing, lane.standing_until = None, 0.0
        elif not msg.reply:
            if (msg.headers or {}).get("Status", "") == "100":
                return
            token = msg.subject.rsplit(".", 1)[-1]
            for each in self._lanes.values():
                if each.standing == token:  # it ended (expired, or refused)
                    each.standing, each.standing_until = None, 0.0
        self._wake()

    # -- asking ----------------------------------------------------------------------------

    async def _fetch(self, lane: Lane, batch: int) -> None:
        """Ask for up to ``batch`` messages without waiting on the server for more; return
        once they are in ``ready`` (or the server said there are no more)."""
        async with lane.fetching:
            token = str(next(self._tokens))
            fetch = self._fetches[token] = _Fetch()
            start = lane.fetched
            try:
                await self._client.publish(
                    lane.next_subject,
                    orjson.dumps({"batch": batch, "no_wait": True}),
                    reply=f"{self._inbox}.f.{token}",
                )
                async with asyncio.timeout(REPLY_TIMEOUT):
                    while not fetch.ended.is_set() and lane.fetched - start < batch:
                        await self._changed.wait()
            except TimeoutError as exc:
                raise LaneMissing(f"no answer to a fetch from {lane.stream}") from exc
            finally:
                self._fetches.pop(token, None)

    async def _stand(self, lane: Lane, now: float) -> None:
        """Open a standing pull on ``lane`` unless one is open for a while yet."""
        if lane.standing is not None and lane.standing_until - now > 0.05:
            return
        token = str(next(self._tokens))
        lane.standing, lane.standing_until = token, now + STANDING
        await self._client.publish(
            lane.next_subject,
            orjson.dumps({"batch": 1, "expires": int(STANDING * 1e9)}),
            reply=f"{self._inbox}.s.{token}",
        )

    def _pop(self, lane: Lane, count: int, now: float) -> list[Msg]:
        """Up to ``count`` of what waits in ``ready``. One that waited there half its
        lease or more (a standing pull's message nobody took for a while) is given back
        (or, past its lease, left to the server, which has handed it out again)."""
        taken: list[Msg] = []
        ready = lane.ready
        while ready and len(taken) < count:
            msg, came = ready.popleft()
            age = now - came
            if age < lane.ack_wait / 2:
                taken.append(msg)
            elif age < lane.ack_wait:
                self._stale.append(msg)
        return taken

    async def _give_back_stale(self) -> None:
        stale, self._stale = self._stale, []
        for msg in stale:
            await self._client.publish(msg.reply, b"-NAK")

    async def _gather(
        self, lanes: Sequence[Lane], count: int, overfill: bool, fetch: bool
    ) -> list[tuple[Lane, Msg]]:
        """What the lanes have, earlier lanes first: from ``ready``, then (if ``fetch``)
        from the server. With ``overfill`` up to ``count`` from each lane, every lane's
        fetch at once; else up to ``count`` in all, a lane's fetch only for what the lanes
        before it left."""
        now = time.monotonic()
        try:
            return await self._gathered(lanes, count, overfill, fetch, now)
        finally:
            if self._stale:
                await self._give_back_stale()

    async def _gathered(
        self, lanes: Sequence[Lane], count: int, overfill: bool, fetch: bool, now: float
    ) -> list[tuple[Lane, Msg]]:
        if overfill:
            got = {lane: self._pop(lane, count, now) for lane in lanes}
            short = [lane for lane in lanes if len(got[lane]) < count]
            if fetch and short:
                await asyncio.gather(*(self._fetch(lane, count - len(got[lane])) for lane in short))
                for lane in short:
                    got[lane] += self._pop(lane, count - len(got[lane]), now)
            return [(lane, msg) for lane in lanes for msg in got[lane]]
        taken: list[tuple[Lane, Msg]] = []
        for lane in lanes:
            room = count - len(taken)
            if room <= 0:
                break
            some = self._pop(lane, room, now)
            if fetch and len(some) < room:
                await self._fetch(lane, room - len(some))
                some += self._pop(lane, room - len(some), now)
            taken += [(lane, msg) for msg in some]
        return taken

    async def take(
        self,
        lanes: Sequence[Lane],
        count: int,
        deadline: float,
        overfill: bool,
        stop: asyncio.Event | None,
    ) -> list[tuple[Lane, Msg]]:
        """Up to ``count`` messages (``overfill``: per lane), earlier lanes first, waiting
        until ``deadline`` (monotonic) or ``stop`` when there are none. While it waits,
        each lane has a standing pull; a wake with nothing delivered (a standing pull that
        ended empty) asks the server nothing more, it stands again."""
        fetch = True
        while True:
            changed = self._changed
            taken = await self._gather(lanes, count, overfill, fetch)
            if taken:
                return taken
            now = time.monotonic()
            if now >= deadline or (stop is not None and stop.is_set()):
                return []
            for lane in lanes:
                await self._stand(lane, now)
            if not changed.is_set():
                await _first_of(deadline - now, changed, stop)
            fetch = any(lane.ready for lane in lanes)

    async def close(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        self.forget()
