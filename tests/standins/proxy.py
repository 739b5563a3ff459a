"""An outbound HTTP proxy, as a company's egress proxy is: ``CONNECT host:port`` opens a
tunnel (``200 Connection established``) and copies bytes both ways; with ``credentials``
set, a ``CONNECT`` without the right ``Proxy-Authorization: Basic`` is answered ``407``
with ``Proxy-Authenticate``. Any other request (``POST http://host/path`` in absolute
form) is refused with ``405`` and recorded: Clarion sends none.

It records what it was asked for: ``tunnels`` (each CONNECT target it opened),
``refused`` (each request it did not serve, with its status), ``connections``. A test
asserts from these that a request went through it, or did not. ``routes`` sends a target
elsewhere (``"8.8.8.8:443" → ("127.0.0.1", port)``): a test that makes a name resolve to
a public address still reaches a server on loopback, and sees which address Clarion asked
for. ``answers`` makes it refuse a target with a status (403 by policy, 502 for a host it
cannot reach).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from dataclasses import dataclass, field

_STATUS_TEXT = {
    400: "Bad Request",
    403: "Forbidden",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    502: "Bad Gateway",
}


@dataclass
class ConnectProxy:
    # (user, password) that CONNECT must carry; None: no authentication.
    credentials: tuple[str, str] | None = None
    routes: dict[str, tuple[str, int]] = field(default_factory=dict)
    # target ("host:port") -> the status to refuse it with
    answers: dict[str, int] = field(default_factory=dict)
    tunnels: list[str] = field(default_factory=list)
    refused: list[tuple[str, int]] = field(default_factory=list)
    # bytes copied from the client through tunnels (to check that TLS hides the request)
    carried: bytearray = field(default_factory=bytearray)
    connections: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _pipes: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_with(self, user: str, password: str) -> str:
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    async def start(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        target = rest.rpartition(" ")[0]
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if method == "CONNECT":
            await self._connect(target, headers, reader, writer)
        else:
            # Clarion sends nothing in absolute form: a request that did is seen here.
            await self._refuse(writer, f"{method} {target}", 405)

    async def _connect(
        self,
        target: str,
        headers: dict[str, str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        if self.credentials is not None and not self._authorized(headers):
            await self._refuse(writer, target, 407)
            return
        if target in self.answers:
            await self._refuse(writer, target, self.answers[target])
            return
        host, _, port = target.rpartition(":")
        destination = self.routes.get(target, (host.strip("[]"), int(port)))
        try:
            up_reader, up_writer = await asyncio.open_connection(*destination)
        except OSError:
            await self._refuse(writer, target, 502)
            return
        self.tunnels.append(target)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        self._writers.add(up_writer)
        await self._pipe_both(reader, writer, up_reader, up_writer)

    def _authorized(self, headers: dict[str, str]) -> bool:
        assert self.credentials is not None
        scheme, _, token = headers.get("proxy-authorization", "").partition(" ")
        try:
            pair = base64.b64decode(token, validate=True).decode()
        except ValueError:
            return False
        return scheme.lower() == "basic" and pair == ":".join(self.credentials)

    async def _refuse(self, writer: asyncio.StreamWriter, target: str, status: int) -> None:
        self.refused.append((target, status))
        text = _STATUS_TEXT.get(status, "Refused")
        body = f"{status} {text}\n".encode()
        extra = 'Proxy-Authenticate: Basic realm="egress"\r\n' if status == 407 else ""
        writer.write(
            f"HTTP/1.1 {status} {text}\r\n{extra}Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def _pipe_both(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        tasks = [
            asyncio.create_task(self._pipe(reader, up_writer, carry=True)),
            asyncio.create_task(self._pipe(up_reader, writer, carry=False)),
        ]
        self._pipes.update(tasks)
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._pipes.difference_update(tasks)
            for end in (writer, up_writer):
                end.close()

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, carry: bool
    ) -> None:
        try:
            while data := await source.read(65536):
                if carry:
                    self.carried += data
                sink.write(data)
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            with contextlib.suppress(Exception):
                sink.write_eof()
