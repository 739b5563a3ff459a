"""The HTTP server: uvicorn (httptools) with the limits a public endpoint needs.

uvicorn bounds the idle time between two requests on a connection (keep-alive) but not the
time a client takes to send a request's headers, nor the number of connections one process
holds open. :class:`LimitedProtocol` adds both:

- **Header timeout**: from the moment a connection opens, or the first byte of its next
  request, the headers must be complete within ``header_timeout`` seconds; otherwise the
  answer is ``408 request_timeout`` and the connection is closed. A client that never
  sends anything, or trickles its headers a byte at a time, is let go.
- **Header size**: headers larger than ``max_header_bytes`` are answered
  ``431 headers_too_large`` and the connection is closed.
- **Connection cap**: a connection over ``max_connections`` for this process is answered
  ``503 server_busy`` (``Retry-After: 1``) at once and closed.
- **Lingering close**: an answer that ends the connection while the request's body is
  still arriving (a body refused for its size, ``413``, or late, ``408``) is followed by a
  half-close, and what the client still sends is read and dropped for up to
  :data:`LINGER` seconds (:data:`LINGER_IDLE` without any data ends it sooner). Closing at
  once, with unread data, would reset the connection, and a client that writes its whole
  body before it reads (most do) would see the reset instead of the answer.

And one saving: uvicorn writes an answer's head and body in two writes (two system calls,
two segments for the client to read); :class:`_HeldHead` holds the head until the body
follows, so a small answer leaves in one.

The body's own timeout and size limit are in :class:`clarion.api.limits.EdgeGuard`, which
reads every body before any handler runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import Callable, Generator
from typing import Any

import orjson
import uvicorn
from fastapi.telemetry import TelemetryConfig
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from clarion.api.errors import error_body
from clarion.api.limits import BODY_COMPLETE
from clarion.config import Settings
from clarion.pipeline.intake import Intake


def raw_answer(status: int, reason: str, code: str, message: str, *extra: str) -> bytes:
    """A complete HTTP/1.1 answer with the JSON error body, closing the connection."""
    body = orjson.dumps(error_body(code, message))
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


LINGER = 10.0
LINGER_IDLE = 2.0


class LimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout, a header size limit and a cap
    on the connections of the process. Configured by :func:`protocol_for`."""

    header_timeout: float = 10.0
    max_header_bytes: int = 64 * 1024
    max_connections: int = 4096

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # bytes received while the headers are incomplete
        self._head_size = 0  # the size of the request line and headers parsed
        self._in_head = True
        self._body_done = True  # the current request's body has all arrived
        self._linger: asyncio.TimerHandle | None = None
        self._linger_ends = 0.0
        self._last_data = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._close_with(
                raw_answer(
                    503,
                    "Service Unavailable",
                    "server_busy",
                    "this server holds as many connections as it may; try again shortly",
                    "retry-after: 1",
                )
            )
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._linger is not None:
            self._last_data = self.loop.time()
            return  # the rest of a refused body: dropped
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head:
            if self._head_bytes > self.max_header_bytes:
                self._too_large()
            elif self._header_timer is None:
                # A request begun whose head has not all come: its time runs from now. A
                # head that came whole in one read (most do) needs no timer.
                self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._body_done = False
        self._in_head = False
        self._head_bytes = 0
        self._disarm()
        if self._head_size > self.max_header_bytes:
            self._too_large()
            return
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:
            held = _HeldHead(self.transport, self.loop, self._close_after_answer)
            cycle.transport = held  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        if not self.transport.is_closing():
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._body_done = True
        if not self.transport.is_closing():
            super().on_message_complete()
            # This request's scope: the next request's is made when its first byte comes.
            scope: dict[str, Any] = self.scope  # type: ignore[assignment]
            scope[BODY_COMPLETE] = True

    def on_response_complete(self) -> None:
        if self._linger is None:  # lingering: no keep-alive, no next request
            super().on_response_complete()

    def _close_after_answer(self) -> None:
        """Close once an answer that ends the connection has been written: at once when
        the request has all arrived, else after lingering (see the module docs)."""
        transport = self.transport
        if self._body_done or transport.is_closing() or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._disarm()
        now = self.loop.time()
        self._linger_ends = now + LINGER
        self._last_data = now
        self._linger = self.loop.call_later(LINGER_IDLE, self._linger_check)
        self.flow.resume_reading()  # reading stopped when the refused body backed up

    def _linger_check(self) -> None:
        now = self.loop.time()
        quiet_until = self._last_data + LINGER_IDLE
        if now >= self._linger_ends or now >= quiet_until:
            self._linger = None
            self.transport.close()
            return
        self._linger = self.loop.call_later(
            min(quiet_until, self._linger_ends) - now, self._linger_check
        )

    def _too_large(self) -> None:
        if self.transport.is_closing():
            return
        limit = self.max_header_bytes // 1024
        self._close_with(
            raw_answer(
                431,
                "Request Header Fields Too Large",
                "headers_too_large",
                f"the request line and headers are larger than {limit} KiB",
            )
        )

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a pipelined request waits for the one before it, not for its client
        if self._head_bytes == 0 and self.cycle is None:
            message = f"no request arrived within {self.header_timeout:g}s"
        else:
            message = f"the request headers did not arrive within {self.header_timeout:g}s"
        self._close_with(raw_answer(408, "Request Timeout", "request_timeout", message))

    def _close_with(self, answer: bytes) -> None:
        self._disarm()
        self.transport.write(answer)
        self.transport.close()


