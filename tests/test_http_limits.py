"""The real HTTP server lets go of slow and idle clients and caps its connections: raw
sockets against uvicorn with Clarion's protocol, as a slowloris or a careless client would
connect."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from clarion.api.limits import LARGE_BODY, EdgeGuard
from clarion.api.server import _HeldHead, http_server
from clarion.observability import metrics
from clarion.pipeline import intake as intake_module
from harness import Harness, make_settings, running


@contextlib.asynccontextmanager
async def served(database_url: str, **limits: Any) -> AsyncIterator[tuple[int, str]]:
    """Clarion's API on a real socket; yields the port and an API key."""
    settings = make_settings(database_url, "embedded://", **limits)
    async with running(settings) as harness, serving(harness) as port:
        yield port, harness.key


@contextlib.asynccontextmanager
async def serving(harness: Harness) -> AsyncIterator[int]:
    """The harness's application on a real socket, as `clarion api` serves it; yields the
    port."""
    app = harness.client._transport.app  # type: ignore[attr-defined]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # connections queue here until the server accepts them
    server = http_server(app, harness.settings, intake=harness.runtime.intake)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        yield listener.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        listener.close()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def answer(
    reader: asyncio.StreamReader, limit: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """One response; raises if none comes within ``limit`` seconds."""
    async with asyncio.timeout(limit):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def closed(reader: asyncio.StreamReader, limit: float = 5.0) -> bool:
    """Whether the server closed the connection (what the caller had to read of it read
    already). A client still writing when the server closed (a trickle of header bytes, say)
    may see the close as a reset: the kernel answers bytes that come after it so."""
    async with asyncio.timeout(limit):
        try:
            return await reader.read() == b""
        except ConnectionResetError:
            return True


JSON = {"content-type": "application/json"}


def error_code(body: bytes) -> str:
    return str(json.loads(body)["error"]["code"])


async def assert_let_go(reader: asyncio.StreamReader, status: int, code: str) -> dict[str, str]:
    """The server answers ``status`` with the error ``code``, then closes the connection."""
    got, headers, body = await answer(reader)
    assert got == status
    assert headers["connection"] == "close"
    assert error_code(body) == code
    assert await closed(reader)
    return headers


async def test_a_connection_that_sends_nothing_is_let_go(migrated_sqlite_url: str) -> None:
    async with served(migrated_sqlite_url, http_header_timeout=0.3) as (port, _):
        reader, writer = await connect(port)
        await assert_let_go(reader, 408, "request_timeout")
        writer.close()


async def test_headers_trickled_a_byte_at_a_time_time_out(migrated_sqlite_url: str) -> None:
    async with served(migrated_sqlite_url, http_header_timeout=0.3) as (port, _):
        reader, writer = await connect(port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")

        async def trickle() -> None:
            # The slow client itself: a header byte every 50 ms, never the blank line.
            with contextlib.suppress(ConnectionError):
                for _ in range(200):
                    writer.write(b"x")
                    await writer.drain()
                    await asyncio.sleep(0.05)

        slow = asyncio.create_task(trickle())
        try:
            await assert_let_go(reader, 408, "request_timeout")
        finally:
            slow.cancel()
        writer.close()


async def test_the_next_request_on_a_kept_alive_connection_has_the_header_timeout(
    migrated_sqlite_url: str,
) -> None:
    # The first request comes whole (its head needs no timer); the second's head stops
    # half way and is timed from its first byte.
    async with served(migrated_sqlite_url, http_header_timeout=0.3) as (port, _):
        reader, writer = await connect(port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _headers, _body = await answer(reader)
        assert status == 200
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        await assert_let_go(reader, 408, "request_timeout")
        writer.close()


async def test_a_body_that_comes_after_its_head_is_read_whole(migrated_sqlite_url: str) -> None:
    # The head first, the body in two later writes: the body is waited for (within its
    # timeout), not taken as complete with the head.
    async with served(migrated_sqlite_url, http_body_timeout=5) as (port, key):
        reader, writer = await connect(port)
        body = json.dumps({"template": "nope", "to": {"recipient_id": "u1"}}).encode()
        writer.write(
            b"POST /v1/notifications HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {key}\r\n".encode()
            + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(body[:10])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(body[10:])
        status, _headers, answered = await answer(reader)
        # The whole body was read: the template is unknown, not the JSON cut short.
        assert status == 422, answered
        assert error_code(answered) != "invalid_json", answered
        writer.close()


async def test_a_body_that_does_not_arrive_times_out(migrated_sqlite_url: str) -> None:
    async with served(migrated_sqlite_url, http_body_timeout=0.3) as (port, key):
        reader, writer = await connect(port)
        writer.write(
            b"POST /v1/notifications HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {key}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            + b'{"template": '
        )
        await assert_let_go(reader, 408, "request_timeout")
        writer.close()


async def test_headers_over_the_limit_are_refused(migrated_sqlite_url: str) -> None:
    async with served(migrated_sqlite_url, http_max_header_bytes=8192) as (port, _):
        reader, writer = await connect(port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n")
        await assert_let_go(reader, 431, "headers_too_large")
        writer.close()


async def test_connections_over_the_cap_are_answered_503(migrated_sqlite_url: str) -> None:
    async with served(migrated_sqlite_url, http_max_connections=3) as (port, _):
        held = [await connect(port) for _ in range(3)]
        for reader, writer in held:  # each one accepted and served, then kept alive
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, _ = await answer(reader)
            assert status == 200
        reader, writer = await connect(port)
        headers = await assert_let_go(reader, 503, "server_busy")
        assert headers["retry-after"] == "1"
        writer.close()
        # A connection let go frees its place.
        _, first = held.pop()
        first.close()
        await first.wait_closed()
        for _ in range(50):
            reader, writer = await connect(port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, _ = await answer(reader)
            writer.close()
            if status == 200:
                break
        assert status == 200
        for _, w in held:
            w.close()


async def test_an_idle_kept_alive_connection_is_closed(migrated_sqlite_url: str) -> None:
    async with served(migrated_sqlite_url, http_keep_alive=1) as (port, _):
        reader, writer = await connect(port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = await answer(reader)
        assert status == 200
        assert "connection" not in headers or headers["connection"] != "close"
        assert await closed(reader, limit=5)
        writer.close()


async def test_requests_within_the_limits_are_served(migrated_sqlite_url: Path) -> None:
    async with served(migrated_sqlite_url, http_header_timeout=5) as (port, _):
        reader, writer = await connect(port)
        for _ in range(3):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, _ = await answer(reader)
            assert status == 200
        writer.close()


async def test_large_bodies_are_handled_a_few_at_a_time() -> None:
    """Memory: a burst of large batches is handled `large_bodies` at a time, not all at
    once; small requests are not held back by them."""
    running_now, most = 0, 0
    release, two_in = asyncio.Event(), asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal running_now, most
        message = await receive()
        running_now += 1
        most = max(most, running_now)
        if len(message["body"]) >= LARGE_BODY:
            if running_now == 2:
                two_in.set()
            await release.wait()
        running_now -= 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = EdgeGuard(app, large_bodies=2)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://x")
    async with client:
        large = b'{"pad": "' + b"x" * LARGE_BODY + b'"}'
        calls = [
            asyncio.create_task(client.post("/", content=large, headers=JSON)) for _ in range(8)
        ]
        await two_in.wait()
        small = await client.post("/", content=b'{"a": 1}', headers=JSON)
        assert small.status_code == 200
        assert most == 2 + 1  # two large bodies at most, and the small one
        release.set()
        answers = await asyncio.gather(*calls)
    assert [a.status_code for a in answers] == [200] * 8
    assert most == 3


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


HEAD = b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n"


async def test_an_answer_head_leaves_with_its_body_in_one_write() -> None:
    transport = _Transport()
    held = _HeldHead(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
    held.write(HEAD)
    assert transport.writes == []
    held.write(b"{}")
    assert transport.writes == [HEAD + b"{}"]
    # A 100 Continue goes at once: the client waits for it before sending its body.
    held.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert transport.writes[-1] == b"HTTP/1.1 100 Continue\r\n\r\n"


async def test_a_head_whose_body_is_late_leaves_on_its_own() -> None:
    """An event stream's head goes before its first event, which may come much later."""
    transport = _Transport()
    held = _HeldHead(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
    held.write(HEAD)
    await asyncio.sleep(0)  # the end of this turn of the event loop
    assert transport.writes == [HEAD]
    held.write(b"{}")
    assert transport.writes == [HEAD, b"{}"]
    held.write(HEAD)
    held.close()  # a closing connection still sends what it holds
    assert transport.writes[-1] == HEAD
    assert transport.closed


async def test_pipelined_requests_are_answered_in_order(migrated_sqlite_url: str) -> None:
    async with served(migrated_sqlite_url) as (port, _):
        reader, writer = await connect(port)
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n" * 3)
        writer.write(b"GET /nowhere HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        for _ in range(3):
            status, _, body = await answer(reader)
            assert status == 200
            assert json.loads(body)
        status, _, body = await answer(reader)
        assert status == 404
        assert error_code(body) == "not_found"
        assert await closed(reader)
        writer.close()
        await writer.wait_closed()


async def test_a_chunked_body_over_the_limit_gets_a_413(migrated_sqlite_url: str) -> None:
    """8 MiB sent chunked (no length to refuse up front): the client, which writes its whole
    body before it reads, gets the 413 and its error body, not a reset connection."""
    async with served(migrated_sqlite_url) as (port, key):

        async def body() -> AsyncIterator[bytes]:
            for _ in range(128):
                yield b"x" * 65536

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            response = await client.post(
                "/v1/notifications/batch",
                content=body(),
                headers={**JSON, "authorization": f"Bearer {key}"},
            )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
        assert response.headers["connection"] == "close"


async def test_a_declared_length_over_the_limit_gets_a_413_while_the_body_comes(
    migrated_sqlite_url: str,
) -> None:
    async with served(migrated_sqlite_url) as (port, key):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            response = await client.post(
                "/v1/notifications/batch",
                content=b"x" * (8 * 1024 * 1024),
                headers={**JSON, "authorization": f"Bearer {key}"},
            )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"


async def test_many_idle_connections_are_all_let_go_after_the_keep_alive(
    migrated_sqlite_url: str,
) -> None:
    """Idle kept-alive connections are not held: every one is closed by the server once
    it has been idle for the keep-alive timeout, whatever its last request was."""
    async with served(migrated_sqlite_url, http_keep_alive=1) as (port, key):
        requests = [
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /v1/notifications HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {key}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        ]
        held = [await connect(port) for _ in range(40)]
        for number, (reader, writer) in enumerate(held):
            writer.write(requests[number % 2])
            status, headers, _ = await answer(reader)
            assert status in (200, 422)
            assert headers.get("connection") != "close"
        for reader, writer in held:
            assert await closed(reader, limit=5)
            writer.close()


def _send(key: str, n: int) -> bytes:
    body = json.dumps({"template": "ping", "to": {"recipient_id": "r"}, "data": {"n": n}})
    return _post(key, "/v1/notifications", body)


def _send_two(key: str) -> bytes:
    """One request of two notifications: its commit carries both, so the next one lingers
    (as it does once notifications have been arriving together)."""
    one = {"template": "ping", "to": {"recipient_id": "r"}, "data": {"n": 0}}
    return _post(key, "/v1/notifications/batch", json.dumps({"notifications": [one, one]}))


def _post(key: str, path: str, body: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {key}\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body.encode()


@contextlib.asynccontextmanager
async def lingering(
    database_url: str, monkeypatch: pytest.MonkeyPatch, linger: float
) -> AsyncIterator[tuple[Harness, int]]:
    """A served API whose group commit lingers ``linger`` seconds."""
    monkeypatch.setattr(intake_module, "COMMIT_LINGER", linger)
    settings = make_settings(database_url, "embedded://")
    async with running(settings) as harness:
        await harness.put_recipient("r")
        await harness.put_template("ping", {"channels": {"webhook": {"body": {"n": "{{ n }}"}}}})
        async with serving(harness) as port:
            yield harness, port


def group_commits() -> float:
    """The intake's group commits so far in this process, as ``/metrics`` counts them."""
    name = "clarion_intake_commit_size_count"
    return metrics.METRICS.registry.get_sample_value(name) or 0.0


async def together(
    harness: Harness, first: tuple[asyncio.StreamReader, asyncio.StreamWriter]
) -> None:
    """Send two notifications in one request on ``first``, which stays open: the next
    commit lingers."""
    reader, writer = first
    writer.write(_send_two(harness.key))
    status, _, _ = await answer(reader)
    assert status == 202


async def test_a_commit_lingers_no_longer_once_every_connection_waits_on_it(
    migrated_sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three connections, each with a request waiting on the group commit: no other request
    can come before they are answered, so the commit does not sit out its linger (a
    minute here); it carries all three at once."""
    async with lingering(migrated_sqlite_url, monkeypatch, 60.0) as (harness, port):
        connections = [await connect(port) for _ in range(3)]
        await together(harness, connections[0])
        commits = group_commits()
        for n, (_, writer) in enumerate(connections):
            writer.write(_send(harness.key, n))
        answers = await asyncio.gather(*(answer(reader) for reader, _ in connections))
        assert [status for status, _, _ in answers] == [202, 202, 202]
        assert group_commits() == commits + 1
        for _, writer in connections:
            writer.close()


async def test_a_commit_lingers_while_a_connection_could_still_send(
    migrated_sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An open connection without a request (a kept-alive client between two requests, a
    live stream) could still send one: the commit lingers its whole time for it."""
    linger = 0.5
    async with lingering(migrated_sqlite_url, monkeypatch, linger) as (harness, port):
        idle = await connect(port)
        await together(harness, idle)
        commits = group_commits()
        connections = [await connect(port) for _ in range(2)]
        loop = asyncio.get_running_loop()
        sent = loop.time()
        for n, (_, writer) in enumerate(connections):
            writer.write(_send(harness.key, n))
        answers = await asyncio.gather(*(answer(reader) for reader, _ in connections))
        assert loop.time() - sent >= linger
        assert [status for status, _, _ in answers] == [202, 202]
        assert group_commits() == commits + 1
        for _, writer in [idle, *connections]:
            writer.close()


async def test_a_request_whose_commit_is_written_no_longer_counts_as_waiting() -> None:
    """A request counts as waiting on the commit until its notifications are written, not
    until its handler runs again: once written, its connection may send the next request,
    so a commit lingering for it must not end early by counting it still."""
    limiter = SimpleNamespace(take_many=None)
    intake = intake_module.Intake(SimpleNamespace(resilience=SimpleNamespace(limiter=limiter)))  # type: ignore[arg-type]
    intake.open_connections = lambda: 2
    loop = asyncio.get_running_loop()
    written, waiting = loop.create_future(), loop.create_future()
    intake._waiting.extend([written, waiting])
    assert intake._all_waiting()
    written.set_result(None)  # its answer is on its way; its handler has not run yet
    assert not intake._all_waiting()
    waiting.set_result(None)
    assert not intake._all_waiting()
