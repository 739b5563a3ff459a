"""A small, fast HTTP/1.1 server that receives webhooks and remembers them.

Used by the tests and the benchmarks as the far end of the webhook channel. It speaks
just enough HTTP/1.1 for keep-alive POSTs with a Content-Length. Run on its own, it counts
what it receives and prints a JSON line of totals every second:

    python benchmarks/webhook_sink.py --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


Responder = Callable[[Received], int]


@dataclass
class WebhookSink:
    """Answers every request with ``respond(request)`` (200 by default) and records it."""

    respond: Responder = field(default=lambda _: 200)
    keep_bodies: bool = True
    # Seconds to wait before answering (a slow receiver).
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    count: int = 0  # requests answered
    arrived: int = 0  # requests read, answered or not
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_for(self, count: int, timeout: float, *, answered: bool = True) -> None:
        """Wait until ``count`` requests have been answered (or only read), or time out."""
        async with asyncio.timeout(timeout):
            while (self.count if answered else self.arrived) < count:
                self._changed.clear()
                await self._changed.wait()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                request = await self._read(reader)
                if request is None:
                    break
                self.arrived += 1
                self._changed.set()
                if self.delay:
                    await asyncio.sleep(self.delay)
                status = self.respond(request)
                self.count += 1
                if self.keep_bodies:
                    self.received.append(request)
                self._changed.set()
                writer.write(
                    f"HTTP/1.1 {status} X\r\ncontent-length: 2\r\ncontent-type: application/json"
                    "\r\n\r\n{}".encode()
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> Received | None:
        head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
        if not head:
            return None
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1] if " " in lines[0] else "/"
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
        return Received(path, headers, body, time.time())


async def _main(port: int, seconds: float) -> None:
    sink = WebhookSink(keep_bodies=False)
    await sink.start(port=port)
    started = time.time()
    while time.time() - started < seconds:
        await asyncio.sleep(1)
        print(json.dumps({"received": sink.count, "t": round(time.time() - started, 1)}))
    await sink.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--seconds", type=float, default=3600)
    args = parser.parse_args()
    asyncio.run(_main(args.port, args.seconds))
