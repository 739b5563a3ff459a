"""Clarion's HTTP/1.1 client (``clarion.net``) against real servers on 127.0.0.1: raw
asyncio servers that answer byte for byte what each test needs."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trustme

from clarion.errors import PermanentError, ProviderError, TransientError
from clarion.net import HttpClient, Reply
from clarion.security.netguard import AddressGuard

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """A request's head and body, or None once the client has closed the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        return head, await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


async def answer_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    while await read_request(reader) is not None:
        writer.write(OK)


class Server:
    """Runs ``handler`` for each connection (with its number, from 0); counts connections
    and requests' heads."""

    def __init__(
        self,
        handler: Handler = answer_all,
        tls: ssl.SSLContext | None = None,
        bind: tuple[str, int] = ("127.0.0.1", 0),
    ) -> None:
        self.handler = handler
        self.tls = tls
        self.bind = bind
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.ended = asyncio.Event()  # a connection ended
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._done: set[asyncio.Future[None]] = set()

    async def start(self) -> Server:
        self._server = await asyncio.start_server(self._serve, *self.bind, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        done = asyncio.get_running_loop().create_future()
        self._done.add(done)
        self._writers.add(writer)
        try:
            await self.handler(reader, writer, number)
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            self.open -= 1
            self._writers.discard(writer)
            writer.close()
            self.ended.set()
            done.set_result(None)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._done:
            await asyncio.wait(self._done)
        await self._server.wait_closed()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    servers: list[Server] = []

    async def start(
        handler: Handler = answer_all,
        tls: ssl.SSLContext | None = None,
        bind: tuple[str, int] = ("127.0.0.1", 0),
    ) -> Server:
        server = await Server(handler, tls, bind).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    http = HttpClient(AddressGuard(allow_private=True), max_connections=8)
    yield http
    await http.aclose()


async def post(http: HttpClient, url: str, *, key: bool = True, **kwargs: Any) -> Reply:
    headers = {"content-type": "application/json"}
    if key:
        headers["idempotency-key"] = "dlv_1"
    options: dict[str, Any] = {"timeout": 5.0, "max_body": 4096, **kwargs}
    return await http.request("POST", url, headers, b'{"n":1}', **options)


async def failure(send: Awaitable[Any]) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await send
    return caught.value


async def test_keep_alive_reuses_one_connection(
    serve: Callable[..., Awaitable[Server]], client: HttpClient
) -> None:
    heads: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while (request := await read_request(reader)) is not None:
            heads.append(request[0])
            assert request[1] == b'{"n":1}'
            writer.write(b"HTTP/1.1 201 Created\r\nX-Request-Id: r1\r\nContent-Length: 2\r\n\r\nok")

    server = await serve(record)
    for _ in range(5):
        reply = await post(client, server.url("/hook?a=1"))
        assert (reply.status, reply.body, reply.text) == (201, b"ok", "ok")
        assert reply.headers["x-request-id"] == "r1"
    assert server.connections == 1
    assert client.connections == 1
    head = heads[0].decode()
    assert head.startswith("POST /hook?a=1 HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{server.port}\r\n" in head
    assert "content-length: 7\r\n" in head
    assert "user-agent: Clarion\r\n" in head
    assert "idempotency-key: dlv_1\r\n" in head


async def test_chunked_answer_is_dechunked_and_the_connection_kept(
    serve: Callable[..., Awaitable[Server]], client: HttpClient
) -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"5\r\nhello\r\n6\r\n world\r\n")
            await writer.drain()
            writer.write(b"0\r\n\r\n")

    server = await serve(chunked)
    assert (await post(client, server.url())).body == b"hello world"
    assert (await post(client, server.url())).body == b"hello world"
    assert server.connections == 1


async def test_close_delimited_answer(
    serve: Callable[..., Awaitable[Server]], client: HttpClient
) -> None:
    async def until_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\npart one, ")
        await writer.drain()
        writer.write(b"part two")

    server = await serve(until_close)
    assert (await post(client, server.url())).body == b"part one, part two"
    assert (await post(client, server.url())).body == b"part one, part two"
    assert server.connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
)
async def test_no_reuse_after_connection_close_or_http_1_0(
    serve: Callable[..., Awaitable[Server]], client: HttpClient, answer: bytes
) -> None:
    async def keep_open(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while await read_request(reader) is not None:
            writer.write(answer)

    server = await serve(keep_open)
    for _ in range(3):
        assert (await post(client, server.url())).body == b"ok"
    assert server.connections == 3


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
async def test_a_huge_body_is_cut_and_its_connection_dropped(
    serve: Callable[..., Awaitable[Server]], client: HttpClient, framing: str
) -> None:
    big = b"x" * 4_000_000

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while await read_request(reader) is not None:
            if framing == "length":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big)
            elif framing == "chunked":
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big))
            else:
                writer.write(b"HTTP/1.1 200 OK\r\n\r\n" + big)
            await writer.drain()

    server = await serve(flood)
    reply = await post(client, server.url(), max_body=1000)
    assert reply.body == b"x" * 1000
    await server.ended.wait()  # the client closed that connection
    assert client.connections == 0
    assert (await post(client, server.url(), max_body=10)).body == b"x" * 10
    assert server.connections == 2


