"""CPU per request of the HTTP clients a webhook could be sent with.

Starts ``webhook_sink.py`` in a process of its own, then, in a fresh process per run,
sends N signed JSON POSTs with C in flight through each client and measures the client
process's CPU time (every thread of it) and wall time. Runs alternate between clients.
Prints one JSON object.

    uv run python benchmarks/http_clients.py
    uv run --with pyreqwest python benchmarks/http_clients.py --requests 20000 --rounds 2

Clients: ``clarion``, Clarion's own HTTP/1.1 client (``clarion.net``) as the webhook
provider uses it (guarded, bounded); ``aiohttp`` as the webhook provider used it before;
``aiohttp-tuned`` (a pre-built ``yarl.URL``, no session timeout but an ``asyncio.timeout``
around the call, no automatic ``Accept`` headers); ``pyreqwest`` when it is installed (it
is not a dependency of Clarion).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import importlib.util
import json
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import uvloop

HERE = Path(__file__).resolve().parent
BODY = orjson.dumps({"title": "Order shipped", "body": "Your order 123 has shipped"})
SECRET = b"benchmark-secret"


def headers(i: int) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "idempotency-key": f"d{i}",
        "clarion-signature": hmac.new(SECRET, BODY, hashlib.sha256).hexdigest(),
        "clarion-delivery-id": f"d{i}",
        "clarion-notification-id": f"n{i}",
        "clarion-attempt": "1",
    }


async def measure(
    send: Callable[[int], Awaitable[None]], requests: int, concurrency: int
) -> dict[str, float]:
    gate = asyncio.Semaphore(concurrency)

    async def limited(i: int) -> None:
        async with gate:
            await send(i)

    await asyncio.gather(*(limited(i) for i in range(min(500, requests))))  # warm up
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(limited(i) for i in range(requests)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "requests_per_s": round(requests / wall),
        "client_cpu_us_per_request": round(cpu / requests * 1e6, 1),
    }


async def run_aiohttp(url: str, requests: int, concurrency: int, tuned: bool) -> dict[str, Any]:
    import aiohttp
    import yarl

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=0),
        timeout=aiohttp.ClientTimeout(total=None if tuned else 10),
        auto_decompress=False,
        skip_auto_headers=("Accept", "Accept-Encoding") if tuned else (),
    )
    target: Any = yarl.URL(url) if tuned else url

    async def send(i: int) -> None:
        async with asyncio.timeout(10):
            async with session.post(
                target, data=BODY, headers=headers(i), allow_redirects=False
            ) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")

    try:
        return await measure(send, requests, concurrency)
    finally:
        await session.close()


async def run_clarion(url: str, requests: int, concurrency: int) -> dict[str, Any]:
    from clarion.net import HttpClient
    from clarion.security.netguard import AddressGuard

    client = HttpClient(AddressGuard(allow_private=True), max_connections=concurrency)

    async def send(i: int) -> None:
        reply = await client.request("POST", url, headers(i), BODY, timeout=10, max_body=4096)
        if reply.status != 200:
            raise RuntimeError(f"HTTP {reply.status}")

    try:
        return await measure(send, requests, concurrency)
    finally:
        await client.aclose()


async def run_pyreqwest(url: str, requests: int, concurrency: int) -> dict[str, Any]:
    from pyreqwest.client import ClientBuilder

    client = (
        ClientBuilder()
        .max_connections(concurrency)
        .timeout(timedelta(seconds=10))
        .follow_redirects(False)
        .build()
    )
    async with client:

        async def send(i: int) -> None:
            request = client.post(url).body_bytes(BODY).headers(headers(i)).build_streamed()
            async with request as response:
                await response.bytes()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")

        return await measure(send, requests, concurrency)


def child(client: str, url: str, requests: int, concurrency: int) -> None:
    runs = {
        "clarion": lambda: run_clarion(url, requests, concurrency),
        "aiohttp": lambda: run_aiohttp(url, requests, concurrency, tuned=False),
        "aiohttp-tuned": lambda: run_aiohttp(url, requests, concurrency, tuned=True),
        "pyreqwest": lambda: run_pyreqwest(url, requests, concurrency),
    }
    print(json.dumps(uvloop.run(runs[client]())))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.url, args.requests, args.concurrency)
        return
    clients = ["clarion", "aiohttp", "aiohttp-tuned"]
    if importlib.util.find_spec("pyreqwest") is not None:
        clients.append("pyreqwest")
    port = free_port()
    sink = subprocess.Popen(
        [sys.executable, str(HERE / "webhook_sink.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/hook"
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in clients}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        for _ in range(args.rounds):
            for name in clients:
                command = [sys.executable, __file__, "--child", name, "--url", url]
                command += ["--requests", str(args.requests)]
                command += ["--concurrency", str(args.concurrency)]
                out = subprocess.run(
                    command,
                    check=True,
                    capture_output=True,
                    text=True,
                )
                results[name].append(json.loads(out.stdout))
    finally:
        sink.terminate()
        sink.wait()
    print(
        json.dumps(
            {
                "requests": args.requests,
                "concurrency": args.concurrency,
                "missing": [] if "pyreqwest" in clients else ["pyreqwest (not installed)"],
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
