"""One HTTP/1.1 connection: an asyncio protocol that writes a request in one piece and reads
its response with ``httptools`` (llhttp), which handles Content-Length, chunked and
close-delimited bodies.

A connection carries one request at a time (no pipelining). Its response resolves a
future from the parser's callbacks; a body longer than ``max_body`` is cut there and the
connection is closed, never reused. Errors are left as the foreign exceptions they are
(``OSError``, ``httptools.HttpParserError``); the client maps them once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy


@dataclass(frozen=True, slots=True)
class Reply:
    """A response: status, headers (case-insensitive), body (at most the ``max_body``
    asked for)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class ClosedEarly(ConnectionError):
    """The server closed the connection before the response was complete."""


class Connection(asyncio.Protocol):
    """A connection to one origin; ``exchange`` sends a request and returns a future reply."""

    def __init__(self, origin: tuple[str, str, int], on_lost: Callable[[Connection], None]):
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.reusable = True
        self.requests = 0  # requests sent on this connection, the current one included
        self.idle_since = 0.0
        self.answered = False  # any byte of the current response arrived
        self._on_lost = on_lost
        self._loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[None] = self._loop.create_future()
        self._parser = httptools.HttpResponseParser(self)
        self._reply: asyncio.Future[Reply] | None = None
        self.deadline = 0.0  # loop time by which the current exchange must end
        self._head = False
        self._max_body = 0
        self._status = 0
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._chunks: list[bytes] = []
        self._size = 0
        self._headers_done = False
        self._framed = False  # the body's end is known without the connection's close

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._reply is None:
            # Nothing was asked: a server talking out of turn is not reused.
            self.close()
            return
        self.answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httptools.HttpParserError("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost decides what the EOF means

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if not self.lost.done():
            self.lost.set_result(None)
        self._on_lost(self)
        if self._reply is None:
            return
        if self._headers_done and not self._framed and not self._head:
            self._finish()  # a close-delimited body ends here
        else:
            self._fail(ClosedEarly(f"connection closed before the response ended: {exc or 'EOF'}"))

    # The request

    def exchange(
        self, request: bytes, *, head: bool, max_body: int, deadline: float
    ) -> asyncio.Future[Reply]:
        """Write ``request`` and return the future of its reply, which fails with
        :class:`TimeoutError` (and the connection closes) if :meth:`expire` finds it
        unanswered after ``deadline`` (loop time)."""
        assert self.transport is not None
        reply: asyncio.Future[Reply] = self._loop.create_future()
        self._reply = reply
        self._head = head
        self._max_body = max_body
        self._headers = CIMultiDict()
        self._chunks = []
        self._size = 0
        self._headers_done = self._framed = self.answered = False
        self.requests += 1
        self.deadline = deadline
        if self.usable():
            self.transport.write(request)
        else:
            self._fail(ClosedEarly("the connection was closed before the request was sent"))
        return reply

    def usable(self) -> bool:
        """Open, as far as is known."""
        transport = self.transport
        return transport is not None and not transport.is_closing() and not self.lost.done()

    def close(self) -> None:
        """Close at once (unsent data is dropped); the connection is not reused."""
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._reply is None:  # a second response nobody asked for
            self.reusable = False
            return
        self._headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        if self._status < 200:
            return  # an interim answer (100 Continue): the real one follows
        self._headers_done = True
        coding = self._headers.get("transfer-encoding")
        self._framed = "content-length" in self._headers or (
            coding is not None and "chunked" in coding.lower()
        )
        if self._head:
            # llhttp cannot be told the request was HEAD: the reply ends with its headers,
            # and the parser, expecting a body, is not fit for another.
            self.reusable = False
            self._finish()

    def on_body(self, body: bytes) -> None:
        if self._reply is None:
            return
        room = self._max_body - self._size
        if len(body) >= room and (len(body) > room or not self._framed):
            # More than asked for: keep what fits and drop the rest with the connection.
            self._chunks.append(body[:room])
            self._size = self._max_body
            self.reusable = False
            self._finish()
            self.close()
            return
        self._chunks.append(body)
        self._size += len(body)

    def on_message_complete(self) -> None:
        if self._reply is None:
            return
        if not self._headers_done:
            self._headers = CIMultiDict()  # after an interim answer
            return
        self.reusable = self.reusable and self._parser.should_keep_alive()
        self._finish()

    # Outcomes

    def expire(self, now: float) -> None:
        """Fail the exchange in progress if its deadline has passed."""
        if self._reply is not None and self.deadline <= now:
            self._fail(TimeoutError())

    def _finish(self) -> None:
        reply, self._reply = self._reply, None
        if reply is None or reply.done():
            return
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        reply.set_result(Reply(self._status, CIMultiDictProxy(self._headers), body))

    def _fail(self, exc: Exception) -> None:
        reply, self._reply = self._reply, None
        self.close()
        if reply is not None and not reply.done():
            reply.set_exception(exc)