async def test_a_hanging_server_times_out_and_the_connection_is_closed(
    serve: Callable[..., Awaitable[Server]], client: HttpClient
) -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        assert await reader.read() == b""  # until the client closes

    server = await serve(hang)
    error = await failure(post(client, server.url(), timeout=0.2))
    assert isinstance(error, TransientError)
    assert error.reason == "timeout"
    await server.ended.wait()
    assert client.connections == 0


def closes_second_request(answer_after: bytes = OK) -> Handler:
    """The first connection answers one request, then reads the next and closes without a
    word (a server dropping a kept-alive connection as the request arrives)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 0:
            await read_request(reader)
            writer.write(OK)
            await read_request(reader)
            return
        await answer_all(reader, writer, n)

    return handler


@pytest.mark.parametrize(
    ("method", "key"), [("POST", True), ("PUT", False), ("GET", False), ("DELETE", False)]
)
async def test_a_replayable_request_is_retried_once_on_a_new_connection(
    serve: Callable[..., Awaitable[Server]], client: HttpClient, method: str, key: bool
) -> None:
    server = await serve(closes_second_request())
    headers = {"idempotency-key": "k"} if key else {}
    for _ in range(2):
        reply = await client.request(method, server.url(), headers, timeout=5, max_body=10)
        assert reply.body == b"ok"
    assert server.connections == 2


async def test_a_post_without_idempotency_key_is_not_retried(
    serve: Callable[..., Awaitable[Server]], client: HttpClient
) -> None:
    server = await serve(closes_second_request())
    await post(client, server.url(), key=False)
    error = await failure(post(client, server.url(), key=False))
    assert isinstance(error, TransientError)
    assert error.reason == "connection_error"
    assert server.connections == 1


async def test_a_fresh_connection_closed_early_is_not_retried(
    serve: Callable[..., Awaitable[Server]], client: HttpClient
) -> None:
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)

    server = await serve(drop)
    error = await failure(post(client, server.url()))
    assert error.reason == "connection_error"
    assert server.connections == 1


async def test_a_redirect_is_returned_not_followed(
    serve: Callable[..., Awaitable[Server]], client: HttpClient
) -> None:
    paths: list[bytes] = []

    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while (request := await read_request(reader)) is not None:
            paths.append(request[0].split(b" ")[1])
            writer.write(b"HTTP/1.1 302 Found\r\nLocation: /internal\r\nContent-Length: 0\r\n\r\n")

    server = await serve(redirect)
    reply = await post(client, server.url())
    assert reply.status == 302
    assert reply.headers["location"] == "/internal"
    assert paths == [b"/hook"]


@pytest.mark.parametrize(
    "headers",
    [
        {"x-note": "a\r\nx-evil: 1"},
        {"x-note": "a\nx-evil: 1"},
        {"x-note": "a\rb"},
        {"x-note": "a\x00b"},
        {"x-evil: 1\r\nx-note": "a"},
        {"x:note": "a"},
    ],
)
async def test_header_injection_is_refused(
    serve: Callable[..., Awaitable[Server]], client: HttpClient, headers: dict[str, str]
) -> None:
    server = await serve()
    with pytest.raises(PermanentError) as caught:
        await client.request("POST", server.url(), headers, b"{}", timeout=5, max_body=10)
    assert caught.value.reason == "invalid_request"
    assert server.connections == 0


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/x", "http:///x", "http://127.0.0.1:99999/", "http://a b/"]
)
async def test_a_url_that_cannot_be_sent_is_refused(client: HttpClient, url: str) -> None:
    with pytest.raises(PermanentError) as caught:
        await client.request("GET", url, {}, timeout=5, max_body=10)
    assert caught.value.reason == "invalid_address"


async def test_a_path_is_percent_encoded_and_url_credentials_become_basic_auth(
    serve: Callable[..., Awaitable[Server]], client: HttpClient
) -> None:
    heads: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while (request := await read_request(reader)) is not None:
            heads.append(request[0])
            writer.write(OK)

    server = await serve(record)
    url = f"http://user:p%40ss@127.0.0.1:{server.port}/a b/\u00e9?q=1 2&r=%2F"
    await client.request("GET", url, {}, timeout=5, max_body=10)
    head = heads[0].decode()
    assert head.startswith("GET /a%20b/%C3%A9?q=1%202&r=%2F HTTP/1.1\r\n")
    assert "authorization: Basic dXNlcjpwQHNz\r\n" in head  # user:p@ss


async def test_head_204_and_304_carry_no_body(
    serve: Callable[..., Awaitable[Server]], client: HttpClient
) -> None:
    answers = {
        b"HEAD": b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        b"GET": b"HTTP/1.1 204 No Content\r\n\r\n",
        b"PUT": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\n\r\n",
    }

    async def bodiless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while (request := await read_request(reader)) is not None:
            writer.write(answers[request[0].split(b" ")[0]])

    server = await serve(bodiless)
    for method in ("GET", "PUT", "HEAD", "GET"):
        reply = await client.request(method, server.url(), {}, timeout=5, max_body=10)
        assert reply.body == b""
    # A HEAD's connection is not reused (its parser would expect the announced body).
    assert server.connections == 2


async def test_an_interim_answer_is_skipped(
    serve: Callable[..., Awaitable[Server]], client: HttpClient
) -> None:
    async def interim(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n" + OK)

    server = await serve(interim)
    reply = await post(client, server.url())
    assert (reply.status, reply.body) == (200, b"ok")
    assert "x-interim" not in reply.headers


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    ],
)
async def test_a_malformed_answer_is_transient(
    serve: Callable[..., Awaitable[Server]], client: HttpClient, answer: bytes
) -> None:
    async def malformed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(answer)

    server = await serve(malformed)
    error = await failure(post(client, server.url(), key=False))
    assert isinstance(error, TransientError)
    assert error.reason == "connection_error"


async def test_a_refused_connection_is_transient(client: HttpClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = await failure(post(client, f"http://127.0.0.1:{port}/"))
    assert isinstance(error, TransientError)
    assert error.reason == "connection_error"


async def test_the_guard_refuses_private_addresses(serve: Callable[..., Awaitable[Server]]) -> None:
    server = await serve()
    strict = HttpClient(AddressGuard(allow_private=False))
    try:
        for url in (server.url(), server.url(host="localhost"), server.url(host="[::1]")):
            error = await failure(post(strict, url))
            assert isinstance(error, PermanentError)
            assert error.reason == "address_refused"
    finally:
        await strict.aclose()
    assert server.connections == 0


async def test_the_pool_cap_holds_under_concurrency(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    release, full = asyncio.Event(), asyncio.Event()
    waiting = 0

    async def gated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        nonlocal waiting
        while await read_request(reader) is not None:
            waiting += 1
            if waiting == 3:
                full.set()
            await release.wait()  # answered once the client has 3 requests out
            writer.write(OK)

    server = await serve(gated)
    capped = HttpClient(AddressGuard(allow_private=True), max_connections=3)
    try:
        sends = [asyncio.ensure_future(post(capped, server.url())) for _ in range(30)]
        await full.wait()
        assert capped.connections == 3
        release.set()
        replies = await asyncio.gather(*sends)
    finally:
        await capped.aclose()
    assert all(reply.body == b"ok" for reply in replies)
    assert server.connections == 3
    assert server.most_open == 3


async def test_requests_beyond_the_cap_go_out_in_the_order_they_came(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    keys: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while (request := await read_request(reader)) is not None:
            keys.extend(line for line in request[0].split(b"\r\n") if line.startswith(b"x-n:"))
            writer.write(OK)

    server = await serve(record)
    single = HttpClient(AddressGuard(allow_private=True), max_connections=1)
    try:
        sends = [
            single.request("GET", server.url(), {"x-n": str(n)}, timeout=5, max_body=10)
            for n in range(20)
        ]
        await asyncio.gather(*sends)
    finally:
        await single.aclose()
    assert keys == [f"x-n: {n}".encode() for n in range(20)]
    assert server.connections == 1


async def test_aclose_ends_requests_in_flight_and_closes_every_connection(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    arrived = asyncio.Event()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        arrived.set()
        await reader.read()

    server = await serve(hang)
    http = HttpClient(AddressGuard(allow_private=True))
    pending = asyncio.ensure_future(post(http, server.url(), key=False))
    await arrived.wait()
    await http.aclose()
    error = await failure(pending)
    assert error.reason == "connection_error"
    assert http.connections == 0
    with pytest.raises(RuntimeError):
        await post(http, server.url())


async def test_room_is_made_by_closing_another_origins_idle_connection(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    first, second = await serve(), await serve()
    one = HttpClient(AddressGuard(allow_private=True), max_connections=1)
    try:
        await post(one, first.url())
        await post(one, second.url())
        await first.ended.wait()
        assert one.connections == 1
    finally:
        await one.aclose()


async def test_an_idle_connection_expires(serve: Callable[..., Awaitable[Server]]) -> None:
    server = await serve()
    brief = HttpClient(AddressGuard(allow_private=True), idle_timeout=0.05)
    try:
        await post(brief, server.url())
        await server.ended.wait()  # closed by the client once idle long enough
        assert brief.connections == 0
        await post(brief, server.url())
        assert server.connections == 2
    finally:
        await brief.aclose()


async def test_a_connection_the_server_closed_is_not_reused(
    serve: Callable[..., Awaitable[Server]], client: HttpClient
) -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(OK)

    server = await serve(once)
    await post(client, server.url(), key=False)
    await server.ended.wait()
    await asyncio.wait([conn.lost for conn in client._open])  # the close reached the client
    assert client.connections == 0
    await post(client, server.url(), key=False)
    assert server.connections == 2


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def named(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``hooks.test`` resolves to 127.0.0.1, ``two.test`` to 127.0.0.2 and 127.0.0.1; each
    lookup is recorded."""
    lookups: list[str] = []
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    names = {"hooks.test": ["127.0.0.1"], "two.test": ["127.0.0.2", "127.0.0.1"]}

    async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        lookups.append(host)
        if host in names:
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port)))
                for address in names[host]
            ]
        return await real(host, port, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    return lookups


def tls_server(ca: trustme.CA, name: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    return context


def tls_client(ca: trustme.CA) -> HttpClient:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return HttpClient(AddressGuard(allow_private=True), ssl_context=context)


async def test_tls_verifies_the_name_while_connecting_to_the_checked_address(
    serve: Callable[..., Awaitable[Server]], ca: trustme.CA, named: list[str]
) -> None:
    server = await serve(tls=tls_server(ca, "hooks.test"))
    http = tls_client(ca)
    try:
        for _ in range(2):
            reply = await post(http, server.url(host="hooks.test"))
            assert reply.body == b"ok"
    finally:
        await http.aclose()
    assert named == ["hooks.test"]  # one lookup, one connection
    assert server.connections == 1


async def test_tls_refuses_a_certificate_for_another_name_or_an_unknown_ca(
    serve: Callable[..., Awaitable[Server]], ca: trustme.CA, named: list[str]
) -> None:
    other = await serve(tls=tls_server(ca, "other.test"))
    unknown = await serve(tls=tls_server(trustme.CA(), "hooks.test"))
    http = tls_client(ca)
    try:
        errors = [
            await failure(post(http, other.url(host="hooks.test"))),
            await failure(post(http, unknown.url(host="hooks.test"))),
        ]
    finally:
        await http.aclose()
    assert all(isinstance(error, TransientError) for error in errors)
    assert [error.reason for error in errors] == ["certificate_error"] * 2


async def test_an_address_that_hangs_leaves_time_for_the_next(
    serve: Callable[..., Awaitable[Server]], ca: trustme.CA, named: list[str]
) -> None:
    """``two.test``'s first address accepts connections and never answers the TLS
    handshake; the second is a working server. Each gets half the time."""
    good = await serve(tls=tls_server(ca, "two.test"))

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.read()

    hanging = await serve(mute, bind=("127.0.0.2", good.port))
    http = tls_client(ca)
    try:
        reply = await post(http, good.url(host="two.test"), timeout=2.0)
    finally:
        await http.aclose()
    assert reply.body == b"ok"
    assert (hanging.connections, good.connections) == (1, 1)