class _HeldHead:
    """The transport as one request's response cycle sees it. uvicorn writes a response's
    status line and headers, then its body, in two writes: two system calls and two
    segments for the client to read. The head is held until the body's first write (or
    the end of this turn of the event loop, whichever comes first) and leaves with it."""

    __slots__ = ("_close", "_head", "_loop", "_transport")

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        close: Callable[[], None] | None = None,
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None
        self._close = close or transport.close

    def write(self, data: bytes) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
        elif data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 100 "):
            self._head = data
            self._loop.call_soon(self._flush)
            return
        self._transport.write(data)

    def _flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            if not self._transport.is_closing():
                self._transport.write(head)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self._flush()
        self._close()


# FastAPI's own request telemetry, off: Clarion's request spans (api/request_spans.py) and
# metrics are its own, on its own tracer provider, so a global OpenTelemetry provider (an
# auto-instrumenting wrapper, FASTAPI_OTEL_AUTO_CONFIGURE) adds no second span per request;
# and a request no longer asks whether one is configured (5.8 against 0.2 µs).
NO_FRAMEWORK_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
    "auto_configure": False,
}


def protocol_for(settings: Settings) -> type[LimitedProtocol]:
    return type(
        "ClarionHttpProtocol",
        (LimitedProtocol,),
        {
            "header_timeout": settings.http_header_timeout,
            "max_header_bytes": settings.http_max_header_bytes,
            "max_connections": settings.http_max_connections,
        },
    )


def http_server(
    app: Any, settings: Settings, *, intake: Intake | None = None, **overrides: Any
) -> uvicorn.Server:
    """The uvicorn server for ``app`` with Clarion's limits (see the module docs). With
    ``intake``, the intake's group commit knows how many connections the server holds: it
    lingers for no more once each of them has a request waiting on it."""
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        http=protocol_for(settings),
        timeout_keep_alive=max(1, round(settings.http_keep_alive)),
        backlog=min(settings.http_max_connections, socket.SOMAXCONN * 16),
        log_level=settings.log_level.lower(),
        access_log=False,
        # uvicorn's records go through the process's handler (observability/logs.py):
        # the same format, masked.
        log_config=None,
        lifespan="off",
        # Inbox WebSocket frames are small JSON; a larger one closes its connection (1009).
        ws_max_size=WS_MAX_SIZE,
        # No permessage-deflate: an inbox frame is a few hundred bytes, and each connection's
        # compressor held about 40 KiB and cost CPU on every frame.
        ws_per_message_deflate=False,
        **overrides,
    )
    _hide_tokens()
    server = _Server(config)
    if intake is not None:
        intake.open_connections = server.server_state.connections.__len__
    return server


WS_MAX_SIZE = 64 * 1024
_TOKEN_IN_QUERY = re.compile(r"([?&](?:token|ticket)=)[^&\s\"]+")


class _HideTokens(logging.Filter):
    """uvicorn logs each WebSocket's path with its query: a recipient token given as
    ``?token=`` (or a ticket, ``?ticket=``) must not land in the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and isinstance(record.args, tuple):
            record.args = tuple(
                _TOKEN_IN_QUERY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args
            )
        return True


def _hide_tokens() -> None:
    # Access lines (when a deployment turns them on) carry the query of a stream's URL.
    for name in ("uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _HideTokens) for f in logger.filters):
            logger.addFilter(_HideTokens())


class _Server(uvicorn.Server):
    """Uvicorn without its own signal handling (the process owns its signals), and with a
    main loop that ticks once a second, not ten times: it only refreshes the ``Date``
    header (to the second) and looks for the exit, and an exit asked for wakes it at once.
    At rest an API process then turns its event loop a few times a second, not twenty."""

    def __init__(self, config: uvicorn.Config) -> None:
        self._exit = asyncio.Event()
        super().__init__(config)

    @property
    def should_exit(self) -> bool:
        return self._exit.is_set()

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        if value:
            self._exit.set()
        else:
            self._exit.clear()

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864_000  # on_tick refreshes the date at multiples of 10
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit.wait(), 1.0)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield
